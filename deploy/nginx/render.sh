#!/bin/sh
# render.sh OUTPUT [COMMAND...]: writes nginx.conf.template, its ${NAME}s filled from
# defaults.env and the environment (a set, non-empty variable wins), to OUTPUT; then runs
# COMMAND, if any, in its place. Only the names defaults.env lists are replaced, so nginx's
# own $variables stay as they are. The Dockerfile runs it, and so do the tests.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
output=$1
shift
names=""
while IFS= read -r line; do
    case $line in '' | '#'*) continue ;; esac
    name=${line%%=*}
    if [ -z "$(printenv "$name" || true)" ]; then
        export "$name=${line#*=}"
    fi
    names="$names \${$name}"
done < "$here/defaults.env"
envsubst "$names" < "$here/nginx.conf.template" > "$output.tmp"
mv "$output.tmp" "$output"
if [ "$#" -gt 0 ]; then
    exec "$@"
fi

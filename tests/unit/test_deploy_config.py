"""The production topology as written (no Docker engine here to run it): docker-compose.yml puts
the edge the integration tests run (deploy/nginx) in front of the API, which is not published
and believes only the edge's X-Forwarded-For; the edge's defaults agree with the API's."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from autopilot_api.core.config import PROJECT_ROOT, Settings
from tests.fixtures.nginx import DEPLOY, RENDER, envsubst_path

TEMPLATE = DEPLOY / "nginx.conf.template"


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def defaults() -> dict[str, str]:
    lines = (DEPLOY / "defaults.env").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_api_is_reached_only_through_the_edge() -> None:
    services = compose()["services"]
    api, edge = services["api"], services["edge"]
    assert "ports" not in api
    assert edge["ports"] == ["127.0.0.1:8000:8080"]
    assert edge["environment"]["API_UPSTREAM"] == "api:8000"
    assert edge["depends_on"]["api"]["condition"] == "service_healthy"
    # Only the edge publishes a port.
    assert [name for name, service in services.items() if "ports" in service] == ["edge"]


def test_the_api_believes_the_edge_and_nothing_else() -> None:
    loaded = compose()
    edge_address = loaded["services"]["edge"]["networks"]["default"]["ipv4_address"]
    (subnet,) = [entry["subnet"] for entry in loaded["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(edge_address) in ipaddress.ip_network(subnet)
    assert loaded["services"]["api"]["environment"]["TRUSTED_PROXY_IPS"] == edge_address
    # The edge replaces any X-Forwarded-For a client sends with the address it sees.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in TEMPLATE.read_text()


def test_the_edge_image_runs_the_tested_configuration() -> None:
    assert compose()["services"]["edge"]["build"] == "deploy/nginx"
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    (base,) = [rest for keyword, rest in instructions if keyword == "FROM"]
    # Debian's package, as the tests fetch it (bookworm: nginx 1.22).
    assert base.startswith("debian:bookworm")
    run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"apt-get install .*\bnginx\b.*\bgettext-base\b", run)
    (copy,) = [rest for keyword, rest in instructions if keyword == "COPY"]
    *sources, target = copy.split()
    # The files the integration tests render with render.sh, and nothing else.
    assert sorted(sources) == ["defaults.env", "nginx.conf.template", "render.sh"]
    assert all((DEPLOY / source).is_file() for source in sources)
    (cmd,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert yaml.safe_load(cmd) == [
        "sh",
        f"{target.rstrip('/')}/render.sh",
        "/etc/nginx/nginx.conf",
        "nginx",
        "-g",
        "daemon off;",
    ]


def test_every_template_name_has_a_default_and_every_default_is_used() -> None:
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", TEMPLATE.read_text()))
    # "${NAME}s" in the template's own comment is not a setting.
    assert used - {"NAME"} == set(defaults())


def test_the_edge_defaults_agree_with_the_api() -> None:
    edge = defaults()
    assert int(edge["MAX_BODY_BYTES"]) == setting_default("max_body_bytes")
    assert compose()["services"]["api"]["environment"]["MAX_BODY_BYTES"] == edge["MAX_BODY_BYTES"]
    assert compose()["services"]["edge"]["environment"]["MAX_BODY_BYTES"] == edge["MAX_BODY_BYTES"]
    # The edge closes an idle upstream connection before the API does (no request sent
    # into a connection being closed), and waits longer than the API may stay silent.
    assert int(edge["UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS"]) < setting_default(
        "keepalive_timeout_seconds"
    )
    read_timeout = int(edge["PROXY_READ_TIMEOUT_SECONDS"])
    assert read_timeout > setting_default("events_heartbeat_seconds")
    assert read_timeout > setting_default("openai_timeout_seconds")


def test_render_fills_every_setting_and_leaves_nginx_variables(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    done = subprocess.run(
        ["sh", str(RENDER), str(conf)],
        env={"PATH": envsubst_path(), "LIMIT_CONN_PER_IP": "7"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rendered = conf.read_text()
    directives = "\n".join(
        line for line in rendered.splitlines() if not line.strip().startswith("#")
    )
    assert "${" not in directives
    assert "limit_conn autopilot_conn_per_ip 7;" in rendered  # from the environment
    assert "client_max_body_size 1048576;" in rendered  # from defaults.env
    assert "large_client_header_buffers 1 16384;" in rendered
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in rendered  # nginx's own
    assert "server api:8000;" in rendered

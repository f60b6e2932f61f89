# The production image: the API only, against a hosted Supabase project
# (SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY). Nothing local is started in it.
# It runs behind the edge (deploy/nginx), which owns slow clients, per-address limits and
# request sizes; set TRUSTED_PROXY_IPS to the edge's address (docker-compose.yml does).
# Installs from uv.lock as the Makefile does (`uv sync --frozen`), without the dev/local extras.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    HOST=0.0.0.0 \
    PORT=8000 \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN pip install --no-cache-dir 'uv>=0.9'
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3
COPY src ./src
COPY supabase ./supabase
COPY alembic.ini ./
RUN uv sync --frozen --no-dev --no-editable --python /usr/local/bin/python3 \
    && useradd --system --uid 10001 --home-dir /app autopilot

USER autopilot
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/healthz', timeout=2)"
# The console script, not bare uvicorn: its protocol bounds what a pipelining client costs.
CMD ["autopilot-api", "serve"]

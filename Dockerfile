# The production image: the API only, against a hosted Supabase project
# (SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY). Nothing local is started in it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 \
    PORT=8000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY supabase ./supabase
COPY alembic ./alembic
COPY alembic.ini ./
RUN pip install --no-compile . \
    && useradd --system --uid 10001 --home-dir /app autopilot

USER autopilot
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/healthz', timeout=2)"
CMD ["python", "-m", "src", "serve"]

"""Every setting of the service, read from the environment and `.env`.

Each field is documented in `.env.example` (a test keeps the two in step).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _project_root() -> Path:
    """The source checkout the code runs from; the working directory for an installed wheel."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "supabase").is_dir():
        return checkout
    return Path.cwd()


PROJECT_ROOT = _project_root()

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SettingsError(RuntimeError):
    """A setting has a value the service cannot run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- data plane -------------------------------------------------------------------
    supabase_url: str | None = None
    # The project's secret key (sb_secret_…), or its legacy service_role JWT under the old name.
    supabase_secret_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("supabase_secret_key", "supabase_service_role_key"),
    )
    supabase_rest_url: str | None = None
    supabase_jwt_secret: str | None = None
    supabase_jwt_secrets: CommaList = Field(default_factory=list)
    supabase_jwks_url: str | None = None
    supabase_jwt_issuer: str | None = None
    supabase_jwt_issuer_check: bool = True
    db_schema: str = "autopilot"
    database_url: str | None = None
    local_mode: bool = False
    local_data_dir: Path = PROJECT_ROOT / ".local"
    postgrest_bin: Path | None = None
    tools_dir: Path = PROJECT_ROOT / ".tools"
    postgrest_max_restarts: int = Field(default=5, ge=0, le=100)
    data_plane_timeout_seconds: float = Field(default=10.0, gt=0)
    data_plane_transport: Literal["auto", "builtin", "httpx"] = "auto"
    # Below the idle timeouts that close a kept-alive connection on the other side: PostgREST's
    # own (Warp, 30 s), most load balancers' (60 s) and nginx's keepalive_timeout (75 s).
    data_plane_keepalive_seconds: float = Field(default=15.0, gt=0, le=25)
    data_plane_max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    idempotency_key_ttl_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    search_session_max_ids: int = Field(default=100_000, ge=1, le=1_000_000)

    # --- model ------------------------------------------------------------------------
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    # At most one retry: a failing model must not cost several calls inside one request.
    openai_max_retries: int = Field(default=0, ge=0, le=1)
    extraction_model: str = "gpt-4o-mini"
    extraction_timeout_seconds: float = Field(default=20.0, gt=0)
    extraction_max_retries: int = Field(default=1, ge=0, le=1)
    extraction_lease_seconds: int = Field(default=60, ge=5)
    agent_history_messages: int = Field(default=20, ge=2, le=200)
    agent_history_max_chars: int = Field(default=16_000, ge=1_000, le=400_000)
    agent_max_completion_tokens: int = Field(default=600, ge=16, le=16_384)
    extraction_conversation_max_chars: int = Field(default=12_000, ge=1_000, le=400_000)
    extraction_max_completion_tokens: int = Field(default=2_000, ge=64, le=16_384)

    # --- model spend ------------------------------------------------------------------
    model_budget_visitor_tokens_per_day: int = Field(default=300_000, ge=10_000)
    model_budget_client_ip_tokens_per_hour: int = Field(default=600_000, ge=10_000)
    model_budget_instance_tokens_per_day: int = Field(default=20_000_000, ge=10_000)
    model_budget_redis_prefix: str = Field(
        default="autopilot:model:", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9:_\-]+$"
    )
    model_input_usd_per_million_tokens: float = Field(default=0.15, ge=0)
    model_output_usd_per_million_tokens: float = Field(default=0.60, ge=0)

    # --- conversations ----------------------------------------------------------------
    message_max_chars: int = Field(default=4000, ge=1, le=100_000)
    message_rate_limit_per_minute: int = Field(default=20, ge=1)

    # --- lifecycle, live events, admin ------------------------------------------------
    recovery_window_days: int = Field(default=7, ge=1)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0)
    events_retry_ms: int = Field(default=3000, ge=0)
    events_max_streams: int = Field(default=2000, ge=1)
    events_max_streams_per_subject: int = Field(default=10, ge=1)
    events_max_streams_per_ip: int = Field(default=40, ge=1)
    events_anonymous_streams_share: float = Field(default=0.5, gt=0, le=1)
    events_max_stream_seconds: int = Field(default=600, ge=1, le=86_400)
    events_send_timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    events_cookie_name: str = Field(default="autopilot_events", pattern=r"^[A-Za-z0-9_\-]+$")
    event_ticket_ttl_seconds: int = Field(default=30, ge=5, le=600)
    audit_event_retention_days: int = Field(default=90, ge=1, le=3650)
    admin_active_minutes: int = Field(default=15, ge=1)

    # --- fair share: write limits and storage caps (README "Operations") ---------------
    write_limit_per_minute: int = Field(default=120, ge=1)
    conversation_create_limit_per_hour: int = Field(default=20, ge=1)
    conversation_create_limit_per_hour_per_ip: int = Field(default=30, ge=1)
    search_session_create_limit_per_hour: int = Field(default=10, ge=1)
    search_session_create_limit_per_hour_per_ip: int = Field(default=10, ge=1)
    conversations_max_per_owner: int = Field(default=10, ge=1, le=10_000)
    messages_max_per_conversation: int = Field(default=100, ge=1, le=100_000)
    search_sessions_max_per_owner: int = Field(default=3, ge=1, le=1_000)
    search_query_max_bytes: int = Field(default=8192, ge=256, le=1024 * 1024)
    idempotency_keys_max_per_caller: int = Field(default=100, ge=1, le=1_000_000)

    # --- scaling out ------------------------------------------------------------------
    redis_url: str | None = None

    # --- HTTP -------------------------------------------------------------------------
    cors_origins: CommaList = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    shutdown_timeout_seconds: int = Field(default=10, ge=0, le=300)
    keepalive_timeout_seconds: int = Field(default=75, ge=1, le=3600)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    access_log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)

    # --- anonymous sessions ----------------------------------------------------------
    session_cookie_name: str = Field(default="autopilot_session", pattern=r"^[A-Za-z0-9_\-]+$")
    session_cookie_secure: bool = True
    session_cookie_samesite: Literal["lax", "strict", "none"] = "lax"
    session_expiry_days: int = Field(default=30, ge=1, le=400)
    session_create_limit_per_hour: int = Field(default=30, ge=1)
    session_token_grace_seconds: int = Field(default=60, ge=1, le=3600)
    session_cleanup_interval_seconds: int = Field(default=3600, ge=0)
    session_cleanup_batch_size: int = Field(default=500, ge=1, le=10_000)
    session_metadata_max_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    session_write_limit_per_minute: int = Field(default=120, ge=1)
    trusted_proxy_ips: CommaList = Field(default_factory=list)

    @field_validator("cors_origins", "trusted_proxy_ips", "supabase_jwt_secrets", mode="before")
    @classmethod
    def _parse_comma_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("trusted_proxy_ips")
    @classmethod
    def _check_proxies(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or network") from exc
        return values

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*":
                raise ValueError(
                    "'*' is refused: with credentials Starlette would echo any origin; "
                    "list the SPA's origins explicitly"
                )
            if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return origins

    @field_validator("supabase_url", "supabase_rest_url", "supabase_jwks_url", "openai_base_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value else value

    @field_validator("supabase_jwt_issuer")
    @classmethod
    def _empty_issuer_is_unset(cls, value: str | None) -> str | None:
        # An empty value (e.g. `SUPABASE_JWT_ISSUER=` in a compose file) means the default,
        # never "no check": that takes SUPABASE_JWT_ISSUER_CHECK=false.
        return value or None

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if value != "localhost":
            try:
                ipaddress.ip_address(value)
            except ValueError as exc:
                raise ValueError("must be an IP address or 'localhost'") from exc
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.session_cookie_samesite == "none" and not self.session_cookie_secure:
            raise ValueError(
                "SESSION_COOKIE_SAMESITE=none requires SESSION_COOKIE_SECURE=true "
                "(browsers drop SameSite=None cookies that are not Secure)"
            )
        if self.agent_history_max_chars < self.message_max_chars:
            raise ValueError(
                "AGENT_HISTORY_MAX_CHARS must be at least MESSAGE_MAX_CHARS "
                "(the visitor's newest message always goes to the model)"
            )
        if self.extraction_conversation_max_chars < self.message_max_chars:
            raise ValueError(
                "EXTRACTION_CONVERSATION_MAX_CHARS must be at least MESSAGE_MAX_CHARS "
                "(the newest message always goes to extraction)"
            )
        if self.events_cookie_name == self.session_cookie_name:
            raise ValueError("EVENTS_COOKIE_NAME must differ from SESSION_COOKIE_NAME")
        if self.supabase_url and not self.supabase_secret_key:
            raise ValueError(
                "SUPABASE_URL is set but SUPABASE_SECRET_KEY is not (the project's secret key, "
                "sb_secret_…, or its legacy service_role key as SUPABASE_SERVICE_ROLE_KEY)"
            )
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT")
        if self.metrics_token is not None and len(self.metrics_token.get_secret_value()) < 16:
            raise ValueError("METRICS_TOKEN must be at least 16 characters")
        if self.supabase_jwt_issuer and not self.supabase_jwt_issuer_check:
            raise ValueError(
                "SUPABASE_JWT_ISSUER is set but SUPABASE_JWT_ISSUER_CHECK=false: unset one of them"
            )
        return self

    @property
    def session_cookie_max_age(self) -> int:
        """Cookie lifetime in seconds; derived so it can never disagree with the expiry."""
        return self.session_expiry_days * 24 * 60 * 60

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(value, strict=False) for value in self.trusted_proxy_ips]

    @property
    def jwt_secrets(self) -> list[str]:
        """Every HS256 secret accepted: the current one first, then those kept for rotation."""
        secrets = [self.supabase_jwt_secret or "", *self.supabase_jwt_secrets]
        return list(dict.fromkeys(secret for secret in secrets if secret))

    @property
    def jwt_issuer(self) -> str | None:
        """The `iss` access tokens must carry, or None when it is not checked.

        A hosted project is checked by default (`<SUPABASE_URL>/auth/v1`, what Supabase Auth
        puts in its tokens); local mode only when SUPABASE_JWT_ISSUER is set.
        """
        if not self.supabase_jwt_issuer_check:
            return None
        if self.supabase_jwt_issuer:
            return self.supabase_jwt_issuer
        if self.supabase_url and not self.local_mode:
            return f"{self.supabase_url}/auth/v1"
        return None

    @property
    def jwks_url(self) -> str | None:
        """Where the project publishes the public keys of its asymmetric (ES256/RS256)
        access tokens: SUPABASE_JWKS_URL, else `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`
        for a hosted project (what Supabase Auth serves); none in local mode."""
        if self.supabase_jwks_url:
            return self.supabase_jwks_url
        if self.supabase_url and not self.local_mode:
            return f"{self.supabase_url}/auth/v1/.well-known/jwks.json"
        return None

    @property
    def resolved_log_format(self) -> Literal["json", "console"]:
        """auto: readable lines for a person running `make run`, JSON for log collectors."""
        if self.log_format == "auto":
            return "console" if self.local_mode else "json"
        return self.log_format

    @property
    def uses_local_data_plane(self) -> bool:
        return self.local_mode and not self.supabase_url

    def require_data_plane(self) -> None:
        if not self.supabase_url and not self.local_mode:
            raise SettingsError(
                "SUPABASE_URL is not set and LOCAL_MODE is off: refusing to start. "
                "Set SUPABASE_URL and SUPABASE_SECRET_KEY for a hosted project, "
                "or run `make run` (LOCAL_MODE=true) for the local data plane."
            )

    def require_shared_state_for_workers(self) -> None:
        """Several workers need Redis: without it each keeps its own wake-ups, rate limits,
        stream caps and metrics, and a write through one reaches the streams held by
        another only at that stream's next heartbeat."""
        if self.workers > 1 and not self.redis_url:
            raise SettingsError(
                f"WORKERS={self.workers} without REDIS_URL: refusing to start. Each worker "
                "would keep its own live-event wake-ups, rate limits and stream caps. Set "
                "REDIS_URL (one Redis for all workers), or serve with WORKERS=1."
            )


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation failure into one message naming each setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()

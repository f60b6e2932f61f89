"""Settings: defaults, derived values, and start-up refusal of bad values."""

from __future__ import annotations

import re

import pytest

from autopilot_api.core.config import PROJECT_ROOT, Settings, SettingsError, load_settings


def _settings(**values: object) -> Settings:
    return load_settings(_env_file=None, **values)


class TestDefaults:
    def test_session_defaults_follow_the_seed_plan(self) -> None:
        settings = _settings()
        assert settings.session_cookie_name == "autopilot_session"
        assert settings.session_cookie_secure is True
        assert settings.session_cookie_samesite == "lax"
        assert settings.session_expiry_days == 30
        assert settings.session_cookie_max_age == 2_592_000

    def test_cookie_max_age_is_derived_from_expiry(self) -> None:
        assert _settings(session_expiry_days=7).session_cookie_max_age == 7 * 86_400

    def test_http_defaults(self) -> None:
        settings = _settings()
        assert (settings.host, settings.port, settings.max_body_bytes) == (
            "127.0.0.1",
            8000,
            1024 * 1024,
        )
        assert settings.openai_model == "gpt-4o-mini"

    def test_cors_origins_are_comma_separated(self) -> None:
        settings = _settings(cors_origins="https://a.example, https://b.example")
        assert settings.cors_origins == ["https://a.example", "https://b.example"]


class TestRefusals:
    @pytest.mark.parametrize(
        ("values", "named"),
        [
            ({"port": "eighty"}, "PORT"),
            ({"port": 70000}, "PORT"),
            ({"cors_origins": "*"}, "CORS_ORIGINS"),
            ({"cors_origins": "spa.example.com"}, "CORS_ORIGINS"),
            ({"session_cookie_samesite": "sometimes"}, "SESSION_COOKIE_SAMESITE"),
            ({"session_expiry_days": 0}, "SESSION_EXPIRY_DAYS"),
            ({"supabase_url": "not a url"}, "SUPABASE_URL"),
            ({"host": "example.com"}, "HOST"),
            ({"events_max_stream_seconds": 0}, "EVENTS_MAX_STREAM_SECONDS"),
            ({"events_cookie_name": "a;b"}, "EVENTS_COOKIE_NAME"),
        ],
    )
    def test_bad_value_fails_naming_the_setting(
        self, values: dict[str, object], named: str
    ) -> None:
        with pytest.raises(SettingsError, match=named):
            _settings(**values)

    def test_samesite_none_requires_secure(self) -> None:
        with pytest.raises(SettingsError, match="SESSION_COOKIE_SECURE"):
            _settings(session_cookie_samesite="none", session_cookie_secure=False)

    def test_the_stream_cookie_cannot_take_the_session_cookies_name(self) -> None:
        with pytest.raises(SettingsError, match="EVENTS_COOKIE_NAME"):
            _settings(events_cookie_name="autopilot_session")

    def test_supabase_url_without_key_is_refused(self) -> None:
        with pytest.raises(SettingsError, match="SUPABASE_SERVICE_ROLE_KEY"):
            _settings(supabase_url="https://x.supabase.co")

    def test_no_data_plane_and_no_local_mode_refuses_to_start(self) -> None:
        with pytest.raises(SettingsError, match="refusing to start"):
            _settings().require_data_plane()

    def test_local_mode_or_supabase_url_is_enough_to_start(self) -> None:
        _settings(local_mode=True).require_data_plane()
        _settings(
            supabase_url="https://x.supabase.co", supabase_service_role_key="k"
        ).require_data_plane()


HOSTED = {
    "supabase_url": "https://abcdefghijklmnopqrst.supabase.co",
    "supabase_service_role_key": "k",
}


class TestAccessTokenSettings:
    def test_a_hosted_project_checks_the_issuer_its_auth_puts_in_tokens(self) -> None:
        assert _settings(**HOSTED).jwt_issuer == "https://abcdefghijklmnopqrst.supabase.co/auth/v1"

    def test_a_trailing_slash_on_the_url_does_not_change_the_issuer(self) -> None:
        settings = _settings(**{**HOSTED, "supabase_url": HOSTED["supabase_url"] + "/"})
        assert settings.jwt_issuer == "https://abcdefghijklmnopqrst.supabase.co/auth/v1"

    def test_an_explicit_issuer_wins(self) -> None:
        settings = _settings(**HOSTED, supabase_jwt_issuer="https://auth.example.com/auth/v1")
        assert settings.jwt_issuer == "https://auth.example.com/auth/v1"

    def test_an_empty_issuer_means_the_default_not_off(self) -> None:
        settings = _settings(**HOSTED, supabase_jwt_issuer="")
        assert settings.jwt_issuer == "https://abcdefghijklmnopqrst.supabase.co/auth/v1"

    def test_the_check_is_turned_off_only_on_purpose(self) -> None:
        assert _settings(**HOSTED, supabase_jwt_issuer_check=False).jwt_issuer is None

    def test_turning_the_check_off_while_naming_an_issuer_is_refused(self) -> None:
        with pytest.raises(SettingsError, match="SUPABASE_JWT_ISSUER_CHECK"):
            _settings(
                **HOSTED, supabase_jwt_issuer="https://x/auth/v1", supabase_jwt_issuer_check=False
            )

    def test_local_mode_checks_the_issuer_only_when_set(self) -> None:
        assert _settings(local_mode=True).jwt_issuer is None
        assert (
            _settings(
                local_mode=True, supabase_jwt_issuer="http://127.0.0.1:54321/auth/v1"
            ).jwt_issuer
            == "http://127.0.0.1:54321/auth/v1"
        )

    def test_secrets_for_rotation_are_comma_separated_after_the_current_one(self) -> None:
        settings = _settings(
            supabase_jwt_secret="current", supabase_jwt_secrets="previous, current,next"
        )
        assert settings.supabase_jwt_secrets == ["previous", "current", "next"]
        assert settings.jwt_secrets == ["current", "previous", "next"]

    def test_no_secret_at_all_is_an_empty_list(self) -> None:
        assert _settings().jwt_secrets == []


class TestProjectKeys:
    """A project created today: a secret key, asymmetric signing keys, no JWT secret."""

    def test_the_secret_key_is_read_from_either_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SUPABASE_URL", HOSTED["supabase_url"])
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "eyJ.legacy.key")
        assert _settings().supabase_secret_key == "eyJ.legacy.key"
        monkeypatch.setenv("SUPABASE_SECRET_KEY", "sb_secret_abc")
        # The new name wins when both are set.
        assert _settings().supabase_secret_key == "sb_secret_abc"
        monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY")
        assert _settings().supabase_secret_key == "sb_secret_abc"

    def test_a_missing_key_names_the_new_setting(self) -> None:
        with pytest.raises(SettingsError, match="SUPABASE_URL is set but SUPABASE_SECRET_KEY"):
            _settings(supabase_url=HOSTED["supabase_url"])

    def test_the_jwks_is_found_from_the_project_url(self) -> None:
        settings = _settings(**HOSTED)
        assert settings.jwks_url == (
            "https://abcdefghijklmnopqrst.supabase.co/auth/v1/.well-known/jwks.json"
        )
        assert settings.supabase_jwt_secret is None
        assert settings.jwt_secrets == []

    def test_an_explicit_jwks_url_wins(self) -> None:
        settings = _settings(**HOSTED, supabase_jwks_url="https://auth.example.com/jwks/")
        assert settings.jwks_url == "https://auth.example.com/jwks"

    def test_local_mode_has_no_jwks(self) -> None:
        assert _settings(local_mode=True).jwks_url is None


class TestEnvExample:
    def test_every_setting_is_documented_in_env_example(self) -> None:
        text = (PROJECT_ROOT / ".env.example").read_text()
        documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
        expected = {name.upper() for name in Settings.model_fields}
        assert expected - documented == set()
        assert documented - expected == set()

    def test_every_documented_setting_has_a_comment_line_above(self) -> None:
        lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
        for index, line in enumerate(lines):
            if re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", line):
                assert index > 0, line
                assert lines[index - 1].startswith("# "), line


class TestReadmeTable:
    def test_readme_configuration_table_matches_settings(self) -> None:
        from autopilot_api.core.settings_doc import README, readme_with_table

        text = README.read_text()
        assert readme_with_table(text) == text, "run: python -m src.core.settings_doc"

    def test_table_lists_every_setting(self) -> None:
        from autopilot_api.core.settings_doc import settings_table

        table = settings_table()
        for name in Settings.model_fields:
            assert f"| `{name.upper()}` |" in table


class TestMetricsSettings:
    def test_metrics_are_closed_by_default(self) -> None:
        settings = _settings()
        assert settings.metrics_token is None
        assert settings.metrics_port is None

    def test_metrics_port_must_differ_from_the_api_port(self) -> None:
        with pytest.raises(SettingsError, match="METRICS_PORT must differ from PORT"):
            _settings(port=8000, metrics_port=8000)

    def test_a_short_metrics_token_is_refused(self) -> None:
        with pytest.raises(SettingsError, match="METRICS_TOKEN must be at least 16"):
            _settings(metrics_token="short")

    def test_the_token_stays_out_of_the_settings_repr(self) -> None:
        token = "a-metrics-token-of-32-characters"
        assert token not in repr(_settings(metrics_token=token))

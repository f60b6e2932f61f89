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

"""Who may read /metrics on the API port (core.metrics.check_scrape_access)."""

from __future__ import annotations

import pytest

from autopilot_api.core.config import Settings, load_settings
from autopilot_api.core.errors import NotFoundError, UnauthorizedError
from autopilot_api.core.metrics import check_scrape_access

TOKEN = "a-metrics-token-of-32-characters"


def _settings(**values: object) -> Settings:
    return load_settings(_env_file=None, **values)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_local_mode_opens_it_to_the_loopback(host: str) -> None:
    check_scrape_access(settings=_settings(local_mode=True), client_host=host, authorization="")


@pytest.mark.parametrize("host", ["10.0.0.5", "::ffff:10.0.0.5", "2001:db8::1", None, "testclient"])
def test_local_mode_elsewhere_is_404(host: str | None) -> None:
    with pytest.raises(NotFoundError):
        check_scrape_access(settings=_settings(local_mode=True), client_host=host, authorization="")


def test_production_without_a_token_is_404_even_from_the_loopback() -> None:
    with pytest.raises(NotFoundError):
        check_scrape_access(settings=_settings(), client_host="127.0.0.1", authorization="")


@pytest.mark.parametrize(
    "authorization", ["", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", TOKEN]
)
def test_a_missing_or_wrong_token_is_401(authorization: str) -> None:
    with pytest.raises(UnauthorizedError) as caught:
        check_scrape_access(
            settings=_settings(metrics_token=TOKEN),
            client_host="203.0.113.9",
            authorization=authorization,
        )
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}"])
def test_the_token_opens_it(authorization: str) -> None:
    check_scrape_access(
        settings=_settings(metrics_token=TOKEN),
        client_host="203.0.113.9",
        authorization=authorization,
    )

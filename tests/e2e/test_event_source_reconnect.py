"""A browser's own EventSource (Chromium's, not a library) loses no event when the server
drops it: opened from the SPA's origin with credentials, for an anonymous visitor (session
cookie) and for a signed-in user (a ticket in the URL). The server ends every stream after
EVENTS_MAX_STREAM_SECONDS; the browser reconnects by itself to the URL it was opened with,
sending Last-Event-ID and its cookies. Writes land while it is disconnected. What the page
received must be the subject's whole history from the moment it connected: strictly
increasing, nothing missing, nothing twice."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from autopilot_api.core.security import mint_user_token
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import make_settings, plane_info
from tests.fixtures.browser import BLANK_PAGE, launch_chromium, start_spa_api
from tests.fixtures.factories import token_issuer
from tests.fixtures.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a real Chromium

MAX_STREAM_SECONDS = 2
RETRY_MS = 2000
DROPS = 3
WRITES = DROPS * 2 + (DROPS - 1) + 1  # two in each gap, one on each later stream
WAIT_MS = 20_000

# Every event name the stream sends (EventSource has no wildcard listener).
PROBE_JS = """
(url) => {
  const names = ["created", "updated", "phase_changed", "completed", "claimed",
                 "extraction.completed", "deleted", "expired"];
  const rec = { ids: [], opens: 0, drops: 0 };
  const source = new EventSource(url, { withCredentials: true });
  for (const name of names) {
    source.addEventListener(name, (event) => rec.ids.push(Number(event.lastEventId)));
  }
  source.onopen = () => { rec.opens += 1; };
  source.onerror = () => { rec.drops += 1; };
  window.rec = rec;
  window.source = source;
}
"""


@pytest.fixture(scope="module")
def api(
    data_plane: LocalDataPlane, spa_origin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = start_spa_api(
        data_plane,
        spa_origin,
        tmp_path_factory.mktemp("event-source"),
        EVENTS_MAX_STREAM_SECONDS=str(MAX_STREAM_SECONDS),
        EVENTS_RETRY_MS=str(RETRY_MS),
    )
    try:
        yield service
    finally:
        service.stop()


def history(plane: LocalDataPlane, column: str, subject: str) -> list[int]:
    """The subject's audit trail as stored: what the stream must deliver."""
    info = plane_info(plane)
    key = info.service_role_key
    response = httpx.get(
        f"{info.rest_url}/session_events",
        params={column: f"eq.{subject}", "select": "id", "order": "id"},
        headers={"apikey": key, "Authorization": f"Bearer {key}", "Accept-Profile": "autopilot"},
    )
    response.raise_for_status()
    return [int(row["id"]) for row in response.json()]


def wait_for_opens(page: Page, opens: int) -> None:
    """Until the browser has (re)connected `opens` times; fails at once if it gave up."""
    page.wait_for_function(
        f"window.rec.opens === {opens} || window.source.readyState === EventSource.CLOSED",
        timeout=WAIT_MS,
    )
    state = page.evaluate("({ready: window.source.readyState, rec: window.rec})")
    assert state["ready"] != 2, f"the EventSource gave up for good: {state['rec']}"


def drop_and_write_three_times(page: Page, write: Callable[[], None]) -> None:
    """Three server-side drops with writes in each gap; writes on the streams too, except
    the first (a stream dropped before its first event must resume all the same)."""
    wait_for_opens(page, 1)
    for drop in range(1, DROPS + 1):
        if drop > 1:
            write()
        page.wait_for_function(f"window.rec.drops === {drop}", timeout=WAIT_MS)
        write()
        write()
        # Still not reconnected: those writes happened while the browser was away.
        assert page.evaluate("[window.rec.opens, window.source.readyState]") == [drop, 0]
        wait_for_opens(page, drop + 1)
    write()


def received(page: Page, expected: list[int]) -> list[int]:
    """What the page received, after one more drop and reconnect with no writes (a
    duplicate replayed on reconnect would show), once it has as many as expected."""
    wait_for_opens(page, DROPS + 2)
    with contextlib.suppress(PlaywrightTimeoutError):
        page.wait_for_function(f"window.rec.ids.length >= {len(expected)}", timeout=5_000)
    page.wait_for_timeout(500)
    ids: list[int] = page.evaluate("window.rec.ids")
    return ids


def test_anonymous_visitors_event_source_reconnects_with_its_cookie_and_misses_nothing(
    api: ServiceProcess, spa_origin: str, data_plane: LocalDataPlane, chromium: str
) -> None:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{spa_origin}{BLANK_PAGE}")  # EventSources run from the SPA's origin
        status = page.evaluate(
            "async (api) => (await fetch(api + '/api/v1/sessions',"
            " {method: 'POST', credentials: 'include'})).status",
            api.base_url,
        )
        assert status == 201
        cookie = next(c for c in context.cookies() if c["name"] == "autopilot_session")
        headers = {"Cookie": f"autopilot_session={cookie['value']}", "Origin": spa_origin}
        session_id = httpx.get(f"{api.base_url}/api/v1/sessions/me", headers=headers).json()["id"]
        before = history(data_plane, "session_id", session_id)
        writes = iter(range(1000))

        def write() -> None:
            response = httpx.put(
                f"{api.base_url}/api/v1/sessions/me",
                headers=headers,
                json={"timeframe": f"t{next(writes)}"},
            )
            assert response.status_code == 200, response.text

        page.evaluate(PROBE_JS, f"{api.base_url}/api/v1/events")
        drop_and_write_three_times(page, write)
        expected = [
            i for i in history(data_plane, "session_id", session_id) if i > max(before, default=0)
        ]
        got = received(page, expected)
        browser.close()

    assert len(expected) == WRITES
    assert got == expected, f"received {len(got)} events, history has {len(expected)}"


def test_signed_in_users_event_source_reconnects_with_ticket_and_cookie_and_misses_nothing(
    api: ServiceProcess, spa_origin: str, data_plane: LocalDataPlane, chromium: str
) -> None:
    user_id = uuid.uuid4()
    token = mint_user_token(
        plane_info(data_plane).jwt_secret,
        issuer=token_issuer(make_settings(data_plane)),
        user_id=user_id,
        email="event-source@example.test",
    )
    headers = {"Authorization": f"Bearer {token}"}
    writes = iter(range(1000))

    def write() -> None:
        response = httpx.put(
            f"{api.base_url}/api/v1/discovery",
            headers=headers,
            json={"timeframe": f"t{next(writes)}"},
        )
        assert response.status_code in (200, 201), response.text

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{spa_origin}{BLANK_PAGE}")  # EventSources run from the SPA's origin
        ticket = page.evaluate(
            "async ([api, token]) => (await (await fetch(api + '/api/v1/events/ticket',"
            " {method: 'POST', headers: {Authorization: 'Bearer ' + token}})).json()).ticket",
            [api.base_url, token],
        )
        url = f"{api.base_url}/api/v1/events?ticket={ticket}"
        page.evaluate(PROBE_JS, url)
        drop_and_write_three_times(page, write)
        expected = history(data_plane, "profile_id", str(user_id))
        got = received(page, expected)
        (stream_cookie,) = [c for c in context.cookies() if c["name"] == "autopilot_events"]
        assert page.evaluate("window.source.url") == url
        browser.close()

    assert len(expected) == WRITES + 1  # the first write also created the profile
    assert got == expected, f"received {len(got)} events, history has {len(expected)}"
    assert stream_cookie["path"] == "/api/v1/events"
    assert stream_cookie["httpOnly"] is True
    assert stream_cookie["value"] not in url

"""Small API edges schemathesis found (issue 21, item 7), through HTTP: what the OpenAPI
document promises and what the service does agree."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from typing import Any

import httpx
import pytest

from autopilot_api.core.config import Settings
from tests.conftest import browser_client, make_settings, running_app
from tests.fixtures.dataplane import LocalDataPlane
from tests.fixtures.factories import make_user, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
SEARCH = "/api/v1/search-sessions"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def fields_of(response: httpx.Response) -> list[str]:
    error = error_of(response, 422)
    assert error["code"] == "validation_error", error
    return [detail["field"] for detail in error["details"]]


async def new_conversation(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/v1/conversations", json={})
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def fresh_conversation(client: httpx.AsyncClient) -> tuple[str, str]:
    """A new visitor's conversation: its id and the path messages are posted to."""
    await start_session(client)
    conversation_id = await new_conversation(client)
    return conversation_id, f"/api/v1/conversations/{conversation_id}/messages"


async def stored_user_messages(rest: httpx.AsyncClient, conversation_id: str) -> list[str]:
    response = await rest.get(
        "/messages",
        params={
            "conversation_id": f"eq.{conversation_id}",
            "role": "eq.user",
            "order": "created_at",
        },
    )
    response.raise_for_status()
    return [row["content"] for row in response.json()]


@ASYNC
class TestWholeNumberFloats:
    """JSON Schema's `integer` admits 20.0: so does every integer field of a body."""

    async def test_a_question_index_written_as_a_float_is_stored_as_an_integer(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json={"currentQuestionIndex": 2.0})
        assert response.status_code == 200, response.text
        assert response.json()["currentQuestionIndex"] == 2
        read = await client.get("/api/v1/sessions/me")
        assert read.json()["currentQuestionIndex"] == 2
        assert "2.0" not in read.text.replace(" ", "").split('"currentQuestionIndex":')[1][:4]

    @pytest.mark.parametrize("value", ["2.5", '"2"', "true", "1e400"])
    async def test_what_is_not_a_whole_number_is_still_refused(
        self, client: httpx.AsyncClient, value: str
    ) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            content=f'{{"currentQuestionIndex": {value}}}',
            headers={"Content-Type": "application/json"},
        )
        assert fields_of(response) == ["currentQuestionIndex"]

    async def test_ids_and_batch_sizes_written_as_floats(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        created = await client.post(
            SEARCH,
            json={"searchQuery": {"q": "x"}, "companies": ["A", "B", "C"], "batchSize": 2.0},
        )
        assert created.status_code == 201, created.text
        assert created.json()["batchSize"] == 2
        assert created.json()["totalBatches"] == 2
        search_id = created.json()["sessionId"]
        added = await client.post(
            f"{SEARCH}/{search_id}/discovered", json={"employeeIds": [7.0, 8, 9.0]}
        )
        assert added.status_code == 200, added.text
        assert added.json()["added"] == 3
        fetched = await client.post(
            f"{SEARCH}/{search_id}/fetched", json={"employeeIds": [7.0], "cacheHits": 1.0}
        )
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["marked"] == 1

    async def test_a_float_id_past_javascripts_safe_range_is_refused(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        created = await client.post(SEARCH, json={"searchQuery": {}, "companies": ["A"]})
        search_id = created.json()["sessionId"]
        response = await client.post(
            f"{SEARCH}/{search_id}/discovered", json={"employeeIds": [2.0**53]}
        )
        assert fields_of(response) == ["employeeIds[0]"]


@ASYNC
class TestMessagePageCursor:
    """`before` is a timestamp the service reads itself: a date that does not exist is the
    client's 422, not a round trip that Postgres refuses."""

    @pytest.mark.parametrize(
        "before",
        [
            "0000-00-00T00:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-01-01T24:61:00Z",
            "2026-01-01T00:00:00+25:00",
        ],
    )
    async def test_a_timestamp_that_does_not_exist_is_refused(
        self, client: httpx.AsyncClient, before: str
    ) -> None:
        await start_session(client)
        conversation_id = await new_conversation(client)
        response = await client.get(
            f"/api/v1/conversations/{conversation_id}", params={"before": before}
        )
        assert fields_of(response) == ["query before"]
        assert response.json()["error"]["details"][0]["msg"] == (
            "before must be an ISO 8601 timestamp like 2026-01-31T12:00:00Z"
        )

    async def test_the_next_before_of_a_page_reads_the_page_before(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        conversation_id = await new_conversation(client)
        for text in ("one", "two", "three"):
            sent = await client.post(
                f"/api/v1/conversations/{conversation_id}/messages", json={"content": text}
            )
            assert sent.status_code == 201, sent.text
        page = await client.get(f"/api/v1/conversations/{conversation_id}", params={"limit": 2})
        assert page.status_code == 200, page.text
        cursor = page.json()["nextBefore"]
        assert cursor
        older = await client.get(
            f"/api/v1/conversations/{conversation_id}", params={"limit": 2, "before": cursor}
        )
        assert older.status_code == 200, older.text
        newest_older = older.json()["messages"][-1]["createdAt"]
        assert newest_older < page.json()["messages"][0]["createdAt"]


def _node_accepts(pattern: str, texts: list[str]) -> list[bool]:
    """What a JavaScript client (Node's RegExp, as ajv compiles a JSON Schema pattern)
    makes of the pattern the OpenAPI document publishes."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    script = (
        "const [pattern, texts] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const re = new RegExp(pattern, 'u');"
        "process.stdout.write(JSON.stringify(texts.map((t) => re.test(t))));"
    )
    result = subprocess.run(
        [node, "-e", script],
        input=json.dumps([pattern, texts]),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    accepted: list[bool] = json.loads(result.stdout)
    return accepted


# Every character some engine counts as white space, and a few that none does.
SPACE_LIKE = [
    *"\t\n\x0b\x0c\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u180e",
    *(chr(code) for code in range(0x2000, 0x200C)),
    *"\u2028\u2029\u202f\u205f\u3000\ufeff",
]
PRINTABLE = ["a", "x\x01", "\u200d", "é"]


@ASYNC
class TestBlankMessages:
    async def test_the_published_pattern_and_the_service_agree_on_blank(
        self, client: httpx.AsyncClient
    ) -> None:
        """A JavaScript client validating against /openapi.json and the service agree, for
        each space-like character: a message of it alone is blank for both, or for neither."""
        document = (await client.get("/openapi.json")).json()
        content = document["components"]["schemas"]["MessageCreate"]["properties"]["content"]
        pattern = content["pattern"]
        texts = [*SPACE_LIKE, *PRINTABLE, " \x1f a "]
        published = _node_accepts(pattern, texts)
        await start_session(client)
        conversation_id = await new_conversation(client)
        disagreements = []
        for text, accepted_by_schema in zip(texts, published, strict=True):
            response = await client.post(
                f"/api/v1/conversations/{conversation_id}/messages", json={"content": text}
            )
            assert response.status_code in (201, 422), response.text
            if (response.status_code == 201) != accepted_by_schema:
                disagreements.append((hex(ord(text[0])), accepted_by_schema, response.status_code))
        assert disagreements == []
        assert published[SPACE_LIKE.index("\x1f")] is False
        assert all(published[len(SPACE_LIKE) :])

    async def test_a_unit_separator_alone_is_refused_as_blank(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        conversation_id = await new_conversation(client)
        response = await client.post(
            f"/api/v1/conversations/{conversation_id}/messages", json={"content": "\u001f"}
        )
        assert fields_of(response) == ["content"]
        assert response.json()["error"]["details"][0]["msg"] == "content must not be blank"
        assert await stored_user_messages(rest, conversation_id) == []


@ASYNC
class TestMessageIdempotencyKey:
    async def test_a_key_reused_with_other_text_is_refused_and_the_first_turn_stands(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        conversation_id, path = await fresh_conversation(client)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first = await client.post(path, json={"content": "We run two shifts"}, headers=key)
        assert first.status_code == 201, first.text
        reused = await client.post(path, json={"content": "Three shifts, actually"}, headers=key)
        error = error_of(reused, 422)
        assert error["code"] == "idempotency_key_reused"
        assert error["category"] == "user_fixable"
        assert await stored_user_messages(rest, conversation_id) == ["We run two shifts"]

    async def test_the_same_key_and_text_replays_the_first_turn(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        conversation_id, path = await fresh_conversation(client)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first = await client.post(path, json={"content": "We run two shifts"}, headers=key)
        again = await client.post(path, json={"content": "We run two shifts"}, headers=key)
        assert again.status_code == 201, again.text
        assert again.json()["replayed"] is True
        assert again.json()["assistantMessage"]["id"] == first.json()["assistantMessage"]["id"]
        assert await stored_user_messages(rest, conversation_id) == ["We run two shifts"]

    async def test_concurrent_retries_with_other_text_store_one_message(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        conversation_id, path = await fresh_conversation(client)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        answers = await asyncio.gather(
            *(client.post(path, json={"content": f"text {n}"}, headers=key) for n in range(4))
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses.count(201) == 1, [a.text for a in answers]
        assert all(
            answer.json()["error"]["code"] == "idempotency_key_reused"
            for answer in answers
            if answer.status_code != 201
        )
        assert len(await stored_user_messages(rest, conversation_id)) == 1


@ASYNC
class TestStartingWithALiveCookie:
    """POST /sessions with a valid cookie resumes the session under a new token (no session
    fixation); the old token keeps working for SESSION_TOKEN_GRACE_SECONDS, so requests
    already under way with it, or a second tab, do not lose the session."""

    async def test_the_session_is_resumed_under_a_new_token(
        self, client: httpx.AsyncClient
    ) -> None:
        old = await start_session(client)
        first = await client.get("/api/v1/sessions/me")
        resumed = await client.post("/api/v1/sessions")
        assert resumed.status_code == 200, resumed.text
        new = resumed.cookies.get(COOKIE)
        assert new
        assert new != old
        assert resumed.json()["id"] == first.json()["id"]
        client.cookies.set(COOKIE, new)
        assert (await client.get("/api/v1/sessions/me")).json()["id"] == first.json()["id"]

    async def test_the_old_token_still_works_within_the_grace(
        self, app: Any, rest: httpx.AsyncClient
    ) -> None:
        async with browser_client(app) as browser:
            old = await start_session(browser)
            resumed = await browser.post("/api/v1/sessions")
            assert resumed.status_code == 200
        async with browser_client(app, cookies={COOKIE: old}) as late:
            response = await late.put("/api/v1/sessions/me", json={"currentQuestionIndex": 1})
            assert response.status_code == 200, response.text
            assert COOKIE not in response.cookies  # nothing cleared, nothing re-issued
            again = await late.post("/api/v1/sessions")
            assert again.status_code == 200
            assert COOKIE not in again.cookies  # a second tab: the first one's token stands

    async def test_two_tabs_resuming_at_once_keep_one_session(self, app: Any) -> None:
        async with browser_client(app) as browser:
            await start_session(browser)
            session_id = (await browser.get("/api/v1/sessions/me")).json()["id"]
            answers = await asyncio.gather(*(browser.post("/api/v1/sessions") for _ in range(3)))
            assert [answer.status_code for answer in answers] == [200, 200, 200]
            issued = [answer.cookies.get(COOKIE) for answer in answers if COOKIE in answer.cookies]
            assert len(issued) >= 1
            for token in issued:
                async with browser_client(app, cookies={COOKIE: token}) as tab:
                    read = await tab.get("/api/v1/sessions/me")
                    assert read.json()["id"] == session_id

    async def test_a_bearer_beside_the_cookie_resumes_and_rotates_it_too(
        self, app: Any, settings: Settings
    ) -> None:
        user = make_user(settings)
        async with browser_client(app) as browser:
            old = await start_session(browser)
            resumed = await browser.post(
                "/api/v1/sessions", headers={"Authorization": f"Bearer {user.token}"}
            )
            assert resumed.status_code == 200, resumed.text
            assert resumed.cookies.get(COOKIE) not in (None, old)
            claimed = await browser.post(
                "/api/v1/sessions/claim", headers={"Authorization": f"Bearer {user.token}"}
            )
            assert claimed.status_code == 200, claimed.text

    async def test_the_rotation_is_in_the_audit_trail(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        session_id = (await client.get("/api/v1/sessions/me")).json()["id"]
        await client.post("/api/v1/sessions")
        events = await rest.get(
            "/session_events", params={"session_id": f"eq.{session_id}", "order": "id"}
        )
        events.raise_for_status()
        assert [row["event_type"] for row in events.json()][-1] == "token_rotated"


@pytest.mark.asyncio(loop_scope="session")
async def test_the_old_token_dies_after_the_grace(data_plane: LocalDataPlane) -> None:
    settings = make_settings(data_plane, session_token_grace_seconds=1)
    async with running_app(settings) as application:
        async with browser_client(application) as browser:
            old = await start_session(browser)
            resumed = await browser.post("/api/v1/sessions")
            new = resumed.cookies.get(COOKIE)
            assert new
        await asyncio.sleep(1.5)
        async with browser_client(application, cookies={COOKIE: old}) as late:
            assert (await late.get("/api/v1/sessions/me")).status_code == 404
        async with browser_client(application, cookies={COOKIE: new}) as current:
            assert (await current.get("/api/v1/sessions/me")).status_code == 200

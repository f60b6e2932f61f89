"""Conversations, the agent and profile extraction through HTTP; the model is the local
OpenAI-compatible server (the openai SDK runs for real over HTTP)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.discovery.catalogue import (
    QUESTION_BY_KEY,
    QUESTION_KEYS_IN_ORDER,
    ROI_INPUTS,
)
from autopilot_api.local.dataplane import LocalDataPlane
from autopilot_api.services.agent_prompts import RECORD_INTRO
from autopilot_api.services.opening import OPENING_DONE
from tests.conftest import browser_client, make_settings, running_app
from tests.fixtures.factories import SPA_ORIGIN, answer, make_user, start_session, valid_value
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.fixtures.processes import ServiceProcess, start_service

ASYNC = pytest.mark.asyncio(loop_scope="session")


async def new_conversation(http: httpx.AsyncClient, **headers: str) -> str:
    response = await http.post("/api/v1/conversations", json={}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def say(
    http: httpx.AsyncClient, conversation_id: str, text: str, **headers: str
) -> httpx.Response:
    return await http.post(
        f"/api/v1/conversations/{conversation_id}/messages", json={"content": text}, headers=headers
    )


def parse_sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def extraction_json(answers: list[dict[str, Any]], **roi: float) -> dict[str, Any]:
    roi_inputs = {
        key: roi.get(key)
        for key in (
            "laborRate",
            "utilization",
            "maintenanceFactor",
            "manualMonthlySpend",
            "manualMonthlyHours",
        )
    }
    # The strict schema's shape: every question key present, null when nothing is new.
    by_key: dict[str, Any] = dict.fromkeys(QUESTION_KEYS_IN_ORDER)
    for given in answers:
        by_key[given["key"]] = {
            "value": given["value"],
            "evidence": given.get("evidence"),
            "confidence": given.get("confidence", 0.9),
        }
    return {"answers": by_key, "roi_inputs": roi_inputs, "confidence": 0.8}


def record_sent(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The visitor's record as the chat call carried it: the JSON block of the first user
    message, right after the system message."""
    assert messages[1]["role"] == "user"
    content = messages[1]["content"]
    assert content.startswith(RECORD_INTRO)
    assert content.endswith("\n```")
    record: dict[str, Any] = json.loads(content[len(RECORD_INTRO) : -len("\n```")])
    return record


def extraction_conversation(prompt: str) -> list[dict[str, str]]:
    """The conversation as the extraction prompt quoted it (a JSON array)."""
    part = prompt.split("oldest first):\n", 1)[1].split("\n\nReturn the answers", 1)[0]
    conversation: list[dict[str, str]] = json.loads(part)
    return conversation


@pytest.fixture
def model(openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """Chat requests get text, extraction requests (response_format) an empty extraction."""
    openai_server.responder = lambda request: (
        Reply(json_content=extraction_json([])) if "response_format" in request else None
    )
    return openai_server


def online_settings(plane: LocalDataPlane, fake: FakeOpenAIServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": "test-key",
        "openai_base_url": fake.base_url,
        "openai_max_retries": 0,
        "openai_timeout_seconds": 3,
        "extraction_timeout_seconds": 3,
        "extraction_max_retries": 0,
    }
    values.update(overrides)
    return make_settings(plane, **values)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def online_app(
    data_plane: LocalDataPlane, fake_openai: FakeOpenAIServer
) -> AsyncIterator[FastAPI]:
    async with running_app(online_settings(data_plane, fake_openai)) as application:
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def online(online_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_client(online_app) as http:
        yield http


@ASYNC
class TestConversationsOwnership:
    async def test_first_write_creates_session_and_session_owned_conversation(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post("/api/v1/conversations", json={"title": "Plant A"})
        assert response.status_code == 201
        assert response.cookies.get("autopilot_session")
        body = response.json()
        assert body["owner"] == "session"
        assert body["title"] == "Plant A"
        session = (await client.get("/api/v1/sessions/me")).json()
        assert session["conversationId"] == body["id"]

    async def test_signed_in_user_owns_what_they_create(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        conversation_id = await new_conversation(client, **user.headers)
        listed = (await client.get("/api/v1/conversations", headers=user.headers)).json()
        assert [c["id"] for c in listed] == [conversation_id]
        assert listed[0]["owner"] == "user"

    async def test_someone_elses_conversation_is_404(
        self, client: httpx.AsyncClient, other_client: httpx.AsyncClient, settings: Settings
    ) -> None:
        conversation_id = await new_conversation(client)
        await start_session(other_client)
        assert (
            await other_client.get(f"/api/v1/conversations/{conversation_id}")
        ).status_code == 404
        assert (await say(other_client, conversation_id, "hi")).status_code == 404
        stranger = make_user(settings)
        response = await client.get(
            f"/api/v1/conversations/{conversation_id}", headers=stranger.headers
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "conversation_not_found"

    async def test_list_without_session_is_empty_and_creates_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/api/v1/conversations")
        assert response.json() == []
        assert "set-cookie" not in response.headers

    async def test_conversations_move_to_the_profile_on_claim(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        conversation_id = await new_conversation(client)
        await say(client, conversation_id, "hello")
        user = make_user(settings)
        claimed = await client.post("/api/v1/sessions/claim", headers=user.headers)
        assert claimed.json()["conversationsMoved"] == 1
        mine = await client.get(f"/api/v1/conversations/{conversation_id}", headers=user.headers)
        assert mine.status_code == 200
        assert mine.json()["owner"] == "user"
        assert len(mine.json()["messages"]) == 3  # the opening, "hello", the reply

    async def test_messages_page_newest_first(self, client: httpx.AsyncClient) -> None:
        conversation_id = await new_conversation(client)
        for text in ("hello", "warehouse", "50000"):
            assert (await say(client, conversation_id, text)).status_code == 201
        page = (await client.get(f"/api/v1/conversations/{conversation_id}?limit=4")).json()
        contents = [m["content"] for m in page["messages"]]
        assert len(contents) == 4
        assert (contents[0], contents[2]) == ("warehouse", "50000")
        assert [m["role"] for m in page["messages"]] == ["user", "assistant"] * 2
        older = (
            await client.get(
                f"/api/v1/conversations/{conversation_id}",
                params={"limit": 4, "before": page["nextBefore"]},
            )
        ).json()
        assert [m["role"] for m in older["messages"]] == ["assistant", "user", "assistant"]
        assert older["messages"][1]["content"] == "hello"
        assert older["nextBefore"] is None


@ASYNC
class TestOfflineAgent:
    async def test_offline_mode_walks_the_first_five_questions(
        self, client: httpx.AsyncClient
    ) -> None:
        created = await client.post("/api/v1/conversations", json={})
        conversation_id = created.json()["id"]
        replies = ["warehouse", "120000", "Columbus, Ohio", "2", "16"]
        asked = [created.json()["messages"][0]["content"]]
        for text in replies:
            response = await say(client, conversation_id, text)
            assert response.status_code == 201
            asked.append(response.json()["assistantMessage"]["content"])
        session = (await client.get("/api/v1/sessions/me")).json()
        assert set(session["answers"]) == set(QUESTION_KEYS_IN_ORDER[:5])
        assert session["answers"]["facility_type"]["value"] == "warehouse / distribution center"
        assert session["answers"]["facility_size_sqft"]["value"] == 120000
        assert all(a["source"] == "user" for a in session["answers"].values())
        assert asked[0].endswith("?")
        assert len(set(asked)) == 6

    async def test_offline_mode_moves_to_roi_then_greenlight(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        everything_but_last = {key: answer(valid_value(key)) for key in QUESTION_KEYS_IN_ORDER[:-1]}
        await client.put("/api/v1/sessions/me", json={"answers": everything_but_last})
        conversation_id = await new_conversation(client)
        # the opening asked the last question
        await say(client, conversation_id, str(valid_value(QUESTION_KEYS_IN_ORDER[-1])))
        assert (await client.get("/api/v1/sessions/me")).json()["phase"] == "roi"
        for value in ("35", "80%", "0.1", "12000", "400"):
            response = await say(client, conversation_id, value)
        session = (await client.get("/api/v1/sessions/me")).json()
        assert session["phase"] == "greenlight"
        assert session["roiInputs"] == {
            "laborRate": 35,
            "utilization": 0.8,
            "maintenanceFactor": 0.1,
            "manualMonthlySpend": 12000,
            "manualMonthlyHours": 400,
        }
        assert "checkout" in response.json()["assistantMessage"]["content"]

    async def test_streamed_offline_reply_is_stored(self, client: httpx.AsyncClient) -> None:
        conversation_id = await new_conversation(client)
        response = await client.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            json={"content": "hi"},
            headers={"Accept": "text/event-stream"},
        )
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text)
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "start"
        assert kinds[-1] == "done"
        text = "".join(data["text"] for kind, data in events if kind == "delta")
        done = events[-1][1]["message"]
        assert done["content"] == text
        assert done["status"] == "complete"


@ASYNC
class TestOpeningMessage:
    """A conversation opens with the agent's greeting and first unanswered question, so the
    visitor's first message is an answer, recorded against the key that was asked."""

    async def test_a_new_conversation_opens_with_the_first_question(
        self, client: httpx.AsyncClient
    ) -> None:
        created = await client.post("/api/v1/conversations", json={})
        assert created.status_code == 201
        first_question = QUESTION_BY_KEY[QUESTION_KEYS_IN_ORDER[0]].label
        page = (await client.get(f"/api/v1/conversations/{created.json()['id']}")).json()
        assert [m["role"] for m in page["messages"]] == ["assistant"]
        opening = page["messages"][0]
        assert first_question in opening["content"]
        assert opening["content"] != first_question  # a greeting comes with it
        assert opening["status"] == "complete"
        assert opening["replyTo"] is None
        assert created.json()["messages"] == [opening]  # the creator sees it at once

    async def test_the_opening_skips_what_the_session_or_profile_already_answered(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        await start_session(client)
        first, second, third = QUESTION_KEYS_IN_ORDER[:3]
        await client.put(
            "/api/v1/sessions/me",
            json={
                "answers": {first: answer(valid_value(first)), second: answer(valid_value(second))}
            },
        )
        created = (await client.post("/api/v1/conversations", json={})).json()
        assert QUESTION_BY_KEY[third].label in created["messages"][0]["content"]

        user = make_user(settings)
        await client.put(
            "/api/v1/discovery",
            json={"answers": {first: answer(valid_value(first))}},
            headers=user.headers,
        )
        mine = (await client.post("/api/v1/conversations", json={}, headers=user.headers)).json()
        assert mine["owner"] == "user"
        assert QUESTION_BY_KEY[second].label in mine["messages"][0]["content"]

    async def test_a_newcomer_typing_cold_storage_first_has_it_recorded_as_facility_type(
        self, client: httpx.AsyncClient
    ) -> None:
        conversation_id = await new_conversation(client)
        reply = await say(client, conversation_id, "cold storage")
        assert reply.status_code == 201
        answers = (await client.get("/api/v1/sessions/me")).json()["answers"]
        assert answers["facility_type"]["value"] == "cold storage"
        assert answers["facility_type"]["source"] == "user"
        second = QUESTION_BY_KEY[QUESTION_KEYS_IN_ORDER[1]].label
        assert second in reply.json()["assistantMessage"]["content"]

    async def test_an_answer_given_out_of_turn_stays_on_its_own_key(
        self, client: httpx.AsyncClient
    ) -> None:
        # The opening asks for the facility type; meanwhile the visitor fills in the size in
        # a form. Their chat reply still answers the question on screen, and the size stays.
        first, second, third = QUESTION_KEYS_IN_ORDER[:3]
        conversation_id = await new_conversation(client)
        await client.put("/api/v1/sessions/me", json={"answers": {second: answer(50000.0)}})
        reply = await say(client, conversation_id, "cold storage")
        answers = (await client.get("/api/v1/sessions/me")).json()["answers"]
        assert answers[first]["value"] == "cold storage"
        assert answers[second]["value"] == 50000
        assert set(answers) == {first, second}
        assert QUESTION_BY_KEY[third].label in reply.json()["assistantMessage"]["content"]

    async def test_in_the_roi_phase_the_opening_asks_the_first_missing_roi_input(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        everything = {key: answer(valid_value(key)) for key in QUESTION_KEYS_IN_ORDER}
        await client.put(
            "/api/v1/sessions/me", json={"answers": everything, "roiInputs": {"laborRate": 35.0}}
        )
        created = (await client.post("/api/v1/conversations", json={})).json()
        assert ROI_INPUTS[1].label in created["messages"][0]["content"]
        await say(client, created["id"], "80%")
        roi = (await client.get("/api/v1/sessions/me")).json()["roiInputs"]
        assert (roi["laborRate"], roi["utilization"], roi["maintenanceFactor"]) == (35, 0.8, None)

    async def test_with_nothing_left_to_ask_the_opening_points_to_checkout(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        for phase in ("roi", "greenlight"):
            assert (
                await client.put("/api/v1/sessions/me", json={"phase": phase})
            ).status_code == 200
        created = (await client.post("/api/v1/conversations", json={})).json()
        assert OPENING_DONE in created["messages"][0]["content"]


@ASYNC
class TestMessageLimits:
    async def test_too_long_or_blank_message_is_422_and_not_stored(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        conversation_id = await new_conversation(client)
        too_long = await say(client, conversation_id, "x" * (settings.message_max_chars + 1))
        assert too_long.status_code == 422
        assert (await say(client, conversation_id, "   ")).status_code == 422
        page = (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
        assert [m["role"] for m in page["messages"]] == ["assistant"]  # the opening alone

    async def test_message_rate_limit_is_429(self, data_plane: LocalDataPlane) -> None:
        settings = make_settings(data_plane, message_rate_limit_per_minute=2)
        async with running_app(settings) as limited, browser_client(limited) as http:
            conversation_id = await new_conversation(http)
            statuses = [(await say(http, conversation_id, "hi")).status_code for _ in range(3)]
            assert statuses == [201, 201, 429]


@ASYNC
class TestOnlineAgent:
    async def test_reply_uses_the_model_with_phase_prompt_and_usage(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        model.default = Reply(text="Tell me about your facility.")
        conversation_id = await new_conversation(online)
        response = await say(online, conversation_id, "hello")
        assert response.status_code == 201
        assistant = response.json()["assistantMessage"]
        assert assistant["content"] == "Tell me about your facility."
        assert assistant["usage"]["totalTokens"] > 0
        chat = model.chat_requests()[0]
        assert chat["model"] == "gpt-4o-mini"
        assert "DISCOVERY" in chat["messages"][0]["content"]
        assert chat["messages"][-1] == {"role": "user", "content": "hello"}

    async def test_prompt_follows_the_owners_phase(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        conversation_id = await new_conversation(online)
        await online.put("/api/v1/sessions/me", json={"phase": "roi"})
        await say(online, conversation_id, "what next?")
        assert "ROI phase" in model.chat_requests()[-1]["messages"][0]["content"]

    async def test_the_model_sees_the_opening_and_the_roi_prompt_the_next_missing_input(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        await start_session(online)
        await online.put(
            "/api/v1/sessions/me", json={"phase": "roi", "roiInputs": {"laborRate": 42.5}}
        )
        created = (await online.post("/api/v1/conversations", json={})).json()
        await say(online, created["id"], "what do you need?")
        sent = model.chat_requests()[-1]["messages"]
        assert sent[0]["role"] == "system"
        assert "ROI phase" in sent[0]["content"]
        record = record_sent(sent)
        assert record["nextRoiInput"] == {"key": ROI_INPUTS[1].key, "question": ROI_INPUTS[1].label}
        # the inputs so far
        assert record["roiInputs"] == [
            {"key": "laborRate", "question": ROI_INPUTS[0].label, "value": 42.5}
        ]
        # The model asked nothing yet: the question on screen is the opening's, the same one.
        assert sent[2] == {"role": "assistant", "content": created["messages"][0]["content"]}
        assert ROI_INPUTS[1].label in sent[2]["content"]

    async def test_history_sent_to_the_model_is_bounded(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = online_settings(data_plane, model, agent_history_messages=4)
        async with running_app(settings) as bounded, browser_client(bounded) as http:
            conversation_id = await new_conversation(http)
            for index in range(4):
                await say(http, conversation_id, f"message {index}")
        sent = model.chat_requests()[-1]["messages"]
        assert len(sent) == 2 + 4  # the instructions, the record, the history
        assert sent[-1]["content"] == "message 3"

    async def test_streamed_reply_arrives_in_pieces_and_is_stored(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        model.default = Reply(chunks=["Hel", "lo ", "there"])
        conversation_id = await new_conversation(online)
        response = await online.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            json={"content": "hi"},
            headers={"Accept": "text/event-stream"},
        )
        events = parse_sse(response.text)
        assert [data["text"] for kind, data in events if kind == "delta"] == ["Hel", "lo ", "there"]
        stored = (await online.get(f"/api/v1/conversations/{conversation_id}")).json()["messages"]
        assert stored[-1]["content"] == "Hello there"
        assert stored[-1]["status"] == "complete"

    async def test_idempotent_retry_returns_first_reply_without_a_second_model_call(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        conversation_id = await new_conversation(online)
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = await say(online, conversation_id, "hello", **key)
        calls = len(model.chat_requests())
        second = await say(online, conversation_id, "hello", **key)
        assert second.status_code == 201
        assert second.json()["replayed"] is True
        assert second.json()["assistantMessage"] == first.json()["assistantMessage"]
        assert len(model.chat_requests()) == calls
        messages = (await online.get(f"/api/v1/conversations/{conversation_id}")).json()["messages"]
        assert len(messages) == 3  # the opening, the message, its one reply

    @pytest.mark.parametrize(
        "failure",
        [
            Reply(status=500),
            Reply(status=429, headers={"retry-after": "1"}),
            Reply(delay_seconds=5),
        ],
    )
    async def test_model_outage_is_503_and_keeps_the_user_message(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer, failure: Reply
    ) -> None:
        model.default = failure
        conversation_id = await new_conversation(online)
        response = await say(online, conversation_id, "are you there?")
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.json()["error"]["code"] == "model_unavailable"
        assert response.json()["error"]["category"] == "temporary"
        messages = (await online.get(f"/api/v1/conversations/{conversation_id}")).json()["messages"]
        assert messages[-2]["content"] == "are you there?"
        assert messages[-1]["status"] == "error"

    async def test_model_outage_while_streaming_is_an_error_event(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        model.default = Reply(status=500)
        conversation_id = await new_conversation(online)
        path = f"/api/v1/conversations/{conversation_id}/messages"
        with caplog.at_level(logging.INFO, logger="autopilot_api.access"):
            response = await online.post(
                path, json={"content": "hi"}, headers={"Accept": "text/event-stream"}
            )
        kind, data = parse_sse(response.text)[-1]
        assert kind == "error"
        assert data["error"]["code"] == "model_unavailable"
        # The access line says the stream ended with an error, not a plain 200.
        (line,) = [r for r in caplog.records if getattr(r, "_fields", {}).get("path") == path]
        assert line.levelno == logging.WARNING
        assert line.getMessage() == "stream ended with an error event"
        assert line._fields["status"] == 200
        assert line._fields["error"] == "model_unavailable"

    async def test_the_access_line_of_an_error_carries_its_code(
        self, online: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = f"/api/v1/conversations/{uuid.uuid4()}"
        with caplog.at_level(logging.INFO, logger="autopilot_api.access"):
            response = await online.get(path)
        assert response.status_code == 404
        (line,) = [r for r in caplog.records if getattr(r, "_fields", {}).get("path") == path]
        assert line.levelno == logging.INFO
        assert line._fields["status"] == 404
        assert line._fields["error"] == response.json()["error"]["code"]


@ASYNC
class TestExtraction:
    async def test_extraction_fills_answers_and_roi_with_provenance(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        model.responder = lambda request: (
            Reply(
                json_content=extraction_json(
                    [
                        {"key": "facility_type", "value": "cold storage"},
                        {"key": "sku_count", "value": "4,500"},
                        {"key": "not_a_question", "value": "x"},
                        {"key": "shifts_per_day", "value": "  "},
                    ],
                    laborRate=28.0,
                    utilization=3.0,
                )
            )
            if "response_format" in request
            else None
        )
        conversation_id = await new_conversation(online)
        response = await say(online, conversation_id, "We run a cold storage site with 4500 SKUs")
        user_message_id = response.json()["userMessage"]["id"]
        session = (await online.get("/api/v1/sessions/me")).json()
        assert set(session["answers"]) == {"facility_type", "sku_count"}
        extracted = session["answers"]["facility_type"]
        assert extracted["source"] == "extracted"
        assert extracted["messageId"] == user_message_id
        assert extracted["confidence"] == 0.9
        assert session["answers"]["sku_count"]["value"] == 4500
        assert session["roiInputs"]["laborRate"] == 28.0
        assert session["roiInputs"]["utilization"] is None  # 3.0 is out of range
        request = model.requests_with_response_format()[-1]
        assert request["temperature"] == 0.1
        assert request["model"] == "gpt-4o-mini"
        assert request["response_format"]["json_schema"]["strict"] is True

    async def test_extraction_never_overwrites_a_user_answer(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        await online.put(
            "/api/v1/sessions/me", json={"answers": {"facility_type": answer("cold storage")}}
        )
        model.responder = lambda request: (
            Reply(
                json_content=extraction_json(
                    [{"key": "facility_type", "value": "manufacturing plant"}]
                )
            )
            if "response_format" in request
            else None
        )
        conversation_id = await new_conversation(online)
        await say(online, conversation_id, "it's a plant actually")
        stored = (await online.get("/api/v1/sessions/me")).json()["answers"]["facility_type"]
        assert stored["value"] == "cold storage"
        assert stored["source"] == "user"

    @pytest.mark.parametrize(
        "bad",
        [
            Reply(refusal="I can't help with that"),
            Reply(json_content={"answers": 1}, finish_reason="length"),
            Reply(text="not json"),
            Reply(status=429),
            Reply(delay_seconds=5),
        ],
    )
    async def test_extraction_failures_change_nothing_and_never_fail_the_reply(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer, bad: Reply
    ) -> None:
        model.responder = lambda request: bad if "response_format" in request else None
        conversation_id = await new_conversation(online)
        before = (await online.get("/api/v1/sessions/me")).json()
        response = await say(online, conversation_id, "we have 3 shifts")
        assert response.status_code == 201
        after = (await online.get("/api/v1/sessions/me")).json()
        assert after["answers"] == before["answers"]
        assert after["version"] == before["version"]

    async def test_extraction_sends_at_most_the_last_ten_messages(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        conversation_id = await new_conversation(online)
        for index in range(7):
            await say(online, conversation_id, f"note {index}")
        prompt = model.requests_with_response_format()[-1]["messages"][1]["content"]
        conversation = extraction_conversation(prompt)
        assert len(conversation) == 10
        assert {"role": "user", "content": "note 0"} not in conversation
        assert conversation[-1] == {"role": "assistant", "content": Reply().text}

    async def test_lease_lets_one_holder_run_and_supersedes_pending_requests(
        self, online: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        conversation_id = await new_conversation(online)
        first, second, third = (str(uuid.uuid4()) for _ in range(3))

        async def request(holder: str, message: str) -> bool:
            response = await rest.post(
                "/rpc/request_extraction",
                json={
                    "p_conversation_id": conversation_id,
                    "p_message_id": message,
                    "p_holder": holder,
                    "p_lease_seconds": 60,
                },
            )
            return bool(response.json())

        async def finish(holder: str, message: str) -> Any:
            response = await rest.post(
                "/rpc/finish_extraction",
                json={
                    "p_conversation_id": conversation_id,
                    "p_holder": holder,
                    "p_processed_message_id": message,
                    "p_lease_seconds": 60,
                },
            )
            return response.json()

        assert await request("a", first) is True
        assert await request("b", second) is False
        assert await request("c", third) is False
        assert await finish("a", first) == third  # run again for the newest, once
        assert await finish("a", third) is None
        assert await request("b", third) is True


async def settled_replies(
    rest: httpx.AsyncClient, user_message_ids: list[str]
) -> list[dict[str, Any]]:
    """The stored replies to these messages, once each has one and nothing changed for 1 s."""
    params = {
        "select": "reply_to,status,content",
        "role": "eq.assistant",
        "reply_to": f"in.({','.join(user_message_ids)})",
    }
    previous: list[dict[str, Any]] | None = None
    loop = asyncio.get_running_loop()
    deadline, stable_since = loop.time() + 10, loop.time()
    while loop.time() < deadline:
        rows: list[dict[str, Any]] = (await rest.get("/messages", params=params)).json()
        if rows != previous:
            previous, stable_since = rows, loop.time()
        elif len({r["reply_to"] for r in rows}) == len(user_message_ids):
            if loop.time() - stable_since > 1.0:
                return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"replies did not settle: {previous}")


@pytest.fixture(scope="module")
def streaming_service(
    data_plane: LocalDataPlane,
    fake_openai: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    service = start_service(
        data_plane,
        tmp_path_factory.mktemp("stream"),
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MAX_RETRIES="0",
    )
    try:
        yield service
    finally:
        service.stop()


@ASYNC
class TestStreamingOverRealHttp:
    async def test_disconnect_mid_stream_stores_aborted_reply_with_what_was_produced(
        self, streaming_service: ServiceProcess, model: FakeOpenAIServer
    ) -> None:
        model.default = Reply(chunks=["one ", "two ", "three ", "four"], chunk_delay_seconds=0.5)
        async with httpx.AsyncClient(
            base_url=streaming_service.base_url, headers={"Origin": SPA_ORIGIN}
        ) as http:
            conversation_id = await new_conversation(http)
            deltas = 0
            async with http.stream(
                "POST",
                f"/api/v1/conversations/{conversation_id}/messages",
                json={"content": "hi"},
                headers={"Accept": "text/event-stream"},
            ) as response:
                async for line in response.aiter_lines():
                    if line == "event: delta":
                        deltas += 1
                        if deltas == 2:
                            break
            stored: list[dict[str, Any]] = []
            for _ in range(50):
                stored = (await http.get(f"/api/v1/conversations/{conversation_id}")).json()[
                    "messages"
                ]
                if len(stored) == 3:  # the opening, "hi", the reply
                    break
                await asyncio.sleep(0.1)
        assert stored[2]["status"] == "aborted"
        assert stored[2]["content"].startswith("one two")
        assert stored[2]["content"] != "one two three four"
        assert model.wait_for_disconnects(1, timeout=5)

    async def test_leaving_after_the_last_delta_stores_one_reply_per_message(
        self, streaming_service: ServiceProcess, model: FakeOpenAIServer, rest: httpx.AsyncClient
    ) -> None:
        # The client closes the stream at the last word, before `done`: the server is then
        # storing the complete reply, and the disconnect lands in the middle of that write.
        chunks = ["Which ", "kind ", "of ", "facility?"]
        model.default = Reply(chunks=chunks)
        user_message_ids: list[str] = []
        for _ in range(10):
            async with httpx.AsyncClient(
                base_url=streaming_service.base_url, headers={"Origin": SPA_ORIGIN}
            ) as http:
                conversation_id = await new_conversation(http)
                text, event = "", ""
                async with http.stream(
                    "POST",
                    f"/api/v1/conversations/{conversation_id}/messages",
                    json={"content": "hello"},
                    headers={"Accept": "text/event-stream"},
                ) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            event = line.removeprefix("event: ")
                        elif line.startswith("data: "):
                            data = json.loads(line.removeprefix("data: "))
                            assert event != "done", "the client was meant to leave before done"
                            if event == "start":
                                user_message_ids.append(data["userMessageId"])
                            elif event == "delta":
                                text += data["text"]
                                if text == "".join(chunks):
                                    break
        rows = await settled_replies(rest, user_message_ids)
        per_message = {m: [r for r in rows if r["reply_to"] == m] for m in user_message_ids}
        assert {m: len(replies) for m, replies in per_message.items()} == dict.fromkeys(
            user_message_ids, 1
        )
        assert all(r["content"] == "".join(chunks) for r in rows)

    async def test_extraction_runs_after_the_reply_was_sent(
        self, streaming_service: ServiceProcess, model: FakeOpenAIServer
    ) -> None:
        model.responder = lambda request: (
            Reply(
                json_content=extraction_json(
                    [{"key": "facility_type", "value": "manufacturing plant"}]
                ),
                delay_seconds=1.5,
            )
            if "response_format" in request
            else None
        )
        async with httpx.AsyncClient(
            base_url=streaming_service.base_url, headers={"Origin": SPA_ORIGIN}
        ) as http:
            conversation_id = await new_conversation(http)
            response = await say(http, conversation_id, "we run a plant")
            assert response.status_code == 201
            # The reply is here while the extraction is still waiting on the model.
            assert (await http.get("/api/v1/sessions/me")).json()["answers"] == {}
            for _ in range(50):
                answers = (await http.get("/api/v1/sessions/me")).json()["answers"]
                if answers:
                    break
                await asyncio.sleep(0.1)
        assert answers["facility_type"]["value"] == "manufacturing plant"


@ASYNC
class TestModelOutageRecovery:
    async def test_replies_come_back_by_themselves_when_the_model_does(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        conversation_id = await new_conversation(online)
        model.default = Reply(status=503)
        during = [(await say(online, conversation_id, f"try {i}")).status_code for i in range(3)]
        model.default = Reply(text="Back again.")
        after = await say(online, conversation_id, "are you back?")
        assert during == [503, 503, 503]
        assert after.status_code == 201
        assert after.json()["assistantMessage"]["content"] == "Back again."
        kept = (await online.get(f"/api/v1/conversations/{conversation_id}")).json()["messages"]
        assert [m["content"] for m in kept if m["role"] == "user"] == [
            "try 0",
            "try 1",
            "try 2",
            "are you back?",
        ]

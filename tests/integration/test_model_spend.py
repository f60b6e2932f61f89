"""The model is a shared, paid resource: bounded output and prompts, token budgets per visitor,
per client IP and per instance (settled from the usage the model reports), the offline agent
when one is spent, and what operators see (/metrics, /admin/usage). Through HTTP; the model
is the local OpenAI-compatible server, Redis the tests' own."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from autopilot_api.core.config import Settings
from autopilot_api.discovery.catalogue import QUESTION_BY_KEY, QUESTION_KEYS_IN_ORDER
from autopilot_api.local.dataplane import LocalDataPlane, free_port
from tests.conftest import API_BASE_URL, make_settings, running_app
from tests.fixtures.factories import SPA_ORIGIN, make_user, valid_value
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.integration.test_conversations import (
    extraction_json,
    new_conversation,
    parse_sse,
    say,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")
LARGE = 100_000_000
FIRST_KEY = QUESTION_KEYS_IN_ORDER[0]
METRICS_TOKEN = secrets.token_urlsafe(24)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# What every extraction call reports in these tests.
EXTRACTION_USAGE = usage(30, 5)


@pytest.fixture
def model(openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """Extraction requests get an empty extraction reporting EXTRACTION_USAGE; chat requests
    the default reply (or the script)."""
    openai_server.responder = lambda request: (
        Reply(json_content=extraction_json([]), usage=EXTRACTION_USAGE)
        if "response_format" in request
        else None
    )
    return openai_server


def spend_settings(plane: LocalDataPlane, fake: FakeOpenAIServer, **overrides: Any) -> Settings:
    """Online, every budget out of reach unless overridden, the SDK's retries as configured."""
    values: dict[str, Any] = {
        "openai_api_key": "test-key",
        "openai_base_url": fake.base_url,
        "openai_timeout_seconds": 3,
        "extraction_timeout_seconds": 3,
        "model_budget_visitor_tokens_per_day": LARGE,
        "model_budget_client_ip_tokens_per_hour": LARGE,
        "model_budget_instance_tokens_per_day": LARGE,
        "metrics_token": METRICS_TOKEN,
    }
    values.update(overrides)
    return make_settings(plane, **values)


@asynccontextmanager
async def visitor(app: FastAPI, ip: str = "198.51.100.7") -> AsyncIterator[httpx.AsyncClient]:
    """A browser with its own cookie jar, connecting from `ip`."""
    transport = httpx.ASGITransport(app=app, client=(ip, 50_000))
    async with httpx.AsyncClient(
        transport=transport, base_url=API_BASE_URL, headers={"Origin": SPA_ORIGIN}
    ) as http:
        yield http


async def session_id(http: httpx.AsyncClient) -> str:
    return str((await http.get("/api/v1/sessions/me")).json()["id"])


async def admin_usage(http: httpx.AsyncClient, settings: Settings) -> dict[str, Any]:
    admin = make_user(settings, admin=True)
    response = await http.get("/api/v1/admin/usage", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def offline_metadata(budget: str, asked: str = FIRST_KEY) -> dict[str, Any]:
    return {"asked": asked, "mode": "offline", "reason": "token_budget", "budget": budget}


MODEL_METADATA = {"asked": None, "mode": None, "reason": None, "budget": None}


async def spend(http: httpx.AsyncClient, model: FakeOpenAIServer, conversation_id: str) -> None:
    """Two model turns of 10,000 reported tokens each: 20,000 and two extractions spent."""
    model.script(
        Reply(text="Tell me more.", usage=usage(9_000, 1_000)),
        Reply(text="And then?", usage=usage(9_000, 1_000)),
    )
    for text in ("hello", "we run a warehouse"):
        response = await say(http, conversation_id, text)
        assert response.status_code == 201, response.text
        assert response.json()["assistantMessage"]["content"] in ("Tell me more.", "And then?")


@ASYNC
class TestBoundedCalls:
    async def test_both_model_calls_carry_max_completion_tokens(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(
            data_plane,
            model,
            agent_max_completion_tokens=123,
            extraction_max_completion_tokens=456,
        )
        async with running_app(settings) as app, visitor(app) as http:
            conversation_id = await new_conversation(http)
            assert (await say(http, conversation_id, "hello")).status_code == 201
            streamed = await http.post(
                f"/api/v1/conversations/{conversation_id}/messages",
                json={"content": "and streamed?"},
                headers={"Accept": "text/event-stream"},
            )
            assert parse_sse(streamed.text)[-1][0] == "done"
        chat = model.chat_requests()
        extraction = model.requests_with_response_format()
        assert [r["max_completion_tokens"] for r in chat] == [123, 123]
        assert [r["max_completion_tokens"] for r in extraction] == [456, 456]
        assert all("max_tokens" not in r for r in chat + extraction)

    async def test_the_history_sent_to_the_model_is_bounded_by_characters(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(
            data_plane,
            model,
            message_max_chars=1_000,
            agent_history_max_chars=2_500,
            agent_history_messages=50,
        )
        model.default = Reply(text="ok")
        async with running_app(settings) as app, visitor(app) as http:
            conversation_id = await new_conversation(http)
            for index in range(5):
                text = f"note {index} " + "x" * 900
                assert (await say(http, conversation_id, text)).status_code == 201
        sent = model.chat_requests()[-1]["messages"][1:]  # after the system message
        assert sum(len(m["content"]) for m in sent) <= 2_500
        assert sent[-1]["content"].startswith("note 4 ")  # the newest is always there
        assert sent[-3]["content"].startswith("note 3 ")  # then as many older as fit
        assert not any(m["content"].startswith("note 2 ") for m in sent)

    async def test_the_conversation_extraction_reads_is_bounded_by_characters(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(
            data_plane, model, message_max_chars=1_000, extraction_conversation_max_chars=2_000
        )
        model.default = Reply(text="ok")
        async with running_app(settings) as app, visitor(app) as http:
            conversation_id = await new_conversation(http)
            for index in range(4):
                text = f"fact {index} " + "y" * 900
                assert (await say(http, conversation_id, text)).status_code == 201
        prompt = model.requests_with_response_format()[-1]["messages"][1]["content"]
        conversation = prompt.split("oldest first):\n")[1].split("\n\nReturn")[0]
        assert len(conversation) <= 2_000
        assert json.loads(conversation)[-1]["role"] == "assistant"
        assert "fact 3 " in conversation
        assert "fact 1 " not in conversation

    async def test_a_failing_model_is_called_once_per_reply_and_extraction_retries_once(
        self, data_plane: LocalDataPlane, openai_server: FakeOpenAIServer
    ) -> None:
        # The default retries: no override of OPENAI_MAX_RETRIES / EXTRACTION_MAX_RETRIES.
        settings = spend_settings(data_plane, openai_server)
        openai_server.responder = lambda request: (
            Reply(status=500) if "response_format" in request else None
        )
        async with running_app(settings) as app, visitor(app) as http:
            conversation_id = await new_conversation(http)
            served = await say(http, conversation_id, "hello")
            assert served.status_code == 201
            assert len(openai_server.requests_with_response_format()) == 2  # one retry

            openai_server.default = Reply(status=500)
            failed = await say(http, conversation_id, "are you there?")
            assert failed.status_code == 503
            assert failed.json()["error"]["code"] == "model_unavailable"
            assert len(openai_server.chat_requests()) == 2  # one call each, no retry
            report = await admin_usage(http, settings)
        # An error answer costs nothing: only the reply that came was counted.
        reported = served.json()["assistantMessage"]["usage"]["totalTokens"]
        assert report["totals"]["totalTokens"] == reported
        assert report["totals"]["unmeteredTokens"] == 0
        assert report["budgets"][2]["spentTokens"] == reported


@ASYNC
class TestTokenBudgets:
    async def test_a_visitor_past_their_budget_goes_on_with_the_offline_questionnaire(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(data_plane, model, model_budget_visitor_tokens_per_day=20_000)
        async with running_app(settings) as app, visitor(app) as http, visitor(app) as neighbour:
            conversation_id = await new_conversation(http)
            await spend(http, model, conversation_id)
            chat_calls = len(model.chat_requests())
            assert len(model.requests_with_response_format()) == 1  # the second did not fit

            refused = await say(http, conversation_id, "what now?")
            assert refused.status_code == 201
            reply = refused.json()["assistantMessage"]
            assert reply["content"] == QUESTION_BY_KEY[FIRST_KEY].label
            assert reply["metadata"] == offline_metadata("visitor")
            assert reply["usage"] is None
            # The questionnaire goes on: the next message is recorded as that answer.
            value = valid_value(FIRST_KEY)
            answered = await say(http, conversation_id, str(value))
            assert answered.status_code == 201
            assert answered.json()["assistantMessage"]["metadata"]["budget"] == "visitor"
            session = (await http.get("/api/v1/sessions/me")).json()
            assert session["answers"][FIRST_KEY]["source"] == "user"
            assert len(model.chat_requests()) == chat_calls
            assert len(model.requests_with_response_format()) == 1  # extraction paused

            # Another visitor at the same address still talks to the model.
            model.default = Reply(text="Welcome.")
            other = await say(neighbour, await new_conversation(neighbour), "hello")
            assert other.json()["assistantMessage"]["content"] == "Welcome."
            assert other.json()["assistantMessage"]["metadata"] == MODEL_METADATA

    async def test_a_spent_budget_streams_the_offline_reply_with_its_reason(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(data_plane, model, model_budget_visitor_tokens_per_day=20_000)
        async with running_app(settings) as app, visitor(app) as http:
            conversation_id = await new_conversation(http)
            await spend(http, model, conversation_id)
            response = await http.post(
                f"/api/v1/conversations/{conversation_id}/messages",
                json={"content": "and now?"},
                headers={"Accept": "text/event-stream"},
            )
        assert response.status_code == 200
        events = parse_sse(response.text)
        text = "".join(data["text"] for kind, data in events if kind == "delta")
        assert text == QUESTION_BY_KEY[FIRST_KEY].label
        kind, done = events[-1]
        assert kind == "done"
        assert done["message"]["metadata"] == offline_metadata("visitor")

    async def test_a_client_ip_past_its_budget_sends_all_its_visitors_offline(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(data_plane, model, model_budget_client_ip_tokens_per_hour=20_000)
        model.default = Reply(text="Welcome.")
        async with (
            running_app(settings) as app,
            visitor(app, "203.0.113.9") as spender,
            visitor(app, "203.0.113.9") as same_address,
            visitor(app, "203.0.113.10") as elsewhere,
        ):
            await spend(spender, model, await new_conversation(spender))
            refused = await say(same_address, await new_conversation(same_address), "hi")
            assert refused.status_code == 201
            assert refused.json()["assistantMessage"]["metadata"] == offline_metadata("client_ip")
            served = await say(elsewhere, await new_conversation(elsewhere), "hi")
            assert served.json()["assistantMessage"]["content"] == "Welcome."

    async def test_the_instance_budget_sends_everyone_offline(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(data_plane, model, model_budget_instance_tokens_per_day=20_000)
        async with (
            running_app(settings) as app,
            visitor(app, "203.0.113.20") as spender,
            visitor(app, "192.0.2.44") as stranger,
        ):
            await spend(spender, model, await new_conversation(spender))
            calls = len(model.requests)
            refused = await say(stranger, await new_conversation(stranger), "hi")
            assert refused.status_code == 201
            assert refused.json()["assistantMessage"]["metadata"] == offline_metadata("instance")
            assert len(model.requests) == calls  # neither chat nor extraction

    async def test_budgets_are_settled_from_the_usage_the_model_reports(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        # Each reservation (estimated prompt + output bound) is far above what the model
        # reports; settled to the report, eight turns fit a budget two reservations fill.
        settings = spend_settings(
            data_plane,
            model,
            model_budget_visitor_tokens_per_day=10_000,
            agent_max_completion_tokens=4_000,
            extraction_max_completion_tokens=4_000,
        )
        model.default = Reply(text="Noted.", usage=usage(40, 10))
        async with running_app(settings) as app, visitor(app, "192.0.2.61") as http:
            conversation_id = await new_conversation(http)
            for index in range(8):
                response = await say(http, conversation_id, f"fact {index}")
                assert response.json()["assistantMessage"]["content"] == "Noted."
            report = await admin_usage(http, settings)
            mine = await session_id(http)
        chat, extraction = 8 * 50, 8 * 35
        assert report["totals"] == {
            "inputTokens": 8 * 40 + 8 * 30,
            "outputTokens": 8 * 10 + 8 * 5,
            "unmeteredTokens": 0,
            "totalTokens": chat + extraction,
        }
        assert report["byOperation"] == {"chat": chat, "extraction": extraction}
        assert report["byModel"] == {"gpt-4o-mini": chat + extraction}
        assert report["topSessions"] == [{"id": mine, "tokens": chat + extraction}]
        assert report["topClientIps"] == [{"clientIp": "192.0.2.61", "tokens": chat + extraction}]

    async def test_an_unreachable_budget_store_fails_closed_to_the_offline_agent(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(data_plane, model, redis_url=f"redis://127.0.0.1:{free_port()}/0")
        async with running_app(settings) as app, visitor(app) as http:
            response = await say(http, await new_conversation(http), "hello")
            assert response.status_code == 201
            assert response.json()["assistantMessage"]["metadata"] == {
                "asked": FIRST_KEY,
                "mode": "offline",
                "reason": "budget_unavailable",
                "budget": None,
            }
            report = await http.get(
                "/api/v1/admin/usage", headers=make_user(settings, admin=True).headers
            )
        assert model.requests == []
        assert report.status_code == 503
        assert report.json()["error"]["category"] == "temporary"
        assert report.headers["Retry-After"]


@ASYNC
class TestOperatorsSeeIt:
    async def test_metrics_count_tokens_by_model_operation_and_phase_and_the_cost(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(data_plane, model)
        model.default = Reply(text="Noted.", usage=usage(1_000_000, 500_000))

        def sample(text: str, name: str, **labels: str) -> float:
            for family in text_string_to_metric_families(text):
                for found in family.samples:
                    if found.name == name and labels.items() <= found.labels.items():
                        return float(found.value)
            return 0.0

        def tokens(text: str, op: str, kind: str) -> float:
            return sample(
                text,
                "gen_ai_client_token_usage_sum",
                gen_ai_operation_name="chat",
                gen_ai_provider_name="openai",
                gen_ai_request_model="gpt-4o-mini",
                gen_ai_token_type=kind,
                autopilot_operation=op,
                autopilot_phase="discovery",
            )

        def cost(text: str, op: str) -> float:
            return sample(
                text,
                "autopilot_model_cost_usd_total",
                gen_ai_request_model="gpt-4o-mini",
                autopilot_operation=op,
            )

        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        async with running_app(settings) as app, visitor(app) as http:
            before = (await http.get("/metrics", headers=headers)).text
            assert (await say(http, await new_conversation(http), "hello")).status_code == 201
            after = (await http.get("/metrics", headers=headers)).text
        assert tokens(after, "chat", "input") - tokens(before, "chat", "input") == 1_000_000
        assert tokens(after, "chat", "output") - tokens(before, "chat", "output") == 500_000
        assert tokens(after, "extraction", "input") - tokens(before, "extraction", "input") == 30
        # gpt-4o-mini at the default prices: $0.15 per million in, $0.60 per million out.
        assert cost(after, "chat") - cost(before, "chat") == pytest.approx(0.15 + 0.30)
        assert "# TYPE gen_ai_client_token_usage histogram" in after

    async def test_admin_usage_lists_today_the_budgets_and_the_top_spenders(
        self, data_plane: LocalDataPlane, model: FakeOpenAIServer
    ) -> None:
        settings = spend_settings(
            data_plane,
            model,
            model_budget_visitor_tokens_per_day=20_000,
            model_budget_client_ip_tokens_per_hour=500_000,
            model_budget_instance_tokens_per_day=1_000_000,
        )
        async with (
            running_app(settings) as app,
            visitor(app, "203.0.113.30") as big,
            visitor(app, "2001:db8:0:7::1") as small,
        ):
            await spend(big, model, await new_conversation(big))
            await say(big, await new_conversation(big), "over budget")  # refused
            model.script(Reply(text="Hi.", usage=usage(100, 20)))
            await say(small, await new_conversation(small), "hello")
            user = make_user(settings)
            model.script(Reply(text="Hi.", usage=usage(200, 20)))
            await say(big, await new_conversation(big, **user.headers), "hi", **user.headers)
            report = await admin_usage(big, settings)
            big_id, small_id = await session_id(big), await session_id(small)

            refused_user = await big.get("/api/v1/admin/usage", headers=user.headers)
            refused_anonymous = await big.get("/api/v1/admin/usage")
        assert refused_user.status_code == 403
        assert refused_anonymous.status_code == 401

        big_tokens = 20_000 + 35  # two chat turns, one extraction
        assert report["topSessions"] == [
            {"id": big_id, "tokens": big_tokens},
            {"id": small_id, "tokens": 120 + 35},
        ]
        assert report["topUsers"] == [{"id": str(user.id), "tokens": 220 + 35}]
        assert report["topClientIps"] == [
            {"clientIp": "203.0.113.30", "tokens": big_tokens + 255},
            {"clientIp": "2001:db8:0:7::/64", "tokens": 155},
        ]
        total = big_tokens + 155 + 255
        assert report["totals"]["totalTokens"] == total
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["day"])
        budgets = {b["name"]: b for b in report["budgets"]}
        assert budgets["visitor"] == {
            "name": "visitor",
            "limitTokens": 20_000,
            "windowSeconds": 86_400,
            "spentTokens": None,
            # The chat turn past it, and the two extractions that did not fit.
            "refusalsToday": 3,
        }
        assert budgets["client_ip"]["limitTokens"] == 500_000
        assert budgets["client_ip"]["windowSeconds"] == 3_600
        assert budgets["instance"]["spentTokens"] == total
        assert report["estimatedCostUsd"] > 0


@pytest.mark.asyncio(loop_scope="session")
async def test_two_instances_sharing_one_redis_share_the_budgets(
    data_plane: LocalDataPlane, model: FakeOpenAIServer, redis_url: str
) -> None:
    prefix = f"autopilot-test:{uuid.uuid4().hex}:"
    settings = spend_settings(
        data_plane,
        model,
        redis_url=redis_url,
        model_budget_redis_prefix=prefix,
        model_budget_visitor_tokens_per_day=20_000,
        model_budget_instance_tokens_per_day=40_000,
    )
    model.default = Reply(text="Welcome.", usage=usage(100, 20))
    async with running_app(settings) as first, running_app(settings) as second:
        async with visitor(first, "203.0.113.40") as on_first:
            conversation_id = await new_conversation(on_first)
            await spend(on_first, model, conversation_id)
            cookies = on_first.cookies
        # The same visitor on the other instance: their budget is spent there too.
        async with visitor(second, "203.0.113.40") as on_second:
            on_second.cookies = cookies
            refused = await say(on_second, conversation_id, "still there?")
            assert refused.json()["assistantMessage"]["metadata"] == offline_metadata("visitor")
        # Another visitor fills the shared instance budget through the first instance...
        async with visitor(first, "192.0.2.100") as other:
            await spend(other, model, await new_conversation(other))
        # ...and the second instance sends a newcomer offline.
        async with visitor(second, "192.0.2.200") as newcomer:
            late = await say(newcomer, await new_conversation(newcomer), "hello")
            assert late.json()["assistantMessage"]["metadata"] == offline_metadata("instance")
            report = await admin_usage(newcomer, settings)
    assert report["budgets"][2]["spentTokens"] >= 40_000

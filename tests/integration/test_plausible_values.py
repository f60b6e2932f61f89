"""Plausible values (issue 20, item 6) end to end: what the issue saw stored — a square
footage of 1e300, a labour rate of 1e9, 1e6 hours a month, a headcount of
9007199254740993 (stored as ...992), confidences of 1e9 and -3 — is refused by PUT, re-asked
by the offline agent and dropped from extraction, through the one validator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from autopilot_api.discovery.catalogue import QUESTION_BY_KEY, QUESTION_KEYS_IN_ORDER
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, running_app
from tests.fixtures.factories import answer, start_session, valid_value
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.integration.test_conversations import (
    extraction_json,
    new_conversation,
    online_settings,
    say,
)
from tests.integration.test_typed_answers import open_chat, problems, reply_to

ASYNC = pytest.mark.asyncio(loop_scope="session")
BEYOND_SAFE = 9_007_199_254_740_993  # 2**53 + 1: a float (and JavaScript) reads ...992


@pytest.fixture
def model(openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """Chat requests get text, extraction requests (response_format) an empty extraction."""
    openai_server.responder = lambda request: (
        Reply(json_content=extraction_json([])) if "response_format" in request else None
    )
    return openai_server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
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
class TestPut:
    async def test_implausible_answers_are_422_naming_each_bound(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        refused = await client.put(
            "/api/v1/sessions/me",
            json={
                "answers": {
                    "floor_headcount": answer(BEYOND_SAFE),
                    "facility_size_sqft": answer(1e300),
                    "number_of_sites": answer(2.5),
                }
            },
        )
        assert problems(refused) == {
            "floor_headcount": "a whole number from 0 to 100,000 (people)",
            "facility_size_sqft": "a number from 0 to 50,000,000 (sq ft)",
            "number_of_sites": "a whole number from 0 to 100,000",
        }
        assert (await client.get("/api/v1/sessions/me")).json()["answers"] == {}

    async def test_implausible_roi_inputs_are_422(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        for roi in ({"laborRate": 1e9}, {"manualMonthlyHours": 1e6}):
            refused = await client.put("/api/v1/sessions/me", json={"roiInputs": roi})
            assert refused.status_code == 422, refused.text
        assert (await client.get("/api/v1/sessions/me")).json()["roiInputs"]["laborRate"] is None

    async def test_a_count_at_its_bound_is_stored_exactly_as_an_integer(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        taken = await client.put(
            "/api/v1/sessions/me",
            json={"answers": {"floor_headcount": answer(100_000), "sku_count": answer(25.0)}},
        )
        assert taken.status_code == 200, taken.text
        answers = taken.json()["answers"]
        assert answers["floor_headcount"]["value"] == 100_000
        # 25.0 is the whole number 25: stored (and sent) as 25.
        assert '"value":25,' in taken.text.replace(" ", "")
        assert answers["sku_count"]["value"] == 25


@ASYNC
class TestOfflineAgent:
    async def test_a_count_past_the_safe_range_is_reasked_not_rounded(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        before = {"floor_headcount"}
        given = {
            key: answer(valid_value(key))
            for key in QUESTION_KEYS_IN_ORDER[: QUESTION_KEYS_IN_ORDER.index("floor_headcount")]
            if key not in before
        }
        assert (await client.put("/api/v1/sessions/me", json={"answers": given})).is_success
        conversation_id = await open_chat(client)
        reask = await reply_to(client, conversation_id, f"{BEYOND_SAFE} people")
        assert "a whole number from 0 to 100,000 (people)" in reask
        assert reask.endswith(QUESTION_BY_KEY["floor_headcount"].label)
        await reply_to(client, conversation_id, "about 45 people")
        stored = (await client.get("/api/v1/sessions/me")).json()["answers"]["floor_headcount"]
        assert stored["value"] == 45


@ASYNC
class TestExtraction:
    async def test_implausible_values_and_confidences_are_dropped(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        payload: dict[str, Any] = extraction_json(
            [
                {"key": "floor_headcount", "value": BEYOND_SAFE},
                {"key": "facility_size_sqft", "value": 1e300},
                {"key": "sku_count", "value": 4500.0, "confidence": -3},
                {"key": "facility_type", "value": "cold storage", "confidence": 1e9},
                {"key": "shifts_per_day", "value": 2, "confidence": 0.7},
            ],
            laborRate=1e9,
            manualMonthlyHours=1e6,
            utilization=0.5,
        )
        payload["confidence"] = 1e9
        model.responder = lambda request: (
            Reply(json_content=payload) if "response_format" in request else None
        )
        conversation_id = await new_conversation(online)
        response = await say(online, conversation_id, "cold storage, two shifts, 4500 SKUs")
        assert response.status_code == 201, response.text
        session = (await online.get("/api/v1/sessions/me")).json()
        answers = session["answers"]
        assert set(answers) == {"sku_count", "facility_type", "shifts_per_day"}
        assert answers["sku_count"]["value"] == 4500
        # A confidence that is not a probability is no confidence: the answer stays without.
        assert answers["sku_count"].get("confidence") is None
        assert answers["facility_type"].get("confidence") is None
        assert answers["shifts_per_day"]["confidence"] == 0.7
        roi = session["roiInputs"]
        assert (roi["laborRate"], roi["manualMonthlyHours"], roi["utilization"]) == (
            None,
            None,
            0.5,
        )
        assert session["roiInputDetails"]["utilization"].get("confidence") is None

    async def test_the_schema_sent_to_the_model_bounds_counts_and_confidence(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        conversation_id = await new_conversation(online)
        await say(online, conversation_id, "hello")
        schema = model.requests_with_response_format()[-1]["response_format"]["json_schema"]
        properties = schema["schema"]["properties"]
        headcount = properties["answers"]["properties"]["floor_headcount"]["anyOf"][0]
        assert headcount["properties"]["value"] == {
            "type": "integer",
            "minimum": 0,
            "maximum": 100_000,
        }
        probability = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
        assert headcount["properties"]["confidence"] == probability
        assert properties["confidence"] == probability
        assert properties["roi_inputs"]["properties"]["manualMonthlyHours"]["maximum"] == 500_000

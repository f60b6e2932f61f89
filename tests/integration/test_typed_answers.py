"""Typed answers (issue 13, item 4) through the HTTP API: the catalogue's kind, options and
bounds are enforced by one validator wherever an answer enters — PUT (strict), the offline
agent and extraction (lenient, then strict) — and the claim's merge never prefers a value
stored before this that does not fit, nor fails on it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from fastapi import FastAPI

from autopilot_api.core.config import Settings
from autopilot_api.discovery import answers
from autopilot_api.discovery.catalogue import (
    QUESTION_BY_KEY,
    QUESTION_KEYS_IN_ORDER,
    ROI_BY_KEY,
    DiscoveryQuestion,
)
from autopilot_api.discovery.kinds import InvalidAnswer
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import browser_client, plane_info, running_app
from tests.fixtures.factories import answer, make_user, start_session, valid_value
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.integration.test_conversations import (
    extraction_json,
    new_conversation,
    online_settings,
    say,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")
COOKIE = "autopilot_session"
BUDGET_OPTIONS = "under $100k, $100k-$250k, $250k-$500k, $500k-$1M, over $1M, not sure yet"


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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def problems(response: httpx.Response) -> dict[str, str]:
    """The 422's details as {question key: what is expected}."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["category"] == "user_fixable"
    found = {}
    for detail in error["details"]:
        assert detail["loc"][:2] == ["body", "answers"], detail
        assert detail["loc"][3] == "value", detail
        found[detail["loc"][2]] = detail["expected"]
    return found


async def session_count(rest: httpx.AsyncClient) -> int:
    response = await rest.get(
        "/sessions", params={"select": "id"}, headers={"Prefer": "count=exact", "Range": "0-0"}
    )
    return int(response.headers["content-range"].split("/")[1])


@ASYNC
class TestPutIsStrict:
    async def test_a_word_for_a_number_is_422_naming_the_key_and_nothing_is_stored(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        before = (await client.get("/api/v1/sessions/me")).json()
        response = await client.put(
            "/api/v1/sessions/me",
            json={
                "answers": {
                    "facility_location": answer("Columbus, Ohio"),
                    "facility_size_sqft": answer("big"),
                }
            },
        )
        assert problems(response) == {"facility_size_sqft": "a number from 0 to 50,000,000 (sq ft)"}
        after = (await client.get("/api/v1/sessions/me")).json()
        assert after["answers"] == before["answers"] == {}
        assert after["version"] == before["version"]

    async def test_a_choice_outside_its_options_is_422_listing_them(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            json={"answers": {"budget_range": answer("spaceship"), "sku_count": answer(-1)}},
        )
        assert problems(response) == {
            "budget_range": f"one of: {BUDGET_OPTIONS}",
            "sku_count": "a whole number from 0 to 100,000,000",
        }
        assert (await client.get("/api/v1/sessions/me")).json()["answers"] == {}

    async def test_an_option_in_another_case_is_stored_in_the_options_spelling(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            json={
                "answers": {
                    "facility_type": answer("COLD Storage"),
                    "budget_range": answer("Over $1m"),
                }
            },
        )
        assert response.status_code == 200, response.text
        answers = response.json()["answers"]
        assert answers["facility_type"]["value"] == "cold storage"
        assert answers["budget_range"]["value"] == "over $1M"

    async def test_a_yes_no_question_takes_a_boolean(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        refused = await client.put(
            "/api/v1/sessions/me", json={"answers": {"budget_approved": answer("yes")}}
        )
        assert problems(refused) == {"budget_approved": "true or false"}
        taken = await client.put(
            "/api/v1/sessions/me", json={"answers": {"budget_approved": answer(True)}}
        )
        assert taken.json()["answers"]["budget_approved"]["value"] is True

    async def test_text_over_2000_characters_is_422(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        refused = await client.put(
            "/api/v1/sessions/me", json={"answers": {"biggest_bottleneck": answer("x" * 2001)}}
        )
        assert problems(refused) == {
            "biggest_bottleneck": "text of 1 to 2000 characters",
        }
        taken = await client.put(
            "/api/v1/sessions/me", json={"answers": {"biggest_bottleneck": answer("x" * 2000)}}
        )
        assert len(taken.json()["answers"]["biggest_bottleneck"]["value"]) == 2000

    async def test_a_number_outside_the_catalogues_bounds_is_422(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        refused = await client.put(
            "/api/v1/sessions/me",
            json={"answers": {"operating_days_per_week": answer(8), "shifts_per_day": answer(2)}},
        )
        assert problems(refused) == {"operating_days_per_week": "a number from 0 to 7 (days/week)"}
        taken = await client.put(
            "/api/v1/sessions/me", json={"answers": {"operating_days_per_week": answer(7)}}
        )
        assert taken.json()["answers"]["operating_days_per_week"]["value"] == 7

    async def test_an_invalid_answer_without_a_session_creates_none(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient
    ) -> None:
        before = await session_count(rest)
        response = await client.put(
            "/api/v1/sessions/me", json={"answers": {"facility_type": answer("spaceship")}}
        )
        assert "facility_type" in problems(response)
        assert COOKIE not in response.headers.get("set-cookie", "")
        assert await session_count(rest) == before

    async def test_the_discovery_profile_put_is_strict_too(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        response = await client.put(
            "/api/v1/discovery",
            headers=user.headers,
            json={"answers": {"facility_type": answer("spaceship"), "sku_count": answer(3)}},
        )
        assert "facility_type" in problems(response)
        profile = (await client.get("/api/v1/discovery", headers=user.headers)).json()
        assert profile["answers"] == {}
        taken = await client.put(
            "/api/v1/discovery",
            headers=user.headers,
            json={"answers": {"facility_type": answer("Cold Storage")}},
        )
        assert taken.json()["answers"]["facility_type"]["value"] == "cold storage"


@ASYNC
class TestPublishedCatalogue:
    async def test_questions_publish_bounds_and_the_text_cap(
        self, client: httpx.AsyncClient
    ) -> None:
        questions = {q["key"]: q for q in (await client.get("/api/v1/discovery/questions")).json()}
        hours = questions["operating_hours_per_day"]
        assert (hours["minimum"], hours["maximum"], hours["maxLength"]) == (0, 24, None)
        sku = questions["sku_count"]
        assert (sku["minimum"], sku["maximum"], sku["integer"]) == (0, 100_000_000, True)
        assert hours["integer"] is False
        choice = questions["facility_type"]
        assert (choice["minimum"], choice["maximum"], choice["maxLength"]) == (None, None, None)
        assert questions["facility_location"]["maxLength"] == 2000
        spec = (await client.get("/openapi.json")).json()
        fields = spec["components"]["schemas"]["QuestionPublic"]["properties"]
        assert {"minimum", "maximum", "integer", "maxLength"} <= set(fields)


async def open_chat(http: httpx.AsyncClient) -> str:
    """A conversation in which the agent has asked its first question (a greeting first,
    unless the conversation already opens with the agent's question)."""
    conversation_id = await new_conversation(http)
    opened = (await http.get(f"/api/v1/conversations/{conversation_id}")).json()
    if not any(m["role"] == "assistant" for m in opened["messages"]):
        await say(http, conversation_id, "hello")
    return conversation_id


async def reply_to(http: httpx.AsyncClient, conversation_id: str, text: str) -> str:
    response = await say(http, conversation_id, text)
    assert response.status_code == 201, response.text
    return str(response.json()["assistantMessage"]["content"])


@ASYNC
class TestOfflineAgent:
    async def test_reasks_a_choice_listing_its_options_then_reads_what_people_type(
        self, client: httpx.AsyncClient
    ) -> None:
        conversation_id = await open_chat(client)
        reask = await reply_to(client, conversation_id, "spaceship")
        assert QUESTION_BY_KEY["facility_type"].label in reask
        for option in QUESTION_BY_KEY["facility_type"].options:
            assert option in reask
        assert (await client.get("/api/v1/sessions/me")).json()["answers"] == {}

        asked = await reply_to(client, conversation_id, "Cold Storage")
        assert asked.endswith(QUESTION_BY_KEY["facility_size_sqft"].label)
        await reply_to(client, conversation_id, "50k")
        answers = (await client.get("/api/v1/sessions/me")).json()["answers"]
        assert answers["facility_type"]["value"] == "cold storage"
        assert answers["facility_size_sqft"]["value"] == 50_000

    async def test_reads_percentages_and_yes_no_and_reasks_with_the_expected_form(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        skip = {"error_damage_rate", "budget_approved"}
        given = {k: answer(valid_value(k)) for k in QUESTION_KEYS_IN_ORDER if k not in skip}
        assert (await client.put("/api/v1/sessions/me", json={"answers": given})).status_code == 200
        conversation_id = await open_chat(client)

        reask = await reply_to(client, conversation_id, "a lot")
        assert "a number from 0 to 100 (%)" in reask
        assert reask.endswith(QUESTION_BY_KEY["error_damage_rate"].label)
        asked = await reply_to(client, conversation_id, "2.5%")
        assert asked.endswith(QUESTION_BY_KEY["budget_approved"].label)
        reask = await reply_to(client, conversation_id, "maybe")
        assert "yes or no" in reask
        assert reask.endswith(QUESTION_BY_KEY["budget_approved"].label)
        await reply_to(client, conversation_id, "Yes")
        session = (await client.get("/api/v1/sessions/me")).json()
        assert session["answers"]["error_damage_rate"]["value"] == 2.5
        assert session["answers"]["budget_approved"]["value"] is True
        assert session["phase"] == "roi"

        reask = await reply_to(client, conversation_id, "plenty")
        assert "a number from 0 to 1,000 (USD/hour)" in reask
        await reply_to(client, conversation_id, "$35/hour")
        session = (await client.get("/api/v1/sessions/me")).json()
        assert session["roiInputs"]["laborRate"] == 35


def legacy_answer(key: str, value: Any, source: str, at: datetime) -> dict[str, Any]:
    question = QUESTION_BY_KEY[key]
    return {
        "questionId": question.id,
        "key": key,
        "label": question.label,
        "value": value,
        "group": question.group,
        "source": source,
        "updatedAt": iso(at),
    }


def store_directly(
    data_plane: LocalDataPlane,
    *,
    session_token: str | None = None,
    user_id: Any = None,
    answers: dict[str, Any],
    roi_inputs: dict[str, Any] | None = None,
) -> None:
    """Write as the code before typed answers could: straight into the table."""
    with psycopg.connect(plane_info(data_plane).database_url, autocommit=True) as conn:
        if session_token is not None:
            conn.execute(
                "update autopilot.sessions set answers = %s::jsonb, roi_inputs = %s::jsonb"
                " where token_hash = %s",
                (json.dumps(answers), json.dumps(roi_inputs or {}), token_hash(session_token)),
            )
        else:
            conn.execute(
                "update autopilot.discovery_profiles set answers = %s::jsonb,"
                " roi_inputs = %s::jsonb where profile_id = %s",
                (json.dumps(answers), json.dumps(roi_inputs or {}), user_id),
            )


@ASYNC
class TestExtraction:
    async def test_invalid_values_are_dropped_with_a_log_line_naming_only_the_key(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        long_text = "z" * 50_000
        model.responder = lambda request: (
            Reply(
                json_content=extraction_json(
                    [
                        {"key": "budget_range", "value": "not-an-option"},
                        {"key": "facility_location", "value": long_text},
                        {"key": "facility_type", "value": "cold storage"},
                        {"key": "sku_count", "value": 4500},
                        {"key": "operating_hours_per_day", "value": 30},
                    ],
                    laborRate=28.0,
                )
            )
            if "response_format" in request
            else None
        )
        conversation_id = await new_conversation(online)
        await say(online, conversation_id, "cold storage, 4500 SKUs")
        session = (await online.get("/api/v1/sessions/me")).json()
        assert set(session["answers"]) == {"facility_type", "sku_count"}
        assert session["answers"]["sku_count"]["value"] == 4500
        assert session["roiInputs"]["laborRate"] == 28.0
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        for key in ("budget_range", "facility_location", "operating_hours_per_day"):
            assert any(key in line for line in dropped), (key, dropped)
        assert "not-an-option" not in caplog.text
        assert "zzzzzzzz" not in caplog.text

    async def test_the_schema_sent_to_the_model_types_every_answer(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer
    ) -> None:
        conversation_id = await new_conversation(online)
        await say(online, conversation_id, "hello")
        request = model.requests_with_response_format()[-1]
        response_format = request["response_format"]
        assert response_format["json_schema"]["strict"] is True
        answers = response_format["json_schema"]["schema"]["properties"]["answers"]
        assert answers["required"] == list(QUESTION_KEYS_IN_ORDER)
        assert answers["additionalProperties"] is False

        def value_schema(key: str) -> dict[str, Any]:
            entry, null = answers["properties"][key]["anyOf"]
            assert null == {"type": "null"}
            return dict(entry["properties"]["value"])

        assert value_schema("budget_range") == {
            "type": "string",
            "enum": list(QUESTION_BY_KEY["budget_range"].options),
        }
        assert value_schema("operating_hours_per_day") == {
            "type": "number",
            "minimum": 0,
            "maximum": 24,
        }
        assert value_schema("budget_approved") == {"type": "boolean"}
        assert value_schema("facility_location")["type"] == "string"

    async def test_a_valid_value_replaces_a_legacy_invalid_answer_even_the_persons_own(
        self, online: httpx.AsyncClient, model: FakeOpenAIServer, data_plane: LocalDataPlane
    ) -> None:
        conversation_id = await new_conversation(online)
        token = online.cookies.get(COOKIE)
        assert token
        old = datetime.now(UTC) - timedelta(days=3)
        store_directly(
            data_plane,
            session_token=token,
            answers={
                "budget_range": legacy_answer("budget_range", "not-an-option", "user", old),
                "facility_type": legacy_answer("facility_type", "cold storage", "user", old),
            },
        )
        model.responder = lambda request: (
            Reply(
                json_content=extraction_json(
                    [
                        {"key": "budget_range", "value": "under $100k"},
                        {"key": "facility_type", "value": "fulfillment center"},
                    ]
                )
            )
            if "response_format" in request
            else None
        )
        await say(online, conversation_id, "under 100k; we run a fulfillment center")
        answers = (await online.get("/api/v1/sessions/me")).json()["answers"]
        assert answers["budget_range"]["value"] == "under $100k"
        assert answers["budget_range"]["source"] == "extracted"
        assert answers["facility_type"]["value"] == "cold storage"  # valid and the person's


@ASYNC
class TestLegacyValuesInTheClaim:
    async def test_the_merge_keeps_legacy_values_and_prefers_the_valid_side(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        data_plane: LocalDataPlane,
    ) -> None:
        now = datetime.now(UTC)
        old, new = now - timedelta(days=2), now - timedelta(hours=1)
        long_text = "y" * 50_000
        user = make_user(settings)
        assert (await client.get("/api/v1/discovery", headers=user.headers)).status_code == 200
        store_directly(
            data_plane,
            user_id=user.id,
            answers={
                # valid, extracted and older: still beats the session's invalid user answer
                "facility_type": legacy_answer("facility_type", "cold storage", "extracted", old),
                # invalid user answer: loses to the session's valid extracted one
                "sku_count": legacy_answer("sku_count", "big", "user", new),
                # both sides invalid: the usual rule (the person's answer wins)
                "budget_range": legacy_answer("budget_range", "not-an-option", "user", old),
            },
            roi_inputs={"laborRate": {"value": 20, "source": "extracted", "updatedAt": iso(old)}},
        )
        token = await start_session(client)
        store_directly(
            data_plane,
            session_token=token,
            answers={
                "facility_type": legacy_answer("facility_type", "spaceship", "user", new),
                "sku_count": legacy_answer("sku_count", 40, "extracted", old),
                "budget_range": legacy_answer("budget_range", "also-not", "extracted", new),
                # only on one side, invalid: kept as it is
                "facility_location": legacy_answer("facility_location", long_text, "user", new),
                "budget_approved": legacy_answer("budget_approved", "yes", "user", new),
            },
            roi_inputs={"laborRate": {"value": -5, "source": "user", "updatedAt": iso(new)}},
        )
        response = await client.post("/api/v1/sessions/claim", headers=user.headers)
        assert response.status_code == 200, response.text
        answers = {k: a["value"] for k, a in response.json()["profile"]["answers"].items()}
        assert answers == {
            "facility_type": "cold storage",
            "sku_count": 40,
            "budget_range": "not-an-option",
            "facility_location": long_text,
            "budget_approved": "yes",
        }
        profile = (await client.get("/api/v1/discovery", headers=user.headers)).json()
        assert profile["answers"]["facility_location"]["value"] == long_text
        assert profile["roiInputs"]["laborRate"] == 20


def fits_in_python(key: str, value: Any) -> bool:
    """Whether the catalogue's strict validator takes a stored value (a key it does not
    know: nothing to judge, as in SQL)."""
    step = QUESTION_BY_KEY.get(key) or ROI_BY_KEY.get(key)
    if step is None:
        return True
    try:
        step.validate(value)
    except InvalidAnswer:
        return False
    return True


class TestTheCatalogueReachesSqlAsData:
    """The SQL merges judge stored values by the rules the service passes (`p_rules`, from
    catalogue_rules()): SQL keeps no copy of the catalogue, so a question added in Python is
    judged in SQL without a migration, and so is a kind made of the rules' primitives."""

    @ASYNC
    async def test_a_question_added_only_in_python_is_judged_by_the_claims_merge(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        data_plane: LocalDataPlane,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        new_question = DiscoveryQuestion(
            id=len(QUESTION_KEYS_IN_ORDER) + 1,
            key="forklift_count",
            label="How many forklifts run on the floor?",
            group="operations",
            kind="number",
            minimum=0,
            maximum=50,
        )
        monkeypatch.setitem(
            answers.CATALOGUE_RULES, new_question.key, new_question.answer_kind.rule(new_question)
        )
        now = datetime.now(UTC)
        old, new = now - timedelta(days=2), now - timedelta(hours=1)

        def entry(value: int, source: str, at: datetime) -> dict[str, Any]:
            return {
                "questionId": new_question.id,
                "key": new_question.key,
                "label": new_question.label,
                "group": new_question.group,
                "value": value,
                "source": source,
                "updatedAt": iso(at),
            }

        user = make_user(settings)
        assert (await client.get("/api/v1/discovery", headers=user.headers)).status_code == 200
        # The profile's extracted, older value fits; the session's own, newer one does not
        # (above the maximum of 50): only a merge that knows the new question prefers the
        # profile's (without its rule, the person's newer answer would win).
        store_directly(
            data_plane, user_id=user.id, answers={"forklift_count": entry(12, "extracted", old)}
        )
        token = await start_session(client)
        store_directly(
            data_plane, session_token=token, answers={"forklift_count": entry(500, "user", new)}
        )

        response = await client.post("/api/v1/sessions/claim", headers=user.headers)

        assert response.status_code == 200, response.text
        assert response.json()["profile"]["answers"]["forklift_count"]["value"] == 12

    @ASYNC
    async def test_the_extraction_merge_judges_by_the_rules_it_is_given(
        self, client: httpx.AsyncClient, rest: httpx.AsyncClient, data_plane: LocalDataPlane
    ) -> None:
        """A person's stored answer is overwritten by extraction only when it does not fit
        its rule: with a rule for a key SQL has never seen, and without one."""
        at = iso(datetime.now(UTC) - timedelta(days=1))
        outcomes = {}
        for rules in ({"forklift_count": {"type": "integer", "minimum": 0, "maximum": 50}}, {}):
            token = await start_session(client)
            stored = {"forklift_count": {"value": 500, "source": "user", "updatedAt": at}}
            store_directly(data_plane, session_token=token, answers=stored)
            with psycopg.connect(plane_info(data_plane).database_url) as conn:
                (session_id,) = conn.execute(
                    "select id::text from autopilot.sessions where token_hash = %s",
                    (token_hash(token),),
                ).fetchone() or (None,)
            merged = await rest.post(
                "/rpc/merge_extracted_progress",
                json={
                    "p_session_id": session_id,
                    "p_profile_id": None,
                    "p_answers": {
                        "forklift_count": {"value": 8, "source": "extracted", "updatedAt": at}
                    },
                    "p_roi_inputs": {},
                    "p_rules": rules,
                },
            )
            assert merged.status_code == 200, merged.text
            outcomes[bool(rules)] = merged.json()["changed_keys"]
            client.cookies.clear()
        assert outcomes == {True: ["forklift_count"], False: []}

    def test_sql_and_python_judge_stored_values_alike(self, data_plane: LocalDataPlane) -> None:

        samples: list[tuple[str, Any]] = []
        keys = [*QUESTION_KEYS_IN_ORDER, "laborRate", "utilization", "manualMonthlyHours"]
        for key in keys:
            question = QUESTION_BY_KEY.get(key)
            good = valid_value(key) if question else 0.5
            for value in (good, "big", 5, -1, 0, 0.5, 25, 101, True, None, "x" * 2001, " "):
                samples.append((key, value))
            # Issue 20: past the plausible bounds, a count with a fraction, past 2**53.
            for value in (12.5, 1e300, 9_007_199_254_740_993, 10**400, 100_001, 600):
                samples.append((key, value))
        samples += [("facility_type", " COLD storage "), ("budget_range", "OVER $1m")]
        samples += [("not_a_key", "anything")]
        rules = json.dumps(answers.catalogue_rules())
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            in_sql = [
                conn.execute(
                    "select autopilot_private.entry_is_valid("
                    "%s::jsonb -> %s, jsonb_build_object('value', %s::jsonb))",
                    (rules, key, json.dumps(value)),
                ).fetchone()
                for key, value in samples
            ]
        in_python = [fits_in_python(key, value) for key, value in samples]
        mismatches = [
            (key, value, sql, python)
            for (key, value), (sql,), python in zip(samples, in_sql, in_python, strict=True)  # type: ignore[misc]
            if sql is not python
        ]
        assert mismatches == []
        assert in_python.count(True) > len(keys)  # the samples exercise both outcomes
        assert in_python.count(False) > len(keys)

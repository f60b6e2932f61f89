"""422s name the field as the client wrote it and say what is expected, through HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.factories import start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")
# What pydantic puts in its own messages and paths: never the client's words.
PYDANTIC_WORDS = ("dict[", "nullable[", "list[", "Input should be None", "ROIInputsUpdate", "^")


def details(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["category"] == "user_fixable"
    for word in PYDANTIC_WORDS:
        assert word not in str(error["details"]), (word, error["details"])
    found: list[dict[str, Any]] = error["details"]
    return found


def only(response: httpx.Response) -> dict[str, Any]:
    found = details(response)
    assert len(found) == 1, found
    return found[0]


@ASYNC
class TestBodyFields:
    async def test_a_nested_answer_value_is_named_by_its_path(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me", json={"answers": {"facility_type": {"value": [1]}}}
        )
        detail = only(response)
        assert detail["field"] == "answers.facility_type.value"
        assert detail["loc"] == ["body", "answers", "facility_type", "value"]
        assert detail["msg"] == "Input should be a valid string, integer, number or boolean"

    async def test_an_answer_that_is_not_an_object(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json={"answers": {"facility_type": 3}})
        detail = only(response)
        assert detail["field"] == "answers.facility_type"
        assert detail["msg"] == "Input should be a JSON object"

    async def test_an_unknown_field_inside_an_answer(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            json={"answers": {"facility_type": {"value": "x", "source": "user"}}},
        )
        detail = only(response)
        assert detail["field"] == "answers.facility_type.source"
        assert detail["type"] == "extra_forbidden"

    async def test_a_nested_number_uses_the_camel_case_name(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json={"roiInputs": {"laborRate": -1}})
        detail = only(response)
        assert detail["field"] == "roiInputs.laborRate"
        assert detail["msg"] == "Input should be greater than or equal to 0"

    async def test_a_list_item_is_named_by_its_index(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me", json={"selectedProductIds": ["not-a-uuid"]}
        )
        assert only(response)["field"] == "selectedProductIds[0]"

    async def test_null_for_a_field_that_cannot_be_null_names_the_field(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        detail = only(await client.put("/api/v1/sessions/me", json={"roiInputs": None}))
        assert detail["field"] == "roiInputs"
        assert "null" in detail["msg"]

    async def test_a_too_large_metadata_names_the_field(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json={"metadata": {"a": "x" * 9000}})
        detail = only(response)
        assert detail["field"] == "metadata"
        assert "8192 bytes" in detail["msg"]

    async def test_an_unknown_question_key_found_by_the_service(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me", json={"answers": {"favourite_colour": {"value": "red"}}}
        )
        assert only(response)["field"] == "answers.favourite_colour"


@ASYNC
class TestTheBodyAsAWhole:
    async def test_json_sent_without_a_content_type_says_so(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", content=b'{"phase": "roi"}')
        detail = only(response)
        assert detail["field"] == "body"
        assert "Content-Type: application/json" in detail["msg"]
        assert "no Content-Type" in detail["msg"]

    async def test_json_sent_as_text_says_so(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            content=b'{"phase": "roi"}',
            headers={"Content-Type": "text/plain"},
        )
        detail = only(response)
        assert detail["field"] == "body"
        assert "Content-Type: application/json" in detail["msg"]

    async def test_a_json_array_is_not_an_object(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json=[1])
        detail = only(response)
        assert detail["field"] == "body"
        assert detail["msg"] == "Input should be a JSON object"

    async def test_broken_json_says_where(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            content=b'{"phase":',
            headers={"Content-Type": "application/json"},
        )
        detail = only(response)
        assert detail["field"] == "body"
        assert detail["loc"] == ["body"]
        assert detail["msg"].startswith("The body is not valid JSON")
        assert "character 9" in detail["msg"]


@ASYNC
class TestHeadersAndQuery:
    async def test_a_malformed_if_match_says_what_it_should_look_like(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", json={}, headers={"If-Match": "v3"})
        detail = only(response)
        assert detail["field"] == "header If-Match"
        assert detail["loc"] == ["header", "If-Match"]
        assert detail["msg"] == (
            'If-Match must be a quoted version like "v3" (the ETag of your last read), or *'
        )

    async def test_a_malformed_timestamp_in_the_query(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        created = await client.post("/api/v1/conversations", json={})
        assert created.status_code == 201, created.text
        response = await client.get(
            f"/api/v1/conversations/{created.json()['id']}", params={"before": "yesterday"}
        )
        detail = only(response)
        assert detail["field"] == "query before"
        assert detail["msg"] == "before must be an ISO 8601 timestamp like 2026-01-31T12:00:00Z"

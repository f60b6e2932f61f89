"""One user message has at most one assistant reply, enforced in SQL: the precedence when
two writers meet (save_assistant_message). The races that produced duplicates are reproduced
through HTTP in test_conversations.py and tests/e2e/test_fetch_event_source.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

ASYNC = pytest.mark.asyncio(loop_scope="session")


async def user_message(rest: httpx.AsyncClient) -> tuple[str, str]:
    created = await rest.post("/rpc/create_conversation", json={"p_user_id": str(uuid.uuid4())})
    assert created.status_code == 200, created.text
    conversation_id = created.json()["conversation"]["id"]
    appended = await rest.post(
        "/rpc/append_user_message",
        json={"p_conversation_id": conversation_id, "p_content": "hello"},
    )
    assert appended.status_code == 200, appended.text
    return conversation_id, appended.json()["message"]["id"]


async def save(
    rest: httpx.AsyncClient, conversation_id: str, reply_to: str, status: str, content: str
) -> dict[str, Any]:
    response = await rest.post(
        "/rpc/save_assistant_message",
        json={
            "p_conversation_id": conversation_id,
            "p_reply_to": reply_to,
            "p_content": content,
            "p_status": status,
            "p_model": "gpt-test",
            "p_prompt_tokens": 3,
            "p_completion_tokens": len(content),
        },
    )
    assert response.status_code == 200, response.text
    row: dict[str, Any] = response.json()
    return row


async def replies(rest: httpx.AsyncClient, reply_to: str) -> list[dict[str, Any]]:
    response = await rest.get(
        "/messages",
        params={"reply_to": f"eq.{reply_to}", "role": "eq.assistant", "select": "*"},
    )
    rows: list[dict[str, Any]] = response.json()
    return rows


@ASYNC
class TestTwoWritersMeet:
    @pytest.mark.parametrize(
        ("first", "second", "stands"),
        [
            (("complete", "full"), ("complete", "again"), ("complete", "full")),
            (("aborted", "Which"), ("complete", "Which kind?"), ("complete", "Which kind?")),
            (("complete", "Which kind?"), ("aborted", "Which"), ("complete", "Which kind?")),
            (("error", ""), ("complete", "late"), ("error", "")),
            (("complete", "full"), ("error", ""), ("complete", "full")),
            (("aborted", "Which"), ("error", ""), ("aborted", "Which")),
            (("error", ""), ("aborted", "Which"), ("error", "")),
            (("aborted", "Wh"), ("aborted", "Which"), ("aborted", "Wh")),
        ],
    )
    async def test_the_precedence_decides_the_one_reply(
        self,
        rest: httpx.AsyncClient,
        first: tuple[str, str],
        second: tuple[str, str],
        stands: tuple[str, str],
    ) -> None:
        conversation_id, reply_to = await user_message(rest)
        written = await save(rest, conversation_id, reply_to, *first)
        returned = await save(rest, conversation_id, reply_to, *second)
        stored = await replies(rest, reply_to)
        assert len(stored) == 1
        assert (stored[0]["status"], stored[0]["content"]) == stands
        assert returned == stored[0]  # the caller learns which reply stands
        assert stored[0]["id"] == written["id"]  # an upgrade keeps the row, not a new one
        if stands[0] == "complete" and first[0] == "aborted":
            assert stored[0]["completion_tokens"] == len(stands[1])

    async def test_concurrent_writers_leave_one_complete_reply(
        self, rest: httpx.AsyncClient
    ) -> None:
        for _ in range(10):
            conversation_id, reply_to = await user_message(rest)
            await asyncio.gather(
                save(rest, conversation_id, reply_to, "aborted", "Which"),
                save(rest, conversation_id, reply_to, "complete", "Which kind?"),
                save(rest, conversation_id, reply_to, "complete", "Which kind?"),
            )
            stored = await replies(rest, reply_to)
            assert [(r["status"], r["content"]) for r in stored] == [("complete", "Which kind?")]

    async def test_a_reply_needs_the_message_it_answers(self, rest: httpx.AsyncClient) -> None:
        conversation_id, _ = await user_message(rest)
        response = await rest.post(
            "/rpc/save_assistant_message",
            json={
                "p_conversation_id": conversation_id,
                "p_reply_to": None,
                "p_content": "x",
                "p_status": "complete",
            },
        )
        assert response.status_code == 422

"""One user message has at most one assistant reply, enforced in SQL: the precedence when
two writers meet (save_assistant_message), and the migration that resolved the duplicates
a live database already held. The races that produced them are reproduced through HTTP in
test_conversations.py and tests/e2e/test_fetch_event_source.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from autopilot_api.db.migrations import ALEMBIC_DIR
from autopilot_api.local.dataplane import (
    LocalDataPlane,
    drop_database,
    ensure_database,
    with_database,
)
from tests.conftest import plane_info

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


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = database_url
    return config


def _revision_before_this_migration(config: Config) -> str:
    """The revision the unique index's migration follows, whatever its number."""
    for revision in ScriptDirectory.from_config(config).walk_revisions():
        if "_one_reply_per_message.sql" in (revision.doc or ""):
            assert isinstance(revision.down_revision, str)
            return revision.down_revision
    raise AssertionError("no revision applies the one-reply-per-message migration")


# Duplicates as a database before the unique index could hold them, oldest first, and the
# reply the migration keeps (by the writers' precedence, then the newest).
DUPLICATES: list[tuple[list[tuple[str, str]], tuple[str, str]]] = [
    ([("complete", "first"), ("complete", "second")], ("complete", "second")),
    ([("aborted", "Wh"), ("complete", "Which kind?")], ("complete", "Which kind?")),
    ([("complete", "Which kind?"), ("aborted", "Wh")], ("complete", "Which kind?")),
    ([("error", ""), ("complete", "late")], ("error", "")),
    ([("complete", "full"), ("error", "")], ("complete", "full")),
    ([("aborted", "Wh"), ("error", "")], ("aborted", "Wh")),
    ([("aborted", "Wh"), ("aborted", "Which")], ("aborted", "Which")),
    ([("aborted", "a"), ("complete", "b"), ("complete", "c"), ("aborted", "d")], ("complete", "c")),
    ([("complete", "alone")], ("complete", "alone")),
]


def test_migration_resolves_duplicates_then_enforces_one_reply(data_plane: LocalDataPlane) -> None:
    server_url = plane_info(data_plane).database_url
    name = f"autopilot_dupes_{uuid.uuid4().hex[:10]}"
    ensure_database(server_url, name)
    url = with_database(server_url, name)
    try:
        config = _config(url)
        command.upgrade(config, _revision_before_this_migration(config))
        expected: dict[str, tuple[str, str]] = {}
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "select (autopilot.create_conversation(gen_random_uuid())).id"
            ).fetchone()
            assert row is not None
            conversation_id = row[0]
            for rows, kept in DUPLICATES:
                message = conn.execute(
                    "insert into autopilot.messages (conversation_id, role, content)"
                    " values (%s, 'user', 'hi') returning id",
                    (conversation_id,),
                ).fetchone()
                assert message is not None
                for offset, (status, content) in enumerate(rows):
                    conn.execute(
                        "insert into autopilot.messages"
                        " (conversation_id, role, content, status, reply_to, created_at)"
                        " values (%s, 'assistant', %s, %s, %s,"
                        "         now() + make_interval(secs => %s))",
                        (conversation_id, content, status, message[0], offset),
                    )
                expected[str(message[0])] = kept
            for _ in range(2):  # assistant messages that answer nothing are left alone
                conn.execute(
                    "insert into autopilot.messages (conversation_id, role, content)"
                    " values (%s, 'assistant', 'Welcome!')",
                    (conversation_id,),
                )

        command.upgrade(config, "head")

        with psycopg.connect(url, autocommit=True) as conn:
            stored = conn.execute(
                "select reply_to, status, content from autopilot.messages"
                " where role = 'assistant' and reply_to is not null"
            ).fetchall()
            unanchored = conn.execute(
                "select count(*) from autopilot.messages"
                " where role = 'assistant' and reply_to is null"
            ).fetchone()
            assert {str(r[0]): (r[1], r[2]) for r in stored} == expected
            assert len(stored) == len(expected)
            assert unanchored == (2,)
            some_message = next(iter(expected))
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(
                    "insert into autopilot.messages (conversation_id, role, content, reply_to)"
                    " values (%s, 'assistant', 'again', %s)",
                    (conversation_id, some_message),
                )
    finally:
        drop_database(server_url, name)

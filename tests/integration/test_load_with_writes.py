"""200 concurrent virtual visitors against a real service process: each starts a session,
answers every question, chats 3 messages (offline agent), and half of them sign up and
claim. Every acknowledged answer is stored exactly once; every claim moves every
conversation; nothing fails except by documented rate limits."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from autopilot_api.core.config import Settings
from autopilot_api.discovery.catalogue import QUESTION_KEYS_IN_ORDER
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.factories import SPA_ORIGIN, make_user, valid_value
from tests.fixtures.processes import ServiceProcess, client_limits, start_service

pytestmark = pytest.mark.slow  # 200 visitors against a service process

ASYNC = pytest.mark.asyncio(loop_scope="session")
VISITORS = int(os.environ.get("LOAD_VISITORS", "200"))


@dataclass
class Visitor:
    index: int
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    acknowledged: dict[str, object] = field(default_factory=dict)
    conversation_id: str | None = None
    claimed_by: str | None = None
    conversations_moved: int | None = None


@pytest.fixture(scope="module")
def load_service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = start_service(
        data_plane,
        tmp_path_factory.mktemp("load"),
        SESSION_CREATE_LIMIT_PER_HOUR="100000",
        MESSAGE_RATE_LIMIT_PER_MINUTE="20",
        LOG_LEVEL="ERROR",
    )
    try:
        yield service
    finally:
        service.stop()


async def visit(http: httpx.AsyncClient, visitor: Visitor, settings: Settings) -> None:
    def note(response: httpx.Response) -> httpx.Response:
        visitor.statuses[response.status_code] += 1
        if response.status_code >= 400:
            visitor.errors[f"{response.status_code} {response.json()['error']['code']}"] += 1
        return response

    note(await http.post("/api/v1/sessions"))
    for key in QUESTION_KEYS_IN_ORDER:
        value = valid_value(key, visitor.index)
        response = note(
            await http.put("/api/v1/sessions/me", json={"answers": {key: {"value": value}}})
        )
        if response.status_code == 200:
            visitor.acknowledged[key] = value
    created = note(await http.post("/api/v1/conversations", json={}))
    visitor.conversation_id = created.json()["id"]
    for text in ("hello", "35", "0.8"):
        note(
            await http.post(
                f"/api/v1/conversations/{visitor.conversation_id}/messages", json={"content": text}
            )
        )
    if visitor.index % 2 == 0:
        user = make_user(settings)
        claim = note(await http.post("/api/v1/sessions/claim", headers=user.headers))
        if claim.status_code == 200:
            visitor.claimed_by = user.token
            visitor.conversations_moved = claim.json()["conversationsMoved"]


@ASYNC
async def test_200_visitors_with_writes_lose_nothing(
    load_service: ServiceProcess, settings: Settings, rest: httpx.AsyncClient
) -> None:
    visitors = [Visitor(index=i) for i in range(VISITORS)]
    limits = client_limits(max_connections=VISITORS)
    clients = [
        httpx.AsyncClient(
            base_url=load_service.base_url,
            headers={"Origin": SPA_ORIGIN},
            timeout=60,
            limits=limits,
        )
        for _ in visitors
    ]
    try:
        await asyncio.gather(
            *(visit(c, v, settings) for c, v in zip(clients, visitors, strict=True))
        )
        checks = []
        for http, visitor in zip(clients, visitors, strict=True):
            headers = (
                {"Authorization": f"Bearer {visitor.claimed_by}"} if visitor.claimed_by else {}
            )
            path = "/api/v1/discovery" if visitor.claimed_by else "/api/v1/sessions/me"
            if visitor.claimed_by:
                http.cookies.clear()
            checks.append(http.get(path, headers=headers))
        stored = [response.json() for response in await asyncio.gather(*checks)]
        conversations = [
            await http.get(
                f"/api/v1/conversations/{v.conversation_id}",
                headers={"Authorization": f"Bearer {v.claimed_by}"},
            )
            for http, v in zip(clients, visitors, strict=True)
            if v.claimed_by
        ]
    finally:
        for http in clients:
            await http.aclose()

    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for visitor in visitors:
        statuses.update(visitor.statuses)
        errors.update(visitor.errors)
    acknowledged = sum(len(v.acknowledged) for v in visitors)
    stored_answers = 0
    for visitor, body in zip(visitors, stored, strict=True):
        answers = body["answers"]
        for key, value in visitor.acknowledged.items():
            assert answers[key]["value"] == value, (visitor.index, key)
            stored_answers += 1
    claims = [v for v in visitors if v.claimed_by]
    print(  # noqa: T201
        f"visitors={VISITORS} requests={sum(statuses.values())} statuses={dict(statuses)} "
        f"errors={dict(errors)} "
        f"answers acknowledged={acknowledged} stored={stored_answers} claims={len(claims)}"
    )
    assert set(statuses) <= {200, 201, 429}
    assert acknowledged == VISITORS * len(QUESTION_KEYS_IN_ORDER)
    assert stored_answers == acknowledged
    assert len(claims) == VISITORS // 2
    assert all(v.conversations_moved == 1 for v in claims)
    # The agent's opening message, then three turns.
    assert all(r.status_code == 200 and len(r.json()["messages"]) == 7 for r in conversations)

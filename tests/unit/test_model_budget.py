"""The token budgets of the model, in process and in Redis (the tests' Redis): reservations
against three sliding windows, settlement to the reported usage, the day's report, concurrency
and an unreachable Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis

from autopilot_api.core.config import Settings, SettingsError, load_settings
from autopilot_api.core.errors import UsageStoreUnavailableError
from autopilot_api.local.dataplane import free_port
from autopilot_api.services.model_budget import (
    InMemoryModelBudget,
    ModelBudget,
    RedisModelBudget,
    Reservation,
    Spender,
    TokenUsage,
    estimate_prompt_tokens,
    newest_within_chars,
)

START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
HOUR = 3_600
VISITOR = Spender(visitor=f"session:{uuid.UUID(int=1)}", client_ip="198.51.100.1")
NEIGHBOUR = Spender(visitor=f"session:{uuid.UUID(int=2)}", client_ip="198.51.100.1")
STRANGER = Spender(visitor=f"user:{uuid.UUID(int=3)}", client_ip="203.0.113.3")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def budget_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_budget_visitor_tokens_per_day": 10_000,
        "model_budget_client_ip_tokens_per_hour": 20_000,
        "model_budget_instance_tokens_per_day": 50_000,
        "model_budget_redis_prefix": f"autopilot-test:{uuid.uuid4().hex}:",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


Factory = Callable[..., ModelBudget]


@pytest_asyncio.fixture(params=["memory", "redis"])
async def make_budget(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Factory]:
    """Builds budgets of one kind; Redis ones share the settings' key prefix, removed after."""
    made: list[ModelBudget] = []
    prefixes: set[str] = set()

    def build(settings: Settings, clock: Clock) -> ModelBudget:
        budget: ModelBudget
        if request.param == "memory":
            budget = InMemoryModelBudget(settings, clock=clock)
        else:
            budget = RedisModelBudget(settings, redis_url, clock=clock)
            prefixes.add(settings.model_budget_redis_prefix)
        made.append(budget)
        return budget

    yield build
    for budget in made:
        await budget.close()
    client = redis.Redis.from_url(redis_url)
    for prefix in prefixes:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
    client.close()


async def reserve(budget: ModelBudget, spender: Spender, tokens: int) -> Reservation:
    return await budget.reserve(
        spender=spender, operation="chat", model="gpt-4o-mini", phase="discovery", tokens=tokens
    )


class TestPromptBounds:
    def test_the_newest_items_that_fit_are_kept_in_order(self) -> None:
        kept = newest_within_chars(["aaaa", "bb", "cc", "d"], max_chars=5, size=len)
        assert kept == ["bb", "cc", "d"]

    def test_an_older_item_that_would_fit_is_not_taken_past_a_gap(self) -> None:
        # The history stays one unbroken run of the newest messages.
        assert newest_within_chars(["a", "bbbbbb", "cc"], max_chars=5, size=len) == ["cc"]

    def test_the_newest_item_is_kept_whatever_its_size(self) -> None:
        assert newest_within_chars(["a", "b" * 50], max_chars=5, size=len) == ["b" * 50]
        assert newest_within_chars([], max_chars=5, size=len) == []

    @pytest.mark.parametrize(
        "text",
        [
            "We run a cold storage warehouse with 4,500 SKUs and three shifts. " * 20,
            "我们经营一个冷库，有四千五百个库存单位，三班倒。" * 20,
        ],
    )
    def test_the_prompt_estimate_is_above_what_the_text_costs(self, text: str) -> None:
        # English runs near four characters a token, CJK near one: either way, more.
        estimate = estimate_prompt_tokens([{"role": "user", "content": text}])
        per_char = 1 if not text.isascii() else 0.25
        assert estimate > len(text) * per_char
        assert estimate_prompt_tokens([], extra=text) < estimate


class TestSettings:
    def test_the_defaults_bound_every_call(self) -> None:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.openai_max_retries == 0
        assert settings.extraction_max_retries == 1
        assert settings.agent_max_completion_tokens == 600
        assert settings.extraction_max_completion_tokens == 2_000

    @pytest.mark.parametrize(
        ("name", "value", "problem"),
        [
            ("openai_max_retries", 2, "OPENAI_MAX_RETRIES"),
            ("extraction_max_retries", 2, "EXTRACTION_MAX_RETRIES"),
            ("agent_history_max_chars", 3_999, "at least MESSAGE_MAX_CHARS"),
            ("extraction_conversation_max_chars", 3_999, "at least MESSAGE_MAX_CHARS"),
            ("model_budget_visitor_tokens_per_day", 0, "MODEL_BUDGET_VISITOR_TOKENS_PER_DAY"),
        ],
    )
    def test_what_would_unbound_a_call_is_refused(
        self, name: str, value: int, problem: str
    ) -> None:
        with pytest.raises(SettingsError, match=problem):
            load_settings(_env_file=None, **{name: value})


class TestSpender:
    def test_an_ipv6_client_is_counted_by_its_64(self) -> None:
        one = Spender.of(session_id=uuid.uuid4(), user_id=None, client_ip="2001:db8:0:7::1")
        two = Spender.of(session_id=uuid.uuid4(), user_id=None, client_ip="2001:db8:0:7:ff::2")
        assert one.client_ip == two.client_ip == "2001:db8:0:7::/64"

    def test_a_signed_in_user_is_the_visitor(self) -> None:
        user = uuid.uuid4()
        spender = Spender.of(session_id=uuid.uuid4(), user_id=user, client_ip="192.0.2.1")
        assert spender.visitor == f"user:{user}"


@pytest.mark.asyncio
class TestBudgets:
    async def test_a_reservation_past_a_budget_is_refused_and_reserves_nothing(
        self, make_budget: Factory
    ) -> None:
        budget = make_budget(budget_settings(), Clock())
        assert (await reserve(budget, VISITOR, 8_000)).granted
        refused = await reserve(budget, VISITOR, 3_000)
        assert refused.refused == "visitor"
        assert refused.offline_metadata() == {
            "mode": "offline",
            "reason": "token_budget",
            "budget": "visitor",
        }
        # Nothing of the refused call was counted: 2,000 still fit.
        assert (await reserve(budget, VISITOR, 2_000)).granted
        assert (await reserve(budget, VISITOR, 1)).refused == "visitor"

    async def test_the_address_budget_covers_every_visitor_behind_it(
        self, make_budget: Factory
    ) -> None:
        budget = make_budget(budget_settings(), Clock())
        assert (await reserve(budget, VISITOR, 10_000)).granted
        assert (await reserve(budget, NEIGHBOUR, 10_000)).granted
        third = Spender(visitor=f"session:{uuid.UUID(int=4)}", client_ip="198.51.100.1")
        assert (await reserve(budget, third, 1)).refused == "client_ip"
        assert (await reserve(budget, STRANGER, 10_000)).granted

    async def test_the_instance_budget_covers_everyone(self, make_budget: Factory) -> None:
        budget = make_budget(budget_settings(model_budget_instance_tokens_per_day=15_000), Clock())
        assert (await reserve(budget, VISITOR, 10_000)).granted
        assert (await reserve(budget, STRANGER, 6_000)).refused == "instance"
        assert (await reserve(budget, STRANGER, 5_000)).granted

    async def test_settling_to_the_reported_usage_gives_back_the_rest(
        self, make_budget: Factory
    ) -> None:
        budget = make_budget(budget_settings(), Clock())
        first = await reserve(budget, VISITOR, 8_000)
        await budget.settle(first, TokenUsage(900, 100))
        assert (await reserve(budget, VISITOR, 9_000)).granted
        assert (await reserve(budget, VISITOR, 1)).refused == "visitor"
        report = await budget.usage_report(top=5)
        assert (report.input_tokens, report.output_tokens) == (900, 100)

    async def test_an_error_answer_is_released_and_a_call_without_a_report_kept(
        self, make_budget: Factory
    ) -> None:
        budget = make_budget(budget_settings(), Clock())
        failed = await reserve(budget, VISITOR, 6_000)
        await budget.settle(failed, None, billed=False)
        cut_short = await reserve(budget, VISITOR, 6_000)
        await budget.settle(cut_short, None, billed=True)
        assert (await reserve(budget, VISITOR, 4_001)).refused == "visitor"
        report = await budget.usage_report(top=5)
        assert report.unmetered_tokens == 6_000
        assert report.input_tokens == report.output_tokens == 0

    async def test_the_windows_slide(self, make_budget: Factory) -> None:
        clock = Clock()
        budget = make_budget(budget_settings(model_budget_client_ip_tokens_per_hour=10_000), clock)
        assert (await reserve(budget, VISITOR, 10_000)).granted
        clock.now += 59 * 60
        assert (await reserve(budget, NEIGHBOUR, 1)).refused == "client_ip"
        # An hour and a slice (5 minutes) later the address has its budget back...
        clock.now = START + HOUR + 5 * 60
        assert (await reserve(budget, VISITOR, 1)).refused == "visitor"
        assert (await reserve(budget, NEIGHBOUR, 1)).granted
        # ...and the visitor a day and a slice (an hour) later.
        clock.now = START + 23 * HOUR
        assert (await reserve(budget, VISITOR, 1)).refused == "visitor"
        clock.now = START + 25 * HOUR
        assert (await reserve(budget, VISITOR, 10_000)).granted

    async def test_two_concurrent_reservations_cannot_both_take_the_last_tokens(
        self, make_budget: Factory
    ) -> None:
        settings = budget_settings()
        clock = Clock()
        # Two budgets over one store (two instances with Redis; one process without).
        first = make_budget(settings, clock)
        second = first if isinstance(first, InMemoryModelBudget) else make_budget(settings, clock)
        results = await asyncio.gather(
            *(reserve(budget, VISITOR, 6_000) for budget in (first, second))
        )
        assert sorted(r.granted for r in results) == [False, True]
        many = await asyncio.gather(
            *(reserve(first if i % 2 else second, STRANGER, 1_000) for i in range(30))
        )
        assert sum(r.granted for r in many) == 10

    async def test_the_report_counts_today_and_lists_the_biggest_spenders(
        self, make_budget: Factory
    ) -> None:
        clock = Clock()
        budget = make_budget(budget_settings(), clock)
        for spender, used in ((VISITOR, 300), (NEIGHBOUR, 700), (STRANGER, 500), (VISITOR, 50)):
            reservation = await reserve(budget, spender, 2_000)
            await budget.settle(reservation, TokenUsage(used - 10, 10))
        extraction = await budget.reserve(
            spender=STRANGER, operation="extraction", model="gpt-x", phase="roi", tokens=1_000
        )
        await budget.settle(extraction, TokenUsage(80, 20))
        await reserve(budget, VISITOR, 9_999)  # refused: the visitor's budget

        report = await budget.usage_report(top=2)
        assert report.day.isoformat() == "2027-01-15"
        assert report.total_tokens == 1_650
        assert report.by_operation == {"chat": 1_550, "extraction": 100}
        assert report.by_model == {"gpt-4o-mini": 1_550, "gpt-x": 100}
        assert report.refusals == {"visitor": 1}
        assert report.instance_spent == 1_650
        assert report.top_sessions == [(str(uuid.UUID(int=2)), 700), (str(uuid.UUID(int=1)), 350)]
        assert report.top_users == [(str(uuid.UUID(int=3)), 600)]
        assert report.top_client_ips == [("198.51.100.1", 1_050), ("203.0.113.3", 600)]
        assert (report.input_tokens, report.output_tokens) == (1_510 + 80, 40 + 20)
        assert report.estimated_cost_usd == pytest.approx((1_590 * 0.15 + 60 * 0.60) / 1e6)

        clock.now += 24 * HOUR  # the next day starts empty
        tomorrow = await budget.usage_report(top=2)
        assert tomorrow.total_tokens == 0
        assert tomorrow.top_sessions == []


@pytest.mark.asyncio
async def test_an_unreachable_redis_fails_closed() -> None:
    budget = RedisModelBudget(
        budget_settings(), f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5
    )
    try:
        reservation = await reserve(budget, VISITOR, 10)
        assert reservation.refused == "unavailable"
        assert reservation.offline_metadata() == {
            "mode": "offline",
            "reason": "budget_unavailable",
        }
        await budget.settle(reservation, TokenUsage(1, 1))  # nothing to settle, no error
        granted = Reservation(VISITOR, "chat", "gpt-4o-mini", "discovery", 10, (1, 1, 1))
        await budget.settle(granted, TokenUsage(1, 1))  # lost, logged, never raised
        with pytest.raises(UsageStoreUnavailableError):
            await budget.usage_report(top=5)
    finally:
        await budget.close()

"""Token budgets of the model, and the day's usage for operators.

Three budgets, each a sliding window: per visitor (anonymous session or signed-in user) per day,
per client IP (IPv6: per /64) per hour, and for the whole service per day. A model call first
reserves its worst case (the prompt estimated from its size plus the output bound) against all
three at once; if one would be exceeded nothing is reserved and the caller goes offline. After
the call the reservation is settled to the usage the model reported (prompt + completion), or
released when the model answered with an error, or kept whole when the model reported nothing
(a stream cut short, a timeout: it may have been billed).

A window is counted in slices (an hour for the daily ones, five minutes for the hourly one) and
a slice counts until the whole window has passed since its end, so the tokens spent in any
window of that length never exceed the budget by more than one call's underestimate.

With REDIS_URL the budgets live in Redis (each check-and-reserve one Lua script, so instances
cannot both take the last tokens); otherwise in this process. An unreachable Redis fails
closed: no budget can be checked, so no model call is made (the offline agent answers).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, Protocol, TypeVar
from uuid import UUID

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import UsageStoreUnavailableError
from autopilot_api.core.metrics import GEN_AI_TOKEN_USAGE, MODEL_BUDGET_REFUSALS, MODEL_COST_USD
from autopilot_api.services.rate_limiter import client_bucket

logger = logging.getLogger(__name__)

Operation = Literal["chat", "extraction"]
BudgetName = Literal["visitor", "client_ip", "instance"]
Refusal = Literal["visitor", "client_ip", "instance", "unavailable"]
BUDGET_NAMES: Final[tuple[BudgetName, ...]] = ("visitor", "client_ip", "instance")

# The prompt estimate: one token per three UTF-8 bytes (English runs near four characters a
# token, CJK near one character of three bytes), plus the framing of each message.
BYTES_PER_TOKEN: Final = 3
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_REQUEST: Final = 3
# Spenders kept per top list and day (the lowest drop out first).
TOP_KEEP: Final = 1_000
# The day's usage is kept past its end, for a look the morning after.
USAGE_TTL_SECONDS: Final = 3 * 86_400
# Budget entries one process keeps without Redis (least recently used dropped first).
MEMORY_MAX_KEYS: Final = 200_000
PROVIDER: Final = "openai"

T = TypeVar("T")


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]], *, extra: str = "") -> int:
    """A conservative token count of a request's messages (and e.g. its response schema)."""
    size, count = len(extra.encode()), 0
    for message in messages:
        size += len(str(message.get("content") or "").encode())
        count += 1
    return math.ceil(size / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * count + TOKENS_PER_REQUEST


def newest_within_chars(items: Sequence[T], *, max_chars: int, size: Callable[[T], int]) -> list[T]:
    """The newest items (in their order) whose sizes add up to at most `max_chars`; the newest
    one always, whatever its size."""
    kept: list[T] = []
    total = 0
    for item in reversed(items):
        total += size(item)
        if kept and total > max_chars:
            break
        kept.append(item)
    kept.reverse()
    return kept


@dataclass(frozen=True)
class Spender:
    """Who a model call is for: the visitor ("session:<id>" or "user:<id>") and their address
    bucket (IPv6 by /64, as the rate limits count it)."""

    visitor: str
    client_ip: str

    @classmethod
    def of(cls, *, session_id: UUID | None, user_id: UUID | None, client_ip: str) -> Spender:
        visitor = f"user:{user_id}" if user_id is not None else f"session:{session_id}"
        return cls(visitor=visitor, client_ip=client_bucket(client_ip))

    def subject(self, name: BudgetName) -> str:
        if name == "visitor":
            return self.visitor
        return self.client_ip if name == "client_ip" else "all"


@dataclass(frozen=True)
class BudgetWindow:
    name: BudgetName
    limit_tokens: int
    window_seconds: int
    slices: int

    @property
    def slice_seconds(self) -> int:
        return self.window_seconds // self.slices

    def slice_at(self, now: float) -> int:
        return int(now // self.slice_seconds)

    def oldest_counted(self, now: float) -> int:
        return self.slice_at(now) - self.slices

    @property
    def ttl_seconds(self) -> int:
        return (self.slices + 1) * self.slice_seconds + 60


def budget_windows(settings: Settings) -> tuple[BudgetWindow, BudgetWindow, BudgetWindow]:
    return (
        BudgetWindow("visitor", settings.model_budget_visitor_tokens_per_day, 86_400, 24),
        BudgetWindow("client_ip", settings.model_budget_client_ip_tokens_per_hour, 3_600, 12),
        BudgetWindow("instance", settings.model_budget_instance_tokens_per_day, 86_400, 24),
    )


@dataclass(frozen=True)
class TokenUsage:
    """What the model reported for one call."""

    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Reservation:
    spender: Spender
    operation: Operation
    model: str
    phase: str
    tokens: int
    slices: tuple[int, ...] = ()
    refused: Refusal | None = None

    @property
    def granted(self) -> bool:
        return self.refused is None

    def offline_metadata(self) -> dict[str, str]:
        """Why a reply came from the offline agent, for the message's metadata."""
        if self.refused == "unavailable":
            return {"mode": "offline", "reason": "budget_unavailable"}
        assert self.refused is not None
        return {"mode": "offline", "reason": "token_budget", "budget": self.refused}


@dataclass
class UsageReport:
    """One UTC day's usage, the budgets and the biggest spenders."""

    day: date
    windows: tuple[BudgetWindow, ...]
    input_tokens: int = 0
    output_tokens: int = 0
    unmetered_tokens: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    instance_spent: int = 0
    top_sessions: list[tuple[str, int]] = field(default_factory=list)
    top_users: list[tuple[str, int]] = field(default_factory=list)
    top_client_ips: list[tuple[str, int]] = field(default_factory=list)
    estimated_cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.unmetered_tokens


@dataclass(frozen=True)
class _Settlement:
    """What a settle writes: the correction of each window and the day's counters."""

    delta: int
    spent: int
    counters: dict[str, int]


class BudgetStoreUnavailable(Exception):
    """The store of the budgets (Redis) did not answer."""


class ModelBudget(Protocol):
    windows: tuple[BudgetWindow, ...]

    async def reserve(
        self, *, spender: Spender, operation: Operation, model: str, phase: str, tokens: int
    ) -> Reservation:
        """Reserve `tokens` against every budget at once, or refuse (naming the budget)."""

    async def settle(
        self, reservation: Reservation, usage: TokenUsage | None, *, billed: bool = True
    ) -> None:
        """Correct a granted reservation to the reported usage; without a report, keep it
        whole when the call may have been billed, else release it."""

    async def usage_report(self, *, top: int) -> UsageReport:
        """Today's usage (UTC); raises UsageStoreUnavailableError when the store is down."""

    async def close(self) -> None: ...


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()


class _ModelBudgetBase:
    """What both stores share: windows, reservations, settlements, metrics and cost."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.windows: tuple[BudgetWindow, ...] = budget_windows(settings)
        self._input_price = settings.model_input_usd_per_million_tokens
        self._output_price = settings.model_output_usd_per_million_tokens
        self._clock = clock

    def cost_usd(self, *, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self._input_price + output_tokens * self._output_price) / 1e6

    async def reserve(
        self, *, spender: Spender, operation: Operation, model: str, phase: str, tokens: int
    ) -> Reservation:
        now = self._clock()
        slices = tuple(window.slice_at(now) for window in self.windows)
        refused: Refusal | None
        try:
            refused = await self._reserve(spender, slices, tokens, now)
        except BudgetStoreUnavailable as exc:
            logger.warning("model budget store unavailable, model call skipped: %s", exc)
            refused = "unavailable"
        if refused is not None:
            MODEL_BUDGET_REFUSALS.labels(budget=refused, autopilot_operation=operation).inc()
        return Reservation(spender, operation, model, phase, tokens, slices, refused)

    async def settle(
        self, reservation: Reservation, usage: TokenUsage | None, *, billed: bool = True
    ) -> None:
        if not reservation.granted:
            return
        counters: dict[str, int] = {}
        if usage is not None:
            spent = usage.total
            counters = {"input": usage.input_tokens, "output": usage.output_tokens}
            self._observe(reservation, usage)
        elif billed:
            spent = reservation.tokens
            counters = {"unmetered": spent}
        else:
            spent = 0
        if spent:
            counters[f"op:{reservation.operation}"] = spent
            counters[f"model:{reservation.model}"] = spent
        settlement = _Settlement(delta=spent - reservation.tokens, spent=spent, counters=counters)
        try:
            await self._settle(reservation, settlement, self._clock())
        except BudgetStoreUnavailable as exc:
            logger.warning("model budget settlement lost, store unavailable: %s", exc)

    def _observe(self, reservation: Reservation, usage: TokenUsage) -> None:
        for kind, tokens in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            GEN_AI_TOKEN_USAGE.labels(
                gen_ai_operation_name="chat",
                gen_ai_provider_name=PROVIDER,
                gen_ai_request_model=reservation.model,
                gen_ai_token_type=kind,
                autopilot_operation=reservation.operation,
                autopilot_phase=reservation.phase,
            ).observe(tokens)
        MODEL_COST_USD.labels(
            gen_ai_request_model=reservation.model, autopilot_operation=reservation.operation
        ).inc(self.cost_usd(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens))

    def _report(
        self,
        now: float,
        counters: Mapping[str, int],
        instance_slices: Mapping[int, int],
        tops: tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]],
    ) -> UsageReport:
        instance = self.windows[2]
        oldest = instance.oldest_counted(now)
        report = UsageReport(
            day=date.fromisoformat(_day(now)),
            windows=self.windows,
            input_tokens=counters.get("input", 0),
            output_tokens=counters.get("output", 0),
            unmetered_tokens=counters.get("unmetered", 0),
            instance_spent=sum(v for k, v in instance_slices.items() if k >= oldest),
            top_sessions=tops[0],
            top_users=tops[1],
            top_client_ips=tops[2],
        )
        for name, value in counters.items():
            kind, _, key = name.partition(":")
            if kind == "op":
                report.by_operation[key] = value
            elif kind == "model":
                report.by_model[key] = value
            elif kind == "refused":
                report.refusals[key] = value
        report.estimated_cost_usd = self.cost_usd(
            input_tokens=report.input_tokens, output_tokens=report.output_tokens
        )
        return report

    async def _reserve(
        self, spender: Spender, slices: tuple[int, ...], tokens: int, now: float
    ) -> Refusal | None:
        raise NotImplementedError

    async def _settle(self, reservation: Reservation, settlement: _Settlement, now: float) -> None:
        raise NotImplementedError


def _top_kind(visitor: str) -> tuple[str, str]:
    kind, _, ident = visitor.partition(":")
    return ("users" if kind == "user" else "sessions"), ident


class InMemoryModelBudget(_ModelBudgetBase):
    """The budgets of this process alone (no REDIS_URL). Check and reserve happen with no
    await between them, so two concurrent reservations cannot both take the last tokens."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        max_keys: int = MEMORY_MAX_KEYS,
    ) -> None:
        super().__init__(settings, clock=clock)
        self._slices: OrderedDict[tuple[str, str], dict[int, int]] = OrderedDict()
        self._max_keys = max_keys
        self._day = ""
        self._counters: dict[str, int] = {}
        self._tops: dict[str, dict[str, int]] = {}

    def _window(self, name: str, subject: str, oldest: int) -> dict[int, int]:
        key = (name, subject)
        slices = self._slices.get(key)
        if slices is None:
            slices = self._slices[key] = {}
            while len(self._slices) > self._max_keys:
                self._slices.popitem(last=False)
        else:
            self._slices.move_to_end(key)
            for stale in [s for s in slices if s < oldest]:
                del slices[stale]
        return slices

    def _today(self, now: float) -> None:
        day = _day(now)
        if day != self._day:
            self._day, self._counters, self._tops = day, {}, {}

    async def _reserve(
        self, spender: Spender, slices: tuple[int, ...], tokens: int, now: float
    ) -> Refusal | None:
        counted = []
        for window, current in zip(self.windows, slices, strict=True):
            spent = self._window(window.name, spender.subject(window.name), current - window.slices)
            if sum(spent.values()) + tokens > window.limit_tokens:
                self._today(now)
                name = f"refused:{window.name}"
                self._counters[name] = self._counters.get(name, 0) + 1
                return window.name
            counted.append(spent)
        for spent, current in zip(counted, slices, strict=True):
            spent[current] = spent.get(current, 0) + tokens
        return None

    async def _settle(self, reservation: Reservation, settlement: _Settlement, now: float) -> None:
        if settlement.delta:
            for window, current in zip(self.windows, reservation.slices, strict=True):
                spent = self._slices.get((window.name, reservation.spender.subject(window.name)))
                if spent is not None and current in spent:
                    spent[current] = max(spent[current] + settlement.delta, 0)
        if not settlement.spent:
            return
        self._today(now)
        for name, value in settlement.counters.items():
            self._counters[name] = self._counters.get(name, 0) + value
        kind, ident = _top_kind(reservation.spender.visitor)
        for top, member in ((kind, ident), ("ips", reservation.spender.client_ip)):
            board = self._tops.setdefault(top, {})
            board[member] = board.get(member, 0) + settlement.spent
            if len(board) > 2 * TOP_KEEP:
                kept = sorted(board.items(), key=lambda item: item[1], reverse=True)[:TOP_KEEP]
                self._tops[top] = dict(kept)

    async def usage_report(self, *, top: int) -> UsageReport:
        now = self._clock()
        self._today(now)
        instance = self._window("instance", "all", self.windows[2].oldest_counted(now))

        def best(kind: str) -> list[tuple[str, int]]:
            board = self._tops.get(kind, {})
            return sorted(board.items(), key=lambda item: (-item[1], item[0]))[:top]

        return self._report(
            now, self._counters, instance, (best("sessions"), best("users"), best("ips"))
        )

    async def close(self) -> None:
        return None


# KEYS: the three window hashes, the day's counters. ARGV: tokens, the counters' TTL, then
# per window: limit, current slice, slices counted, TTL, name.
_RESERVE = """
local tokens = tonumber(ARGV[1])
for i = 1, 3 do
  local base = 2 + (i - 1) * 5
  local limit = tonumber(ARGV[base + 1])
  local oldest = tonumber(ARGV[base + 2]) - tonumber(ARGV[base + 3])
  local spent = 0
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    if tonumber(fields[j]) < oldest then
      redis.call('HDEL', KEYS[i], fields[j])
    else
      spent = spent + tonumber(fields[j + 1])
    end
  end
  if spent + tokens > limit then
    redis.call('HINCRBY', KEYS[4], 'refused:' .. ARGV[base + 5], 1)
    redis.call('EXPIRE', KEYS[4], ARGV[2])
    return i
  end
end
for i = 1, 3 do
  local base = 2 + (i - 1) * 5
  redis.call('HINCRBY', KEYS[i], ARGV[base + 2], tokens)
  redis.call('EXPIRE', KEYS[i], ARGV[base + 4])
end
return 0
"""

# KEYS: the three window hashes, the day's counters, the visitor's and the address's top list.
# ARGV: delta, the three slices, TTL, top kept, visitor member, address member, tokens spent,
# then counter name / value pairs.
_SETTLE = """
local delta = tonumber(ARGV[1])
if delta ~= 0 then
  for i = 1, 3 do
    if redis.call('HEXISTS', KEYS[i], ARGV[1 + i]) == 1 then
      if redis.call('HINCRBY', KEYS[i], ARGV[1 + i], delta) < 0 then
        redis.call('HSET', KEYS[i], ARGV[1 + i], 0)
      end
    end
  end
end
local spent = tonumber(ARGV[9])
if spent > 0 then
  for j = 10, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[4], ARGV[j], ARGV[j + 1])
  end
  redis.call('EXPIRE', KEYS[4], ARGV[5])
  local keep = tonumber(ARGV[6])
  for k = 5, 6 do
    redis.call('ZINCRBY', KEYS[k], spent, ARGV[k + 2])
    redis.call('EXPIRE', KEYS[k], ARGV[5])
    local extra = redis.call('ZCARD', KEYS[k]) - keep
    if extra > 0 then
      redis.call('ZREMRANGEBYRANK', KEYS[k], 0, extra - 1)
    end
  end
end
return 0
"""


class RedisModelBudget(_ModelBudgetBase):
    """The budgets shared by every instance through Redis; each check-and-reserve is one
    Lua script (atomic). Short socket timeouts: an unreachable Redis costs a reply at most a
    second or two before it is answered offline."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout_seconds: float = 1.0,
    ) -> None:
        from redis import asyncio as redis_asyncio

        super().__init__(settings, clock=clock)
        self._prefix = settings.model_budget_redis_prefix
        self._redis = redis_asyncio.from_url(
            redis_url, socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds
        )
        self._reserve_script = self._redis.register_script(_RESERVE)
        self._settle_script = self._redis.register_script(_SETTLE)

    def _window_key(self, name: str, subject: str) -> str:
        return f"{self._prefix}budget:{name}:{subject}"

    def _usage_key(self, now: float, part: str) -> str:
        return f"{self._prefix}usage:{_day(now)}:{part}"

    async def _call(self, action: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await action
        except (RedisError, OSError, TimeoutError) as exc:
            raise BudgetStoreUnavailable(type(exc).__name__) from exc

    async def _reserve(
        self, spender: Spender, slices: tuple[int, ...], tokens: int, now: float
    ) -> Refusal | None:
        keys = [self._window_key(w.name, spender.subject(w.name)) for w in self.windows]
        args: list[Any] = [tokens, USAGE_TTL_SECONDS]
        for window, current in zip(self.windows, slices, strict=True):
            args += [window.limit_tokens, current, window.slices, window.ttl_seconds, window.name]
        refused = int(
            await self._call(
                self._reserve_script(keys=[*keys, self._usage_key(now, "totals")], args=args)
            )
        )
        return None if refused == 0 else self.windows[refused - 1].name

    async def _settle(self, reservation: Reservation, settlement: _Settlement, now: float) -> None:
        spender = reservation.spender
        kind, ident = _top_kind(spender.visitor)
        keys = [self._window_key(w.name, spender.subject(w.name)) for w in self.windows]
        keys += [
            self._usage_key(now, "totals"),
            self._usage_key(now, kind),
            self._usage_key(now, "ips"),
        ]
        args: list[Any] = [settlement.delta, *reservation.slices, USAGE_TTL_SECONDS, TOP_KEEP]
        args += [ident, spender.client_ip, settlement.spent]
        for name, value in settlement.counters.items():
            args += [name, value]
        await self._call(self._settle_script(keys=keys, args=args))

    async def usage_report(self, *, top: int) -> UsageReport:
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._usage_key(now, "totals"))
            for kind in ("sessions", "users", "ips"):
                pipe.zrevrange(self._usage_key(now, kind), 0, top - 1, withscores=True)
            pipe.hgetall(self._window_key("instance", "all"))
            try:
                totals, sessions, users, ips, instance = await self._call(pipe.execute())
            except BudgetStoreUnavailable as exc:
                raise UsageStoreUnavailableError() from exc

        def board(rows: list[tuple[bytes, float]]) -> list[tuple[str, int]]:
            return [(member.decode(), int(score)) for member, score in rows]

        counters = {k.decode(): int(v) for k, v in totals.items()}
        slices = {int(k): int(v) for k, v in instance.items()}
        return self._report(now, counters, slices, (board(sessions), board(users), board(ips)))

    async def close(self) -> None:
        await self._redis.aclose()


def create_model_budget(settings: Settings) -> ModelBudget:
    if settings.redis_url:
        return RedisModelBudget(settings, settings.redis_url)
    return InMemoryModelBudget(settings)

"""Wire contracts of /api/v1/admin."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from pydantic import Field

from autopilot_api.models.session import SessionPhase
from autopilot_api.schemas.common import CamelModel
from autopilot_api.schemas.discovery import SessionStatus

if TYPE_CHECKING:
    from autopilot_api.services.model_budget import UsageReport


class SessionTotals(CamelModel):
    total: int
    by_phase: dict[str, int]
    by_status: dict[str, int]
    active_recently: int
    active_window_minutes: int


class AdminSessionRow(CamelModel):
    id: UUID
    phase: SessionPhase
    status: SessionStatus
    current_question_index: int
    answer_count: int
    roi_input_count: int
    claimed_by_profile_id: UUID | None
    version: int
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


class AdminSessionsPublic(CamelModel):
    totals: SessionTotals
    sessions: list[AdminSessionRow] = Field(description="Newest activity first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class ModelTokenTotals(CamelModel):
    input_tokens: int = Field(description="Prompt tokens the model reported.")
    output_tokens: int = Field(description="Completion tokens the model reported.")
    unmetered_tokens: int = Field(
        description="Reserved tokens kept because the model reported no usage (a stream cut "
        "short, a timeout): counted against the budgets as if spent."
    )
    total_tokens: int


class ModelBudgetPublic(CamelModel):
    name: Literal["visitor", "client_ip", "instance"] = Field(
        description="visitor: each session or signed-in user; client_ip: each client address "
        "(IPv6: each /64); instance: the whole service."
    )
    limit_tokens: int
    window_seconds: int = Field(description="The sliding window the limit applies to.")
    spent_tokens: int | None = Field(
        description="Spent in the current window (instance only; per visitor and per address: "
        "see the top lists)."
    )
    refusals_today: int = Field(
        description="Model calls (chat or extraction) not made today because it was spent."
    )


class VisitorTokens(CamelModel):
    id: UUID = Field(description="The session's id, or the user's.")
    tokens: int


class ClientIpTokens(CamelModel):
    client_ip: str = Field(description="The client address; IPv6 as its /64.")
    tokens: int


class ModelUsagePublic(CamelModel):
    day: date = Field(description="Today (UTC).")
    totals: ModelTokenTotals
    by_operation: dict[str, int] = Field(description="Tokens by call: chat, extraction.")
    by_model: dict[str, int] = Field(description="Tokens by model.")
    estimated_cost_usd: float = Field(
        description="Reported tokens at the MODEL_INPUT/OUTPUT_USD_PER_MILLION_TOKENS prices."
    )
    budgets: list[ModelBudgetPublic] = Field(description="visitor, client_ip, instance.")
    top_sessions: list[VisitorTokens] = Field(description="Most tokens today first.")
    top_users: list[VisitorTokens] = Field(description="Most tokens today first.")
    top_client_ips: list[ClientIpTokens] = Field(description="Most tokens today first.")

    @classmethod
    def from_report(cls, report: UsageReport) -> ModelUsagePublic:
        refusals = report.refusals
        return cls(
            day=report.day,
            totals=ModelTokenTotals(
                input_tokens=report.input_tokens,
                output_tokens=report.output_tokens,
                unmetered_tokens=report.unmetered_tokens,
                total_tokens=report.total_tokens,
            ),
            by_operation=report.by_operation,
            by_model=report.by_model,
            estimated_cost_usd=round(report.estimated_cost_usd, 6),
            budgets=[
                ModelBudgetPublic(
                    name=window.name,
                    limit_tokens=window.limit_tokens,
                    window_seconds=window.window_seconds,
                    spent_tokens=report.instance_spent if window.name == "instance" else None,
                    refusals_today=refusals.get(window.name, 0),
                )
                for window in report.windows
            ],
            top_sessions=[VisitorTokens(id=UUID(i), tokens=n) for i, n in report.top_sessions],
            top_users=[VisitorTokens(id=UUID(i), tokens=n) for i, n in report.top_users],
            top_client_ips=[
                ClientIpTokens(client_ip=ip, tokens=n) for ip, n in report.top_client_ips
            ],
        )


class CleanupResult(CamelModel):
    deleted: int


class EventTicketPublic(CamelModel):
    ticket: str = Field(
        description="Pass as ?ticket= to GET /api/v1/events, before expiresAt. Its first use "
        "sets the stream cookie; the same URL then reconnects only with that cookie."
    )
    expires_at: datetime

"""The discovery agent: phase-specific prompts over the shared AsyncOpenAI client, or an
offline interviewer that asks the catalogue's questions itself when no key is set."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import anyio
import openai
from openai import AsyncOpenAI

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import ModelUnavailableError
from autopilot_api.core.metrics import MODEL_SECONDS
from autopilot_api.discovery.answers import retry_note
from autopilot_api.discovery.catalogue import STEP_BY_ASKED, next_step
from autopilot_api.discovery.kinds import InvalidAnswer
from autopilot_api.models.auth import UserContext
from autopilot_api.models.conversation import Conversation, Message
from autopilot_api.models.session import SessionPhase
from autopilot_api.schemas.discovery import (
    AnswerInput,
    DiscoveryProfileUpdate,
    ProgressUpdate,
    ROIInputsUpdate,
    SessionUpdate,
)
from autopilot_api.services.agent_prompts import closing_offline_reply, messages_for_model
from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
from autopilot_api.services.model_budget import (
    ModelBudget,
    Reservation,
    Spender,
    TokenUsage,
    estimate_prompt_tokens,
    newest_within_chars,
)
from autopilot_api.services.session_service import SessionService

logger = logging.getLogger(__name__)


@dataclass
class ChatOwner:
    """Whose progress a conversation advances: a session's or a signed-in user's."""

    session_id: UUID | None
    user: UserContext | None
    progress: Mapping[str, Any]

    @property
    def phase(self) -> SessionPhase:
        phase: SessionPhase = self.progress["phase"]
        return phase


@dataclass
class AgentReply:
    content: str = ""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    model_seconds: float | None = None


def _word_pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text) or [text]


class AgentService:
    def __init__(
        self,
        openai_client: AsyncOpenAI | None,
        settings: Settings,
        *,
        sessions: SessionService,
        profiles: DiscoveryProfileService,
        budget: ModelBudget,
    ) -> None:
        self._openai = openai_client
        self._settings = settings
        self._sessions = sessions
        self._profiles = profiles
        self._budget = budget

    @property
    def offline(self) -> bool:
        return self._openai is None

    async def generate_response(
        self,
        *,
        conversation: Conversation,
        owner: ChatOwner,
        history: list[Message],
        spender: Spender,
    ) -> AgentReply:
        reply = AgentReply()
        async for _ in self.stream_response(
            conversation=conversation, owner=owner, history=history, spender=spender, reply=reply
        ):
            pass
        return reply

    async def stream_response(
        self,
        *,
        conversation: Conversation,
        owner: ChatOwner,
        history: list[Message],
        spender: Spender,
        reply: AgentReply,
    ) -> AsyncIterator[str]:
        """Yields the reply's text pieces; `reply` holds the whole reply when it ends.

        The model answers when its call fits the spender's token budgets; otherwise the
        offline agent does, and the reply's metadata says why."""
        pieces: AsyncIterator[str]
        if self._openai is None:
            pieces = await self._offline_turn(owner=owner, history=history, reply=reply)
        else:
            # The prompt bounded by characters too, before the messages are built.
            bounded = newest_within_chars(
                history,
                max_chars=self._settings.agent_history_max_chars,
                size=lambda message: len(message["content"]),
            )
            messages = self._messages_for_model(owner, bounded)
            reservation = await self._budget.reserve(
                spender=spender,
                operation="chat",
                model=self._settings.openai_model,
                phase=owner.phase,
                tokens=estimate_prompt_tokens(messages)
                + self._settings.agent_max_completion_tokens,
            )
            if reservation.granted:
                pieces = self._model_turn(messages=messages, reservation=reservation, reply=reply)
            else:
                pieces = await self._offline_turn(owner=owner, history=history, reply=reply)
                reply.metadata = {**reply.metadata, **reservation.offline_metadata()}
        async for piece in pieces:
            reply.content += piece
            yield piece

    # --- the model --------------------------------------------------------------------
    def _messages_for_model(self, owner: ChatOwner, history: list[Message]) -> list[Any]:
        return messages_for_model(owner.progress, history[-self._settings.agent_history_messages :])

    async def _model_turn(
        self, *, messages: list[Any], reservation: Reservation, reply: AgentReply
    ) -> AsyncIterator[str]:
        assert self._openai is not None
        reply.model = self._settings.openai_model
        started = time.perf_counter()
        usage: TokenUsage | None = None
        # Without a usage report the call may have been billed (a stream cut short, a
        # timeout): the reservation stays. An error answer was not: it is released.
        billed = True
        try:
            stream = await self._openai.chat.completions.create(
                model=self._settings.openai_model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                temperature=0.4,
                max_completion_tokens=self._settings.agent_max_completion_tokens,
            )
            # Closing the stream on every exit (also cancellation) frees the connection.
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        reply.prompt_tokens = chunk.usage.prompt_tokens
                        reply.completion_tokens = chunk.usage.completion_tokens
                        usage = TokenUsage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
        except openai.APIError as exc:
            billed = not isinstance(exc, openai.APIStatusError)
            logger.warning("model call failed: %s", type(exc).__name__)
            raise ModelUnavailableError() from exc
        finally:
            reply.model_seconds = time.perf_counter() - started
            MODEL_SECONDS.observe(reply.model_seconds)
            # Also when the visitor left mid-stream (this generator is being cancelled).
            with anyio.CancelScope(shield=True):
                await self._budget.settle(reservation, usage, billed=billed)

    # --- offline: the catalogue asks itself ------------------------------------------
    async def _record(self, owner: ChatOwner, update: ProgressUpdate) -> Mapping[str, Any]:
        if owner.user is not None:
            return await self._profiles.update(
                user=owner.user,
                update=DiscoveryProfileUpdate(**update.model_dump(exclude_unset=True)),
            )
        assert owner.session_id is not None
        return await self._sessions.update_session(
            session_id=owner.session_id,
            update=SessionUpdate(**update.model_dump(exclude_unset=True)),
        )

    async def _offline_turn(
        self, *, owner: ChatOwner, history: list[Message], reply: AgentReply
    ) -> AsyncIterator[str]:
        progress = owner.progress
        asked = self._last_asked(history)
        visitor_text = history[-1]["content"] if history and history[-1]["role"] == "user" else ""

        # The same validator as PUT, after a lenient read of what people type ("50k", "yes");
        # what does not fit is asked again, with the form it should take. A step the
        # catalogue no longer has is not recorded: the next one is asked.
        step = STEP_BY_ASKED.get(asked) if asked is not None else None
        if step is not None:
            try:
                if step.store == "answers" and visitor_text.strip():
                    value = step.parse(visitor_text)
                    progress = await self._record(
                        owner, ProgressUpdate(answers={step.key: AnswerInput(value=value)})
                    )
                elif step.store == "roi_inputs":
                    number = step.parse(visitor_text)
                    progress = await self._record(
                        owner, ProgressUpdate(roi_inputs=ROIInputsUpdate(**{step.key: number}))
                    )
            except InvalidAnswer:
                reply.metadata = {"asked": step.asked}
                return self._pieces(retry_note(step.asked) + step.label)

        text, asked_next = self._next_step(progress)
        reply.metadata = {"asked": asked_next} if asked_next else {}
        return self._pieces(text)

    @staticmethod
    def _next_step(progress: Mapping[str, Any]) -> tuple[str, str | None]:
        """What to ask next, as the opening does: the first step not stored, from the
        owner's phase on (the questions, then the ROI inputs), then the business case. The
        phase is SQL's to move (when the answer that completes one is stored), never the
        agent's."""
        step = next_step(
            progress["phase"],
            answers=(progress.get("answers") or {}).keys(),
            roi_inputs=(progress.get("roi_inputs") or {}).keys(),
        )
        if step is not None:
            return step.label, step.asked
        return closing_offline_reply(progress), None

    @staticmethod
    def _last_asked(history: list[Message]) -> str | None:
        for message in reversed(history):
            if message["role"] == "assistant":
                asked = message.get("metadata", {}).get("asked")
                return str(asked) if asked else None
        return None

    @staticmethod
    async def _pieces(text: str) -> AsyncIterator[str]:
        for piece in _word_pieces(text):
            yield piece

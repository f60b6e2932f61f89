"""The AppError hierarchy: services raise these, one handler renders the JSON envelope.

Services never import FastAPI; an error knows its own code, status and category.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

ErrorCategory = Literal["user_fixable", "admin_required", "temporary"]


class AppError(Exception):
    code: ClassVar[str] = "error"
    status_code: ClassVar[int] = 400
    category: ClassVar[ErrorCategory] = "user_fixable"
    default_message: ClassVar[str] = "The request could not be completed."
    _by_code: ClassVar[dict[str, type[AppError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        AppError._by_code.setdefault(cls.code, cls)

    @classmethod
    def for_code(cls, code: str) -> type[AppError] | None:
        """The error class with this code (SQL functions name errors by code)."""
        return cls._by_code.get(code)

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.code, self.message, self.category, self.details)


def error_envelope(
    code: str, message: str, category: ErrorCategory, details: Any = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "category": category, "details": details}}


def field_name(loc: Sequence[str | int]) -> str:
    """A field as the client wrote it: `answers.facility_type.value`, `selectedProductIds[0]`,
    `body` (the whole body), `header If-Match`, `query limit`."""
    if not loc:
        return "request"
    where, *path = loc
    dotted = ""
    for part in path:
        if isinstance(part, int):
            dotted += f"[{part}]"
        else:
            dotted += f".{part}" if dotted else str(part)
    if where == "body":
        return dotted or "body"
    return f"{where} {dotted}".rstrip()


def field_error(loc: Sequence[str | int], message: str, error_type: str) -> dict[str, Any]:
    """One entry of a 422's details: the field, its location, what is wrong with it."""
    return {"field": field_name(loc), "loc": list(loc), "msg": message, "type": error_type}


class NotFoundError(AppError):
    code = "not_found"
    status_code = 404
    default_message = "Not found."


class ValidationFailedError(AppError):
    code = "validation_error"
    status_code = 422
    default_message = "The request is not valid."


class UnauthorizedError(AppError):
    code = "unauthorized"
    status_code = 401
    default_message = "Authentication is required."


class ForbiddenError(AppError):
    code = "forbidden"
    status_code = 403
    default_message = "You are not allowed to do this."


class ConflictError(AppError):
    code = "conflict"
    status_code = 409
    default_message = "The request conflicts with the current state."


class PayloadTooLargeError(AppError):
    code = "payload_too_large"
    status_code = 413
    default_message = "The request body is too large."


class TemporaryError(AppError):
    """Something we depend on is down; the client should retry later."""

    code = "temporarily_unavailable"
    status_code = 503
    category = "temporary"
    default_message = "The service is temporarily unavailable; retry shortly."
    retry_after_seconds: ClassVar[int] = 5

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(
            message, details=details, headers={"Retry-After": str(self.retry_after_seconds)}
        )


class DataPlaneUnavailableError(TemporaryError):
    code = "data_plane_unavailable"
    default_message = "The database is temporarily unavailable; retry shortly."


class DataPlaneDownError(AppError):
    """A data plane this process started (local mode) is down and will not come back by
    itself: someone has to look at it, so no Retry-After."""

    code = "data_plane_down"
    status_code = 503
    category = "admin_required"
    default_message = "The local data plane is down; see the server log."


class InternalError(AppError):
    code = "internal_error"
    status_code = 500
    category = "admin_required"
    default_message = "An unexpected error occurred; it has been logged."


class SessionNotFoundError(NotFoundError):
    code = "session_not_found"
    default_message = "No active session: create one with POST /api/v1/sessions."


class SessionAlreadyClaimedError(ConflictError):
    code = "session_already_claimed"
    default_message = "This session was claimed by another account."


class SignedInNoAnonymousSessionError(ConflictError):
    code = "signed_in_no_anonymous_session"
    default_message = (
        "You are signed in and sent no live anonymous session cookie, so no session was "
        "created: a signed-in user's answers live in the discovery profile "
        "(GET and PUT /api/v1/discovery). Anonymous sessions are created before sign-in, "
        "and POST /api/v1/sessions/claim moves one into the profile."
    )


class InvalidPhaseTransitionError(ConflictError):
    code = "invalid_phase_transition"
    default_message = "That phase change is not allowed."


class PreconditionFailedError(AppError):
    code = "precondition_failed"
    status_code = 412
    default_message = "The resource changed since you read it (stale If-Match); reload and retry."


class RateLimitedError(AppError):
    code = "rate_limited"
    status_code = 429
    category = "temporary"
    default_message = "Too many requests; retry after the time in Retry-After."

    def __init__(self, message: str | None = None, *, retry_after_seconds: int) -> None:
        super().__init__(
            message,
            details={"retryAfterSeconds": retry_after_seconds},
            headers={"Retry-After": str(max(retry_after_seconds, 1))},
        )


class CsrfOriginRejectedError(ForbiddenError):
    code = "csrf_origin_rejected"
    default_message = (
        "An Origin header naming an allowed origin (or the API's own) is required for "
        "browser-credentialed writes: those sent with the session cookie or without a "
        "bearer token."
    )


class AnonymousUserCannotClaimError(ForbiddenError):
    code = "anonymous_user_cannot_claim"
    default_message = "Sign up with a permanent account before claiming a session."


class ConversationNotFoundError(NotFoundError):
    code = "conversation_not_found"
    default_message = "No such conversation."


class IdempotencyKeyInUseError(ConflictError):
    code = "idempotency_key_in_use"
    default_message = "A request with this Idempotency-Key is still being answered; retry shortly."


class IdempotencyKeyReusedError(ValidationFailedError):
    code = "idempotency_key_reused"
    default_message = (
        "This Idempotency-Key was used with a different request; send a new key with a new request."
    )


class ModelUnavailableError(TemporaryError):
    code = "model_unavailable"
    default_message = (
        "The assistant is temporarily unavailable; your message was kept. Retry shortly."
    )


class UsageStoreUnavailableError(TemporaryError):
    code = "usage_store_unavailable"
    default_message = "The model usage store (Redis) is unreachable; retry shortly."


class CompletionNotAllowedError(ConflictError):
    code = "completion_not_allowed"
    default_message = "Only a session or profile in the greenlight phase can be completed."


class SearchSessionNotFoundError(NotFoundError):
    code = "search_session_not_found"
    default_message = "No such search session."


class BatchExhaustedError(NotFoundError):
    code = "batch_exhausted"
    default_message = "Every batch of this search session was handed out."


class SessionInactiveError(ConflictError):
    code = "session_inactive"
    default_message = "This search session was cleared."


class IdsNotDiscoveredError(ValidationFailedError):
    code = "ids_not_discovered"
    default_message = "Some ids were never discovered in this search session."


class MetadataTooLargeError(ValidationFailedError):
    # 422, not 413: the request itself is small; what it would leave stored breaks a rule.
    code = "metadata_too_large"
    default_message = "The session's metadata would exceed its size limit."


class SearchSessionFullError(ValidationFailedError):
    code = "search_session_full"
    default_message = "This search session holds as many discovered ids as it may."


# Storage caps per owner (issue 20): 422 like the two above, each naming its limit in details.
class TooManyConversationsError(ValidationFailedError):
    code = "too_many_conversations"
    default_message = "You have as many conversations as one visitor may have."


class ConversationFullError(ValidationFailedError):
    code = "conversation_full"
    default_message = "This conversation holds as many of your messages as one may."


class TooManySearchSessionsError(ValidationFailedError):
    code = "too_many_search_sessions"
    default_message = "You have as many active search sessions as one visitor may have."


class SearchQueryTooLargeError(ValidationFailedError):
    code = "search_query_too_large"
    default_message = "The search query is larger than a search session may store."

"""The AppError hierarchy: services raise these, one handler renders the JSON envelope.

Services never import FastAPI; an error knows its own code, status and category.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorCategory = Literal["user_fixable", "admin_required", "temporary"]


class AppError(Exception):
    code: ClassVar[str] = "error"
    status_code: ClassVar[int] = 400
    category: ClassVar[ErrorCategory] = "user_fixable"
    default_message: ClassVar[str] = "The request could not be completed."

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
    return {
        "error": {"code": code, "message": message, "category": category, "details": details}
    }


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


class InternalError(AppError):
    code = "internal_error"
    status_code = 500
    category = "admin_required"
    default_message = "An unexpected error occurred; it has been logged."

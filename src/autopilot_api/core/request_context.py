"""Per-request values visible to logging without passing them around."""

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Identity resolution found a dead session cookie: error responses clear it too.
clear_cookie_var: ContextVar[bool] = ContextVar("clear_session_cookie", default=False)

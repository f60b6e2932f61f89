"""The dependencies routes use, as `Annotated` aliases defined once and imported from here
(never an inline `Depends()` in a route), with the helpers routes call on a response.

- identity.py: who is calling (user, session, both, neither) and the CSRF rule
- cookies.py: the session and event-stream cookies
- services.py: the settings and the services the composition root built once
- ownership.py: the conversation in the path; who owns what a request reads or creates
- conditional.py: If-Match, ETag, Location
- retries.py: Idempotency-Key
- address.py: the client's address behind trusted proxies

Every dependency is `async def`, even when it does not await: FastAPI runs a plain `def`
dependency in the thread pool, which costs more than the work itself.
"""

from autopilot_api.api.deps.address import client_ip
from autopilot_api.api.deps.conditional import (
    IfMatchDep,
    expected_version,
    set_etag,
    set_location,
)
from autopilot_api.api.deps.cookies import (
    EventStreamCookie,
    clear_session_cookie,
    set_event_stream_cookie,
    set_session_cookie,
)
from autopilot_api.api.deps.identity import (
    ClaimCaller,
    CurrentAdmin,
    CurrentAuth,
    CurrentUser,
    MetricsAccess,
    SessionCaller,
    SessionProgressWriteDep,
    WritingUser,
)
from autopilot_api.api.deps.ownership import OwnedConversation, ReadOwnerDep, WriteOwnerDep
from autopilot_api.api.deps.retries import IdempotencyKeyHeader, mark_replayed
from autopilot_api.api.deps.services import (
    AdminServiceDep,
    ChatServiceDep,
    ConversationServiceDep,
    DiscoveryProfileServiceDep,
    EventServiceDep,
    HealthServiceDep,
    ProfileExtractionServiceDep,
    SearchSessionServiceDep,
    SessionServiceDep,
    SettingsDep,
)

__all__ = [
    "AdminServiceDep",
    "ChatServiceDep",
    "ClaimCaller",
    "ConversationServiceDep",
    "CurrentAdmin",
    "CurrentAuth",
    "CurrentUser",
    "DiscoveryProfileServiceDep",
    "EventServiceDep",
    "EventStreamCookie",
    "HealthServiceDep",
    "IdempotencyKeyHeader",
    "IfMatchDep",
    "MetricsAccess",
    "OwnedConversation",
    "ProfileExtractionServiceDep",
    "ReadOwnerDep",
    "SearchSessionServiceDep",
    "SessionCaller",
    "SessionProgressWriteDep",
    "SessionServiceDep",
    "SettingsDep",
    "WriteOwnerDep",
    "WritingUser",
    "clear_session_cookie",
    "client_ip",
    "expected_version",
    "mark_replayed",
    "set_etag",
    "set_event_stream_cookie",
    "set_location",
    "set_session_cookie",
]

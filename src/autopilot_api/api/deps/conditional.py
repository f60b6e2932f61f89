"""A resource's version and place on the wire: If-Match in, ETag and Location out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, Request, Response

from autopilot_api.schemas.common import IF_MATCH_PATTERN

# ASCII digits only: str.isdigit() also passes "²", which int() refuses. At most 18 (the
# header's pattern already says so), so int() never meets a number it will not read.
_OUR_ETAG = re.compile(r'"v([0-9]{1,18})"')
MAX_VERSION = 2**31 - 1  # versions are Postgres integers
UNMATCHABLE_VERSION = -1

IfMatch = int | Literal["*"] | None

IfMatchHeader = Annotated[
    str | None,
    Header(
        description='Optional: the ETag you read ("v<version>"), or *; stale → 412.',
        pattern=IF_MATCH_PATTERN,
    ),
]


def etag_for(version: int) -> str:
    return f'"v{version}"'


def parse_if_match(if_match: str | None) -> IfMatch:
    """The version the client expects, '*' for any, or None when not given."""
    if if_match is None:
        return None
    candidates = [part.strip() for part in if_match.split(",") if part.strip()]
    if "*" in candidates:
        return "*"
    for candidate in candidates:
        ours = _OUR_ETAG.fullmatch(candidate.removeprefix("W/"))
        # Past what a version column holds, it can only be stale.
        if ours is not None and int(ours.group(1)) <= MAX_VERSION:
            return int(ours.group(1))
    # A tag this resource never had: the write fails with 412 once the body is validated.
    return UNMATCHABLE_VERSION


async def get_if_match(if_match: IfMatchHeader = None) -> IfMatch:
    return parse_if_match(if_match)


IfMatchDep = Annotated[IfMatch, Depends(get_if_match)]


def expected_version(if_match: IfMatch) -> int | None:
    return None if if_match in (None, "*") else int(if_match)


def set_etag(response: Response, row: Mapping[str, Any]) -> None:
    response.headers["ETag"] = etag_for(int(row["version"]))


def set_location(response: Response, request: Request, route_name: str, **path_params: str) -> None:
    """`Location` of a created resource: its path (a relative reference, right behind proxies)."""
    response.headers["Location"] = str(request.app.url_path_for(route_name, **path_params))

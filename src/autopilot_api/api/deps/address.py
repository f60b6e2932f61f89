"""The client's address, as the rate limits and stream caps count it."""

from __future__ import annotations

import ipaddress

from fastapi import Request

from autopilot_api.core.config import Settings


def _is_trusted_proxy(host: str, settings: Settings) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in settings.trusted_proxy_networks)


def client_ip(request: Request, settings: Settings) -> str:
    """The peer address; forwarding headers count only when the peer is a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    if not settings.trusted_proxy_networks or not _is_trusted_proxy(peer, settings):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted_proxy(hop, settings):
            return hop
    return hops[0] if hops else peer

"""The stream caps as StreamRegistry counts them (the HTTP side: test_event_stream_fair_share)."""

from __future__ import annotations

import pytest

from autopilot_api.core.config import Settings
from autopilot_api.services import event_streams
from autopilot_api.services.event_bus import InProcessEventBus
from autopilot_api.services.event_streams import (
    StreamCaps,
    StreamOwner,
    StreamPlace,
    StreamRegistry,
    SubjectFeed,
    TooManyAnonymousStreamsError,
    TooManyStreamsError,
    TooManyStreamsFromIpError,
)


def registry(**caps: int) -> StreamRegistry:
    values = {"instance": 10, "per_subject": 3, "per_ip": 4, "anonymous": 5, **caps}
    return StreamRegistry(bus=InProcessEventBus(), heartbeat=15, caps=StreamCaps(**values))


def owner(subject: str, ip: str = "192.0.2.1", *, anonymous: bool = True) -> StreamOwner:
    return StreamOwner(subject=subject, ip=ip, anonymous=anonymous)


def live(places: list[StreamPlace]) -> list[StreamPlace]:
    return [p for p in places if not p.stopped.is_set()]


def test_the_anonymous_share_is_a_share_of_the_instance_cap() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        events_max_streams=2000,
        events_anonymous_streams_share=0.25,
    )
    assert StreamCaps.from_settings(settings).anonymous == 500


def test_an_ip_over_its_cap_is_refused_and_another_ip_is_not() -> None:
    streams = registry()
    for index in range(4):
        streams.reserve(owner(f"s{index}"))
    with pytest.raises(TooManyStreamsFromIpError) as refused:
        streams.reserve(owner("s9"))
    assert refused.value.status_code == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    streams.reserve(owner("s9", ip="192.0.2.2"))
    assert streams.open_streams == 5


def test_a_subject_at_the_ip_cap_replaces_its_own_oldest_stream_from_that_ip() -> None:
    streams = registry()
    elsewhere = streams.reserve(owner("mine", ip="192.0.2.9"))
    mine = [streams.reserve(owner("mine")), streams.reserve(owner("mine"))]
    others = [streams.reserve(owner("a")), streams.reserve(owner("b"))]
    newest = streams.reserve(owner("mine"))
    assert live([elsewhere, *mine, *others, newest]) == [elsewhere, mine[1], *others, newest]
    assert mine[0].queue.get_nowait().kind == "stopped"
    assert streams.open_streams == 5


def test_the_subject_cap_ends_the_subjects_oldest_stream() -> None:
    streams = registry(per_ip=100)
    places = [streams.reserve(owner("s", ip=f"192.0.2.{i}")) for i in range(4)]
    assert live(places) == places[1:]


def test_anonymous_streams_fill_their_share_and_signed_in_users_the_rest() -> None:
    streams = registry(per_ip=100, per_subject=100)
    for index in range(5):
        streams.reserve(owner(f"anon{index}"))
    with pytest.raises(TooManyAnonymousStreamsError):
        streams.reserve(owner("anon9"))
    # An anonymous subject that already streams reconnects in its own place.
    streams.reserve(owner("anon0"))
    for index in range(5):
        streams.reserve(owner(f"user{index}", anonymous=False))
    with pytest.raises(TooManyStreamsError):
        streams.reserve(owner("user9", anonymous=False))
    assert (streams.open_streams, streams.anonymous_streams) == (10, 5)


def test_a_place_is_released_once_however_the_stream_ends() -> None:
    streams = registry()
    place = streams.reserve(owner("s"))
    place.stop("stalled")
    place.stop("replaced")
    place.release()
    assert (streams.open_streams, streams.anonymous_streams) == (0, 0)
    streams.reserve(owner("s"))
    assert streams.open_streams == 1


def test_a_stream_too_far_behind_its_subject_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_streams, "STREAM_QUEUE_LIMIT", 3)
    streams = registry()
    feed = SubjectFeed(key="s", bus=InProcessEventBus(), heartbeat=15, registry=streams)
    slow, fast = streams.reserve(owner("s")), streams.reserve(owner("s"))
    for place in (slow, fast):
        feed.places.append(place)
        place.feed = feed
    feed._distribute([{"id": i} for i in range(1, 4)])
    for _ in range(3):
        fast.queue.get_nowait()
    feed._distribute([{"id": 4}])
    assert slow.stopped.is_set()
    assert feed.places == [fast]
    assert fast.queue.get_nowait().event == {"id": 4}
    assert streams.open_streams == 1

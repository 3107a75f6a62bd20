"""Measuring a peer's clock over the replication stream's round trips, as NTP does.

Every replication message carries the sender's physical clock and echoes the
last one it received from the peer with how long it held it; one round trip
gives the peer's offset and a bound on its error (``clock_sample``). The node
fences itself (refuses writes) while its clock is out of bounds against most
of its peers even allowing for each measurement's error.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ClockSample", "clock_sample"]


class ClockSample(NamedTuple):
    offset_ms: int  # the peer's clock minus this node's
    error_ms: int  # the true offset is within this much of offset_ms: half the round trip


def clock_sample(echoed_ms: int, held_ms: int, peer_sent_ms: int, now_ms: int) -> ClockSample | None:
    """The offset of a peer's clock from one round trip, as NTP measures it.

    This node sent a message at ``echoed_ms`` (its clock); the peer held it
    ``held_ms`` and answered at ``peer_sent_ms`` (the peer's clock); the answer
    arrived at ``now_ms`` (this clock). Whatever the two one-way delays, the
    true offset lies within half the round trip of the midpoint estimate, so
    time spent in queues widens the error instead of passing for offset.
    None when the numbers cannot be a round trip (this clock stepped back).
    """
    round_trip = (now_ms - echoed_ms) - held_ms
    if round_trip < 0 or held_ms < 0:
        return None
    offset = ((peer_sent_ms - held_ms - echoed_ms) + (peer_sent_ms - now_ms)) // 2
    return ClockSample(offset, (round_trip + 1) // 2)

"""Measuring a peer's clock over the replication stream's round trips, as NTP does.

Every replication message carries the sender's physical clock and echoes the
last one it received from the peer with how long it held it; one round trip
gives the peer's offset and a bound on its error (``clock_sample``). The node
fences itself (refuses writes) while its clock is out of bounds against most
of its peers even allowing for each measurement's error.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ClockSample", "PeerClock", "clock_sample"]


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


class PeerClock:
    """What this node knows of one peer's clock, from the messages of its current stream.

    ``received`` reads the clock fields of each message from the peer;
    ``stamp`` fills them in on each message to it: the sender's wall clock as
    the message leaves, and an echo of the peer's last one with how long it
    was held here. The offset measured last is kept across streams (it is
    shown with its age; the fence counts only fresh ones).
    """

    def __init__(self) -> None:
        self.offset_ms: int | None = None  # the peer's clock minus this node's, as last measured
        self.error_ms = 0  # that measurement is right to within this
        self.measured_at = 0.0  # monotonic seconds of that measurement
        self._peer_sent_wall_ms = 0  # the last message from the peer on this stream: its clock ...
        self._peer_received_at = 0.0  # ... and when it arrived (monotonic seconds)

    def new_stream(self) -> None:
        self._peer_sent_wall_ms = 0

    def received(self, sent_wall_ms: int, echo_wall_ms: int, echo_held_ms: int, wall_ms: int, now_s: float) -> None:
        """A message from the peer: sent at ``sent_wall_ms`` (its clock), arriving at ``wall_ms`` (this clock)."""
        if not sent_wall_ms:
            return
        self._peer_sent_wall_ms = sent_wall_ms
        self._peer_received_at = now_s
        if echo_wall_ms:
            sample = clock_sample(echo_wall_ms, echo_held_ms, sent_wall_ms, wall_ms)
            if sample is not None:
                self.offset_ms, self.error_ms = sample
                self.measured_at = now_s

    def stamp(self, wall_ms: int, now_s: float) -> tuple[int, int, int]:
        """The clock fields of a message leaving now: (sent_wall_ms, echo_wall_ms, echo_held_ms)."""
        if not self._peer_sent_wall_ms:
            return wall_ms, 0, 0
        return wall_ms, self._peer_sent_wall_ms, round((now_s - self._peer_received_at) * 1000)

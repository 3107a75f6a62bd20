"""Replication lag, measured where the write was committed, on one clock.

For each local group commit the node remembers when it committed (its
monotonic clock) and the counter it reached under its origin. When a peer's
acknowledgement first covers that counter, the peer has the commit durably:
the time since the commit is one sample of ``crdtstore_replication_lag_seconds``
for that peer (one per commit, not per event). Both ends of the interval are
read on this node's clock, so clock skew between regions cannot bend it; it
includes the acknowledgement's way back, half a round trip.

``oldest_unacked_s(peer)`` is how long the oldest commit the peer has not yet
acknowledged has waited: it rises through a partition and falls back once the
peer catches up, which the histogram (observed only on acknowledgement)
cannot show while the partition lasts. A scrape reads it
(``crdtstore_replication_oldest_unacked_seconds``).

Memory is bounded: at most ``commits_max`` commits are remembered; past
that the oldest are forgotten (a peer away that long has its backlog shown
by ``crdtstore_replication_events_behind``, and its lag by the age of the
oldest commit still remembered).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable

from prometheus_client import Histogram

__all__ = ["CommitLag"]


class CommitLag:
    def __init__(
        self, peers: Iterable[str], histogram: Histogram, now_s: Callable[[], float], commits_max: int = 100_000
    ) -> None:
        self._histogram = histogram
        self._now_s = now_s
        self._commits_max = commits_max
        self._counters: deque[int] = deque()  # increasing counters of this node's origin, one per commit
        self._times: deque[float] = deque()  # when each was committed
        self._acked: dict[str, int] = dict.fromkeys(peers, 0)
        self._origin = ""

    def committed(self, origin: str, counter: int) -> None:
        """A local commit reached ``counter`` under ``origin`` (a new origin starts afresh)."""
        if origin != self._origin:
            self._origin = origin
            self._counters.clear()
            self._times.clear()
            self._acked = dict.fromkeys(self._acked, 0)
        if self._counters and counter <= self._counters[-1]:
            return
        self._counters.append(counter)
        self._times.append(self._now_s())
        if len(self._counters) > self._commits_max:
            self._counters.popleft()
            self._times.popleft()

    def acked(self, peer: str, counter: int) -> None:
        """``peer`` acknowledged this node's origin up to ``counter``: observe the commits that newly covers."""
        before = self._acked.get(peer)
        if before is None or counter <= before:
            return
        self._acked[peer] = counter
        counters = self._counters
        if not counters:
            return
        start = bisect.bisect_right(counters, before)
        end = bisect.bisect_right(counters, counter)
        if start < end:
            now = self._now_s()
            child = self._histogram.labels(peer)
            for i in range(start, end):
                child.observe(max(0.0, now - self._times[i]))
        self._forget_acked_by_all()

    def _forget_acked_by_all(self) -> None:
        floor = min(self._acked.values(), default=0)
        while self._counters and self._counters[0] <= floor:
            self._counters.popleft()
            self._times.popleft()

    def oldest_unacked_s(self, peer: str) -> float:
        """Seconds the oldest commit ``peer`` has not acknowledged has waited; 0 when it has them all."""
        acked = self._acked.get(peer, 0)
        i = bisect.bisect_right(self._counters, acked)
        if i >= len(self._counters):
            return 0.0
        return max(0.0, self._now_s() - self._times[i])

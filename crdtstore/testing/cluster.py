"""An in-memory cluster of whole-store replicas for scenario tests.

No network and no storage: each region is a ``StoreMap``, a fake physical
clock and a hybrid logical clock. Writes are applied locally and return their
delta; the test decides where each delta goes, so scenarios read like what
they build::

    cluster = LocalCluster()
    d = cluster.delete("eu", "k")
    cluster.add("us", "k", "x")        # concurrent: "us" has not seen d
    cluster.sync_all()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from crdtstore.crdt import (
    HybridLogicalClock,
    KeyState,
    KeyValue,
    Register,
    StoreMap,
    Timestamp,
)
from crdtstore.testing.clock import FakeClock

__all__ = ["LocalCluster"]


class LocalCluster:
    def __init__(self, regions: Sequence[str] = ("eu", "us", "ap"), *, max_offset_ms: int = 500) -> None:
        self.regions = tuple(regions)
        self.states: dict[str, StoreMap] = {r: StoreMap() for r in self.regions}
        self.clocks: dict[str, FakeClock] = {r: FakeClock() for r in self.regions}
        self.hlcs: dict[str, HybridLogicalClock] = {
            r: HybridLogicalClock(self.clocks[r], max_offset_ms=max_offset_ms) for r in self.regions
        }

    # -- local writes: applied here, returned for the test to deliver --------------

    def _apply(self, region: str, delta: StoreMap) -> StoreMap:
        self.states[region] = self.states[region].join_delta(delta)
        return delta

    def write(self, region: str, key: str, value: bytes) -> StoreMap:
        ts = self.hlcs[region].now()
        return self._apply(region, self.states[region].write_register(key, value, ts, region))

    def incr(self, region: str, key: str, amount: int = 1) -> StoreMap:
        return self._apply(region, self.states[region].increment(key, amount, region))

    def add(self, region: str, key: str, *members: str) -> StoreMap:
        return self._apply(region, self.states[region].add_members(key, members, region))

    def remove(self, region: str, key: str, *members: str) -> StoreMap:
        return self._apply(region, self.states[region].remove_members(key, members, region))

    def delete(self, region: str, key: str) -> StoreMap:
        return self._apply(region, self.states[region].delete(key, region))

    # -- moving state between regions ------------------------------------------------

    def deliver(self, delta: StoreMap, *to: str) -> None:
        for region in to:
            self._observe_timestamps(region, delta)
            self.states[region] = self.states[region].join_delta(delta)

    def sync(self, a: str, b: str) -> None:
        """Anti-entropy between two regions: each joins the other's full state."""
        sa, sb = self.states[a], self.states[b]
        self._observe_timestamps(a, sb)
        self._observe_timestamps(b, sa)
        self.states[a] = sa.join(sb)
        self.states[b] = sb.join(sa)

    def sync_all(self) -> None:
        everything = StoreMap()
        for state in self.states.values():
            everything = everything.join(state)
        for region in self.regions:
            self._observe_timestamps(region, everything)
            self.states[region] = self.states[region].join(everything)

    def _observe_timestamps(self, region: str, state: StoreMap) -> None:
        for ts in _register_timestamps(state.entries.values()):
            self.hlcs[region].receive(ts)

    # -- reads -----------------------------------------------------------------------

    def read(self, region: str, key: str) -> KeyValue | None:
        return self.states[region].get(key)

    def value(self, region: str, key: str) -> object:
        kv = self.read(region, key)
        return None if kv is None else kv.value

    def converged(self) -> bool:
        first = self.states[self.regions[0]]
        return all(self.states[r] == first for r in self.regions[1:])


def _register_timestamps(states: Iterable[KeyState]) -> Iterable[Timestamp]:
    for state in states:
        for slot in state.slots.values():
            if isinstance(slot, Register):
                for version in slot.entries.values():
                    yield version.timestamp

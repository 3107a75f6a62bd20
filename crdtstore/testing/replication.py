"""A deterministic, single-threaded driver of replica cores over real stores and a fake network.

Each region is an ``LmdbStore`` (production storage, in a temporary
directory) and a ``ReplicaCore``; the network is a FIFO queue per directed
link that a seeded random source may drop from, and that a test can cut and
heal. The driver carries out the core's actions the way the node will:
persist first, then send, then report back. It is the seed of the
deterministic simulator (issue 5); here it lets tests check that the protocol
converges under loss and partitions.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crdtstore.crdt import HybridLogicalClock, StoreMap, VersionVector, decode_as, encode
from crdtstore.operations import Operation
from crdtstore.replica.core import (
    Action,
    Apply,
    Entries,
    Message,
    NeedsRepair,
    ReplicaCore,
    Send,
    SendLog,
    Trim,
)
from crdtstore.storage import Applied, LmdbStore, LogEntry, RawLogEntry, StorageConfig, WriteRequest
from crdtstore.testing.clock import FakeClock

__all__ = ["SimulatedRegions"]


@dataclass
class _Region:
    name: str
    store: LmdbStore
    core: ReplicaCore
    clock: HybridLogicalClock
    trims: list[VersionVector] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


class SimulatedRegions:
    def __init__(self, root: Path, names: Sequence[str], *, seed: int = 0, drop: float = 0.0) -> None:
        self.random = random.Random(seed)
        self.drop = drop
        self.now_ms = 0
        self.cut: set[tuple[str, str]] = set()
        self.links: dict[tuple[str, str], deque[Message]] = {}
        self.messages_sent = 0
        self.bytes_sent = 0
        self.regions: dict[str, _Region] = {}
        for name in names:
            store = LmdbStore(
                StorageConfig(root / name, name), incarnations=lambda: f"{self.random.getrandbits(48):012x}"
            )
            peers = [n for n in names if n != name]
            core = ReplicaCore(
                name, peers, store.context.vv, batch_window_ms=10, anti_entropy_ms=1000, origin=store.origin
            )
            clock = HybridLogicalClock(FakeClock(1_000), floor=store.hlc_mark)
            self.regions[name] = _Region(name, store, core, clock)
            for peer in peers:
                self.links[(name, peer)] = deque()

    def close(self) -> None:
        for region in self.regions.values():
            region.store.close()

    # -- what a test does -----------------------------------------------------------

    def connect_all(self) -> None:
        for region in self.regions.values():
            for peer in region.core.peers:
                self._run(region, region.core.connected(peer))

    def write(self, name: str, *ops: Operation) -> bool:
        region = self.regions[name]
        (result,) = region.store.write_batch([WriteRequest(list(ops))], region.clock)
        self._run(region, region.core.local_committed(region.store.context.vv))
        return isinstance(result, Applied)

    def partition(self, a: str, b: str) -> None:
        self.cut |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.cut.clear()

    def step(self, ms: int = 5) -> None:
        """Advance time, let every core tick, deliver one message per link."""
        self.now_ms += ms
        for region in self.regions.values():
            self._run(region, region.core.tick(self.now_ms))
        for (src, dst), queue in self.links.items():
            if queue:
                message = queue.popleft()
                self._run(self.regions[dst], self.regions[dst].core.received(src, message))

    def settle(self, steps_max: int = 5_000) -> int:
        """Step until every link is empty and every region has everything; returns the steps taken."""
        for n in range(steps_max):
            if self.converged() and not any(self.links.values()):
                return n
            self.step()
        raise AssertionError(f"not converged after {steps_max} steps")

    def converged(self) -> bool:
        snapshots = {self.snapshot(name) for name in self.regions}
        return len(snapshots) == 1

    def snapshot(self, name: str) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        store = self.regions[name].store
        entries, _ = store.scan("", limit=100_000)
        return encode(store.context), tuple((k, encode(s)) for k, s in entries)

    # -- the driver ---------------------------------------------------------------------

    def _run(self, region: _Region, actions: list[Action]) -> None:
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Send):
                self._send(region.name, action.peer, action.message)
            elif isinstance(action, SendLog):
                raw, reached, _ = region.store.log_since(action.after, bytes_max=1 << 20)
                if raw:
                    self._send(region.name, action.peer, Entries(tuple(raw), reached))
                    region.core.sent(action.peer, reached)
            elif isinstance(action, Apply):
                entries = [
                    LogEntry(e.origin, e.first, e.last, action.peer, decode_as(e.delta, StoreMap), e.delta)
                    for e in action.entries
                    if isinstance(e, RawLogEntry)
                ]
                region.store.apply_remote(entries, source=action.peer)
                pending.extend(region.core.applied(action.peer, region.store.context.vv))
            elif isinstance(action, Trim):
                region.trims.append(action.vector)
            elif isinstance(action, NeedsRepair):
                region.repairs.append(action.peer)

    def _send(self, src: str, dst: str, message: Message) -> None:
        if (src, dst) in self.cut:
            return
        if self.drop and self.random.random() < self.drop:
            return
        self.messages_sent += 1
        if isinstance(message, Entries):
            self.bytes_sent += sum(len(e.delta) for e in message.entries if isinstance(e, RawLogEntry))
        self.links[(src, dst)].append(message)

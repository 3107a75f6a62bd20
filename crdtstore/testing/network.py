"""A fake network of regions for unit tests: real stores, the production driver, virtual time.

Each region is an ``LmdbStore`` in a temporary directory and a
``crdtstore.replica.driver.Driver`` over it, hosted the way the simulator
hosts it (storage work inline, ticks when the driver asks). The network is
one connection per pair of regions, in order, with a fixed latency; a test
builds its scenario with ``cut(a, b)``, ``isolate(a)``, ``drop(a, b, p)``
and ``heal()``, and moves time with ``run(ms)`` or ``settle()``. A cut or a
lost message breaks the connection (a stream delivers in order or not at
all); it is dialled again every ``redial_ms`` while the link is up.

The deterministic simulator (``simulations.sim``) adds clients, crashes,
clock faults and checkers on top of the same driver; this is the small
version a unit test can read in one screen.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crdtstore.crdt import HybridLogicalClock, encode
from crdtstore.operations import Operation
from crdtstore.replica.driver import Driver, Job, Outgoing, Ready, TickTimer, run_inline
from crdtstore.replica.settings import ReplicationSettings
from crdtstore.replica.wire import Message, size_of
from crdtstore.storage import Applied, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.replication import ReplicaStore
from crdtstore.testing.clock import FakeClock

__all__ = ["FakeNetwork"]

_EPOCH_MS = 1_700_000_000_000


@dataclass
class _Region:
    name: str
    store: LmdbStore
    driver: Driver
    clock: HybridLogicalClock
    ticks: TickTimer
    jobs: list[str] = field(default_factory=list)  # the kind of every job it ran, in order


@dataclass
class _Connection:
    up: bool = False
    epoch: int = 0


class FakeNetwork:
    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        *,
        seed: int = 0,
        latency_ms: int = 5,
        redial_ms: int = 100,
        settings: ReplicationSettings | None = None,
        options: StorageOptions | None = None,
    ) -> None:
        self.random = random.Random(seed)
        self.now_ms = 0
        self.latency_ms = latency_ms
        self.redial_ms = redial_ms
        self.settings = settings or ReplicationSettings()
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cut: set[tuple[str, str]] = set()
        self._drop: dict[tuple[str, str], float] = {}
        self.messages: list[tuple[str, str, Message]] = []  # every message sent: (from, to, message)
        self.bytes_sent = 0
        self.regions: dict[str, _Region] = {}
        for name in names:
            incarnations = random.Random(f"{seed}/{name}")
            store = LmdbStore(
                StorageConfig(root / name, name, options or StorageOptions(sync=False)),
                wall_ms=lambda: _EPOCH_MS + self.now_ms,
                incarnations=lambda r=incarnations: f"{r.getrandbits(48):012x}",  # type: ignore[misc]
            )
            clock = HybridLogicalClock(FakeClock(_EPOCH_MS), floor=store.hlc_mark)
            peers = [n for n in names if n != name]
            driver = Driver(name, peers, ReplicaStore(store, clock, root), self.settings)
            self.regions[name] = _Region(name, store, driver, clock, TickTimer(self._after))
        self._connections = {pair: _Connection() for pair in itertools.combinations(sorted(names), 2)}

    def close(self) -> None:
        for region in self.regions.values():
            region.store.close()

    # -- what a test does -----------------------------------------------------------

    def connect_all(self) -> None:
        for pair in self._connections:
            self._dial(pair)

    def write(self, name: str, *ops: Operation) -> bool:
        region = self.regions[name]
        (result,) = region.store.write_batch([WriteRequest(list(ops))], region.clock)
        self._handle(region, region.driver.local_committed(self.now_ms))
        return isinstance(result, Applied)

    def cut(self, a: str, b: str) -> None:
        """No message gets through between ``a`` and ``b``; their connection breaks."""
        self._cut |= {(a, b), (b, a)}
        self._break(a, b)

    def isolate(self, a: str) -> None:
        for b in self.regions:
            if b != a:
                self.cut(a, b)

    def drop(self, a: str, b: str, p: float) -> None:
        """Lose each message between ``a`` and ``b`` with probability ``p`` (a loss breaks the connection)."""
        self._drop[(a, b)] = self._drop[(b, a)] = p

    def heal(self) -> None:
        self._cut.clear()
        self._drop.clear()
        for pair, conn in self._connections.items():
            if not conn.up:
                self._dial(pair)

    def run(self, ms: int) -> None:
        """Let ``ms`` of virtual time pass."""
        self._run_until(self.now_ms + ms)

    def settle(self, ms_max: int = 60_000) -> int:
        """Run until every region holds the same state and nothing is in flight; the milliseconds it took."""
        began = self.now_ms
        while not self.converged():
            if self.now_ms - began >= ms_max:
                raise AssertionError(f"not converged after {ms_max} ms")
            self.run(10)
        return self.now_ms - began

    def converged(self) -> bool:
        return len({self.snapshot(name) for name in self.regions}) == 1

    def snapshot(self, name: str) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        store = self.regions[name].store
        entries, _ = store.scan("", limit=100_000)
        return encode(store.context), tuple((k, encode(s)) for k, s in entries)

    # -- the network -----------------------------------------------------------------

    def _after(self, ms: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now_ms + ms, next(self._seq), fn))

    def _run_until(self, when_ms: int) -> None:
        while self._events and self._events[0][0] <= when_ms:
            at, _, fn = heapq.heappop(self._events)
            self.now_ms = at
            fn()
        self.now_ms = when_ms

    def _connection(self, a: str, b: str) -> _Connection:
        return self._connections[(a, b) if a < b else (b, a)]

    def _dial(self, pair: tuple[str, str]) -> None:
        a, b = pair
        conn = self._connections[pair]
        if conn.up:
            return
        if (a, b) in self._cut:
            self._after(self.redial_ms, lambda: self._dial(pair))
            return
        conn.up = True
        conn.epoch += 1
        self._handle(self.regions[a], self.regions[a].driver.connected(b, self.now_ms))
        if conn.up:
            self._handle(self.regions[b], self.regions[b].driver.connected(a, self.now_ms))

    def _break(self, a: str, b: str) -> None:
        conn = self._connection(a, b)
        if not conn.up:
            return
        conn.up = False
        conn.epoch += 1
        for side, other in ((a, b), (b, a)):
            self._handle(self.regions[side], self.regions[side].driver.disconnected(other, self.now_ms))
        pair = (a, b) if a < b else (b, a)
        self._after(self.redial_ms, lambda: self._dial(pair))

    def _send(self, src: str, outgoing: Outgoing) -> None:
        dst, message = outgoing.peer, outgoing.message
        conn = self._connection(src, dst)
        if not conn.up:
            return
        self.messages.append((src, dst, message))
        self.bytes_sent += size_of(message)
        if self.random.random() < self._drop.get((src, dst), 0.0):
            self._break(src, dst)
            return
        epoch = conn.epoch

        def deliver() -> None:
            if conn.up and conn.epoch == epoch:
                region = self.regions[dst]
                self._handle(region, region.driver.received(src, message, self.now_ms))

        self._after(self.latency_ms, deliver)

    # -- the driver's host -------------------------------------------------------------

    def _handle(self, region: _Region, ready: Ready) -> None:
        def run(job: Job) -> object:
            region.jobs.append(job.kind)
            return job.run()

        wake_at_ms = run_inline(
            region.driver,
            ready,
            self.now_ms,
            send=lambda outgoing: self._send(region.name, outgoing),
            close=lambda peer, why: self._break(region.name, peer),
            run=run,
        )
        region.ticks.wake_at(wake_at_ms, self.now_ms, lambda: self._handle(region, region.driver.tick(self.now_ms)))

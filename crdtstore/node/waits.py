"""Waiting until version vectors cover a target, at a cost that does not grow with the number waiting.

A read with ``after=TOKEN`` waits until this region's vector covers the
token; a ``replicated:N`` write waits until N regions (this one and the
peers' acknowledged vectors) cover its token. Under load thousands of them
can wait at once, and the vectors change on every commit, apply and ack.
Checking every waiter on every change is quadratic: a backlog of waiters
slows the event loop, which lengthens the backlog (seen in the replication
benchmark, where reads on a loaded region took seconds).

Every vector here only grows (a peer restored from an old copy may report
less; a waiter is re-checked before it is released, so that is safe). So a
waiter that some source does not cover yet is filed under *one* origin that
source lacks, in a heap ordered by the count it needs there. A change looks
only at the top of each heap; a waiter leaves a heap when that count is
reached and is then re-checked, and filed under another origin the source
still lacks, or counted as covered by it. Each waiter is filed at most once
per origin and source: O(log n) per waiter, O(sources x origins) per change.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from crdtstore.crdt.causal import VersionVector

# Rebuild the heaps once this many entries belong to waiters that gave up
# (timed out or cancelled) and they are at least half of all entries.
_COMPACT_AFTER = 1024


@dataclass(eq=False)
class _Waiter:
    target: VersionVector
    needed: int
    future: asyncio.Future[None]
    covered: int = 0
    filed: int = 0  # heap entries naming this waiter
    forgotten: bool = False  # done, and its entries counted as dead


@dataclass
class _Heaps:
    # (source, origin) -> [(count needed at origin, tie-break, waiter)]
    by_origin: dict[tuple[str, str], list[tuple[int, int, _Waiter]]] = field(default_factory=dict)
    entries: int = 0
    dead: int = 0  # entries of waiters that are done


class VectorWaits:
    """Futures that resolve once ``needed`` of a fixed set of growing vectors cover a target vector."""

    def __init__(self, sources: Mapping[str, Callable[[], VersionVector]]) -> None:
        self._sources = dict(sources)
        self._heaps = _Heaps()
        self._order = itertools.count()

    def __len__(self) -> int:
        """Heap entries held (live and not yet compacted): for tests and status."""
        return self._heaps.entries

    async def wait(
        self, target: VersionVector, needed: int, timeout_s: float, among: Collection[str] | None = None
    ) -> bool:
        """True once ``needed`` sources (of ``among``, default all) cover ``target``; False after ``timeout_s``."""
        names = list(self._sources) if among is None else list(among)
        unknown = [name for name in names if name not in self._sources]
        if unknown:
            raise ValueError(f"no source named {unknown[0]!r}")
        if needed > len(names):
            raise ValueError(f"{needed} sources cannot cover a vector: there are {len(names)}")
        lacking = [(name, vector) for name in names if not (vector := self._sources[name]()).dominates(target)]
        if len(names) - len(lacking) >= needed:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(target, needed, future, covered=len(names) - len(lacking))
        for name, vector in lacking:
            self._file(waiter, name, vector)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(future)
            return True
        except TimeoutError:
            # A source may have grown with no changed() call since: look once more.
            return sum(1 for name in names if self._sources[name]().dominates(target)) >= needed
        finally:
            if not future.done():
                future.cancel()
            self._forget(waiter)

    def changed(self) -> None:
        """Some source's vector grew: release the waiters it now covers enough."""
        for (source, origin), heap in list(self._heaps.by_origin.items()):
            if not heap:
                continue
            vector = self._sources[source]()
            have = vector.get(origin)
            while heap and heap[0][0] <= have:
                _, _, waiter = heapq.heappop(heap)
                self._heaps.entries -= 1
                waiter.filed -= 1
                if waiter.forgotten:
                    self._heaps.dead -= 1
                    continue
                self._file(waiter, source, vector)
                if waiter.covered >= waiter.needed:
                    self._release(waiter)

    def cancel_all(self) -> None:
        """Fail every waiter (the node is closing)."""
        for heap in self._heaps.by_origin.values():
            for _, _, waiter in heap:
                if not waiter.future.done():
                    waiter.future.set_exception(asyncio.CancelledError())
        self._heaps = _Heaps()

    def _file(self, waiter: _Waiter, source: str, vector: VersionVector) -> None:
        """File ``waiter`` under one origin ``vector`` lacks, or count ``source`` as covering it."""
        for origin, count in waiter.target.items():
            if vector.get(origin) < count:
                heap = self._heaps.by_origin.setdefault((source, origin), [])
                heapq.heappush(heap, (count, next(self._order), waiter))
                self._heaps.entries += 1
                waiter.filed += 1
                return
        waiter.covered += 1

    def _release(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            waiter.future.set_result(None)
        self._forget(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        """``waiter`` is done: its entries still filed are dead; compact when they are many."""
        if waiter.forgotten:
            return
        waiter.forgotten = True
        self._heaps.dead += waiter.filed
        heaps = self._heaps
        if heaps.dead >= _COMPACT_AFTER and heaps.dead * 2 >= heaps.entries:
            for key, heap in list(heaps.by_origin.items()):
                live = [entry for entry in heap if not entry[2].future.done()]
                heapq.heapify(live)
                heaps.by_origin[key] = live
            heaps.entries = sum(len(heap) for heap in heaps.by_origin.values())
            heaps.dead = 0


class ChangeSignal:
    """Wakes every waiter when the store changed (a local commit, a peer's entries, a transfer).

    The change feed's streams wait on it at the end of the index. Take
    ``current()`` *before* reading the store: a change that lands between the
    read and the wait has already set that event, so it is never missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def current(self) -> asyncio.Event:
        return self._event

    def changed(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """The node is draining: waiters wake, and see ``closed``."""
        self.closed = True
        self.changed()

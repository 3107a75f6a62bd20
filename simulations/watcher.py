"""A change-feed consumer inside the simulator: the rule of every watch stream, moving between regions.

``KV.Watch`` (``crdtstore.node.feed``) reads a region's feed index with
three storage calls (``feed_start`` from a token, ``feed_read`` a page at a
time, ``pass_record`` per record) and, when its token is expired there, a
snapshot. This consumer does the same against the simulated regions' real
stores, a few records at a time between the simulator's steps, and moves to
another region now and then, or when its region crashes or loses its disk. It
keeps a projection (each key's value as read when its event was delivered)
and every delivered event's id.

The checker (``simulations.checkers``) then asks of its ``FeedRead``: no
event delivered twice, and the projection equal to the regions' final state
(unless a region lost acknowledged writes with its disk: a consumer may have
seen them before they were lost everywhere).

Its choices come from a generator of its own (``{seed}/watch``), and it only
reads the stores, so the rest of a seed's run is the same with it or without it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from crdtstore.crdt import KeyState, VersionVector
from crdtstore.storage import LmdbStore
from crdtstore.storage.feed import must_restart, pass_record
from simulations.history import FeedRead, KeyRead

__all__ = ["Watcher"]

# Steps a region may take to see what the consumer has before the consumer takes a snapshot there
# (``server.watch_catch_up_s`` of a node).
_CATCH_UP_STEPS = 200


class _Region(Protocol):
    up: bool
    store: LmdbStore


class Watcher:
    def __init__(
        self, seed: int, regions: Mapping[str, _Region], read: Callable[[KeyState | None], KeyRead | None]
    ) -> None:
        self.random = random.Random(f"{seed}/watch")
        self.regions = regions
        self.read = read  # a key's state as the history records it (None: the key reads as absent)
        self.token = VersionVector()
        self.region: str | None = None
        self.position: int | None = None  # in the current region's index; None: find it from the token
        self.rows: dict[str, KeyRead] = {}
        self.delivered: Counter[tuple[str, int]] = Counter()  # each event's dot (origin, counter)
        self.keys_of: dict[tuple[str, int], set[str]] = {}  # the keys delivered under each dot
        self.snapshots = 0
        self.moves = 0
        self.waits = 0  # steps spent waiting for the current region to see the token
        self.duplicates: set[str] = set()

    def maybe_step(self) -> None:
        """Now and then, read a few records of the current region (or move to another)."""
        if self.random.random() < 0.1:
            self.step(self.random.randint(1, 8))

    def step(self, records_max: int) -> bool:
        """Read up to ``records_max`` records; True when the region's index was read to its end."""
        if self.region is None or not self.regions[self.region].up or self.random.random() < 0.05:
            up = sorted(name for name, region in self.regions.items() if region.up)
            if not up:
                return False
            self.region, self.position = self.random.choice(up), None
            self.moves += 1
        store = self.regions[self.region].store
        if not store.context.vv.dominates(self.token):
            # As KV.Watch: not before the region has seen what the consumer has; a region that does
            # not catch up in time (what the token holds may be lost for good) gives a snapshot.
            self.waits += 1
            if self.waits < _CATCH_UP_STEPS:
                return False
            self._snapshot(store)
            return False
        self.waits = 0
        if self.position is None:
            self.position = store.feed_start(self.token)
            if self.position is None:
                self._snapshot(store)
                return False
        page = store.feed_read(self.position, records_max, 10_000)
        if not self.token.dominates(page.floor):
            self._snapshot(store)  # records it had not passed were trimmed
            return False
        for record in page.records:
            if must_restart(record, self.token):
                self._snapshot(store)  # a transfer may have deleted keys this region never had
                return False
            self.position = record.seq
            keys, self.token = pass_record(record, self.token, _wanted)
            for key, _, counter in keys:
                self._project(store, key)
                if record.origin:
                    self.delivered[(record.origin, counter)] += 1
                    self.keys_of.setdefault((record.origin, counter), set()).add(key)
        if page.at_end:
            self.token = self.token.join(page.reached)
        return page.at_end

    def finish(self) -> FeedRead:
        """Read one region's index to its end (every region holds the same by now); the consumer's account."""
        self.region, self.position = None, None
        for _ in range(10_000):
            if self.step(1000):
                break
        else:
            raise AssertionError("the feed watcher never reached the end of a region's index")
        self._note_duplicates()
        duplicates = sorted(self.duplicates)
        return FeedRead(
            self.region or "",
            dict(sorted(self.rows.items())),
            duplicates,
            {"events": sum(self.delivered.values()), "snapshots": self.snapshots, "moves": self.moves},
        )

    def _note_duplicates(self) -> None:
        # A dot delivered twice: the same event again, or two keys' events sharing a dot (the dot is the
        # deduplication key a consumer is promised: one per event).
        self.duplicates |= {
            f"{o}:{n} {','.join(sorted(self.keys_of[(o, n)]))}" for (o, n), times in self.delivered.items() if times > 1
        }

    def _project(self, store: LmdbStore, key: str) -> None:
        value = self.read(store.get(key))
        if value is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = value

    def _snapshot(self, store: LmdbStore) -> None:
        """What ``KV.Watch`` does for an expired token: the state of every key, then on from that point."""
        self.snapshots += 1
        self.waits = 0
        self.position, point = store.feed_head()
        self.rows = {}
        # What came before the snapshot is replaced by it: an event delivered before may come again.
        self._note_duplicates()
        self.delivered.clear()
        self.keys_of.clear()
        after = b""
        while True:
            page, after = store.scan("", after=after, limit=1000)
            for key, state in page:
                if _wanted(key) and (value := self.read(state)) is not None:
                    self.rows[key] = value
            if not after:
                break
        self.token = point  # not joined: what the old token held beyond the point must come again


def _wanted(key: str) -> bool:
    return not key.startswith("\x00")  # the node's own records are never sent

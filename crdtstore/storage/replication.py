"""The LMDB store as replication sees it: ``crdtstore.replica.storage.ReplicaStorage`` over ``LmdbStore``.

One adapter for every host of the replication driver (the node, the
simulator, the synchronisation-cost benchmark, the tests). It holds the
hybrid logical clock that remote timestamps move forward, so ``apply`` must
run where the store's writes run. State transfers are spooled to files in
``spool_dir`` (a spool a killed process left behind is removed at start).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import msgpack

from crdtstore.crdt import CausalContext, HybridLogicalClock, VersionVector
from crdtstore.replica.storage import Applied, LogRead
from crdtstore.replica.wire import RawLogEntry, TransferItem
from crdtstore.storage import LmdbStore, RemoteOutcome, StaleTransfer, bucket_of

__all__ = ["ReplicaStore"]

SPOOL_SUFFIX = ".spool"
_TRIM_BUDGET = 10_000  # log entries per trimming transaction, so a trim never holds the writer long


class _FileSpool:
    def __init__(self, path: Path, context: CausalContext, keys: int, digests: list[int], read_bytes_max: int) -> None:
        self.path = path
        self.context = context
        self.keys = keys
        self.digests = tuple(digests)
        self._file = path.open("rb")
        self._pairs = msgpack.Unpacker(self._file, raw=False, max_buffer_size=read_bytes_max)

    def page(self, buckets: frozenset[int], bytes_max: int) -> tuple[tuple[TransferItem, ...], bool]:
        page: list[TransferItem] = []
        size = 0
        for key, body, part in self._pairs:
            if bucket_of(key) not in buckets:
                continue
            page.append((key, body, part))
            size += len(key) + len(body)
            if size >= bytes_max:
                return tuple(page), False
        return tuple(page), True

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ReplicaStore:
    def __init__(
        self,
        store: LmdbStore,
        clock: HybridLogicalClock,
        spool_dir: Path,
        *,
        spool_read_bytes_max: int = 64 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.clock = clock
        self.spool_dir = Path(spool_dir)
        self._spool_read_bytes_max = spool_read_bytes_max
        self._spools = itertools.count(1)
        # Spools of state transfers a killed process left behind.
        for stale in self.spool_dir.glob(f"transfer-{store.region}-*{SPOOL_SUFFIX}"):
            stale.unlink(missing_ok=True)

    @property
    def vector(self) -> VersionVector:
        return self.store.context.vv

    @property
    def origin(self) -> str:
        return self.store.origin

    @property
    def log_horizon(self) -> VersionVector:
        return self.store.log_horizon

    def peer_holds(self, peer: str, vector: VersionVector) -> bool:
        return self.store.peer_holds(peer, vector)

    def read_log(
        self, after: VersionVector, bytes_max: int, *, relay_delay_ms: int | None, held: VersionVector
    ) -> LogRead:
        wall_ms = self.store.wall_ms()
        relayed_before_ms = None if relay_delay_ms is None else wall_ms - relay_delay_ms
        found = self.store.log_since(after, bytes_max, relayed_before_ms=relayed_before_ms, held=held)
        return LogRead(tuple(found.entries), found.reached, found.held_since_ms, wall_ms)

    def bucket_digests(self) -> tuple[int, ...]:
        return tuple(self.store.bucket_digests())

    def spool(self, peer: str) -> _FileSpool:
        path = self.spool_dir / f"transfer-{self.store.region}-{peer}-{next(self._spools)}{SPOOL_SUFFIX}"
        try:
            context, keys, digests = self.store.spool_snapshot(path)
            return _FileSpool(path, context, keys, digests, self._spool_read_bytes_max)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def apply(self, peer: str, entries: Sequence[RawLogEntry]) -> Applied:
        outcomes, skews = self.store.apply_raw(entries, peer, self.clock)
        return Applied(RemoteOutcome.GAP in outcomes, skews)

    def trim_log(self, upto: VersionVector) -> None:
        while self.store.trim_log(upto, _TRIM_BUDGET) >= _TRIM_BUDGET:
            pass

    def discard_transfer(self, peer: str) -> None:
        self.store.discard_snapshot(peer)

    def stage_transfer(self, peer: str, transfer: int, keys: Sequence[TransferItem]) -> None:
        self.store.stage_snapshot(peer, transfer, keys)

    def finish_transfer(
        self,
        peer: str,
        transfer: int,
        context: CausalContext,
        buckets: frozenset[int],
        expected: Sequence[int] | None,
    ) -> int | None:
        try:
            return self.store.finish_snapshot(peer, transfer, context, buckets, expected)
        except StaleTransfer:
            self.store.discard_snapshot(peer)
            return None

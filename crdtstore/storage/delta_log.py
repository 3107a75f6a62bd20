"""The delta log: every change in the order this node applied it, which is the order replication sends.

``log`` maps a local sequence number to the entry (origin, first, last,
source, delta, when it was applied here); ``log_index`` maps (origin, last
counter) to that sequence number, so a peer's version vector finds where its
entries start. Replication trims what every peer has (``trim_log``); the log
is also bounded by ``delta_log_bytes_max`` (oldest entries go first; a peer
behind the trimmed horizon is repaired by state transfer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import lmdb
import msgpack

from crdtstore.crdt import StoreMap, VersionVector, decode_as, encode
from crdtstore.replica.wire import RawLogEntry
from crdtstore.storage.environment import _META_HORIZON, _META_LOG_BYTES, StoreEnvironment


class LogEntry(NamedTuple):
    """One batch in the delta log: the dots ``origin:first..last`` and their combined delta."""

    origin: str
    first: int
    last: int
    source: str  # "" when written here; otherwise the peer it came from
    delta: StoreMap
    # The delta as it arrived, when it did: the codec is canonical (decoding
    # refuses any other form), so these are exactly ``encode(delta)``, and
    # logging them saves encoding the delta again.
    encoded: bytes = b""


class LogSlice(NamedTuple):
    """What ``log_since`` found for a peer."""

    entries: list[RawLogEntry]
    reached: VersionVector  # per origin, how far the peer has everything once it has these
    # When the slice stopped at a relayed entry too fresh to send: when that entry
    # arrived here (this node's clock). Nothing more can go before it matures.
    held_since_ms: int | None = None

    def tops(self) -> VersionVector:
        """The last event of each origin among the entries: what a message of them says the sender has."""
        top: dict[str, int] = {}
        for e in self.entries:
            top[e.origin] = max(top.get(e.origin, 0), e.last)
        return VersionVector(top)


class DeltaLog(StoreEnvironment):
    """Reading the log for peers, trimming it, and appending to it inside a write transaction."""

    def log_entries(self) -> Iterator[LogEntry]:
        """Every delta log entry, in the order this node applied them."""
        with self._gate.read(), self.env.begin(db=self.log) as txn:
            raw = [bytes(value) for value in txn.cursor().iternext(keys=False, values=True)]
        for value in raw:
            origin, first, last, source, delta, _arrived = msgpack.unpackb(value)
            yield LogEntry(origin, first, last, source, decode_as(delta, StoreMap))

    def log_since(
        self,
        after: VersionVector,
        bytes_max: int,
        *,
        relayed_before_ms: int | None = None,
        held: VersionVector | None = None,
    ) -> LogSlice:
        """The log entries a peer that has ``after`` lacks, in the order this node applied them.

        That order respects causality: every entry comes after the entries it
        depends on, which is what a receiver needs to apply each on arrival.
        Stops after about ``bytes_max`` bytes (at least one entry when there is
        one); with ``relayed_before_ms``, at the first entry that came from
        another region after that time; with ``held``, at the first entry the
        peer is receiving from elsewhere (its ``first`` at most ``held`` of its
        origin; a held entry counts as arrived when it did). Returns the entries, how far, per
        origin, the peer will have everything once it has them (entries it
        already had included), and, when a fresh relay stopped the slice, when
        that entry arrived.
        """
        out: list[RawLogEntry] = []
        reached: dict[str, int] = {}
        size = 0
        held_since: int | None = None
        with self._gate.read(), self.env.begin() as txn:
            start = self._first_needed(txn, after)
            if start is None:
                return LogSlice(out, VersionVector())
            cursor = txn.cursor(db=self.log)
            found = cursor.set_range(start)
            while found:
                origin, first, last, source, delta, arrived_ms = msgpack.unpackb(cursor.value())
                if last > after.get(origin):
                    if out and size + len(delta) > bytes_max:
                        break
                    fresh = source and relayed_before_ms is not None and arrived_ms > relayed_before_ms
                    if fresh or (held and first <= held.get(origin)):
                        held_since = arrived_ms
                        break
                    out.append(RawLogEntry(origin, first, last, delta))
                    size += len(delta)
                reached[origin] = max(reached.get(origin, 0), last)
                found = cursor.next()
        return LogSlice(out, VersionVector(reached), held_since)

    def _first_needed(self, txn: lmdb.Transaction, after: VersionVector) -> bytes | None:
        """The sequence key of the oldest entry, of any origin, above ``after``."""
        best: bytes | None = None
        cursor = txn.cursor(db=self.log_index)
        found = cursor.first()
        while found:
            origin, _ = _split_log_key(bytes(cursor.key()))
            prefix = origin.encode("utf-8") + b"\x00"
            found = cursor.set_range(_log_key(origin, after.get(origin) + 1))
            if found and bytes(cursor.key()).startswith(prefix):
                seq = bytes(cursor.value())
                best = seq if best is None or seq < best else best
                found = cursor.set_range(origin.encode("utf-8") + b"\x01")
            # else: the cursor already stands on the next origin (or the end)
        return best

    def trim_log(self, upto: VersionVector, budget: int = 10_000) -> int:
        """Remove log entries every peer has (``last`` at most ``upto`` of their origin); returns how many.

        At most ``budget`` go per call, so a trim never makes one commit slow;
        call again to go on.
        """
        removed: dict[str, int] = {}
        log_bytes = self._log_bytes
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.log_index)
            count = 0
            for origin, top in upto.items():
                prefix = origin.encode("utf-8") + b"\x00"
                found = cursor.set_range(prefix)
                while found and count < budget and bytes(cursor.key()).startswith(prefix):
                    _, last = _split_log_key(bytes(cursor.key()))
                    if last > top:
                        break
                    seq = bytes(cursor.value())
                    value = txn.get(seq, db=self.log)
                    if value is not None:
                        log_bytes -= len(value)
                        txn.delete(seq, db=self.log)
                    removed[origin] = last
                    found = cursor.delete()
                    count += 1
            if not removed:
                return 0
            horizon = self._horizon.join(VersionVector(removed))
            txn.put(_META_HORIZON, encode(horizon), db=self.meta)
            txn.put(_META_LOG_BYTES, str(log_bytes).encode(), db=self.meta)
        self._horizon = horizon
        self._log_bytes = log_bytes
        return count

    def _next_seq(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self.log)
        return int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1

    def _append_log(self, txn: lmdb.Transaction, seq: int, origin: str, last: int, value: bytes) -> None:
        seq_key = seq.to_bytes(8, "big")
        txn.put(seq_key, value, db=self.log)
        txn.put(_log_key(origin, last), seq_key, db=self.log_index)

    def _bound_log(self, txn: lmdb.Transaction, log_bytes: int, trimmed: dict[str, int], budget: int) -> int:
        """Trim the delta log down to its byte bound; returns its new size, and records what went in ``trimmed``.

        Replication trims by acknowledgement (``trim_log``); this bound is the
        backstop for a peer that stays away. The oldest entries go first; the
        horizon records what went, so a peer that needed it is repaired by a
        state transfer instead of waiting for entries that will never come.
        """
        cursor = txn.cursor(db=self.log)
        while budget and log_bytes > self.config.options.delta_log_bytes_max and cursor.first():
            value = bytes(cursor.value())
            origin, _first, last, _source, _delta, _arrived = msgpack.unpackb(value)
            trimmed[origin] = max(trimmed.get(origin, 0), last)
            log_bytes -= len(value)
            txn.delete(_log_key(origin, last), db=self.log_index)
            cursor.delete()
            budget -= 1
        return log_bytes


def _log_key(origin: str, counter: int) -> bytes:
    return origin.encode("utf-8") + b"\x00" + counter.to_bytes(8, "big")


def _log_value(origin: str, first: int, last: int, delta: StoreMap | bytes, *, source: str, arrived_ms: int) -> bytes:
    """A log entry: the events origin:first..last, where it came from ("" for here), its delta, when it was applied."""
    body = delta if isinstance(delta, bytes) else encode(delta)
    return msgpack.packb([origin, first, last, source, body, arrived_ms], use_bin_type=True)


def _split_log_key(db_key: bytes) -> tuple[str, int]:
    return db_key[:-9].decode("utf-8"), int.from_bytes(db_key[-8:], "big")

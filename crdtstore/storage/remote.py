"""Deltas from other regions: peers' log entries, applied only once everything they depend on is here."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence

import lmdb
import msgpack

from crdtstore.crdt import (
    AWSet,
    CausalContext,
    Dot,
    HybridLogicalClock,
    KeyState,
    Register,
    StoreMap,
    ValueType,
    VersionVector,
    decode_as,
    encode,
    encode_register_write,
)
from crdtstore.replica.wire import RawLogEntry
from crdtstore.storage.delta_log import DeltaLog, LogEntry, _log_key, _log_value
from crdtstore.storage.environment import _META_HORIZON, _META_LOG_BYTES
from crdtstore.storage.errors import StoreFull
from crdtstore.storage.feed import FeedIndex, FeedRecord, changes_of
from crdtstore.storage.keys import lmdb_key
from crdtstore.storage.records import SetRecords, plain_record

log = logging.getLogger("crdtstore.storage")


class RemoteOutcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # the node already had it
    GAP = "gap"  # an earlier entry of its origin is missing; resend from the acknowledged vector


class RemoteApply(DeltaLog, FeedIndex):
    """Applying peers' log entries in causal order, and logging them to relay onwards."""

    # Entries from peers that carry event ids this node holds for different events (see apply_raw).
    conflicting_events: int

    def lacking(self, entries: Iterable[RawLogEntry]) -> list[RawLogEntry]:
        """The entries not already here (``apply_remote`` would skip the others as duplicates).

        Relays make duplicates common (a region hears most entries from more
        than one peer); filtering them first saves decoding their deltas.
        """
        vv = self._context.vv
        return [e for e in entries if e.last > vv.get(e.origin)]

    def apply_raw(
        self, entries: Iterable[RawLogEntry], source: str, clock: HybridLogicalClock
    ) -> tuple[list[RemoteOutcome], int]:
        """Decode and apply entries as they arrived from peer ``source``; fold their timestamps into ``clock``.

        Entries already here are skipped before their deltas are decoded
        (``lacking``); decoding checks every invariant of a delta. Returns the
        outcome of each entry that was not already here, and how many applied
        register timestamps were too far ahead for the clock to follow
        (applied all the same: convergence comes first).
        """
        arrived = list(entries)
        fresh = self.lacking(arrived)
        if len(fresh) < len(arrived):
            self._check_duplicates([e for e in arrived if e.last <= self._context.vv.get(e.origin)], source)
        decoded = [LogEntry(e.origin, e.first, e.last, source, decode_as(e.delta, StoreMap), e.delta) for e in fresh]
        outcomes = self.apply_remote(decoded, source=source)
        skews = 0
        for entry, outcome in zip(decoded, outcomes, strict=True):
            if outcome is RemoteOutcome.APPLIED:
                latest = entry.delta.latest_timestamp()
                if latest is not None and clock.receive(latest) is not None:
                    skews += 1
        return outcomes, skews

    def _check_duplicates(self, duplicates: Sequence[RawLogEntry], source: str) -> None:
        """Count and log entries whose event ids this node holds for different events.

        An entry travels whole and unchanged from its origin through every
        relay, so an entry this node has must arrive with the same events and
        the same bytes. Anything else means two events were minted under one
        id (a region reused an origin after losing its data), and each side
        would keep its own forever: the loudest error this node can report.
        Only entries still in this node's log can be compared.
        """
        with self._gate.read(), self.env.begin() as txn:
            for e in duplicates:
                seq = txn.get(_log_key(e.origin, e.last), db=self.log_index)
                raw = None if seq is None else txn.get(seq, db=self.log)
                if raw is None:
                    continue  # trimmed, or this node's entry for those events ends elsewhere
                _origin, first, _last, _source, delta, _arrived = msgpack.unpackb(raw)
                if first != e.first or bytes(delta) != e.delta:
                    self.conflicting_events += e.last - e.first + 1
                    log.error(
                        "peer %s sent events %s:%d..%d that differ from the ones this node holds under the "
                        "same ids: two events were minted under one id, and the regions cannot converge on "
                        "them (see 'A region that lost its data' in the README)",
                        source,
                        e.origin,
                        e.first,
                        e.last,
                    )

    def apply_remote(self, entries: Sequence[LogEntry], source: str) -> list[RemoteOutcome]:
        """Apply log entries received from peer ``source`` in one transaction and one fsync.

        An entry is applied only when this node has everything it depends on
        (the causal-delivery condition of delta-state CRDTs, Almeida et al.
        2018): it continues what this node has of its origin (``first`` is one
        past the vector), and every other event its delta's context names is
        already here. Without that a delta's context could cover events this
        node never received, and they would be skipped as duplicates forever.
        An entry the vector already covers is a duplicate and skipped. At the
        first entry that cannot be applied yet (a gap) the rest are refused
        too, since they may depend on it; the sender resends in causal order
        from what this node acknowledges. A remote delta is never refused for
        its content: convergence comes first.

        Each applied entry is logged (with its source, for provenance) in
        apply order, so it is relayed onwards in causal order too.
        """
        outcomes: list[RemoteOutcome] = []
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    context = self._context_in(txn)
                    log_bytes = self._log_bytes
                    seq = self._next_seq(txn)
                    outcomes = []
                    applied: list[tuple[LogEntry, VersionVector]] = []  # each with this node's vector before it
                    records, allocate = self._records(txn), self._set_ids(txn)
                    for i, entry in enumerate(entries):
                        have = context.vv.get(entry.origin)
                        if entry.last <= have:
                            outcomes.append(RemoteOutcome.DUPLICATE)
                            continue
                        if entry.first != have + 1 or not _dependencies_met(entry, context):
                            outcomes += [RemoteOutcome.GAP] * (len(entries) - i)
                            break
                        self._apply_entry(records, allocate, entry, context)
                        applied.append((entry, context.vv))
                        context = context.join(entry.delta.context)
                        outcomes.append(RemoteOutcome.APPLIED)
                    # Stamped when applied, not when the message arrived: a large message takes
                    # a while, and a relay is held back relay_delay_ms from when it could go.
                    now_ms = self._wall_ms()
                    feed_seq = self._feed_next_seq(txn)
                    for entry, before in applied:
                        delta = entry.encoded or entry.delta
                        value = _log_value(
                            entry.origin, entry.first, entry.last, delta, source=source, arrived_ms=now_ms
                        )
                        self._append_log(txn, seq, entry.origin, entry.last, value)
                        seq += 1
                        log_bytes += len(value)
                        latest = entry.delta.latest_timestamp()
                        hlc = None if latest is None else (latest.wall_ms, latest.logical)
                        changes = changes_of(entry.delta)
                        record = FeedRecord(feed_seq, entry.origin, entry.first, entry.last, now_ms, hlc, changes)
                        self._feed_append(txn, record, before)
                        feed_seq += 1
                    # Relayed entries count against the log's bound like local ones.
                    trimmed: dict[str, int] = {}
                    budget = max(self.config.options.housekeeping_per_batch_max, 2 * len(entries))
                    log_bytes = self._bound_log(txn, log_bytes, trimmed, budget)
                    horizon = self._horizon.join(VersionVector(trimmed)) if trimmed else self._horizon
                    self._put_context(txn, context)
                    txn.put(_META_LOG_BYTES, str(log_bytes).encode(), db=self.meta)
                    if trimmed:
                        txn.put(_META_HORIZON, encode(horizon), db=self.meta)
                self._context = context
                self._log_bytes = log_bytes
                self._horizon = horizon
                return outcomes
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def _apply_entry(
        self, records: SetRecords, allocate: Callable[[], int], entry: LogEntry, context: CausalContext
    ) -> None:
        delta = entry.delta
        for key, named in delta.entries.items():
            if _new_register_write(records, key, named, context):
                continue
            # A delta names every member it changes: the join reads and writes those members alone.
            held = named.slots.get(ValueType.SET)
            members = list(held.entries) if isinstance(held, AWSet) else []
            current, stored = records.load(key, members)
            state = (current or KeyState()).join_delta(named, context, delta.context)
            records.store(key, state, stored, allocate=allocate, members=members)


def _new_register_write(records: SetRecords, key: str, named: KeyState, context: CausalContext) -> bool:
    """Store a delta's one register write to a key this node does not hold, directly; False if it is not one.

    The join of nothing with one register version this node has not seen is
    that version (one it has seen, and removed, joins to nothing): its record
    is encoded straight from the write (``encode_register_write``, the bytes of
    the key state), without the join and the key state's encoder.
    """
    if len(named.slots) != 1:
        return False
    register = named.slots.get(ValueType.REGISTER)
    if type(register) is not Register or len(register.entries) != 1:
        return False
    ((dot, (timestamp, value)),) = register.entries.items()
    db_key = lmdb_key(key)
    if context.contains(dot) or records.txn.get(db_key, db=records.data) is not None:
        return False
    records.txn.put(db_key, plain_record(key, encode_register_write(dot, timestamp, value)), db=records.data)
    return True


def _dependencies_met(entry: LogEntry, context: CausalContext) -> bool:
    """Whether ``context`` holds every event of other regions that ``entry``'s delta names.

    Events of the entry's own origin need no look: contiguity (``first`` is
    one past what this node has of it) already covers those before the entry.
    """
    delta_context = entry.delta.context
    for region, top in delta_context.vv.items():
        if region == entry.origin:
            continue
        have = context.vv.get(region)
        if have < top and not all(context.contains(Dot(region, n)) for n in range(have + 1, top + 1)):
            return False
    return all(context.contains(dot) for dot in delta_context.cloud if dot.region != entry.origin)

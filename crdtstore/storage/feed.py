"""The change feed's index: every change this node applied, in apply order, kept for a retention window.

The delta log (``delta_log``) is trimmed as soon as every peer has an entry;
a consumer of the change feed may be hours behind, or resume in this region
from a token another region gave it. So the feed keeps an index of its own,
written in the same transaction as the change it describes:

* ``feed``        local feed sequence number -> one record per applied change:
                  ``[origin, first, last, applied_ms, hlc, [[key, kinds], ...]]``.
                  A change is one request (local or a peer's log entry, which is
                  one request of its origin): the events ``origin:first..last``,
                  applied atomically, delivered as one group. ``kinds`` is a bit
                  mask of what the change did to the key (``KIND_*``), read from
                  the delta itself, so every region describes a change alike.
                  ``hlc`` is the change's newest register timestamp
                  ``[wall_ms, logical]``, or None when it wrote no register.
                  A state transfer (repair) is recorded with origin ``""`` and,
                  instead of ``last``, the events it brought (an encoded version
                  vector), each changed key as ``KIND_STATE``, in records of at
                  most 1000 keys; ``first`` is 1 on every record of it but the
                  last (more follow), 0 on the last. A stream delivers them all
                  or none (its token takes the events with the last), and only
                  the first may carry a mark.
* ``feed_marks``  feed sequence number -> the version vector this node had just
                  before that record was applied; one every ``_MARK_EVERY``
                  records, so a resume finds where to start without reading
                  the whole window.
* ``meta``        ``feed_floor``: the version vector of everything applied here
                  before the oldest record still held (what trimming removed, and
                  what the node held when the index began).

Resume: a token ``T`` (a version vector) may resume here if it covers the
floor; the records whose events ``T`` does not cover are exactly what the
consumer lacks, and they lie after the last mark that ``T`` covers (every
record before a mark is within the mark's vector). A token that does not cover
the floor is expired: the events it lacks were trimmed.

Retention: ``trim_feed`` removes records (all but the newest, whose number
the next one follows) older than ``watch_retention_s`` or
beyond ``watch_retention_bytes_max`` (the pages the two databases occupy,
as LMDB counts them; oldest first, folding them into the floor); the node
runs it periodically, apart from the write path, which writes one record (and
every ``_MARK_EVERY`` records a mark) per change and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import lmdb
import msgpack

from crdtstore.audit.record import AUDIT_PREFIX
from crdtstore.crdt import AWSet, Counter, KeyState, Register, StoreMap, VersionVector, decode_as, encode
from crdtstore.storage.environment import StoreEnvironment
from crdtstore.storage.errors import StorageError

_META_FEED_FLOOR = b"feed_floor"
# A mark every this many records: a resume reads at most this many records it could have skipped.
_MARK_EVERY = 64

# What a change did to a key (bits of a record's ``kinds``).
KIND_SET = 1
KIND_INCR = 2
KIND_ADD = 4
KIND_REMOVE = 8
KIND_DELETE = 16
KIND_STATE = 32  # a whole-state change from a repair (state transfer)
KIND_NAMES = {
    KIND_SET: "set",
    KIND_INCR: "incr",
    KIND_ADD: "add",
    KIND_REMOVE: "remove",
    KIND_DELETE: "delete",
    KIND_STATE: "state",
}


def kinds_of(named: KeyState) -> int:
    """What a delta's state of one key does: the bits of ``KIND_*``, the same in every region.

    A register version written is a set, an emptied register a delete; a
    counter's entries are increments; a set member with dots is added, one
    named without dots removed. A delete of a set names every member without
    dots, so it reads as their removal (the value after it is empty either way).
    """
    bits = 0
    for slot in named.slots.values():
        if isinstance(slot, Register):
            bits |= KIND_SET if slot.entries else KIND_DELETE
        elif isinstance(slot, Counter):
            bits |= KIND_INCR if slot.entries else KIND_DELETE
        elif isinstance(slot, AWSet):
            if not slot.entries:
                bits |= KIND_DELETE
            for dots in slot.entries.values():
                bits |= KIND_ADD if dots else KIND_REMOVE
    return bits or KIND_DELETE


def changes_of(delta: StoreMap) -> list[tuple[str, int]]:
    """Each key a delta changes, with what it does to it, in key order; audit records are not changes."""
    return [(key, kinds_of(named)) for key, named in sorted(delta.entries.items()) if not key.startswith(AUDIT_PREFIX)]


class FeedRecord(NamedTuple):
    """One change as the index holds it (see the module docstring). A tuple: one is made per write."""

    seq: int
    origin: str  # "" for a state transfer
    first: int
    last: int  # 0 for a state transfer
    applied_ms: int
    hlc: tuple[int, int] | None
    changes: Sequence[tuple[str, int]]
    brought: VersionVector | None = None  # a state transfer's events
    # A state transfer's records, as read: this node's vector just before the transfer (or an older one).
    before: VersionVector | None = None

    @property
    def continued(self) -> bool:
        """A state transfer's record that more of the same transfer follow (they share its events)."""
        return self.brought is not None and self.first == 1

    def covered_by(self, token: VersionVector) -> bool:
        """Whether a consumer holding ``token`` has this change already."""
        if self.brought is not None:
            # A transfer that changed keys without bringing events this node lacked (never expected)
            # is delivered to everyone rather than to no one.
            return bool(self.brought) and all(token.get(origin) >= n for origin, n in self.brought.items())
        return token.get(self.origin) >= self.last

    def events(self) -> VersionVector:
        """The events this change delivers, as a vector to join into a stream's token."""
        return self.brought if self.brought is not None else VersionVector({self.origin: self.last})


def event_counter(record: FeedRecord, index: int) -> int:
    """The counter of the event of the record's ``index``-th key (in key order): with the origin, its dot.

    A request mints the events ``first..last``, at least one per operation,
    so at least one per key it changed: its keys take the last ones, in key
    order, the last key the request's last event (the dot a write's token
    names, ``Mutate``'s answer). So every event of the feed has a dot of its
    own, the same in every region and for every prefix (the index is of the
    record's keys, not of those a stream wants): ``(origin, counter)`` is a
    deduplication key. 0 for a state transfer, which has no dot.
    """
    if record.brought is not None or not record.origin:
        return 0
    behind = len(record.changes) - 1 - index
    if behind > record.last - record.first:  # never expected: fewer events than keys
        return record.last
    return record.last - behind


def pass_record(
    record: FeedRecord, token: VersionVector, wanted: Callable[[str], bool]
) -> tuple[list[tuple[str, int, int]], VersionVector]:
    """What a stream holding ``token`` sends of ``record``, and its token after.

    The one rule of every watch stream: a change the token covers is skipped;
    any other is delivered (those of its keys the stream wants, each as
    ``(key, kinds, event counter)``) and joined into the token, whether it had
    keys to send or not.
    """
    if record.covered_by(token):
        return [], token
    keys = [(key, bits, event_counter(record, i)) for i, (key, bits) in enumerate(record.changes) if wanted(key)]
    # A transfer's events join the token with its last record: until then its other records are not covered.
    return keys, token if record.continued else token.join(record.events())


def must_restart(record: FeedRecord, token: VersionVector) -> bool:
    """Whether a stream holding ``token`` must start again from a snapshot rather than pass ``record``.

    A state transfer names the keys it changed in this region. A consumer
    whose token holds events this region lacked before the transfer (it
    resumed here from another region) may hold keys this region never had:
    when the transfer brings their deletion, the keys were absent here before
    and after, the record cannot name them, and the consumer would keep them
    (found by the simulator's change-feed watcher with auditing on). Such a
    stream, at a transfer it does not already have, starts again.
    """
    if record.brought is None or record.covered_by(token):
        return False
    return not (record.before or VersionVector()).dominates(token)


@dataclass(frozen=True)
class FeedPage:
    """What one read of the index found after a position."""

    records: list[FeedRecord]
    # The vector this node had when the last record read (or, with no more to read, all of it) was applied:
    # the stream's token may become ``token ⊔ reached`` once the page is delivered, when ``at_end``.
    reached: VersionVector
    at_end: bool  # no record after the page when it was read
    # Everything trimmed from the index (and held before it began), read with the page: a stream
    # whose token does not cover it has lost records it had not passed, and must start again.
    floor: VersionVector


class FeedIndex(StoreEnvironment):
    """The feed's index: written with each change, read by watch streams, trimmed by retention."""

    _feed_mark_seq: int  # the last mark's sequence number (0: none); a hint for spacing them

    def _open_feed(self) -> None:
        """Open the index; a directory without one (new, or from before it) starts it at its current vector."""
        self.feed = self.env.open_db(b"feed")
        self.feed_marks = self.env.open_db(b"feed_marks")
        with self.env.begin(write=True) as txn:
            if txn.get(_META_FEED_FLOOR, db=self.meta) is None:
                txn.put(_META_FEED_FLOOR, encode(self._context_in(txn).vv), db=self.meta)
            cursor = txn.cursor(db=self.feed_marks)
            self._feed_mark_seq = int.from_bytes(cursor.key(), "big") if cursor.last() else 0

    # -- writing (inside the transaction of the change) -----------------------------------

    def _feed_next_seq(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self.feed)
        return int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1

    def _feed_append(
        self,
        txn: lmdb.Transaction,
        record: FeedRecord,
        before: VersionVector,
        *,
        markable: bool = True,
        mark: bool = False,
    ) -> None:
        """Record one change; ``before``: this node's vector just before it (a mark's, unless not ``markable``).

        With ``mark`` the record is marked whatever the spacing (a state transfer's first: ``must_restart``
        reads the vector before it from its mark).
        """
        end: int | bytes = record.last if record.brought is None else encode(record.brought)
        value = msgpack.packb(
            [record.origin, record.first, end, record.applied_ms, record.hlc, record.changes], use_bin_type=True
        )
        seq = record.seq
        seq_key = seq.to_bytes(8, "big")
        if not txn.put(seq_key, value, db=self.feed, append=True):
            raise StorageError(f"change feed record {seq} is not after the last one")
        if mark or (markable and (seq - self._feed_mark_seq >= _MARK_EVERY or self._feed_mark_seq == 0)):
            txn.put(seq_key, encode(before), db=self.feed_marks)
            # Set before the commit: an aborted transaction leaves a hint that only spaces marks wider.
            self._feed_mark_seq = seq

    # -- reading ------------------------------------------------------------------------

    def feed_head(self) -> tuple[int, VersionVector]:
        """The last record's sequence number and this node's vector, read together."""
        with self._gate.read(), self.env.begin() as txn:
            return self._feed_next_seq(txn) - 1, self._context_in(txn).vv

    def feed_floor(self) -> VersionVector:
        with self._gate.read(), self.env.begin() as txn:
            return decode_as(txn.get(_META_FEED_FLOOR, db=self.meta) or b"", VersionVector)

    def feed_start(self, token: VersionVector) -> int | None:
        """Where a stream resuming from ``token`` starts reading (the last sequence number before it), or None.

        None: the token is expired here (it lacks events the index no longer
        holds). Records before the returned position are all within ``token``.
        """
        with self._gate.read(), self.env.begin() as txn:
            floor = decode_as(txn.get(_META_FEED_FLOOR, db=self.meta) or b"", VersionVector)
            if not token.dominates(floor):
                return None
            mark = _last_mark_within(txn.cursor(db=self.feed_marks), token)
            if mark is not None:
                return mark - 1
            # No mark within the token: from the first record held.
            first = txn.cursor(db=self.feed)
            return int.from_bytes(first.key(), "big") - 1 if first.first() else self._feed_next_seq(txn) - 1

    def feed_read(self, after: int, limit: int, keys_max: int) -> FeedPage:
        """Up to ``limit`` records after sequence number ``after`` (fewer once ``keys_max`` keys are read)."""
        records: list[FeedRecord] = []
        keys = 0
        with self._gate.read(), self.env.begin() as txn:
            cursor = txn.cursor(db=self.feed)
            found = cursor.set_range((after + 1).to_bytes(8, "big"))
            marks = txn.cursor(db=self.feed_marks)
            while found and len(records) < limit and keys < keys_max:
                record = _decode_record(int.from_bytes(cursor.key(), "big"), bytes(cursor.value()))
                if record.brought is not None:
                    # The vector before the transfer: the mark on its first record (the last mark at or
                    # before this one; a transfer's later records carry none), or an older one.
                    at = marks.set_range((record.seq + 1).to_bytes(8, "big"))
                    at = marks.prev() if at else marks.last()
                    if at:
                        record = record._replace(before=decode_as(bytes(marks.value()), VersionVector))
                records.append(record)
                keys += len(record.changes)
                found = cursor.next()
            at_end = not found
            reached = self._context_in(txn).vv
            floor = decode_as(txn.get(_META_FEED_FLOOR, db=self.meta) or b"", VersionVector)
        return FeedPage(records, reached, at_end, floor)

    def feed_stats(self) -> tuple[int, int]:
        """(records held, the bytes of the pages the index occupies)."""
        with self._gate.read(), self.env.begin() as txn:
            return txn.stat(self.feed)["entries"], _bytes_of(txn, self.feed) + _bytes_of(txn, self.feed_marks)

    # -- retention ------------------------------------------------------------------------

    def trim_feed(self, older_than_ms: int, bytes_max: int, budget: int = 10_000) -> int:
        """Remove records applied before ``older_than_ms``, or beyond ``bytes_max``, oldest first; returns how many.

        What goes is folded into the floor in the same transaction, so a token
        that lacks it is known to be expired. At most ``budget`` records go per
        call (one write transaction): the node calls again while it returns that many.
        """
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    floor = decode_as(txn.get(_META_FEED_FLOOR, db=self.meta) or b"", VersionVector)
                    # The bytes to free: the index's pages above the bound, counted as the records' own bytes
                    # (with LMDB's per-node overhead), so a trim frees about that much.
                    excess = _bytes_of(txn, self.feed) + _bytes_of(txn, self.feed_marks) - bytes_max
                    cursor = txn.cursor(db=self.feed)
                    # The newest record always stays: sequence numbers go on from it (a stream's position
                    # is one), and would start again at 1 in an empty index.
                    newest = bytes(cursor.key()) if cursor.last() else b""
                    gone: dict[str, int] = {}
                    removed = 0
                    while removed < budget and cursor.first() and bytes(cursor.key()) != newest:
                        value = bytes(cursor.value())
                        record = _decode_record(int.from_bytes(cursor.key(), "big"), value)
                        if record.applied_ms >= older_than_ms and excess <= 0:
                            break
                        for origin, n in record.events().items():
                            gone[origin] = max(gone.get(origin, 0), n)
                        excess -= len(value) + _NODE_OVERHEAD_BYTES
                        cursor.delete()
                        removed += 1
                    if not removed:
                        return 0
                    # Marks before the first record held stand for nothing any more.
                    first_held = int.from_bytes(cursor.key(), "big") if cursor.first() else 2**63
                    marks = txn.cursor(db=self.feed_marks)
                    while marks.first() and int.from_bytes(marks.key(), "big") < first_held:
                        marks.delete()
                    txn.put(_META_FEED_FLOOR, encode(floor.join(VersionVector(gone))), db=self.meta)
                return removed
            except lmdb.MapFullError:
                if not self._grow():
                    raise


# An LMDB node's header and the 8-byte key, beside a record's value.
_NODE_OVERHEAD_BYTES = 16


def _bytes_of(txn: lmdb.Transaction, db: lmdb._Database) -> int:
    stat = txn.stat(db)
    return int(stat["psize"] * (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]))


def _last_mark_within(cursor: lmdb.Cursor, token: VersionVector) -> int | None:
    """The number of the last mark whose vector ``token`` covers, or None: a binary search over the marks.

    Marks' vectors only grow with their numbers (each is what the node had at
    that point), so the marks a token covers come first: a resume reads
    O(log marks) of them, not every one after its point.
    """

    def covered() -> bool:  # the mark under the cursor
        return token.dominates(decode_as(bytes(cursor.value()), VersionVector))

    if not cursor.first() or not covered():
        return None
    low = int.from_bytes(cursor.key(), "big")  # a mark the token covers
    cursor.last()
    if covered():
        return int.from_bytes(cursor.key(), "big")
    high = int.from_bytes(cursor.key(), "big")  # every mark from here on is not covered
    while low + 1 < high:
        middle = (low + high + 1) // 2
        if cursor.set_range(middle.to_bytes(8, "big")) and (seq := int.from_bytes(cursor.key(), "big")) < high:
            if covered():
                low = seq
            else:
                high = seq
        else:
            high = middle  # no mark in [middle, high)
    return low


def _decode_record(seq: int, value: bytes) -> FeedRecord:
    origin, first, end, applied_ms, hlc, changes = msgpack.unpackb(value)
    brought = decode_as(end, VersionVector) if isinstance(end, bytes) else None
    return FeedRecord(
        seq,
        origin,
        first,
        0 if brought is not None else end,
        applied_ms,
        None if hlc is None else (hlc[0], hlc[1]),
        [(k, b) for k, b in changes],
        brought,
    )

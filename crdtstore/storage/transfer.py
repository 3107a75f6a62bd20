"""Repair: the digests of the key buckets, and state transfers, spooled from one read and joined at once.

A peer below what was trimmed from the log is repaired by state transfer: the
sender spools its whole state from one read (``spool_snapshot``, with each
bucket's digest), the peer says which buckets differ, and only their keys
travel, in pages the receiver stages in ``incoming`` (``stage_snapshot``) and
joins in one transaction once the last one arrives (``finish_snapshot``).

Large sets. A key whose set has more than ``set_part_members`` members
travels in parts: each part is a key state holding the key's other slots and
the next run of at most that many members, in member record order, numbered
from 1 (a key that travels whole is part 0). The receiver joins such a key,
and any key whose set here is that large, member by member: it walks its own
members and the transferred ones together in record order, a group of at
most ``set_part_members`` at a time, and joins each group as the full join
would (a member's join depends on that member's dots and the two contexts
alone). So neither side ever holds a whole large set in memory, and no key
is too large for one replication message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import lmdb
import msgpack

from crdtstore.crdt import AWSet, CausalContext, CodecError, Dot, KeyState, ValueType, VersionVector, decode_as, encode
from crdtstore.replica.wire import DIGEST_BUCKETS, TransferItem
from crdtstore.storage.environment import _META_HORIZON
from crdtstore.storage.errors import StaleTransfer, StoreFull
from crdtstore.storage.feed import KIND_STATE, FeedIndex, FeedRecord
from crdtstore.storage.keys import _digests, bucket_of, lmdb_key
from crdtstore.storage.records import KeyRecord, SetRecords, decode_record, key_digest, member_order

__all__ = ["StateTransfer"]


class StateTransfer(FeedIndex):
    """Sending (``spool_snapshot``, ``bucket_digests``) and receiving (``stage_snapshot`` and on) state transfers."""

    def spool_snapshot(self, path: Path) -> tuple[CausalContext, int, list[int]]:
        """Write every key's state, from one consistent read, to the file ``path``.

        Returns the context of the read, the number of keys, and the digest
        of each of ``DIGEST_BUCKETS`` key buckets (see ``bucket_digests``),
        computed from the same read. The file is a stream of msgpack
        ``[key, state, part]`` items (``TransferItem``; a large set in parts),
        for a repair to send at the peer's pace. Reading into a local file
        keeps the read transaction (which pins LMDB pages and holds off map
        growth) as short as a sequential copy.
        """
        packer = msgpack.Packer(use_bin_type=True)
        part_members = self.config.options.set_part_members
        count = 0
        with self._gate.read(), self.env.begin() as txn, Path(path).open("wb") as out:
            context = self._context_in(txn)
            records = self._records(txn)

            def spooled() -> Iterator[tuple[str, int]]:
                nonlocal count
                for record in records.records():
                    key = record.key
                    count += 1
                    if record.members <= part_members:
                        state = records.assemble(record)
                        out.write(packer.pack([key, encode(state), 0]))
                        yield key, key_digest(record, _set_only(state).entries.items())
                        continue

                    def written(record: KeyRecord = record) -> Iterator[tuple[str, frozenset[Dot]]]:
                        # Each part's members are digested as the part is written: one part in memory at a time.
                        for n, part in enumerate(records.parts(record, part_members), 1):
                            out.write(packer.pack([record.key, encode(part), n]))
                            yield from _set_only(part).entries.items()

                    yield key, key_digest(record, written())

            digests = _digests(spooled())
            out.flush()
        return context, count, digests

    def bucket_digests(self) -> list[int]:
        """Per bucket of keys, the XOR of the digests of its keys (see ``keys``).

        Two stores have equal digests for a bucket exactly when (but for a
        hash collision) they hold the same keys with the same states in it.
        """
        with self._gate.read(), self.env.begin() as txn:
            records = self._records(txn)
            return _digests((record.key, records.digest(record)) for record in records.records())

    def digests_at(self) -> tuple[VersionVector, list[int]]:
        """``bucket_digests`` and the version vector they were read at, from one transaction.

        The convergence check (``crdtstore.node.convergence``) compares two
        regions' digests only when they were read at the same vector.
        """
        with self._gate.read(), self.env.begin() as txn:
            vector = self._context_in(txn).vv
            records = self._records(txn)
            return vector, _digests((record.key, records.digest(record)) for record in records.records())

    def stage_snapshot(self, source: str, transfer: int, keys: Sequence[TransferItem]) -> None:
        """Keep one page of state transfer number ``transfer`` from ``source`` until it is complete.

        Pages of different transfers never mix, even if a late page of an
        abandoned transfer arrives after a new one began. A key's parts are
        kept next to each other, in part order.
        """
        prefix = _transfer_prefix(source, transfer)
        while True:
            try:
                with self.env.begin(write=True, db=self.incoming) as txn:
                    for key, body, part in keys:
                        db_key = lmdb_key(key)
                        staged = prefix + len(db_key).to_bytes(2, "big") + db_key + part.to_bytes(4, "big")
                        txn.put(staged, msgpack.packb([key, body, part], use_bin_type=True))
                return
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def discard_snapshot(self, source: str) -> None:
        """Forget every state transfer from ``source`` that will not be completed."""
        prefix = source.encode("utf-8") + b"\x00"
        with self.env.begin(write=True, db=self.incoming) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                found = cursor.delete()

    def finish_snapshot(
        self,
        source: str,
        transfer: int,
        context: CausalContext,
        buckets: frozenset[int] | None = None,
        expected: Sequence[int] | None = None,
    ) -> int:
        """Join the staged state transfer ``transfer`` from ``source``, read at ``context``, in one transaction.

        Every key of the transfer is joined into this node's state, and every
        key of this node that the transfer lacks is joined with nothing, so
        what the sender had removed (its context covers it) goes here too,
        while what the sender never saw stays. That is the full state join,
        key by key. With ``buckets``, the transfer covers only those key
        buckets (the others were equal on both sides when compared), and only
        this node's keys in them are visited; ``expected`` (the sender's
        digests) must still match this node's in every other bucket, or the
        transfer is refused with ``StaleTransfer``. This node's context becomes the join of both; the events
        it now has without their log entries move the log horizon, so a peer
        that needs them from here is repaired in turn. Returns the keys changed.
        """
        prefix = _transfer_prefix(source, transfer)
        while True:
            try:
                return self._finish_snapshot(prefix, context, buckets, expected)
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def _finish_snapshot(
        self, prefix: bytes, remote: CausalContext, buckets: frozenset[int] | None, expected: Sequence[int] | None
    ) -> int:
        changed = 0
        with self.env.begin(write=True) as txn:
            local = self._context_in(txn)
            records = self._records(txn)
            if buckets is not None and len(buckets) < DIGEST_BUCKETS:
                # Before anything is joined: the buckets the transfer skips must still be as compared.
                _check_buckets_unchanged(
                    ((record.key, records.digest(record)) for record in records.records()), buckets, expected
                )
            join = _KeyJoin(records, self._set_ids(txn), local, remote, self.config.options.set_part_members)
            staged: set[bytes] = set()
            changed_keys: list[str] = []
            for key, parts in _staged_keys(txn.cursor(db=self.incoming), prefix):
                if buckets is not None and bucket_of(key) not in buckets:
                    raise CodecError(f"a transferred key {key[:40]!r} is outside the buckets of the transfer")
                staged.add(lmdb_key(key))
                if join.key(key, _checked(key, parts, remote)):
                    changed_keys.append(key)
            # This node's keys that the transfer lacks: joined with nothing (what the sender removed goes).
            for key in _keys_not_staged(txn, self.data, staged, buckets):
                if join.key(key, iter(())):
                    changed_keys.append(key)
            changed = len(changed_keys)
            context = local.join(remote)
            # Events this node now has without their log entries: a peer
            # below them must be repaired from here too.
            gained = {r: n for r, n in remote.vv.items() if n > local.vv.get(r)}
            horizon = self._horizon.join(VersionVector(gained))
            # The change feed: each changed key as a whole-state change, in records of a bounded size.
            feed_seq, now_ms = self._feed_next_seq(txn), self._wall_ms()
            # A transfer that brought events but changed no key here still has a record: a consumer
            # that resumed here holding keys this node never had must hear of it (``must_restart``).
            for i in range(0, max(len(changed_keys), 1 if gained else 0), _FEED_KEYS_PER_RECORD):
                chunk = [(k, KIND_STATE) for k in changed_keys[i : i + _FEED_KEYS_PER_RECORD]]
                more = int(i + _FEED_KEYS_PER_RECORD < len(changed_keys))
                record = FeedRecord(feed_seq, "", more, 0, now_ms, None, chunk, VersionVector(gained))
                # Only the first may be a mark, and always is: before it, this node had local.vv; within the
                # transfer, no vector holds.
                self._feed_append(txn, record, local.vv, markable=i == 0, mark=i == 0)
                feed_seq += 1
            self._put_context(txn, context)
            txn.put(_META_HORIZON, encode(horizon), db=self.meta)
        self._context = context
        self._horizon = horizon
        return changed


# A state transfer's changed keys go into change-feed records of at most this many keys each.
_FEED_KEYS_PER_RECORD = 1000


class _KeyJoin:
    """The full join of transferred keys into one transaction's records; a large set member by member."""

    def __init__(
        self,
        records: SetRecords,
        allocate: Callable[[], int],
        local: CausalContext,
        remote: CausalContext,
        group_max: int,
    ) -> None:
        self.records = records
        self.allocate = allocate
        self.local = local
        self.remote = remote
        self.group_max = group_max

    def key(self, key: str, parts: Iterator[KeyState]) -> int:
        """Join the sender's state of ``key`` (its parts; none if it lacks the key); 1 if the key changed here."""
        records = self.records
        record = records.record(lmdb_key(key))
        first = next(parts, None)
        second = next(parts, None) if first is not None else None
        if second is None and (record is None or record.members <= self.group_max):
            # Small on both sides: the join of the whole states.
            current = records.assemble(record) if record is not None else KeyState()
            joined = current.join(first or KeyState(), self.local, self.remote)
            if joined == current:
                return 0
            records.store(key, joined, record, allocate=self.allocate)
            return 1
        theirs = itertools.chain([p for p in (first, second) if p is not None], parts)
        return self._by_member(key, record, theirs)

    def _by_member(self, key: str, record: KeyRecord | None, parts: Iterator[KeyState]) -> int:
        records, local, remote = self.records, self.local, self.remote
        mine_others = decode_as(record.body, KeyState) if record is not None else KeyState()
        theirs_others: list[KeyState] = []  # the other slots of the sender's first part, once it is read

        def their_members() -> Iterator[_Member]:
            last = b""
            for part in parts:
                held = part.slots.get(ValueType.SET)
                if not theirs_others:
                    theirs_others.append(KeyState({t: s for t, s in part.slots.items() if t != ValueType.SET}))
                if isinstance(held, AWSet):
                    ordered = sorted((member_order(m), m, dots) for m, dots in held.entries.items())
                    if ordered and ordered[0][0] <= last:
                        raise CodecError(f"the parts of transferred key {key[:40]!r} are not in member order")
                    yield from ordered
                    last = ordered[-1][0] if ordered else last

        mine = records.member_stream(record.set_id) if record is not None and record.members else iter(())
        changed = False
        others: KeyState | None = None
        for group in _groups(_merged(mine, their_members()), self.group_max):
            if others is None:
                # Forming the first group read the sender's first part, and with it its other slots.
                others = mine_others.join(theirs_others[0] if theirs_others else KeyState(), local, remote)
            here = AWSet({m: d for m, d, _ in group if d})
            joined = here.join(AWSet({m: d for m, _, d in group if d}), local, remote)
            if joined == here:
                continue
            current = records.record(lmdb_key(key))
            state = KeyState({**others.slots, ValueType.SET: joined})
            records.store(key, state, current, allocate=self.allocate, members=[m for m, _, _ in group])
            changed = True
        if others is None:
            others = mine_others.join(theirs_others[0] if theirs_others else KeyState(), local, remote)
        if others != mine_others:
            records.store(key, others, records.record(lmdb_key(key)), allocate=self.allocate, members=())
            changed = True
        return int(changed)


_Member = tuple[bytes, str, frozenset[Dot]]  # (where it sorts among the set's records, member, dots)
_Pair = tuple[str, frozenset[Dot], frozenset[Dot]]  # (member, its dots here, its dots there)
_NO_DOTS: frozenset[Dot] = frozenset()


def _merged(mine: Iterator[_Member], theirs: Iterator[_Member]) -> Iterator[_Pair]:
    """Both sides' members, in record order, each once with its dots on each side."""
    a, b = next(mine, None), next(theirs, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            yield a[1], a[2], _NO_DOTS
            a = next(mine, None)
        elif a is None or b[0] < a[0]:
            yield b[1], _NO_DOTS, b[2]
            b = next(theirs, None)
        else:
            yield a[1], a[2], b[2]
            a, b = next(mine, None), next(theirs, None)


def _groups(pairs: Iterator[_Pair], size: int) -> Iterator[list[_Pair]]:
    group: list[_Pair] = []
    for pair in pairs:
        group.append(pair)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _set_only(part: KeyState) -> AWSet:
    held = part.slots.get(ValueType.SET)
    return held if isinstance(held, AWSet) else AWSet()


def _staged_keys(cursor: lmdb.Cursor, prefix: bytes) -> Iterator[tuple[str, Iterator[KeyState]]]:
    """The staged keys of one transfer, each with its parts in order; each record is removed as it is read."""
    found = cursor.set_range(prefix)
    while found and bytes(cursor.key()).startswith(prefix):
        group = bytes(cursor.key())[:-4]  # a key's records share all but the part number
        key = msgpack.unpackb(bytes(cursor.value()), raw=False)[0]

        def bodies(group: bytes = group) -> Iterator[bytes]:
            nonlocal found
            while found and bytes(cursor.key())[:-4] == group:
                body = msgpack.unpackb(bytes(cursor.value()), raw=False)[1]
                found = cursor.delete()
                yield body

        staged = bodies()
        yield key, (decode_as(body, KeyState) for body in staged)
        for _ in staged:  # parts the join left unread (a key it found equal after its first part)
            pass


def _checked(key: str, parts: Iterator[KeyState], remote: CausalContext) -> Iterator[KeyState]:
    for theirs in parts:
        if not all(remote.contains(dot) for dot in theirs.dots()):
            raise CodecError(f"a transferred key {key[:40]!r} holds an event outside the transfer's context")
        yield theirs


_KEYS_PER_READ = 1024


def _keys_not_staged(
    txn: lmdb.Transaction, data: lmdb._Database, staged: set[bytes], buckets: frozenset[int] | None
) -> Iterator[str]:
    """This node's keys that were not staged (in the buckets covered), read a chunk at a time as they are joined."""
    start = b""
    while True:
        chunk: list[tuple[bytes, str]] = []
        cursor = txn.cursor(db=data)
        found = cursor.set_range(start) if start else cursor.first()
        while found and len(chunk) < _KEYS_PER_READ:
            db_key = bytes(cursor.key())
            chunk.append((db_key, decode_record(db_key, bytes(cursor.value())).key))
            found = cursor.next()
        cursor.close()
        for db_key, key in chunk:
            if db_key not in staged and (buckets is None or bucket_of(key) in buckets):
                yield key
        if len(chunk) < _KEYS_PER_READ:
            return
        start = chunk[-1][0] + b"\x00"


def _check_buckets_unchanged(
    own: Iterable[tuple[str, int]], covered: frozenset[int], expected: Sequence[int] | None
) -> None:
    """The buckets a transfer skips must still equal the sender's, or joining its context would be wrong.

    They were skipped because this node's state in them equalled the
    sender's when compared. If this node has changed them since (an entry
    arrived), it may now hold events the sender's context says were
    removed, and the join would keep them while claiming the removal:
    the transfer is refused, and the next round compares again.
    """
    if expected is None or len(expected) != DIGEST_BUCKETS:
        raise StaleTransfer("a transfer that covers only some buckets needs the sender's digests")
    digests = _digests(own)
    changed = [i for i in range(DIGEST_BUCKETS) if i not in covered and digests[i] != expected[i]]
    if changed:
        raise StaleTransfer(f"{len(changed)} bucket(s) changed here since they were compared")


def _transfer_prefix(source: str, transfer: int) -> bytes:
    return source.encode("utf-8") + b"\x00" + transfer.to_bytes(8, "big")

"""A key's records: one for the key, and one per member of its set, so a write costs what it touches.

A key's state (``KeyState``) holds a slot per value type. Registers and
counters stay in the key's own record in the ``data`` database. A set's
members live apart, one record each in the ``members`` database, under the
set's id (8 bytes, allocated when the key first holds members) and the
member's bytes, so they come out in code point order and a member is found
in O(log n). The key's record carries the set's id and its number of live
members. An add, a remove, or a peer's delta touches the records of the
members it names and the key's record, nothing else; a delete (which names
every member) and a state transfer (which joins whole states) visit them all.

Member records: the key is ``set id + member`` for a member of at most
``_SHORT_MEMBER_BYTES_MAX`` UTF-8 bytes; a longer one is stored under its
first ``_LONG_MEMBER_PREFIX_BYTES`` bytes, a 0xFF byte (never part of UTF-8)
and its SHA-256, with the member itself in the value, so such members sort
by hash among those sharing that prefix (as long keys do). The value is the
member's dots, ``[member or "", origin, counter, origin, counter, ...]`` in msgpack.

Reads that need the whole state (``get``, scans, a small set's transfer)
assemble it: the key's slots with the set's members joined back in. The
assembled state encodes to exactly the bytes a state holding everything in
one record encoded to. Repair digests (``digest``) and the transfer of a
large set (``parts``, see ``transfer``) read the members a run at a time
instead, so they never hold a large set in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import NamedTuple

import lmdb
import msgpack

from crdtstore.crdt import AWSet, Dot, KeyState, ValueType, decode_as, encode
from crdtstore.storage.errors import StorageError
from crdtstore.storage.keys import _SHORT_KEY_BYTES_MAX, _member_digest, _pair_digest, lmdb_key

__all__ = [
    "KeyRecord",
    "SetRecords",
    "decode_record",
    "encode_record",
    "key_digest",
    "member_key",
    "member_order",
    "plain_record",
]

_SHORT_MEMBER_BYTES_MAX = 480
_LONG_MEMBER_PREFIX_BYTES = 440
_LONG_MARK = b"\xff"

# The first byte of a key's record: which parts follow.
_LONG_KEY = 0x01  # the full key follows (its LMDB key is a prefix and a hash)
_HAS_SET = 0x02  # a set's id and member count follow


class KeyRecord(NamedTuple):
    key: str
    body: bytes  # the encoded KeyState of the slots other than the set's
    set_id: int  # 0: the key has never held members
    members: int  # live members of its set


def encode_record(key: str, others: KeyState, set_id: int, members: int, body: bytes | None = None) -> bytes:
    if not set_id:
        return plain_record(key, encode(others) if body is None else body)
    raw = key.encode("utf-8")
    flags = (_LONG_KEY if len(raw) > _SHORT_KEY_BYTES_MAX else 0) | (_HAS_SET if set_id else 0)
    parts = [bytes((flags,))]
    if set_id:
        parts.append(set_id.to_bytes(8, "big") + members.to_bytes(8, "big"))
    if flags & _LONG_KEY:
        parts.append(len(raw).to_bytes(2, "big") + raw)
    parts.append(encode(others) if body is None else body)
    return b"".join(parts)


def plain_record(key: str, body: bytes) -> bytes:
    """The record of a key that has never held a set: ``encode_record`` with the state's encoding ``body``."""
    raw = key.encode("utf-8")
    if len(raw) > _SHORT_KEY_BYTES_MAX:
        return b"".join((bytes((_LONG_KEY,)), len(raw).to_bytes(2, "big"), raw, body))
    return b"\x00" + body


def decode_record(db_key: bytes, value: bytes) -> KeyRecord:
    if not value or value[0] > (_LONG_KEY | _HAS_SET):
        raise StorageError(f"unknown value framing {value[:1]!r}")
    flags, at = value[0], 1
    set_id = members = 0
    if flags & _HAS_SET:
        set_id = int.from_bytes(value[at : at + 8], "big")
        members = int.from_bytes(value[at + 8 : at + 16], "big")
        at += 16
    if flags & _LONG_KEY:
        n = int.from_bytes(value[at : at + 2], "big")
        key = value[at + 2 : at + 2 + n].decode("utf-8")
        if lmdb_key(key) != db_key:
            raise StorageError(f"stored key does not match its index entry: {key[:40]!r}...")
        at += 2 + n
    else:
        key = db_key.decode("utf-8")
    return KeyRecord(key, value[at:], set_id, members)


def member_key(set_id: int, member: str) -> bytes:
    raw = member.encode("utf-8")
    prefix = set_id.to_bytes(8, "big")
    if len(raw) <= _SHORT_MEMBER_BYTES_MAX:
        return prefix + raw
    return prefix + raw[:_LONG_MEMBER_PREFIX_BYTES] + _LONG_MARK + hashlib.sha256(raw).digest()


def _member_value(member: str, dots: frozenset[Dot]) -> bytes:
    raw_len = len(member.encode("utf-8"))
    flat: list[object] = [member if raw_len > _SHORT_MEMBER_BYTES_MAX else ""]
    for dot in sorted(dots):
        flat += (dot.region, dot.counter)
    return msgpack.packb(flat, use_bin_type=True)


def _member_of(record_key: bytes, value: bytes) -> tuple[str, frozenset[Dot]]:
    flat = msgpack.unpackb(value, raw=False)
    member = flat[0] or record_key[8:].decode("utf-8")
    return member, frozenset(Dot(flat[i], flat[i + 1]) for i in range(1, len(flat), 2))


class SetRecords:
    """The member records of one transaction: reading, writing and assembling key states."""

    def __init__(self, txn: lmdb.Transaction, data: lmdb._Database, members: lmdb._Database) -> None:
        self.txn = txn
        self.data = data
        self.members_db = members

    def record(self, db_key: bytes) -> KeyRecord | None:
        raw = self.txn.get(db_key, db=self.data)
        return None if raw is None else decode_record(db_key, bytes(raw))

    def load(self, key: str, members: Collection[str] | None = None) -> tuple[KeyState | None, KeyRecord | None]:
        """The key's state with all of its set's members, or (``members``) only those of them.

        A partial state answers joins and mutations of the members it names
        exactly as the whole state would; it must not be read for anything else.
        """
        record = self.record(lmdb_key(key))
        if record is None:
            return None, None
        return self.assemble(record, members), record

    def member_besides(self, record: KeyRecord, names: Collection[str]) -> str | None:
        """A live member of the key's set that is not one of ``names``, or None when it has none.

        Reads at most ``len(names) + 1`` member records, whatever the set's size.
        """
        if not record.members:
            return None
        chunk = min(len(names) + 1, 1024)
        for _, member, dots in self.member_stream(record.set_id, chunk=chunk):
            if dots and member not in names:
                return member
        return None

    def assemble(self, record: KeyRecord, members: Collection[str] | None = None) -> KeyState:
        others = decode_as(record.body, KeyState)
        if not record.members:
            return others
        if members is None:
            entries = dict(self._all_members(record.set_id))
        else:
            entries = {}
            for member in members:
                mkey = member_key(record.set_id, member)
                raw = self.txn.get(mkey, db=self.members_db)
                if raw is not None:
                    entries[member] = _member_of(mkey, bytes(raw))[1]
        slots = dict(others.slots)
        slots[ValueType.SET] = AWSet(entries)
        return KeyState(slots)

    def _all_members(self, set_id: int) -> Iterator[tuple[str, frozenset[Dot]]]:
        for _, member, dots in self.member_stream(set_id):
            yield member, dots

    def member_stream(self, set_id: int, chunk: int = 1024) -> Iterator[tuple[bytes, str, frozenset[Dot]]]:
        """The set's members in record order, as (record key without the set id, member, dots).

        Read ``chunk`` records at a time, each read seeking past the last
        record read before: the caller may write member records it has
        already been given between two items (a join walking a set does).
        """
        prefix = set_id.to_bytes(8, "big")
        start = prefix
        while True:
            read: list[tuple[bytes, str, frozenset[Dot]]] = []
            cursor = self.txn.cursor(db=self.members_db)
            found = cursor.set_range(start)
            while found and len(read) < chunk:
                record_key = bytes(cursor.key())
                if not record_key.startswith(prefix):
                    break
                member, dots = _member_of(record_key, bytes(cursor.value()))
                read.append((record_key[8:], member, dots))
                found = cursor.next()
            cursor.close()
            yield from read
            if len(read) < chunk:
                return
            start = prefix + read[-1][0] + b"\x00"

    def records(self) -> Iterator[KeyRecord]:
        """Every key's record, in key order."""
        for db_key, value in self.txn.cursor(db=self.data):
            yield decode_record(bytes(db_key), bytes(value))

    def digest(self, record: KeyRecord) -> int:
        """The key's repair digest (see ``keys``), its members read a run at a time."""
        return key_digest(record, self._all_members(record.set_id) if record.members else ())

    def parts(self, record: KeyRecord, members_max: int) -> Iterator[KeyState]:
        """The key's state in parts of at most ``members_max`` members, in record order; each holds the other slots."""
        others = decode_as(record.body, KeyState)
        chunk: dict[str, frozenset[Dot]] = {}
        for _, member, dots in self.member_stream(record.set_id) if record.members else ():
            chunk[member] = dots
            if len(chunk) == members_max:
                yield _with_set(others, chunk)
                chunk = {}
        if chunk:
            yield _with_set(others, chunk)

    def member_page(self, record: KeyRecord, after: str, limit: int) -> tuple[list[str], bool]:
        """Live members after ``after`` in record order, at most ``limit``; and whether more follow."""
        prefix = record.set_id.to_bytes(8, "big")
        out: list[str] = []
        if not record.members:
            return out, False
        cursor = self.txn.cursor(db=self.members_db)
        start = member_key(record.set_id, after) if after else prefix
        found = cursor.set_range(start)
        while found:
            record_key = bytes(cursor.key())
            if not record_key.startswith(prefix):
                break
            member, dots = _member_of(record_key, bytes(cursor.value()))
            if dots and member != after:
                if len(out) == limit:
                    return out, True
                out.append(member)
            found = cursor.next()
        return out, False

    def contains(self, record: KeyRecord, member: str) -> bool:
        if not record.members:
            return False
        mkey = member_key(record.set_id, member)
        raw = self.txn.get(mkey, db=self.members_db)
        return raw is not None and bool(_member_of(mkey, bytes(raw))[1])

    def store(
        self,
        key: str,
        state: KeyState,
        record: KeyRecord | None,
        *,
        allocate: Callable[[], int],
        members: Collection[str] | None = None,
        others_body: bytes | None = None,
    ) -> None:
        """Write ``state`` as the key's records; ``members``: the only members ``state`` may have changed.

        Without ``members`` the set is written whole (its old member records
        go first). ``allocate`` gives the id of a set the key never had.
        ``others_body``: the encoding of the state's other slots, when the caller has it.
        """
        db_key = lmdb_key(key)
        if ValueType.SET not in state.slots and (record is None or not record.set_id):
            # No set now and never one: the key's record alone (most keys: registers and counters).
            if state.is_bottom():
                self.txn.delete(db_key, db=self.data)
            else:
                self.txn.put(
                    db_key, plain_record(key, encode(state) if others_body is None else others_body), db=self.data
                )
            return
        slots = dict(state.slots)
        held = slots.pop(ValueType.SET, None)
        entries = held.entries if isinstance(held, AWSet) else {}
        set_id = record.set_id if record is not None else 0
        count = record.members if record is not None else 0
        if members is None:
            if set_id and count:
                self._drop_all(set_id)
            count = 0
            members = [m for m, dots in entries.items() if dots]
        if not set_id and any(entries.get(m) for m in members):
            set_id = allocate()
        for member in members:
            dots = entries.get(member)
            mkey = member_key(set_id, member) if set_id else b""
            had = bool(set_id) and self.txn.get(mkey, db=self.members_db) is not None
            if dots:
                self.txn.put(mkey, _member_value(member, dots), db=self.members_db)
                count += not had
            elif had:
                self.txn.delete(mkey, db=self.members_db)
                count -= 1
        others = KeyState(slots)
        if not count and others.is_bottom():
            self.txn.delete(db_key, db=self.data)
            return
        self.txn.put(db_key, encode_record(key, others, set_id, count, others_body), db=self.data)

    def _drop_all(self, set_id: int) -> None:
        prefix = set_id.to_bytes(8, "big")
        cursor = self.txn.cursor(db=self.members_db)
        found = cursor.set_range(prefix)
        while found and bytes(cursor.key()).startswith(prefix):
            found = cursor.delete()

    def delete(self, key: str, record: KeyRecord | None) -> None:
        if record is not None and record.members:
            self._drop_all(record.set_id)
        self.txn.delete(lmdb_key(key), db=self.data)


def _with_set(others: KeyState, members: dict[str, frozenset[Dot]]) -> KeyState:
    slots = dict(others.slots)
    slots[ValueType.SET] = AWSet(members)
    return KeyState(slots)


def key_digest(record: KeyRecord, members: Iterable[tuple[str, frozenset[Dot]]]) -> int:
    """A key's repair digest (see ``keys``): its other slots hashed whole, XOR each of its ``members`` hashed."""
    digest = _pair_digest(record.key, record.body)
    for member, dots in members:
        digest ^= _member_digest(record.key, member, dots)
    return digest


def member_order(member: str) -> bytes:
    """Where ``member`` sorts among a set's records (its record key without the set id)."""
    return member_key(0, member)[8:]

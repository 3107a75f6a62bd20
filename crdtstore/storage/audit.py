"""The audit trail in the store: one record per request, written in the transaction of its change.

A record (``crdtstore.audit.record``) is one more register write of the
request's own batch, under ``record_key(origin, last)`` in the system
keyspace, with the batch's last dot: so the record and the change commit
together (an acknowledged write always has its record; a crash leaves both
or neither), travel in the same replication entry, and are repaired, backed
up and compared like any data. Trimming the delta log never touches them.

This node's own chain head (seq and digest of its origin's newest record) is
kept in memory and, as the region's own statement of it, in ``meta``
(``audit_head``), written in the same transaction: a truncated tail is then
detectable offline, even on this node's own chain.

A request refused inside a batch (a type mismatch, an idempotency conflict, a
key too large) and a retry answered from the idempotency record write an
audit-only entry: the record alone, under a dot of its own. So does a request
refused before it reached the writer (``WriteRequest.info.refused``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import lmdb
import msgpack

from crdtstore.audit.record import (
    AUDIT_PREFIX,
    ZERO_HASH,
    AuditError,
    AuditRecord,
    ChainFinding,
    ChainReport,
    Floor,
    OpSummary,
    chain_prefix,
    check_chain,
    decode,
    digest,
    pack,
    parse_record_key,
    record_key,
)
from crdtstore.crdt import (
    CausalContext,
    CodecError,
    Dot,
    KeyState,
    Register,
    StoreMap,
    Timestamp,
    ValueType,
    decode_as,
    encode_register_write,
)
from crdtstore.crdt.register import Version
from crdtstore.storage.environment import _META_CONTEXT, StoreEnvironment
from crdtstore.storage.errors import StorageError
from crdtstore.storage.keys import lmdb_key
from crdtstore.storage.records import decode_record, plain_record

__all__ = ["AuditTrail", "RefusalRecorded", "RequestInfo", "Sealed", "refusal_code"]

_META_AUDIT_HEAD = b"audit_head"
_META_AUDIT_EXPORTED = b"audit_exported"  # {origin: [seq, last]}: how far each chain was exported


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the node knows of a request besides its operations (all optional)."""

    principal: str = ""
    request_id: str = ""
    method: str = ""
    peer: str = ""
    durability: str = ""
    # A request refused before it reached the writer: its gRPC status code name and message.
    # Its operations (when known) are recorded, not applied; without them, what it asked (``asked``).
    refused: tuple[str, str] | None = None
    asked: tuple[OpSummary, ...] = ()  # each right it needed on each key, as summaries
    # Not a request: the node's own, at start, when auditing comes back on (``resume_audit_chain``).
    resume_chain: bool = False


_NO_INFO = RequestInfo()
# A refusal's message is kept to this many characters.
_REASON_CHARS_MAX = 1000

# What each error a batch can refuse a request with answers (``crdtstore.node.service`` maps them alike).
_CODES = {
    "TypeMismatch": "FAILED_PRECONDITION",
    "StoreFull": "RESOURCE_EXHAUSTED",
    "KeyTooLarge": "RESOURCE_EXHAUSTED",
    "DataCorruption": "DATA_LOSS",
    "IdempotencyConflict": "INVALID_ARGUMENT",
    "ValueError": "INVALID_ARGUMENT",
    "TypeError": "INVALID_ARGUMENT",
}


def refusal_code(error: Exception) -> str:
    return _CODES.get(type(error).__name__, "INTERNAL")


class AuditTrail(StoreEnvironment):
    """This node's chain head, the records a batch writes, and reading records back."""

    # Whether local writes leave records (``StorageOptions.audit``); set at open.
    audit_enabled: bool
    _audit_head: tuple[str, int, bytes]  # (origin, seq, digest) of this node's newest record

    if TYPE_CHECKING:
        origin: str

    def _open_audit(self) -> None:
        self.audit_enabled = self.config.options.audit
        with self.env.begin() as txn:
            self._audit_head = read_audit_head(txn, self.meta) or ("", 0, ZERO_HASH)

    def audit_chain_head(self, origin: str) -> tuple[int, bytes]:
        """This node's head of its own origin's chain: (seq, digest), (0, ZERO_HASH) before any record."""
        head_origin, seq, head = self._audit_head
        return (seq, head) if head_origin == origin else (0, ZERO_HASH)

    # -- writing (inside a batch's transaction) -------------------------------------------

    def _seal_record(
        self,
        chain: list[object],
        *,
        origin: str,
        first: int,
        last: int,
        timestamp: Timestamp,
        now_ms: int,
        kind: str,
        info: RequestInfo | None,
        idempotency_key: bytes,
        operations: Sequence[OpSummary],
        token: bytes,
        code: str = "",
        reason: str = "",
    ) -> Sealed:
        # (Packed field by field, not through an ``AuditRecord``: this runs once per request on the write path.)
        """The record of events ``origin:first..last`` (``last`` its own), following ``chain``'s head.

        Nothing is written: ``_put_record`` writes it, once the request is
        sure to commit, and advances the chain.
        """
        held_origin, seq, prev = chain
        if held_origin != origin:  # a new incarnation starts a new chain
            seq, prev = 0, ZERO_HASH
        seq = int(seq) + 1  # type: ignore[call-overload]
        info = info or _NO_INFO
        value = pack(
            origin,
            seq,
            prev,
            first,
            last,
            timestamp.wall_ms,
            timestamp.logical,
            now_ms,
            kind,
            info.principal,
            info.request_id,
            info.method,
            info.peer,
            idempotency_key,
            operations,
            info.durability,
            token,
            code,
            reason[:_REASON_CHARS_MAX],
        )
        return Sealed(record_key(origin, last), Dot(origin, last), timestamp, value, seq, digest(value))

    def _put_record(self, txn: lmdb.Transaction, chain: list[object], sealed: Sealed) -> None:
        key, dot, timestamp, value = sealed.key, sealed.dot, sealed.timestamp, sealed.value
        txn.put(lmdb_key(key), plain_record(key, encode_register_write(dot, timestamp, value)), db=self.data)
        chain[:] = [dot.region, sealed.seq, sealed.digest]

    def _put_audit_head(self, txn: lmdb.Transaction, chain: list[object]) -> None:
        txn.put(_META_AUDIT_HEAD, msgpack.packb(chain, use_bin_type=True), db=self.meta)

    # -- reading ------------------------------------------------------------------------------

    def audit_record_at(self, origin: str, counter: int) -> AuditRecord | None:
        """The record of the request whose events include ``origin:counter``, if this node holds it."""
        prefix = lmdb_key(chain_prefix(origin))
        with self._gate.read(), self.env.begin() as txn:
            cursor = txn.cursor(db=self.data)
            if not cursor.set_range(lmdb_key(record_key(origin, counter))):
                return None
            db_key, raw = bytes(cursor.key()), bytes(cursor.value())
        if not db_key.startswith(prefix):
            return None
        try:
            record = decode(_register_value(db_key, raw))
        except (AuditError, StorageError):
            return None
        return record if record.first <= counter <= record.last else None

    def audit_raw(self, *, origin: str | None = None, after: bytes = b"", limit: int = 1000) -> list[tuple[str, bytes]]:
        """Up to ``limit`` records as stored (key, record bytes), in key order, after the LMDB key ``after``.

        A value that is not a plain register is returned as it is stored (b"" when it has no value), so
        that verification names it rather than skipping it.
        """
        prefix = lmdb_key(chain_prefix(origin) if origin is not None else AUDIT_PREFIX)
        with self._gate.read(), self.env.begin() as txn:
            stored = _stored_under(txn.cursor(db=self.data), prefix, after + b"\x00" if after else prefix)
            return [(db_key.decode("utf-8", "replace"), value) for db_key, value in itertools.islice(stored, limit)]

    def audit_origins(self) -> list[str]:
        """Every origin this node holds records of."""
        origins: list[str] = []
        with self._gate.read(), self.env.begin() as txn:
            cursor = txn.cursor(db=self.data)
            found = cursor.set_range(lmdb_key(AUDIT_PREFIX))
            while found:
                db_key = bytes(cursor.key())
                if not db_key.startswith(lmdb_key(AUDIT_PREFIX)):
                    break
                try:
                    origin, _ = parse_record_key(db_key.decode("utf-8"))
                except (AuditError, UnicodeDecodeError):
                    found = cursor.next()
                    continue
                origins.append(origin)
                found = cursor.set_range(lmdb_key(chain_prefix(origin))[:-1] + b"\x01")
        return origins

    def audit_heads_at(self) -> dict[str, tuple[int, bytes, int]]:
        """Per origin, the newest record this node holds: (seq, digest, its own dot counter)."""
        heads: dict[str, tuple[int, bytes, int]] = {}
        for origin in self.audit_origins():
            with self._gate.read(), self.env.begin() as txn:
                record = self._newest_record_in(txn, origin)
            if record is not None:
                heads[origin] = (record.seq, record.digest(), record.last)
        return heads

    def _newest_record_in(self, txn: lmdb.Transaction, origin: str) -> AuditRecord | None:
        """``origin``'s newest record in ``txn`` (None when it has none, or it does not decode)."""
        prefix = lmdb_key(chain_prefix(origin))
        cursor = txn.cursor(db=self.data)
        found = cursor.prev() if cursor.set_range(prefix[:-1] + b"\x01") else cursor.last()
        db_key = bytes(cursor.key()) if found else b""
        raw = bytes(cursor.value()) if found and db_key.startswith(prefix) else b""
        try:
            return decode(_register_value(db_key, raw))
        except (AuditError, StorageError):
            return None

    def audit_unrecorded_from(self, txn: lmdb.Transaction | None = None) -> int:
        """The first of this node's own events (its current origin's) that has no record, or 0.

        Events are minted without records only while ``[storage] audit`` is
        off; when it comes back on, the node writes one record of kind
        ``resumed`` that covers them (``resume_chain``), so the chain goes on
        unbroken and says where the evidence stops. 0 before the chain's first
        record (a trail that starts later starts with its first record).
        """
        if txn is None:
            with self._gate.read(), self.env.begin() as read:
                return self.audit_unrecorded_from(read)
        head_origin, seq, _ = self._audit_head
        if not self.audit_enabled or head_origin != self.origin or not seq or self._retire_reason is not None:
            return 0  # (a node about to take a new incarnation starts a new chain: nothing to cover)
        newest = self._newest_record_in(txn, self.origin)
        if newest is None:
            return 0  # a chain that cannot be read is verify's to report, not this to paper over
        return newest.last + 1 if self._context_in(txn).vv.get(self.origin) > newest.last else 0

    def audit_record_count(self) -> int:
        """How many records this node holds (from each chain's first and last seq: no scan)."""
        total = 0
        for origin, (head_seq, _, _) in self.audit_heads_at().items():
            records = self.audit_raw(origin=origin, limit=1)
            try:
                total += head_seq - decode(records[0][1]).seq + 1
            except (AuditError, IndexError):
                continue
        return total

    def audit_floor(self, origin: str) -> Floor | None:
        """Where ``origin``'s chain starts after retention dropped its oldest records (``read_floor``)."""
        with self._gate.read(), self.env.begin() as txn:
            return read_floor(txn, self.data, origin)

    def iter_audit(self, origin: str | None = None, page: int = 1000) -> Iterator[tuple[str, bytes]]:
        """Every record (key, bytes) in key order, read a page at a time."""
        after = b""
        while True:
            chunk = self.audit_raw(origin=origin, after=after, limit=page)
            yield from chunk
            if len(chunk) < page:
                return
            after = lmdb_key(chunk[-1][0])

    # -- export marks and seeking (``crdtstore.node.audit_rpc``, ``crdtstore.node.audit_retention``) --

    def audit_record_from(self, origin: str, counter: int) -> AuditRecord | None:
        """The first record of ``origin``'s chain whose own dot is ``counter`` or later (None past the end).

        A record that does not decode is passed over here: verification is where it is reported.
        """
        after = lmdb_key(record_key(origin, counter - 1)) if counter > 0 else b""
        while True:
            chunk = self.audit_raw(origin=origin, after=after, limit=16)
            for key, raw in chunk:
                try:
                    return decode(raw)
                except AuditError:
                    after = lmdb_key(key)
            if len(chunk) < 16:
                return None

    def audit_exported(self) -> dict[str, tuple[int, int]]:
        """Per origin, the last record known to be exported durably: (seq, own dot counter)."""
        with self._gate.read(), self.env.begin(db=self.meta) as txn:
            raw = txn.get(_META_AUDIT_EXPORTED)
        if raw is None:
            return {}
        return {str(o): (int(seq), int(last)) for o, (seq, last) in msgpack.unpackb(bytes(raw)).items()}

    def audit_chain_reports(self) -> list[ChainReport]:
        """``chain_reports_in`` of one read transaction of this store."""
        with self._gate.read(), self.env.begin() as txn:
            return chain_reports_in(txn, self.data, self.meta)

    def put_audit_exported(self, marks: dict[str, tuple[int, int]]) -> None:
        """Raise the export marks to ``marks`` (a mark never goes back). On the writer's thread.

        This node's own bookkeeping, in its metadata: not replicated.
        """
        with self.env.begin(write=True, db=self.meta) as txn:
            raw = txn.get(_META_AUDIT_EXPORTED)
            held = {str(o): (int(s), int(la)) for o, (s, la) in msgpack.unpackb(bytes(raw)).items()} if raw else {}
            for origin, mark in marks.items():
                held[origin] = max(held.get(origin, (0, 0)), mark)
            txn.put(_META_AUDIT_EXPORTED, msgpack.packb({o: list(m) for o, m in held.items()}, use_bin_type=True))


class Sealed(NamedTuple):
    """A record ready to write: its key, dot (the request's last), timestamp and bytes; its seq and digest."""

    key: str
    dot: Dot
    timestamp: Timestamp
    value: bytes
    seq: int
    digest: bytes

    def write(self) -> tuple[str, Dot, Timestamp, bytes]:
        """As a register write (``encode_register_writes``)."""
        return (self.key, self.dot, self.timestamp, self.value)

    def delta(self) -> StoreMap:
        """The delta of its register write alone (what an audit-only entry replicates)."""
        state = KeyState({ValueType.REGISTER: Register({self.dot: Version(self.timestamp, self.value)})})
        return StoreMap({self.key: state}, CausalContext.from_dots([self.dot]))


class RefusalRecorded(Exception):
    """The answer to a ``WriteRequest`` refused before the writer: its record is written, nothing else."""


def _register_value(db_key: bytes, raw: bytes) -> bytes:
    """The one register value a record key holds, as stored."""
    if not raw:
        raise StorageError("no value")
    record = decode_record(db_key, raw)
    state = decode_as(record.body, KeyState)
    register = state.slots.get(ValueType.REGISTER)
    if not isinstance(register, Register) or len(register.entries) != 1 or len(state.slots) != 1:
        raise StorageError("the record key does not hold exactly one register value")
    ((_, version),) = register.entries.items()
    return version.value


# -- trimmed chains' floors, and reading chains from a bare transaction (offline verification) ------

# Where a trimmed chain starts: an ordinary register in the system keyspace (outside the records'
# prefix, so it is never taken for a record), one per chain and per region that dropped records of it,
# written by the same replicated write that drops them (``crdtstore.node.audit_retention``). Its value
# is msgpack [seq, digest, last] of the last record that region dropped. The chain's floor is the
# highest of them (and of a register's concurrent siblings): every record up to it is gone everywhere.
# One register per dropping region, because a region that had already seen a peer's higher floor when
# it wrote its own would otherwise replace it with a lower one (found in review: the chain then read
# as broken in every region); a region's own floor only rises, since it drops from its oldest record.
FLOOR_PREFIX = "\x00auditfloor/"


def floor_key(origin: str, region: str) -> str:
    """The floor register ``region`` writes for ``origin``'s chain (neither holds a NUL)."""
    return f"{FLOOR_PREFIX}{origin}\x00{region}"


def encode_floor(floor: Floor) -> bytes:
    return msgpack.packb([floor.seq, floor.hash, floor.last], use_bin_type=True)


def read_floor(txn: lmdb.Transaction, data: lmdb._Database, origin: str) -> Floor | None:
    """The floor of ``origin``'s chain as ``txn`` sees it (the highest any region wrote); None if untrimmed."""
    prefix = lmdb_key(f"{FLOOR_PREFIX}{origin}\x00")
    floors: list[Floor] = []
    cursor = txn.cursor(db=data)
    found = cursor.set_range(prefix)
    while found and bytes(cursor.key()).startswith(prefix):
        db_key = bytes(cursor.key())
        try:
            state = decode_as(decode_record(db_key, bytes(cursor.value())).body, KeyState)
        except (StorageError, ValueError) as exc:
            raise StorageError(f"the floor of the audit chain of {origin} cannot be read: {exc}") from exc
        register = state.slots.get(ValueType.REGISTER)
        for version in register.entries.values() if isinstance(register, Register) else ():
            try:
                seq, head, last = msgpack.unpackb(version.value)
                floors.append(Floor(int(seq), bytes(head), int(last)))
            except (ValueError, TypeError, msgpack.UnpackException):
                continue
        found = cursor.next()
    return max(floors, default=None, key=lambda f: f.seq)


def read_audit_head(txn: lmdb.Transaction, meta: lmdb._Database) -> tuple[str, int, bytes] | None:
    """This store's record of its own newest record (origin, seq, digest), as ``txn`` sees it."""
    raw = txn.get(_META_AUDIT_HEAD, db=meta)
    if raw is None:
        return None
    origin, seq, head = msgpack.unpackb(bytes(raw))
    return str(origin), int(seq), bytes(head)


def iter_records_in(txn: lmdb.Transaction, data: lmdb._Database) -> Iterator[tuple[str, int, bytes]]:
    """Every record ``txn`` holds as (origin, the dot its key names, stored bytes), in key order.

    A key under the records' prefix that does not name a record is yielded with origin "" and dot 0,
    so that verification reports it rather than passing over it.
    """
    prefix = lmdb_key(AUDIT_PREFIX)
    for db_key, value in _stored_under(txn.cursor(db=data), prefix, prefix):
        try:
            origin, at = parse_record_key(db_key.decode("utf-8"))
        except (AuditError, UnicodeDecodeError):
            origin, at = "", 0
        yield origin, at, value


def _stored_under(cursor: lmdb.Cursor, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(LMDB key, record bytes) of every record key under ``prefix`` from ``start`` on, in key order.

    A value that is not one plain register is yielded as it is stored, so
    that verification names it rather than passing over it.
    """
    found = cursor.set_range(start)
    while found:
        db_key = bytes(cursor.key())
        if not db_key.startswith(prefix):
            return
        raw = bytes(cursor.value())
        try:
            value = _register_value(db_key, raw)
        except StorageError:
            value = raw
        yield db_key, value
        found = cursor.next()


def chain_reports_in(txn: lmdb.Transaction, data: lmdb._Database, meta: lmdb._Database) -> list[ChainReport]:
    """Check every chain ``txn`` holds, with its floor, this store's vector and its own head.

    One read transaction, so the records, the vector (``held``: how far the
    store holds each origin's events, which the records must reach) and the
    store's record of its own head (``anchor``) agree with each other. Used
    by ``AuditVerify`` on a live node and by ``crdtstore audit verify
    --data-dir`` on a stopped node's directory opened read-only.
    """
    raw_context = txn.get(_META_CONTEXT, db=meta)
    try:
        context = decode_as(bytes(raw_context), CausalContext) if raw_context is not None else CausalContext()
    except (ValueError, CodecError) as exc:
        raise StorageError(f"the store's causal context cannot be read: {exc}") from exc
    own = read_audit_head(txn, meta)
    reports: list[ChainReport] = []
    for origin, records in itertools.groupby(iter_records_in(txn, data), key=lambda r: r[0]):
        if not origin:
            for _, _, _ in records:
                reports.append(
                    ChainReport(
                        "", findings=[ChainFinding("", 0, 0, "a key under the records' prefix names no record")]
                    )
                )
            continue
        anchor = (own[1], own[2]) if own is not None and own[0] == origin else None
        reports.append(
            check_chain(
                origin,
                ((at, raw) for _, at, raw in records),
                floor=read_floor(txn, data, origin),
                held=context.vv.get(origin),
                anchor=anchor,
            )
        )
    if own is not None and own[1] and own[0] not in {r.origin for r in reports}:
        reports.append(
            ChainReport(
                own[0],
                findings=[
                    ChainFinding(
                        own[0],
                        0,
                        own[1],
                        f"this node recorded its head as record {own[1]}, but holds none of its records",
                    )
                ],
            )
        )
    return reports

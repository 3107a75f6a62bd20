"""Audit records: what one request did, encoded canonically and chained per origin.

Pure: no I/O. The store (``crdtstore.storage.audit``) writes each record in
the same transaction as the change it describes; this module says what a
record holds, how it is encoded, how it is hashed, and how a chain of them is
checked.

A record is the audit entry of one request that reached a region's writer:
an accepted mutation (``write``), a retry answered from the idempotency
record (``replay``), or a refused request (``refused``). Each is stored as a
register under ``record_key(origin, last)`` in the system keyspace, where
``last`` is the record's own dot: the record is one more write of the
request's batch, so it lives, replicates, repairs and backs up like data, and
travels in the same replication entry as the delta it describes. A refused
request is a batch of that one write (an audit-only entry).

The encoding is a msgpack array in a fixed field order (``encode``);
``decode`` refuses anything that does not re-encode to the same bytes, so
every record has exactly one encoding and its SHA-256 (``digest``) names it.
The records of one origin form a chain: record ``seq`` holds the digest of
record ``seq - 1`` (``ZERO_HASH`` for the first), so editing, dropping,
reordering or truncating records breaks a link that ``check_chain`` names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import msgpack

__all__ = [
    "AUDIT_PREFIX",
    "FORMAT_VERSION",
    "KINDS",
    "ZERO_HASH",
    "AuditError",
    "AuditRecord",
    "ChainFinding",
    "ChainReport",
    "Floor",
    "OpSummary",
    "chain_prefix",
    "check_chain",
    "decode",
    "digest",
    "from_json",
    "is_audit_key",
    "pack",
    "parse_record_key",
    "record_key",
    "summarize",
]

AUDIT_PREFIX = "\x00audit/"
FORMAT_VERSION = 1
ZERO_HASH = bytes(32)

# "resumed": auditing came back on; the record's events first..last-1 were minted while it was off
# (they have no records of their own), and last is the record's own.
Kind = Literal["write", "replay", "refused", "resumed"]
KINDS: tuple[Kind, ...] = ("write", "replay", "refused", "resumed")
# What an operation did; for a request refused before its operations were read (a read, or a
# permission refusal), each right it asked for on a key: "read", "decr", "admin", "audit", "replicate" too.
OpKind = Literal["set", "incr", "add", "remove", "delete", "read", "decr", "admin", "audit", "replicate"]
_OP_KINDS = frozenset(get_args(OpKind))


class AuditError(ValueError):
    """Bytes or JSON that are not an audit record in its one encoding."""


def chain_prefix(origin: str) -> str:
    """The keys of ``origin``'s records start with this (origins hold no NUL)."""
    return f"{AUDIT_PREFIX}{origin}\x00"


def record_key(origin: str, last: int) -> str:
    """The key of ``origin``'s record whose own dot is ``last``; keys sort in chain order."""
    return f"{chain_prefix(origin)}{last:016x}"


def is_audit_key(key: str) -> bool:
    return key.startswith(AUDIT_PREFIX)


def parse_record_key(key: str) -> tuple[str, int]:
    """The origin and dot counter a record key names; AuditError when it is not one."""
    if not key.startswith(AUDIT_PREFIX):
        raise AuditError(f"{key!r} is not an audit record key")
    origin, sep, counter = key[len(AUDIT_PREFIX) :].partition("\x00")
    if not sep or not origin or len(counter) != 16:
        raise AuditError(f"{key!r} is not an audit record key")
    try:
        return origin, int(counter, 16)
    except ValueError:
        raise AuditError(f"{key!r} is not an audit record key") from None


class OpSummary(NamedTuple):
    """One operation as the audit trail keeps it: never a register's value, only its SHA-256."""

    key: str
    kind: OpKind
    amount: int = 0  # an increment's amount; the members an add or remove names
    value_sha256: bytes = b""  # a set's value, hashed


def summarize(operations: Iterable[Any]) -> tuple[OpSummary, ...]:
    """The summaries of ``crdtstore.operations`` values (by class name: this module imports no store code)."""
    out: list[OpSummary] = []
    for op in operations:
        name = type(op).__name__
        if name == "SetRegister":
            out.append(OpSummary(op.key, "set", 0, hashlib.sha256(op.value).digest()))
        elif name in _COUNTED:
            out.append(OpSummary(op.key, _COUNTED[name], len(op.members)))
        elif name == "Increment":
            out.append(OpSummary(op.key, "incr", op.amount))
        elif name == "DeleteKey":
            out.append(OpSummary(op.key, "delete"))
        else:
            raise TypeError(f"not an operation: {op!r}")
    return tuple(out)


_COUNTED: dict[str, OpKind] = {"AddMembers": "add", "RemoveMembers": "remove"}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One request, as its region's writer saw it. Fields a refusal does not know stay empty."""

    origin: str  # the origin (region and incarnation) whose chain holds it
    seq: int  # its place in that chain, from 1
    prev: bytes  # the digest of record seq - 1 (ZERO_HASH for the first)
    first: int  # the dots origin:first..last are this request's events; last is the record's own
    last: int
    hlc_wall_ms: int  # the request's hybrid logical timestamp
    hlc_logical: int
    wall_ms: int  # the region's wall clock when it applied the request
    kind: Kind
    principal: str = ""
    request_id: str = ""
    method: str = ""  # the RPC, e.g. "Mutate"; "" for a write from inside the node
    peer: str = ""  # where the request came from (gRPC's peer address)
    idempotency_key: bytes = b""
    operations: tuple[OpSummary, ...] = ()
    durability: str = ""  # "local" or "replicated:N"
    token: bytes = b""  # the causal token the request produced: its version vector, encoded as Mutate returns it
    code: str = ""  # a refusal's gRPC status code name
    reason: str = ""  # a refusal's message
    _raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def region(self) -> str:
        return self.origin.partition("#")[0]

    def encode(self) -> bytes:
        """The one encoding: what is stored, replicated and hashed."""
        if self._raw:
            return self._raw
        return pack(
            self.origin,
            self.seq,
            self.prev,
            self.first,
            self.last,
            self.hlc_wall_ms,
            self.hlc_logical,
            self.wall_ms,
            self.kind,
            self.principal,
            self.request_id,
            self.method,
            self.peer,
            self.idempotency_key,
            self.operations,
            self.durability,
            self.token,
            self.code,
            self.reason,
        )

    def digest(self) -> bytes:
        return digest(self.encode())

    def to_json(self) -> dict[str, Any]:
        """A JSON object that ``from_json`` turns back into this record (bytes as hex)."""
        return {
            "origin": self.origin,
            "region": self.region,
            "seq": self.seq,
            "prev": self.prev.hex(),
            "hash": self.digest().hex(),
            "first": self.first,
            "last": self.last,
            "hlc": {"wall_ms": self.hlc_wall_ms, "logical": self.hlc_logical},
            "wall_ms": self.wall_ms,
            "kind": self.kind,
            "principal": self.principal,
            "request_id": self.request_id,
            "method": self.method,
            "peer": self.peer,
            "idempotency_key": self.idempotency_key.hex(),
            "operations": [
                {"key": op.key, "kind": op.kind, "amount": op.amount, "value_sha256": op.value_sha256.hex()}
                for op in self.operations
            ],
            "durability": self.durability,
            "token": self.token.hex(),
            "code": self.code,
            "reason": self.reason,
        }


def pack(*fields: Any) -> bytes:
    """The encoding of a record's fields, in ``AuditRecord``'s order (the store's writer calls it directly).

    The fields as an array after the format version; an operation as the
    array ``[key, kind, amount, value_sha256]``.
    """
    ops = fields[14]
    return msgpack.packb(
        [FORMAT_VERSION, *fields[:14], [list(op) for op in ops], *fields[15:]],
        use_bin_type=True,
    )


def digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def _expect(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AuditError(f"the record's {what} is not {getattr(kind, '__name__', kind)}")
    return value


def decode(raw: bytes) -> AuditRecord:
    """The record ``raw`` encodes; AuditError unless ``raw`` is its one encoding."""
    try:
        fields = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException) as exc:
        raise AuditError(f"the record does not decode: {exc}") from None
    if not isinstance(fields, list) or len(fields) != 20:
        raise AuditError("the record is not an array of 20 fields")
    if fields[0] != FORMAT_VERSION:
        raise AuditError(f"the record's format version is {fields[0]!r}, not {FORMAT_VERSION}")
    ops: list[OpSummary] = []
    for op in _expect(fields[15], list, "operations"):
        if not isinstance(op, list) or len(op) != 4 or op[1] not in _OP_KINDS:
            raise AuditError("an operation of the record is malformed")
        ops.append(
            OpSummary(
                _expect(op[0], str, "operation key"),
                op[1],
                _expect(op[2], int, "operation amount"),
                _expect(op[3], bytes, "value digest"),
            )
        )
    kind = fields[9]
    if kind not in KINDS:
        raise AuditError(f"the record's kind {kind!r} is not one of {', '.join(KINDS)}")
    record = AuditRecord(
        origin=_expect(fields[1], str, "origin"),
        seq=_expect(fields[2], int, "seq"),
        prev=_expect(fields[3], bytes, "prev"),
        first=_expect(fields[4], int, "first"),
        last=_expect(fields[5], int, "last"),
        hlc_wall_ms=_expect(fields[6], int, "timestamp"),
        hlc_logical=_expect(fields[7], int, "timestamp"),
        wall_ms=_expect(fields[8], int, "wall time"),
        kind=kind,
        principal=_expect(fields[10], str, "principal"),
        request_id=_expect(fields[11], str, "request id"),
        method=_expect(fields[12], str, "method"),
        peer=_expect(fields[13], str, "peer"),
        idempotency_key=_expect(fields[14], bytes, "idempotency key"),
        operations=tuple(ops),
        durability=_expect(fields[16], str, "durability"),
        token=_expect(fields[17], bytes, "token"),
        code=_expect(fields[18], str, "code"),
        reason=_expect(fields[19], str, "reason"),
    )
    if len(record.prev) != 32 or record.seq < 1 or not 1 <= record.first <= record.last:
        raise AuditError("the record's chain fields are out of range")
    if record.encode() != raw:
        raise AuditError("the record is not in its canonical encoding")
    return AuditRecord(**{f: getattr(record, f) for f in _FIELDS}, _raw=bytes(raw))


_FIELDS = [f for f in AuditRecord.__dataclass_fields__ if f != "_raw"]


def from_json(obj: dict[str, Any]) -> AuditRecord:
    """The record a ``to_json`` object describes (its ``hash`` is checked by the caller, not here)."""
    try:
        ops = tuple(
            OpSummary(op["key"], op["kind"], int(op["amount"]), bytes.fromhex(op["value_sha256"]))
            for op in obj["operations"]
        )
        record = AuditRecord(
            origin=obj["origin"],
            seq=obj["seq"],
            prev=bytes.fromhex(obj["prev"]),
            first=obj["first"],
            last=obj["last"],
            hlc_wall_ms=obj["hlc"]["wall_ms"],
            hlc_logical=obj["hlc"]["logical"],
            wall_ms=obj["wall_ms"],
            kind=obj["kind"],
            principal=obj["principal"],
            request_id=obj["request_id"],
            method=obj["method"],
            peer=obj["peer"],
            idempotency_key=bytes.fromhex(obj["idempotency_key"]),
            operations=ops,
            durability=obj["durability"],
            token=bytes.fromhex(obj["token"]),
            code=obj["code"],
            reason=obj["reason"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AuditError(f"not an exported audit record: {exc!r}") from None
    if "region" in obj and obj["region"] != record.region:
        raise AuditError(f"the record's region {obj['region']!r} is not its origin's ({record.region!r})")
    # Through the one encoding, so a field of the wrong type is refused as it would be in a store.
    return decode(record.encode())


class Floor(NamedTuple):
    """Where a trimmed chain starts: the last dropped record's seq, digest and own dot."""

    seq: int
    hash: bytes
    last: int


class ChainFinding(NamedTuple):
    """One thing wrong with a chain: at which record (its key's dot), and what."""

    origin: str
    at: int  # the dot counter of the record (its key) where the problem shows; 0 for the chain as a whole
    seq: int  # the seq the record should have had
    problem: str


@dataclass
class ChainReport:
    origin: str
    records: int = 0
    head_seq: int = 0
    head_hash: bytes = ZERO_HASH
    head_last: int = 0
    findings: list[ChainFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def check_chain(
    origin: str,
    records: Iterable[tuple[int, bytes]],
    *,
    floor: Floor | None = None,
    held: int | None = None,
    anchor: tuple[int, bytes] | None = None,
) -> ChainReport:
    """Check one origin's records, given as (the dot its key names, the stored bytes) in key order.

    Each record must decode, sit under its own dot, be the next seq, hold
    the digest of its predecessor (or of the floor, after trimming), and
    continue the previous record's dots. With ``held`` (how far this region
    holds the origin's events) the chain must reach it, and no further: a
    region's events after the last record have lost their records (a
    truncated tail), and a record of events it does not hold was not made
    by them. With ``anchor`` (the region's own record of its head: seq and
    digest) the chain must hold that record: ending before it means records
    were dropped from the tail. It may go on past it only with records that
    came back from peers after the region's directory was restored from an
    older copy (the region then mints under a new origin): records of
    events it holds, linked to the anchor.
    """
    report = ChainReport(origin)
    seq, prev, last = (floor.seq, floor.hash, floor.last) if floor else (0, ZERO_HASH, 0)
    anchored = anchor is None or (floor is not None and anchor[0] <= floor.seq)
    for at, raw in records:
        report.records += 1
        expected = seq + 1
        try:
            record = decode(raw)
        except AuditError as exc:
            report.findings.append(ChainFinding(origin, at, expected, f"record {expected} does not decode: {exc}"))
            return _ended(report, seq, prev, last)
        first_seen = report.records == 1 and not floor
        problem = _link_problem(record, at, expected, origin=origin, prev=prev, last=last, first_seen=first_seen)
        if not problem and held is not None and record.last > held:
            problem = f"record {record.seq} is of events up to {record.last}, which this region does not hold"
        if not problem and anchor is not None and record.seq == anchor[0]:
            if record.digest() != anchor[1]:
                problem = (
                    f"record {record.seq} is not the one the region recorded as its head "
                    f"({anchor[1].hex()[:16]}): it was changed"
                )
            anchored = True
        if problem:
            report.findings.append(ChainFinding(origin, at, expected, problem))
            return _ended(report, seq, prev, last)
        seq, prev, last = record.seq, record.digest(), record.last
    _ended(report, seq, prev, last)
    if anchor is not None and not anchored:
        report.findings.append(
            ChainFinding(
                origin,
                last,
                anchor[0],
                f"the chain ends at record {seq}, but the region recorded its head as record {anchor[0]} "
                f"({anchor[1].hex()[:16]}): records were dropped from or changed at the tail",
            )
        )
    elif held is not None and report.records and last < held:
        report.findings.append(
            ChainFinding(
                origin,
                last,
                seq + 1,
                f"this region holds events of {origin} up to {held}, but its records end at event {last}: "
                f"the records after record {seq} are missing",
            )
        )
    return report


def _link_problem(
    record: AuditRecord, at: int, expected: int, *, origin: str, prev: bytes, last: int, first_seen: bool
) -> str:
    if record.origin != origin or record.last != at:
        return f"the record under {origin}:{at} says it is {record.origin}:{record.last}: records were moved or swapped"
    if record.seq != expected:
        if record.seq > expected:
            return f"record {expected} is missing: the next record held is {record.seq}"
        return f"record {expected} is out of place: the record held there is {record.seq}"
    if first_seen:
        # The first record ever, with no floor: the trail starts here (the events before it, if any,
        # were applied before auditing was on).
        return "" if record.prev == ZERO_HASH else "record 1 does not start the chain (its predecessor is not zero)"
    if record.prev != prev:
        return f"record {record.seq} does not hold the hash of record {record.seq - 1}: one of them was altered"
    if record.first != last + 1:
        return f"record {record.seq} starts at event {record.first}, not {last + 1} after record {record.seq - 1}"
    return ""


def _ended(report: ChainReport, seq: int, prev: bytes, last: int) -> ChainReport:
    report.head_seq, report.head_hash, report.head_last = seq, prev, last
    return report


def sort_causally(records: Sequence[AuditRecord]) -> list[AuditRecord]:
    """Records in an order that respects causality: by hybrid logical timestamp, then origin and seq.

    A node folds every record's timestamp into its clock when it applies it,
    so a request that saw another's effects has a larger timestamp.
    """
    return sorted(records, key=lambda r: (r.hlc_wall_ms, r.hlc_logical, r.origin, r.seq))


def iter_json_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditError(f"line {number} is not JSON: {exc}") from None

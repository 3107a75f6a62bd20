"""The Python client of crdtstore: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    with Client("127.0.0.1:7420") as kv:
        kv.set("greeting", "hello")
        kv.incr("visits", 5)
        kv.sadd("cart", "apple", "pear")
        entry = kv.get("cart")          # Entry(key='cart', type='set', value=frozenset({'apple', 'pear'}), ...)

    async with AsyncClient("127.0.0.1:7420") as kv:
        await kv.set("greeting", "hello")
        async for entry in kv.scan("user/"):
            ...

The two classes share everything but the waiting: requests are built and
answers converted by the module-level functions below, and the retry policy is
one object; each class only runs the loop that sends, waits and retries, with
``grpc`` or ``grpc.aio``.

Retries. A call that fails with ``UNAVAILABLE`` (the node is down, draining or
not ready yet) is retried up to ``retries_max`` times, after a jittered
exponential backoff: before retry *n* (from 0) the client sleeps a random time
between half and all of ``min(backoff_ms_max, backoff_ms_initial * 2**n)``.
Nothing else is retried. In particular ``DEADLINE_EXCEEDED`` is not: a batch
that timed out may or may not have been applied, and the ``ClientError`` carries
the batch's ``idempotency_key`` so the caller can send it again with the same key
and learn the outcome without applying it twice. ``timeout_s`` is the deadline
of each attempt, not of the whole call.

Idempotency. Every ``mutate`` (and so every ``set``/``incr``/``sadd``/``srem``/
``delete``) carries an idempotency key, a fresh UUID4 unless the caller gives
one; retries reuse it, so a retried batch is applied once and the answer to a
retry says ``replayed=True``. Passing ``idempotency_key=b""`` turns
deduplication off, and with it the retries of that batch.

Durability. ``durability="local"`` (the default) is answered once the write is
fsynced on the node; ``"replicated:N"`` once N regions (this one included) have
it fsynced. Give it to the client (every write) or to one ``mutate``. A
replicated write whose deadline passes first fails with ``DEADLINE_EXCEEDED``,
but it *is* applied on the node and replicates later; retrying it with the same
idempotency key waits again without applying it twice.

Access control. Where a node requires tokens, give one: ``Client(addr,
token=...)`` sends it as ``authorization: Bearer <token>`` metadata with
every call. ``put_role``, ``get_role``, ``list_roles``, ``delete_role`` and
``revoke_token`` manage the node's roles and revocations (the ``admin`` right).

Change feed. ``watch(prefix, after=token)`` yields every change under a
prefix as the region applies it (``crdtstore.watching`` says what comes and
how to keep the token); with ``addresses=[a, b, c]`` it resumes by itself on
the next region after an error, from the last token it delivered.

Causal reads. Every write and read returns a token; ``get(key, after=token)``
waits (within the deadline) until the node has seen everything the token
covers, so a read in one region sees a write made in another.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, NamedTuple, Self, TypedDict, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crdtstore.audit.explain import Explanation, explanation_from_pb
from crdtstore.audit.record import AuditError
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.tokens import parse_token
from crdtstore.v1 import kv_pb2, kv_pb2_grpc
from crdtstore.watching import Change, Progress, ResetBegin, ResetEnd, WatchDecoder, WatchItem

__all__ = [
    "AsyncClient",
    "Change",
    "Client",
    "ClientError",
    "ClientTls",
    "Conflict",
    "Entry",
    "PeerStatus",
    "Progress",
    "ResetBegin",
    "ResetEnd",
    "RoleInfo",
    "Sibling",
    "Status",
    "TypeMismatchError",
    "TypeName",
    "Value",
    "WatchItem",
    "WriteResult",
    "parse_durability",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT32_MAX = 2**32 - 1

# The client trusts the server it talks to: a page of a scan or a register with
# siblings may exceed gRPC's default 4 MiB, and the server bounds what it sends.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    # gRPC waits longer and longer between reconnection attempts to a server that is down
    # (up to two minutes); a node restarted after a crash would then stay unreachable to this
    # client for many seconds, longer than its retries last. Try again at least every second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # gRPC shares connections among all channels of a process to the same address, with
    # their reconnection backoff: a client opened just after a node restarted would wait out
    # the backoff another client earned while the node was down (up to a second and more,
    # longer than its retries last under load). Each client has its own connections.
    ("grpc.use_local_subchannel_pool", 1),
]

TypeName = Literal["register", "counter", "set"]
Value = bytes | int | frozenset[str]

# Sleep functions, module attributes so tests can replace them.
_sleep: Callable[[float], None] = time.sleep
_async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


# -- results ---------------------------------------------------------------------------


class Sibling(NamedTuple):
    """One live register write: its value, the region that wrote it and its hybrid logical timestamp."""

    value: bytes
    region: str
    wall_ms: int
    logical: int


class Conflict(NamedTuple):
    """A slot of another type created concurrently under the same key (delete the key to resolve)."""

    type: TypeName
    value: Value | None  # None for a set too large to list (read it with smembers)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a read shows of one key.

    ``type`` and ``value`` are ``None`` when the key does not exist. ``value`` is
    ``bytes`` for a register (the winning write), an exact ``int`` for a counter
    and a ``frozenset[str]`` for a set. ``siblings`` lists a register's
    concurrent writes, winner first, and is empty when there is only one.
    ``token`` is the causal token of the read (empty for entries of a scan).
    ``member_count`` is a set's number of members. A scan lists a set with
    more members than one response carries (the node's ``get_members_max``)
    with ``value`` ``None`` and ``members_omitted`` true: read its members with
    ``smembers``.

    A register holds bytes, whatever was written: ``set(key, "hello")`` stores
    the UTF-8 bytes of the text and ``get`` returns ``b"hello"``. ``text`` gives
    them back as a ``str``. Set members are text (``str``) on the wire already.
    """

    key: str
    type: TypeName | None
    value: Value | None
    siblings: tuple[Sibling, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    token: bytes = b""
    member_count: int | None = None
    members_omitted: bool = False

    @property
    def exists(self) -> bool:
        return self.type is not None

    @property
    def text(self) -> str | None:
        """A register's value decoded as UTF-8; ``None`` when the key does not exist.

        Raises ``TypeError`` for a counter or a set, and ``UnicodeDecodeError``
        (a ``ValueError``) naming the key when the bytes are not UTF-8: read
        ``value`` for them.
        """
        if self.value is None:
            return None
        if not isinstance(self.value, bytes):
            raise TypeError(f"key {self.key!r} holds a {self.type}, not a register: read .value")
        try:
            return self.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnicodeDecodeError(
                exc.encoding,
                exc.object,
                exc.start,
                exc.end,
                f"the register {self.key!r} is not UTF-8 text ({exc.reason}); .value has its bytes",
            ) from None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The answer to a write: the causal token it produced, and whether it answers a retry of an applied batch."""

    token: bytes
    replayed: bool


class PeerStatus(TypedDict):
    region: str
    address: str
    connected: bool
    acked: bytes  # the causal token of what the peer has acknowledged
    behind: int  # events this node has that the peer has not acknowledged
    clock_offset_ms: int  # the peer's clock minus this node's, as last measured
    clock_error_ms: int  # that measurement is right to within this (half its round trip)


class Status(TypedDict):
    region: str
    version: str
    keys: int
    token: bytes
    draining: bool
    data_bytes: int
    commits: int  # transactions of client writes committed (each one fsync) since the node started
    requests_committed: int  # client write requests in them: requests / commits is the group-commit batch size
    peers: list[PeerStatus]
    clock_skew_events: int
    clock_fenced: bool
    origin: str  # what this node mints its events under: its region and incarnation
    conflicting_events: int  # events peers sent under ids this node holds for other events; never expected
    auth_enabled: bool  # whether the node requires tokens
    refused_unauthenticated: int  # requests it refused with UNAUTHENTICATED since it started
    refused_permission_denied: int  # and with PERMISSION_DENIED
    watch_streams: int  # change-feed streams open now
    watch_events_sent: int  # events they sent since the node started
    watch_streams_cut: int  # streams closed because their consumer stopped reading
    feed_records: int  # changes the feed's index holds (within watch_retention_s and _bytes_max)
    feed_bytes: int  # the bytes of its pages
    audit_enabled: bool  # whether the node records every request in the audit trail
    audit_records: int  # records it holds, of every region's chain
    audit_refusals_dropped: int  # refusals not recorded because its writer was full
    audit_head_mismatches: int  # times a peer's copy of a record differed from its own: never expected
    audit_retention_blocked: str  # why retention cannot drop records that are due (not exported), if so
    rejoin_waiting: str  # a restored region refusing writes: what it waits for ("" once it takes them)


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """A role: its grants as (key prefix, rights), and who changed it last, from which origin, when."""

    name: str
    grants: tuple[tuple[str, tuple[str, ...]], ...]
    changed_by: str = ""
    changed_in: str = ""
    changed_at_ms: int = 0
    built_in: bool = False


@dataclass(frozen=True)
class ClientTls:
    """TLS for a client: the CA that signs the node's certificate, and for mutual TLS this client's own.

    ``server_name`` is the name the node's certificate must carry when it is
    not the host of the address (a region name, say).
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls, ca: str | None = None, cert: str | None = None, key: str | None = None, server_name: str | None = None
    ) -> ClientTls:
        def read(path: str | None) -> bytes | None:
            return None if not path else Path(path).read_bytes()

        if bool(cert) != bool(key):
            raise ValueError("a client certificate and its key go together")
        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def parse_durability(spec: str) -> tuple[kv_pb2.Durability, int]:
    """``"local"`` or ``"replicated:N"`` -> the request's durability and replica count; ``ValueError`` otherwise."""
    if spec == "local":
        return kv_pb2.DURABILITY_LOCAL, 0
    kind, sep, count = spec.partition(":")
    if kind == "replicated" and sep and count.isdigit() and int(count) >= 1:
        return kv_pb2.DURABILITY_REPLICATED, int(count)
    raise ValueError(f"durability {spec!r} is not 'local' or 'replicated:N' (N >= 1 regions)")


# -- errors ----------------------------------------------------------------------------


class ClientError(Exception):
    """A call that failed: the gRPC status code and the server's (or gRPC's) message.

    ``idempotency_key`` is set for a failed ``mutate``: send the same operations
    again with it to learn whether the batch was applied without applying it twice.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, idempotency_key: bytes | None = None) -> None:
        super().__init__(f"{message} ({code.name})")
        self.code = code
        self.message = message
        self.idempotency_key = idempotency_key


class TypeMismatchError(ClientError):
    """``FAILED_PRECONDITION``: an operation of the wrong type for the key."""


def _client_error(code: grpc.StatusCode, message: str, idempotency_key: bytes | None) -> ClientError:
    cls = TypeMismatchError if code == grpc.StatusCode.FAILED_PRECONDITION else ClientError
    return cls(code, message, idempotency_key=idempotency_key)


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status of a failed call; both ``grpc`` and ``grpc.aio`` errors have ``code()`` and ``details()``."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return code, details if isinstance(details, str) and details else str(exc)


def _malformed(what: str) -> ClientError:
    return ClientError(grpc.StatusCode.INTERNAL, f"the server sent a malformed answer: {what}")


# -- requests --------------------------------------------------------------------------


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _operation_to_proto(op: Operation) -> kv_pb2.Operation:
    if isinstance(op, SetRegister):
        return kv_pb2.Operation(key=op.key, set=kv_pb2.SetRegister(value=op.value))
    if isinstance(op, Increment):
        if not _INT64_MIN <= op.amount <= _INT64_MAX:
            raise ClientError(
                grpc.StatusCode.INVALID_ARGUMENT, f"amount {op.amount} is outside the signed 64-bit range"
            )
        return kv_pb2.Operation(key=op.key, increment=kv_pb2.Increment(amount=op.amount))
    if isinstance(op, AddMembers):
        return kv_pb2.Operation(key=op.key, add=kv_pb2.AddMembers(members=op.members))
    if isinstance(op, RemoveMembers):
        return kv_pb2.Operation(key=op.key, remove=kv_pb2.RemoveMembers(members=op.members))
    return kv_pb2.Operation(key=op.key, delete=kv_pb2.DeleteKey())


def _mutate_request(ops: Sequence[Operation], idempotency_key: bytes | None, durability: str) -> kv_pb2.MutateRequest:
    level, replicas = parse_durability(durability)
    key = uuid.uuid4().bytes if idempotency_key is None else idempotency_key
    try:
        return kv_pb2.MutateRequest(
            operations=[_operation_to_proto(op) for op in ops],
            idempotency_key=key,
            durability=level,
            replicas=replicas,
        )
    except ValueError as exc:  # protobuf refuses, say, a string that is not valid Unicode
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), idempotency_key=key) from exc


def _get_request(key: str, after: bytes | None) -> kv_pb2.GetRequest:
    try:
        if after:
            return kv_pb2.GetRequest(key=key, after=kv_pb2.CausalToken(vector=after))
        return kv_pb2.GetRequest(key=key)
    except ValueError as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _scan_request(prefix: str, page_size: int, page_token: str) -> kv_pb2.ScanRequest:
    if not 0 <= page_size <= _UINT32_MAX:
        raise ValueError(f"page_size must be between 0 (the server's default) and {_UINT32_MAX}, not {page_size}")
    try:
        return kv_pb2.ScanRequest(prefix=prefix, limit=page_size, page_token=page_token)
    except ValueError as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


# Writes as operations: what both clients' set/incr/sadd/srem/delete send.
def _set_op(key: str, value: bytes | str) -> list[Operation]:
    return [SetRegister(key, _as_bytes(value))]


def _incr_op(key: str, n: int) -> list[Operation]:
    return [Increment(key, n)]


def _sadd_op(key: str, members: Iterable[str]) -> list[Operation]:
    return [AddMembers(key, tuple(members))]


def _srem_op(key: str, members: Iterable[str]) -> list[Operation]:
    return [RemoveMembers(key, tuple(members))]


def _delete_op(key: str) -> list[Operation]:
    return [DeleteKey(key)]


# -- answers ---------------------------------------------------------------------------

_TYPE_NAMES: dict[int, TypeName] = {
    kv_pb2.VALUE_TYPE_REGISTER: "register",
    kv_pb2.VALUE_TYPE_COUNTER: "counter",
    kv_pb2.VALUE_TYPE_SET: "set",
}


def _counter_value(value: kv_pb2.Value) -> int:
    """A counter's exact value: ``counter_decimal`` always holds it; ``counter`` only when it fits in int64."""
    if value.counter_decimal:
        try:
            return int(value.counter_decimal)
        except ValueError:
            raise _malformed(f"counter {value.counter_decimal!r} is not a decimal integer") from None
    if value.counter_fits:
        return value.counter
    raise _malformed("a counter with neither counter_decimal nor counter_fits")


def _value_from_proto(value: kv_pb2.Value) -> tuple[TypeName, Value | None] | None:
    if value.type == kv_pb2.VALUE_TYPE_UNSPECIFIED:
        return None
    name = _TYPE_NAMES.get(value.type)
    if name is None:
        raise _malformed(f"unknown value type {int(value.type)} (is the client older than the server?)")
    if name == "register":
        return name, bytes(value.register)
    if name == "counter":
        return name, _counter_value(value)
    return name, None if value.members_omitted else frozenset(value.members)


def _entry_from_proto(kv: kv_pb2.KeyValue, token: bytes = b"") -> Entry:
    visible = _value_from_proto(kv.value)
    conflicts: list[Conflict] = []
    for c in kv.conflicts:
        slot = _value_from_proto(c)
        if slot is None:
            raise _malformed(f"key {kv.key!r} lists a conflict without a type")
        conflicts.append(Conflict(*slot))
    siblings = tuple(Sibling(bytes(s.value), s.region, s.wall_ms, s.logical) for s in kv.siblings)
    if visible is None:
        return Entry(kv.key, None, None, siblings, tuple(conflicts), token)
    if visible[0] != "set":
        return Entry(kv.key, visible[0], visible[1], siblings, tuple(conflicts), token)
    count = kv.value.member_count or len(kv.value.members)  # a server before member_count sent none
    omitted = kv.value.members_omitted
    return Entry(kv.key, "set", visible[1], siblings, tuple(conflicts), token, count, omitted)


def _entry_from_get(resp: kv_pb2.GetResponse) -> Entry:
    return _entry_from_proto(resp.entry, bytes(resp.token.vector))


def _write_result(resp: kv_pb2.MutateResponse) -> WriteResult:
    return WriteResult(bytes(resp.token.vector), resp.replayed)


def _status_from_proto(resp: kv_pb2.StatusResponse) -> Status:
    return Status(
        region=resp.region,
        version=resp.version,
        keys=resp.keys,
        token=bytes(resp.token.vector),
        draining=resp.draining,
        data_bytes=resp.data_bytes,
        commits=resp.commits,
        requests_committed=resp.requests_committed,
        peers=[
            PeerStatus(
                region=p.region,
                address=p.address,
                connected=p.connected,
                acked=bytes(p.acked.vector),
                behind=p.behind,
                clock_offset_ms=p.clock_offset_ms,
                clock_error_ms=p.clock_error_ms,
            )
            for p in resp.peers
        ],
        clock_skew_events=resp.clock_skew_events,
        clock_fenced=resp.clock_fenced,
        origin=resp.origin,
        conflicting_events=resp.conflicting_events,
        auth_enabled=resp.auth_enabled,
        refused_unauthenticated=resp.refused_unauthenticated,
        refused_permission_denied=resp.refused_permission_denied,
        watch_streams=resp.watch_streams,
        watch_events_sent=resp.watch_events_sent,
        watch_streams_cut=resp.watch_streams_cut,
        feed_records=resp.feed_records,
        feed_bytes=resp.feed_bytes,
        audit_enabled=resp.audit_enabled,
        audit_records=resp.audit_records,
        audit_refusals_dropped=resp.audit_refusals_dropped,
        audit_head_mismatches=resp.audit_head_mismatches,
        audit_retention_blocked=resp.audit_retention_blocked,
        rejoin_waiting=resp.rejoin_waiting,
    )


def _token(after: bytes | None) -> kv_pb2.CausalToken | None:
    return kv_pb2.CausalToken(vector=after) if after else None


def _contains_request(key: str, members: Sequence[str], after: bytes | None) -> kv_pb2.ContainsRequest:
    if not members:
        raise ValueError("name at least one member")
    try:
        return kv_pb2.ContainsRequest(key=key, members=list(members), after=_token(after))
    except ValueError as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _present(resp: kv_pb2.ContainsResponse, asked: int) -> list[bool]:
    if len(resp.present) != asked:
        raise _malformed(f"Contains answered for {len(resp.present)} members, {asked} were asked")
    return list(resp.present)


def _members_request(key: str, page_size: int, page_token: str, after: bytes | None) -> kv_pb2.MembersRequest:
    if not 0 <= page_size <= _UINT32_MAX:
        raise ValueError(f"page_size must be between 0 (the server's default) and {_UINT32_MAX}, not {page_size}")
    try:
        return kv_pb2.MembersRequest(key=key, limit=page_size, page_token=page_token, after=_token(after))
    except ValueError as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _members_page(resp: kv_pb2.MembersResponse, page_token: str) -> tuple[list[str], str]:
    """The members of one page and the token of the next ('' when done)."""
    if resp.next_page_token and resp.next_page_token == page_token:
        raise _malformed("a members page repeats its own page token")
    return list(resp.members), resp.next_page_token


def _scan_page(resp: kv_pb2.ScanResponse, page_token: str) -> tuple[list[Entry], str]:
    """The entries of one page and the token of the next ('' when done)."""
    if resp.next_page_token and resp.next_page_token == page_token:
        raise _malformed("a scan page repeats its own page token")
    return [_entry_from_proto(kv) for kv in resp.entries], resp.next_page_token


# -- the RPCs --------------------------------------------------------------------------

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")


@dataclass(frozen=True, slots=True)
class _Rpc(Generic[ReqT, RespT]):
    service: Literal["KV", "Admin"]
    method: str
    response: type[RespT]


_GET: _Rpc[kv_pb2.GetRequest, kv_pb2.GetResponse] = _Rpc("KV", "Get", kv_pb2.GetResponse)
_MUTATE: _Rpc[kv_pb2.MutateRequest, kv_pb2.MutateResponse] = _Rpc("KV", "Mutate", kv_pb2.MutateResponse)
_SCAN: _Rpc[kv_pb2.ScanRequest, kv_pb2.ScanResponse] = _Rpc("KV", "Scan", kv_pb2.ScanResponse)
_CONTAINS: _Rpc[kv_pb2.ContainsRequest, kv_pb2.ContainsResponse] = _Rpc("KV", "Contains", kv_pb2.ContainsResponse)
_MEMBERS: _Rpc[kv_pb2.MembersRequest, kv_pb2.MembersResponse] = _Rpc("KV", "Members", kv_pb2.MembersResponse)
_STATUS: _Rpc[kv_pb2.StatusRequest, kv_pb2.StatusResponse] = _Rpc("Admin", "Status", kv_pb2.StatusResponse)
_PUT_ROLE: _Rpc[kv_pb2.PutRoleRequest, kv_pb2.PutRoleResponse] = _Rpc("Admin", "PutRole", kv_pb2.PutRoleResponse)
_GET_ROLE: _Rpc[kv_pb2.GetRoleRequest, kv_pb2.GetRoleResponse] = _Rpc("Admin", "GetRole", kv_pb2.GetRoleResponse)
_LIST_ROLES: _Rpc[kv_pb2.ListRolesRequest, kv_pb2.ListRolesResponse] = _Rpc(
    "Admin", "ListRoles", kv_pb2.ListRolesResponse
)
_DELETE_ROLE: _Rpc[kv_pb2.DeleteRoleRequest, kv_pb2.DeleteRoleResponse] = _Rpc(
    "Admin", "DeleteRole", kv_pb2.DeleteRoleResponse
)
_REVOKE: _Rpc[kv_pb2.RevokeTokenRequest, kv_pb2.RevokeTokenResponse] = _Rpc(
    "Admin", "RevokeToken", kv_pb2.RevokeTokenResponse
)
# Backup and verification (docs/backup.md): admin tooling, answered as the protobuf messages themselves.
_BACKUP: _Rpc[kv_pb2.BackupRequest, kv_pb2.BackupChunk] = _Rpc("Admin", "Backup", kv_pb2.BackupChunk)
_DIGEST: _Rpc[kv_pb2.DigestRequest, kv_pb2.DigestResponse] = _Rpc("Admin", "Digest", kv_pb2.DigestResponse)
_BUCKET_KEYS: _Rpc[kv_pb2.BucketKeysRequest, kv_pb2.BucketKeysResponse] = _Rpc(
    "Admin", "BucketKeys", kv_pb2.BucketKeysResponse
)

_WATCH: _Rpc[kv_pb2.WatchRequest, kv_pb2.WatchResponse] = _Rpc("KV", "Watch", kv_pb2.WatchResponse)

Grants = Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]]


def _put_role_request(name: str, grants: Grants) -> kv_pb2.PutRoleRequest:
    """``grants``: {prefix: rights} or [(prefix, rights), ...]; rights as names ("read", "add", ...)."""
    items = grants.items() if isinstance(grants, Mapping) else grants
    try:
        return kv_pb2.PutRoleRequest(
            name=name,
            grants=[
                kv_pb2.Grant(prefix=prefix, rights=[rights] if isinstance(rights, str) else list(rights))
                for prefix, rights in items
            ],
        )
    except (ValueError, TypeError) as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _role_info(role: kv_pb2.Role) -> RoleInfo:
    return RoleInfo(
        name=role.name,
        grants=tuple((g.prefix, tuple(g.rights)) for g in role.grants),
        changed_by=role.changed_by,
        changed_in=role.changed_in,
        changed_at_ms=role.changed_at_ms,
        built_in=role.built_in,
    )


class _Stubs:
    """The generated stubs, the one place where untyped generated code is touched.

    ``kv_pb2_grpc`` is untyped; its stubs are held as ``Any`` here and every
    answer is checked against the ``_Rpc``'s response type in ``_expect``.
    """

    def __init__(self, channel: object) -> None:
        generated: Any = kv_pb2_grpc
        self._services: dict[str, Any] = {"KV": generated.KVStub(channel), "Admin": generated.AdminStub(channel)}

    def method(self, rpc: _Rpc[ReqT, RespT]) -> Callable[..., Any]:
        method: Callable[..., Any] = getattr(self._services[rpc.service], rpc.method)
        return method


def _expect(rpc: _Rpc[ReqT, RespT], response: object) -> RespT:
    if not isinstance(response, rpc.response):
        raise _malformed(f"{rpc.method} answered with a {type(response).__name__}")
    return response


# -- the change feed ---------------------------------------------------------------------

# A watch that ends with one of these resumes (on the next address) from its last token: the node
# went away or is draining (UNAVAILABLE), or cut a consumer that read too slowly (RESOURCE_EXHAUSTED).
_WATCH_RESUMES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN}
)


@dataclass
class _Watch:
    """One ``watch`` call's state, shared by both clients: the decoder, the addresses, their channels, the retries."""

    client: _ClientBase
    decoder: WatchDecoder
    prefix: str
    start: str
    on_expired: str
    progress_interval_ms: int
    addresses: list[str]
    index: int = 0
    failures: int = 0
    channels: dict[str, Any] = field(default_factory=dict)  # opened for the addresses but the client's own

    def call(self) -> Any:
        """The stream to the current address, from where the last one left off."""
        client, address = self.client, self.addresses[self.index]
        if address == client.addr:
            channel = client._channel
        elif (channel := self.channels.get(address)) is None:
            channel = self.channels[address] = client._open_channel(address)
        return _Stubs(channel).method(_WATCH)(self.request(), metadata=client._metadata)

    def opened(self) -> list[Any]:
        """The channels this watch opened (to close when it ends)."""
        return list(self.channels.values())

    def request(self) -> kv_pb2.WatchRequest:
        token = self.decoder.token
        return kv_pb2.WatchRequest(
            prefix=self.prefix,
            after=kv_pb2.CausalToken(vector=token) if token else None,
            start="" if token else "snapshot" if self.decoder.snapshot_again else self.start,
            on_expired=self.on_expired,
            progress_interval_ms=self.progress_interval_ms,
        )

    def items(self, message: object) -> Iterator[WatchItem]:
        if not isinstance(message, kv_pb2.WatchResponse):
            raise _malformed(f"Watch answered with a {type(message).__name__}")
        try:
            yield from self.decoder.items(message)
        except ValueError as exc:
            raise _malformed(str(exc)) from None
        self.failures = 0

    def failed(self, exc: grpc.RpcError | None, retry: _RetryPolicy) -> float:
        """After the stream ended (``exc``, or None when it ended without an error): the delay, or raise."""
        code, message = _status_of(exc) if exc is not None else (grpc.StatusCode.UNAVAILABLE, "the stream ended")
        error = _client_error(code, message, None)
        if code not in _WATCH_RESUMES or self.failures >= retry.retries_max * len(self.addresses):
            raise error from exc
        self.decoder.resumed()
        self.index = (self.index + 1) % len(self.addresses)
        self.failures += 1
        cap = min(retry.backoff_ms_max, retry.backoff_ms_initial * 2.0 ** (self.failures // len(self.addresses)))
        # The first try of each other address goes at once; a round of them all backs off.
        return 0.0 if self.failures % len(self.addresses) else random.uniform(cap / 2, cap) / 1000.0


def _watch(  # noqa: PLR0917 (the watch methods' own arguments, passed on as they came)
    client: _ClientBase,
    prefix: str,
    after: object,  # bytes | str | None, as the caller gave it: checked here
    start: str,
    on_expired: str,
    progress_interval_ms: int,
    addresses: Sequence[str] | None,
) -> _Watch:
    token = b""
    if isinstance(after, str):
        # The token as the command line prints it (base64) or an audit record shows it (hex).
        token = parse_token(after)
    elif isinstance(after, (bytes, bytearray, memoryview)):
        token = bytes(after)
    elif after is not None:
        raise TypeError(
            f"after is a token: bytes (Change.token, WriteResult.token) or the str a command printed, "
            f"not {type(after).__name__}"
        )
    if start not in ("snapshot", "now"):
        raise ValueError(f"start is 'snapshot' or 'now', not {start!r}")
    if on_expired not in ("reset", "error"):
        raise ValueError(f"on_expired is 'reset' or 'error', not {on_expired!r}")
    targets = list(addresses) if addresses else [client.addr]
    decoder = WatchDecoder(_entry_from_proto, token)
    return _Watch(client, decoder, prefix, start, on_expired, progress_interval_ms, targets)


# -- the clients -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RetryPolicy:
    retries_max: int
    backoff_ms_initial: float
    backoff_ms_max: float

    def __post_init__(self) -> None:
        if self.retries_max < 0:
            raise ValueError(f"retries_max must be 0 or more, not {self.retries_max}")
        if not 0 <= self.backoff_ms_initial <= self.backoff_ms_max:
            raise ValueError(
                f"need 0 <= backoff_ms_initial <= backoff_ms_max, got {self.backoff_ms_initial} "
                f"and {self.backoff_ms_max}"
            )

    def delay_s(self, error: ClientError, attempt: int, retryable: bool) -> float | None:
        """Seconds to wait before retrying after ``attempt`` (0 for the first try) failed, or None to give up."""
        if not retryable or error.code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries_max:
            return None
        cap = min(self.backoff_ms_max, self.backoff_ms_initial * 2.0**attempt)
        return random.uniform(cap / 2, cap) / 1000.0


class _ClientBase:
    """What ``Client`` and ``AsyncClient`` share: settings, retry policy, stubs."""

    def __init__(
        self,
        addr: str,
        *,
        timeout_s: float = 5.0,
        retries_max: int = 5,
        backoff_ms_initial: float = 50,
        backoff_ms_max: float = 1000,
        durability: str = "local",
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        parse_durability(durability)
        self.durability = durability
        self.tls = tls
        if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
            raise ValueError("token must be the token text a crdtstore token issue printed (no spaces)")
        self.token = token.strip() if token else None
        # Sent with every call: the bearer token, where the node requires one.
        self._metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {self.token}"),) if self.token else None
        )
        self.addr = addr
        self.timeout_s = timeout_s
        self._retry = _RetryPolicy(retries_max, backoff_ms_initial, backoff_ms_max)
        self._channel = self._open_channel(addr)
        self._stubs = _Stubs(self._channel)

    def _open_channel(self, addr: str) -> Any:
        raise NotImplementedError

    def _fail(self, exc: BaseException, attempt: int, idempotency_key: bytes | None, retryable: bool) -> float:
        """The delay before the next attempt, or raise the ``ClientError`` for ``exc``."""
        code, message = _status_of(exc)
        error = _client_error(code, message, idempotency_key)
        delay = self._retry.delay_s(error, attempt, retryable)
        if delay is None:
            raise error from exc
        return delay

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.addr!r})"


class Client(_ClientBase):
    """A blocking client on one ``grpc`` channel; safe to share between threads."""

    _channel: grpc.Channel

    def _open_channel(self, addr: str) -> Any:
        if self.tls is not None:
            return grpc.secure_channel(addr, self.tls.credentials(), options=[*_CHANNEL_OPTIONS, *self.tls.options()])
        return grpc.insecure_channel(addr, options=_CHANNEL_OPTIONS)

    def _call(
        self,
        rpc: _Rpc[ReqT, RespT],
        request: ReqT,
        *,
        idempotency_key: bytes | None = None,
        retryable: bool = True,
        timeout_s: float | None = None,
    ) -> RespT:
        method = self._stubs.method(rpc)
        attempt = 0
        while True:
            try:
                return _expect(rpc, method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata))
            except grpc.RpcError as exc:
                delay = self._fail(exc, attempt, idempotency_key, retryable)
            _sleep(delay)
            attempt += 1

    def get(self, key: str, *, after: bytes | None = None) -> Entry:
        """Read ``key``; with ``after`` (a token), first wait until this node has seen that token."""
        return _entry_from_get(self._call(_GET, _get_request(key, after)))

    def explain(self, key: str) -> Explanation:
        """Why ``key`` reads as it does: its versions, the winner and why, and the audit records that made it.

        Needs the read right on the key and the audit right (or admin). See
        ``crdtstore.audit.explain.Explanation`` and docs/explain.md.
        """
        return _explanation(self._call(_EXPLAIN, _explain_request(key)))

    def mutate(
        self, ops: Sequence[Operation], idempotency_key: bytes | None = None, *, durability: str | None = None
    ) -> WriteResult:
        """Apply a batch atomically; see the module docstring for idempotency, retries and durability."""
        request = _mutate_request(ops, idempotency_key, durability or self.durability)
        key = request.idempotency_key
        return _write_result(self._call(_MUTATE, request, idempotency_key=key, retryable=bool(key)))

    def set(self, key: str, value: bytes | str) -> WriteResult:
        """Write a register; a ``str`` is sent as its UTF-8 bytes."""
        return self.mutate(_set_op(key, value))

    def incr(self, key: str, n: int = 1) -> WriteResult:
        return self.mutate(_incr_op(key, n))

    def sadd(self, key: str, *members: str) -> WriteResult:
        return self.mutate(_sadd_op(key, members))

    def srem(self, key: str, *members: str) -> WriteResult:
        return self.mutate(_srem_op(key, members))

    def delete(self, key: str) -> WriteResult:
        return self.mutate(_delete_op(key))

    def scan(self, prefix: str = "", page_size: int = 100) -> Iterator[Entry]:
        """Every key under ``prefix`` in key order, fetched ``page_size`` at a time (0: the server's default)."""
        page_token = ""
        while True:
            resp = self._call(_SCAN, _scan_request(prefix, page_size, page_token))
            entries, page_token = _scan_page(resp, page_token)
            yield from entries
            if not page_token:
                return

    def sismember(self, key: str, member: str, *, after: bytes | None = None) -> bool:
        """Whether the set at ``key`` holds ``member`` (False for a missing key), without reading the set."""
        return self.smismember(key, member, after=after)[0]

    def smismember(self, key: str, *members: str, after: bytes | None = None) -> list[bool]:
        """Whether the set at ``key`` holds each of ``members``, in the order given."""
        return _present(self._call(_CONTAINS, _contains_request(key, members, after)), len(members))

    def smembers(self, key: str, *, page_size: int = 0, after: bytes | None = None) -> Iterator[str]:
        """The set's members in code point order, fetched ``page_size`` at a time (0: the server's default)."""
        page_token = ""
        while True:
            resp = self._call(_MEMBERS, _members_request(key, page_size, page_token, after))
            members, page_token = _members_page(resp, page_token)
            yield from members
            if not page_token:
                return

    def status(self) -> Status:
        return _status_from_proto(self._call(_STATUS, kv_pb2.StatusRequest()))

    def health(self, service: str = "") -> str:
        """The node's standard gRPC health status (``grpc.health.v1``) of ``service`` ("": the node itself).

        ``SERVING``, ``NOT_SERVING`` (draining), or ``SERVICE_UNKNOWN``; asked once, without retries, as a
        probe should be. It needs no token: health is not behind access control.
        """
        stub: Any = health_pb2_grpc.HealthStub(self._channel)  # its stubs type Check as an attribute it lacks
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code, message = _status_of(exc)
            raise _client_error(code, message, None) from exc
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def put_role(self, name: str, grants: Grants) -> RoleInfo:
        """Create or replace role ``name`` whole: ``{"orders/": ["read", "add"]}`` or [(prefix, rights), ...]."""
        return _role_info(self._call(_PUT_ROLE, _put_role_request(name, grants)).role)

    def get_role(self, name: str) -> RoleInfo:
        """The role; ``ClientError`` NOT_FOUND if there is none."""
        return _role_info(self._call(_GET_ROLE, kv_pb2.GetRoleRequest(name=name)).role)

    def list_roles(self) -> list[RoleInfo]:
        return [_role_info(r) for r in self._call(_LIST_ROLES, kv_pb2.ListRolesRequest()).roles]

    def delete_role(self, name: str) -> bytes:
        """Delete the role; returns the causal token of the change."""
        return bytes(self._call(_DELETE_ROLE, kv_pb2.DeleteRoleRequest(name=name)).token.vector)

    def revoke_token(self, jti: str) -> bytes:
        """Revoke the token whose id (``jti`` claim) is ``jti``, in every region, for good; the change's token."""
        return bytes(self._call(_REVOKE, kv_pb2.RevokeTokenRequest(jti=jti)).token.vector)

    def watch(
        self,
        prefix: str = "",
        *,
        after: bytes | str | None = None,
        start: str = "snapshot",
        on_expired: str = "reset",
        progress_interval_ms: int = 0,
        addresses: Sequence[str] | None = None,
    ) -> Generator[WatchItem]:
        """Every change under ``prefix``, as it comes, until the caller stops iterating (see ``crdtstore.watching``).

        ``after``: resume from a token (this or any region's): bytes, or a
        ``str`` as the command line prints it (base64; or hex, as an audit
        record shows it; ``ValueError`` if it is neither, ``TypeError`` for
        another type, at the first iteration, before anything is sent);
        without it a snapshot of the prefix comes first (``start="now"``:
        only what changes from now). ``addresses``: the regions to resume on, in turn, after an
        error (this client's address when not given).
        """
        state = _watch(self, prefix, after, start, on_expired, progress_interval_ms, addresses)
        try:
            while True:
                call = state.call()
                try:
                    for message in call:
                        yield from state.items(message)
                    delay = state.failed(None, self._retry)
                except grpc.RpcError as exc:
                    delay = state.failed(exc, self._retry)
                finally:
                    call.cancel()
                _sleep(delay)
        finally:
            for channel in state.opened():
                channel.close()

    # -- backup and verification (docs/backup.md; each needs the admin right) --

    def backup_chunks(self, *, chunk_bytes: int = 0, timeout_s: float = 3600.0) -> Generator[kv_pb2.BackupChunk]:
        """The node's backup stream: chunks of its data file, then one message with the copy's summary.

        Not retried: a broken stream is started again from the beginning by the caller.
        """
        stream = self._stubs.method(_BACKUP)
        call = stream(kv_pb2.BackupRequest(chunk_bytes=chunk_bytes), timeout=timeout_s, metadata=self._metadata)
        try:
            for chunk in call:
                yield _expect(_BACKUP, chunk)
        except grpc.RpcError as exc:
            code, message = _status_of(exc)
            raise _client_error(code, message, None) from exc
        finally:
            call.cancel()  # a caller that stops reading ends the node's copy at once (no-op once complete)

    def digest(self, *, after: bytes | None = None, timeout_s: float | None = None) -> kv_pb2.DigestResponse:
        """The node's bucket digests and the vector they were read at; ``after``: first wait for that token."""
        return self._call(_DIGEST, kv_pb2.DigestRequest(after=_token(after)), timeout_s=timeout_s)

    def bucket_keys(
        self, buckets: Iterable[int], *, page_size: int = 0, page_token: str = ""
    ) -> kv_pb2.BucketKeysResponse:
        """One page of the keys in ``buckets``, with digests and dot summaries."""
        request = kv_pb2.BucketKeysRequest(buckets=list(buckets), page_size=page_size, page_token=page_token)
        return self._call(_BUCKET_KEYS, request)

    # -- the audit trail (docs/audit.md; each needs the audit right, or admin) --

    _AUDIT_LOG: _Rpc[kv_pb2.AuditLogRequest, kv_pb2.AuditLogResponse] = _Rpc(
        "Admin", "AuditLog", kv_pb2.AuditLogResponse
    )
    _AUDIT_VERIFY: _Rpc[kv_pb2.AuditVerifyRequest, kv_pb2.AuditVerifyResponse] = _Rpc(
        "Admin", "AuditVerify", kv_pb2.AuditVerifyResponse
    )
    _AUDIT_EXPORT: _Rpc[kv_pb2.AuditExportRequest, kv_pb2.AuditExportChunk] = _Rpc(
        "Admin", "AuditExport", kv_pb2.AuditExportChunk
    )
    _AUDIT_EXPORTED: _Rpc[kv_pb2.AuditExportedRequest, kv_pb2.AuditExportedResponse] = _Rpc(
        "Admin", "AuditExported", kv_pb2.AuditExportedResponse
    )

    def audit_log_pages(
        self,
        *,
        key: str = "",
        principal: str = "",
        region: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Iterator[kv_pb2.AuditLogResponse]:
        """The pages of ``AuditLog`` from ``page_token`` on (a filtered page may be empty yet not the last)."""
        while True:
            request = kv_pb2.AuditLogRequest(
                key=key,
                principal=principal,
                region=region,
                since_ms=since_ms,
                until_ms=until_ms,
                limit=page_size,
                page_token=page_token,
            )
            page = self._call(self._AUDIT_LOG, request)
            yield page
            page_token = page.next_page_token
            if not page_token:
                return

    def audit_log(
        self,
        *,
        key: str = "",
        principal: str = "",
        region: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        page_size: int = 0,
    ) -> Iterator[kv_pb2.AuditRecord]:
        """Every audit record matching the filters, in causal order (newest last), fetched a page at a time.

        ``key``: records of requests that named it; ``region``: records of that region's chains;
        ``since_ms``/``until_ms``: the records' hybrid logical time (ms since the epoch; until exclusive).
        """
        for page in self.audit_log_pages(
            key=key, principal=principal, region=region, since_ms=since_ms, until_ms=until_ms, page_size=page_size
        ):
            yield from page.records

    def audit_verify(self, *, timeout_s: float | None = None) -> kv_pb2.AuditVerifyResponse:
        """Every chain the node holds, recomputed, and what its peers last said of their heads."""
        return self._call(self._AUDIT_VERIFY, kv_pb2.AuditVerifyRequest(), timeout_s=timeout_s)

    def audit_export(
        self, *, since_ms: int = 0, until_ms: int = 0, timeout_s: float = 3600.0
    ) -> Generator[kv_pb2.AuditExportChunk]:
        """The export stream: chunks of records (chain order per origin), then one with ``done`` and the heads.

        Not retried: a broken stream is started again by the caller.
        """
        stream = self._stubs.method(self._AUDIT_EXPORT)
        request = kv_pb2.AuditExportRequest(since_ms=since_ms, until_ms=until_ms)
        call = stream(request, timeout=timeout_s, metadata=self._metadata)
        try:
            for chunk in call:
                yield _expect(self._AUDIT_EXPORT, chunk)
        except grpc.RpcError as exc:
            code, message = _status_of(exc)
            raise _client_error(code, message, None) from exc
        finally:
            call.cancel()

    def audit_exported(self, *, since_ms: int, through_ms: int, heads: Iterable[kv_pb2.AuditChainHead] = ()) -> int:
        """Tell the node an export of ``[since_ms, through_ms)`` (with its ``heads``) is stored durably.

        Returns the time before which every record the node holds has been exported: retention may drop them.
        """
        request = kv_pb2.AuditExportedRequest(since_ms=since_ms, through_ms=through_ms, heads=list(heads))
        return self._call(self._AUDIT_EXPORTED, request).exported_through_ms

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_EXPLAIN: _Rpc[kv_pb2.ExplainRequest, kv_pb2.ExplainResponse] = _Rpc("Admin", "Explain", kv_pb2.ExplainResponse)


def _explain_request(key: str) -> kv_pb2.ExplainRequest:
    try:
        return kv_pb2.ExplainRequest(key=key)
    except ValueError as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _explanation(resp: kv_pb2.ExplainResponse) -> Explanation:
    try:
        return explanation_from_pb(resp, _entry_from_proto(resp.entry, bytes(resp.token.vector)))
    except AuditError as exc:
        raise _malformed(f"an audit record of Explain: {exc}") from exc


class AsyncClient(_ClientBase):
    """An asyncio client on one ``grpc.aio`` channel; create it inside the event loop that uses it."""

    _channel: grpc.aio.Channel

    def _open_channel(self, addr: str) -> Any:
        if self.tls is not None:
            options = [*_CHANNEL_OPTIONS, *self.tls.options()]
            return grpc.aio.secure_channel(addr, self.tls.credentials(), options=options)
        return grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS)

    async def _call(
        self, rpc: _Rpc[ReqT, RespT], request: ReqT, *, idempotency_key: bytes | None = None, retryable: bool = True
    ) -> RespT:
        method = self._stubs.method(rpc)
        attempt = 0
        while True:
            try:
                return _expect(rpc, await method(request, timeout=self.timeout_s, metadata=self._metadata))
            except grpc.RpcError as exc:
                delay = self._fail(exc, attempt, idempotency_key, retryable)
            await _async_sleep(delay)
            attempt += 1

    async def get(self, key: str, *, after: bytes | None = None) -> Entry:
        """Read ``key``; with ``after`` (a token), first wait until this node has seen that token."""
        return _entry_from_get(await self._call(_GET, _get_request(key, after)))

    async def explain(self, key: str) -> Explanation:
        """As ``Client.explain``."""
        return _explanation(await self._call(_EXPLAIN, _explain_request(key)))

    async def mutate(
        self, ops: Sequence[Operation], idempotency_key: bytes | None = None, *, durability: str | None = None
    ) -> WriteResult:
        """Apply a batch atomically; see the module docstring for idempotency, retries and durability."""
        request = _mutate_request(ops, idempotency_key, durability or self.durability)
        key = request.idempotency_key
        return _write_result(await self._call(_MUTATE, request, idempotency_key=key, retryable=bool(key)))

    async def set(self, key: str, value: bytes | str) -> WriteResult:
        """Write a register; a ``str`` is sent as its UTF-8 bytes."""
        return await self.mutate(_set_op(key, value))

    async def incr(self, key: str, n: int = 1) -> WriteResult:
        return await self.mutate(_incr_op(key, n))

    async def sadd(self, key: str, *members: str) -> WriteResult:
        return await self.mutate(_sadd_op(key, members))

    async def srem(self, key: str, *members: str) -> WriteResult:
        return await self.mutate(_srem_op(key, members))

    async def delete(self, key: str) -> WriteResult:
        return await self.mutate(_delete_op(key))

    async def scan(self, prefix: str = "", page_size: int = 100) -> AsyncIterator[Entry]:
        """Every key under ``prefix`` in key order, fetched ``page_size`` at a time (0: the server's default)."""
        page_token = ""
        while True:
            resp = await self._call(_SCAN, _scan_request(prefix, page_size, page_token))
            entries, page_token = _scan_page(resp, page_token)
            for entry in entries:
                yield entry
            if not page_token:
                return

    async def sismember(self, key: str, member: str, *, after: bytes | None = None) -> bool:
        """Whether the set at ``key`` holds ``member`` (False for a missing key), without reading the set."""
        return (await self.smismember(key, member, after=after))[0]

    async def smismember(self, key: str, *members: str, after: bytes | None = None) -> list[bool]:
        """Whether the set at ``key`` holds each of ``members``, in the order given."""
        return _present(await self._call(_CONTAINS, _contains_request(key, members, after)), len(members))

    async def smembers(self, key: str, *, page_size: int = 0, after: bytes | None = None) -> AsyncIterator[str]:
        """The set's members in code point order, fetched ``page_size`` at a time (0: the server's default)."""
        page_token = ""
        while True:
            resp = await self._call(_MEMBERS, _members_request(key, page_size, page_token, after))
            members, page_token = _members_page(resp, page_token)
            for member in members:
                yield member
            if not page_token:
                return

    async def status(self) -> Status:
        return _status_from_proto(await self._call(_STATUS, kv_pb2.StatusRequest()))

    async def put_role(self, name: str, grants: Grants) -> RoleInfo:
        """Create or replace role ``name`` whole: ``{"orders/": ["read", "add"]}`` or [(prefix, rights), ...]."""
        return _role_info((await self._call(_PUT_ROLE, _put_role_request(name, grants))).role)

    async def get_role(self, name: str) -> RoleInfo:
        """The role; ``ClientError`` NOT_FOUND if there is none."""
        return _role_info((await self._call(_GET_ROLE, kv_pb2.GetRoleRequest(name=name))).role)

    async def list_roles(self) -> list[RoleInfo]:
        return [_role_info(r) for r in (await self._call(_LIST_ROLES, kv_pb2.ListRolesRequest())).roles]

    async def delete_role(self, name: str) -> bytes:
        """Delete the role; returns the causal token of the change."""
        return bytes((await self._call(_DELETE_ROLE, kv_pb2.DeleteRoleRequest(name=name))).token.vector)

    async def revoke_token(self, jti: str) -> bytes:
        """Revoke the token whose id (``jti`` claim) is ``jti``, in every region, for good; the change's token."""
        return bytes((await self._call(_REVOKE, kv_pb2.RevokeTokenRequest(jti=jti))).token.vector)

    async def watch(
        self,
        prefix: str = "",
        *,
        after: bytes | str | None = None,
        start: str = "snapshot",
        on_expired: str = "reset",
        progress_interval_ms: int = 0,
        addresses: Sequence[str] | None = None,
    ) -> AsyncGenerator[WatchItem]:
        """Every change under ``prefix``, as it comes: ``Client.watch``, for asyncio."""
        state = _watch(self, prefix, after, start, on_expired, progress_interval_ms, addresses)
        try:
            while True:
                call = state.call()
                try:
                    async for message in call:
                        for item in state.items(message):
                            yield item
                    delay = state.failed(None, self._retry)
                except grpc.RpcError as exc:
                    delay = state.failed(exc, self._retry)
                finally:
                    call.cancel()
                await _async_sleep(delay)
        finally:
            for channel in state.opened():
                await channel.close()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

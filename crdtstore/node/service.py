"""The gRPC services of a node: protobuf <-> domain, and errors as status codes.

Validation happens here, before anything reaches the writer: a request that
breaks a limit is refused with INVALID_ARGUMENT and costs the store nothing.
A wrong-type operation is found when the batch is applied and refused with
FAILED_PRECONDITION; either way nothing of the request is written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import grpc
from cryptography.fernet import Fernet, InvalidToken
from google.protobuf.message import DecodeError, Message

import crdtstore
from crdtstore.auth.policy import (
    ADMIN_ROLE,
    BUILT_IN_ADMIN,
    EVERY_KEY,
    Grant,
    Need,
    PolicyError,
    Right,
    parse_rights,
    validate_role_name,
)
from crdtstore.auth.tokens import Principal
from crdtstore.backup.rpc import BackupService
from crdtstore.crdt import CodecError, TypeMismatch, VersionVector, decode_as, encode
from crdtstore.node import tracing
from crdtstore.node.access import (
    ANONYMOUS,
    NOBODY,
    AccessControl,
    Refusal,
    RoleRecord,
    is_reserved,
    revocation_operations,
    role_operations,
)
from crdtstore.node.audit import RefusalLog
from crdtstore.node.audit_retention import AuditRetention
from crdtstore.node.audit_rpc import AuditService
from crdtstore.node.config import NodeConfig
from crdtstore.node.explain import ExplainService
from crdtstore.node.feed import WatchStreams, read_need
from crdtstore.node.metrics import NodeMetrics
from crdtstore.node.replication import Replicator
from crdtstore.node.requests import (
    RefusalRecorder,
    current_note,
    current_request_id,
    serve_rpc,
    set_principal,
)
from crdtstore.node.requests import abort as _abort
from crdtstore.node.values import key_value_pb
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.operations import (
    AddMembers,
    DeleteKey,
    Increment,
    InvalidRequest,
    Operation,
    RemoveMembers,
    SetRegister,
    validate,
)
from crdtstore.storage import (
    Applied,
    DataCorruption,
    IdempotencyConflict,
    KeyTooLarge,
    LmdbStore,
    StoreFull,
    WriteRequest,
)
from crdtstore.storage.audit import RequestInfo
from crdtstore.storage.writes import refusal_recorded
from crdtstore.tokens import describe_behind, events_behind
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import replication_pb2 as rpb

__all__ = ["AdminService", "KVService", "NodeState", "add_services"]

log = logging.getLogger("crdtstore.service")


# How long a causal read or a replicated write waits when the client set no deadline.
_WAIT_WITHOUT_DEADLINE_S = 30.0


class NodeState:
    """What the services share: the store, the writer, replication, and whether the node is draining."""

    def __init__(
        self,
        config: NodeConfig,
        store: LmdbStore,
        writer: GroupCommitWriter,
        replicator: Replicator,
        access: AccessControl | None = None,
        *,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics  # None when metrics are off (metrics_listen empty)
        self.store = store
        self.writer = writer
        self.replicator = replicator
        self.access = access or AccessControl(config.auth, store)
        self.scan_tokens = ScanTokens(sealed=self.access.enabled)
        self.draining = False
        self.watches: WatchStreams | None = None  # the change feed's streams, once served (add_services)
        self.refusals = RefusalLog(self)  # refused requests, to the audit trail
        self.audit_exports = 0  # audit exports reading now (retention waits for them)
        self.audit_retention: AuditRetention | None = None  # set by the node's main once it runs

    def drain(self) -> None:
        """Refuse new requests from now on; watch streams end (UNAVAILABLE), their consumers resume elsewhere."""
        self.draining = True
        self.replicator.changes.close()


# The principal the request being served speaks for: set by the handler wrapper before the method runs.
_caller: ContextVar[Principal] = ContextVar("crdtstore_caller", default=NOBODY)


def _reserved_key(key: str) -> str:
    return f"key {key!r} starts with a NUL character: that keyspace is reserved for the node's own records"


def _time_left(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    remaining = context.time_remaining()
    return _WAIT_WITHOUT_DEADLINE_S if remaining is None else max(0.0, remaining)


def _answer_before_deadline_s(time_left_s: float) -> float:
    """How long a causal read may wait: a little less than the caller's deadline.

    Waiting the whole deadline would race the caller's own timer, and the
    caller would usually hear gRPC's bare "Deadline Exceeded" instead of this
    node's account of what it lacks. A tenth of the time left, at most half a
    second, is kept for the answer to travel.
    """
    return max(0.0, time_left_s - min(0.5, time_left_s / 10))


def request_info(method: str, context: grpc.aio.ServicerContext[Any, Any], durability: str) -> RequestInfo:
    """Who is asking, and how, for the audit record of the request being served."""
    return RequestInfo(
        principal=_caller.get().subject,
        request_id=current_request_id(),
        method=method,
        peer=str(context.peer() or ""),
        durability=durability,
    )


def token_of(vv: VersionVector) -> pb.CausalToken:
    return pb.CausalToken(vector=encode(vv))


def operations_from_pb(request: pb.MutateRequest) -> list[Operation]:
    ops: list[Operation] = []
    for i, op in enumerate(request.operations):
        kind = op.WhichOneof("op")
        if kind == "set":
            ops.append(SetRegister(op.key, op.set.value))
        elif kind == "increment":
            ops.append(Increment(op.key, op.increment.amount))
        elif kind == "add":
            ops.append(AddMembers(op.key, tuple(op.add.members)))
        elif kind == "remove":
            ops.append(RemoveMembers(op.key, tuple(op.remove.members)))
        elif kind == "delete":
            ops.append(DeleteKey(op.key))
        else:
            raise InvalidRequest(f"operation {i} names no operation (set, increment, add, remove or delete)")
    return ops


async def _refuse_while_rejoining(node: NodeState, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """A region restored from a backup takes no writes until its peers have filled it in (``rejoin``)."""
    waiting = node.replicator.rejoining()
    if waiting is not None:
        await _abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            f"region {node.store.region} was restored from a backup and takes no writes until its peers have "
            f"filled it in ({waiting}); retry, or write in another region. Nothing was applied",
        )


class KVService:
    def __init__(self, node: NodeState) -> None:
        self.node = node

    async def _refuse_if_draining(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.node.draining:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the node is shutting down; retry on another node")

    async def _check_key(self, key: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        size = len(key.encode("utf-8", "surrogatepass"))
        if not size:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the key is empty")
        if is_reserved(key):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, _reserved_key(key))
        if size > self.node.config.limits.key_bytes_max:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"key of {size} bytes; the maximum is {self.node.config.limits.key_bytes_max}",
            )

    async def _wait_after(self, token: pb.CausalToken, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """A read with a causal token waits, within its deadline, until this node has seen what the token covers."""
        if not token.vector:
            return
        store = self.node.store
        try:
            after = decode_as(token.vector, VersionVector)
        except CodecError:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the after token is not one crdtstore issued")
        replicator = self.node.replicator
        if not await replicator.wait_seen(after, _answer_before_deadline_s(_time_left(context))):
            behind = events_behind(store.context.vv, after)
            lag = f": it is {describe_behind(behind)}" if behind else ""
            # An origin this region has no event of at all: likely a token of another cluster (or of an
            # earlier demo), which no region will ever have (found by a newcomer).
            unknown = sorted(origin for origin in behind if not store.context.vv.get(origin))
            stranger = (
                f" It names origins this region has no event of at all ({', '.join(unknown[:3])}): if the token "
                f"came from another cluster, or an earlier run of the demo, no region here will ever have it."
                if unknown
                else ""
            )
            await _abort(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"region {store.region} has not yet seen the token{lag}. The node is up; replication has not "
                f"brought it that far yet: retry later, or read in the region that wrote it.{stranger}",
            )

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetResponse:
        await self._refuse_if_draining(context)
        await self._check_key(request.key, context)
        await self._wait_after(request.after, context)
        store = self.node.store
        token = token_of(store.context.vv)  # read before the value: the value is at least this new
        members_max = self.node.config.server.get_members_max
        state, omitted = await asyncio.to_thread(store.get_bounded, request.key, members_max)
        if omitted:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"key {request.key!r} is a set of {omitted:,} members, more than one Get returns "
                f"(server.get_members_max = {members_max:,}): read its members a page at a time with Members "
                f"(crdtstore smembers, Client.smembers), or ask whether it holds some with Contains",
            )
        return pb.GetResponse(entry=key_value_pb(request.key, state), token=token)

    async def Contains(
        self, request: pb.ContainsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ContainsResponse:
        await self._refuse_if_draining(context)
        await self._check_key(request.key, context)
        members = list(request.members)
        if not members:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "name at least one member")
        limits = self.node.config.limits
        if len(members) > limits.members_per_operation_max:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(members)} members; at most {limits.members_per_operation_max} in one request",
            )
        await self._wait_after(request.after, context)
        store = self.node.store
        token = token_of(store.context.vv)
        try:
            present = await asyncio.to_thread(store.contains, request.key, members)
        except TypeMismatch as exc:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, f"key {exc.key!r} holds a {exc.held.label}, not a set"
            )
        else:
            return pb.ContainsResponse(present=present, token=token)

    async def Members(
        self, request: pb.MembersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MembersResponse:
        await self._refuse_if_draining(context)
        await self._check_key(request.key, context)
        settings = self.node.config.server
        limit = min(request.limit or settings.members_page_default, settings.members_page_max)
        try:
            after = _decode_page_token(request.page_token).decode("utf-8")
        except (binascii.Error, UnicodeError, ValueError):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server issued")
        await self._wait_after(request.after, context)
        store = self.node.store
        token = token_of(store.context.vv)
        try:
            members, more = await asyncio.to_thread(store.set_members, request.key, after, limit)
        except TypeMismatch as exc:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, f"key {exc.key!r} holds a {exc.held.label}, not a set"
            )
        else:
            response = pb.MembersResponse(members=members, token=token)
            if more:
                response.next_page_token = base64.urlsafe_b64encode(members[-1].encode("utf-8")).decode("ascii")
            return response

    async def Mutate(  # noqa: RET503 (every path returns or aborts; _abort never returns)
        self, request: pb.MutateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MutateResponse:
        await self._refuse_if_draining(context)
        limits = self.node.config.limits
        note = current_note()
        note.idempotency_key = request.idempotency_key[:1024]  # a refusal for a longer one records its start
        try:
            with tracing.span("validate"):
                ops = note.operations = operations_from_pb(request)
                validate(ops, request.idempotency_key, limits)
                for i, op in enumerate(ops):
                    if is_reserved(op.key):
                        raise InvalidRequest(f"operation {i}: {_reserved_key(op.key)}")
                replicas = self._replicas(request)
        except InvalidRequest as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        replicator = self.node.replicator
        if replicator.clock_fenced():
            if self.node.metrics is not None:
                self.node.metrics.clock_fenced_refusals.inc()
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"this node's clock is more than {self.node.config.server.max_clock_offset_ms} ms away from most "
                f"of its peers' clocks; it refuses writes until it is back in bounds (check NTP). Nothing was applied",
            )
        await _refuse_while_rejoining(self.node, context)
        note.durability = durability = "local" if replicas == 1 else f"replicated:{replicas}"
        info = request_info("Mutate", context, durability)
        result = await self.node.writer.submit(WriteRequest(ops, request.idempotency_key, info))
        # A request the batch refused has its record in the batch: the refusal is not recorded again.
        note.recorded = refusal_recorded(result)
        if isinstance(result, Applied):
            # The writer told the replicator of the commit (``on_commit``) before answering.
            vector = result.token.vv
            if replicas > 1 and not await _traced_wait(
                replicator.wait_replicated(vector, replicas, _time_left(context))
            ):
                await _abort(
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the write is applied and durable in region {self.node.store.region}, but fewer than "
                    f"{replicas} regions confirmed it before the deadline; it will replicate when they are reachable",
                )
            return pb.MutateResponse(token=token_of(vector), replayed=result.replayed)
        error = result.error
        if isinstance(error, TypeMismatch):
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{error}; nothing of the batch was applied")
        if isinstance(error, StoreFull | KeyTooLarge):
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error}; nothing of the batch was applied")
        if isinstance(error, DataCorruption):
            await _abort(context, grpc.StatusCode.DATA_LOSS, f"{error}; nothing of the batch was applied")
        if isinstance(error, IdempotencyConflict | ValueError | TypeError):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{error}; nothing of the batch was applied")
        await _abort(context, grpc.StatusCode.INTERNAL, f"the write failed: {error!r}")

    def _replicas(self, request: pb.MutateRequest) -> int:
        if request.durability in (pb.DURABILITY_UNSPECIFIED, pb.DURABILITY_LOCAL):
            if request.replicas > 1:
                raise InvalidRequest("replicas is only for DURABILITY_REPLICATED")
            return 1
        if request.durability != pb.DURABILITY_REPLICATED:
            raise InvalidRequest(
                f"durability {request.durability} is not one this node knows; use DURABILITY_LOCAL or "
                f"DURABILITY_REPLICATED"
            )
        regions = 1 + len(self.node.config.peers)
        if not 1 <= request.replicas <= regions:
            raise InvalidRequest(
                f"replicas must be from 1 to {regions} (this region and its {regions - 1} peers), "
                f"got {request.replicas}"
            )
        return request.replicas

    async def Scan(self, request: pb.ScanRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ScanResponse:
        await self._refuse_if_draining(context)
        settings = self.node.config.server
        limit = request.limit or settings.scan_page_default
        limit = min(limit, settings.scan_page_max)
        try:
            after = self.node.scan_tokens.open(request.page_token)
        except (binascii.Error, UnicodeEncodeError, ValueError, InvalidToken):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "page_token is not one this server issued (with access control on, a page token lasts as long as "
                "the node process that issued it: start the scan again)",
            )
        # A page decodes up to scan_page_bytes_max of values: off the event loop.
        entries, last = await asyncio.to_thread(
            self.node.store.scan_bounded,
            request.prefix,
            after,
            limit,
            settings.scan_page_bytes_max,
            settings.get_members_max,
        )
        response = pb.ScanResponse()
        access, caller = self.node.access, _caller.get()
        for key, state, omitted in entries:
            # The node's own records, and keys the caller may not read, are left out without a word.
            if is_reserved(key) or (access.enabled and not access.may(caller, Need("read", key))):
                continue
            response.entries.append(key_value_pb(key, state, omitted))
        if last:
            # The last key read, which the caller may not be allowed to see: sealed when access control is on.
            response.next_page_token = self.node.scan_tokens.seal(last)
        return response


async def _traced_wait(wait: Awaitable[bool]) -> bool:
    with tracing.span("replicated wait"):
        return await wait


def _not_a_set(exc: TypeMismatch) -> str:
    return f"key {exc.key!r} holds a {exc.held.label}, not a set"


class ScanTokens:
    """Scan page tokens: where the next page starts, the last key the page read.

    That key may be one the caller may not read (a page leaves such keys
    out), so with access control on the token is sealed (Fernet: encrypted
    and authenticated, with a key made when the node starts) and says nothing
    of it; a token from another process of the node is refused. Without
    access control it is the key in URL-safe base64, as it always was.
    """

    def __init__(self, sealed: bool) -> None:
        self._fernet = Fernet(Fernet.generate_key()) if sealed else None

    def seal(self, last: bytes) -> str:
        if self._fernet is None:
            return base64.urlsafe_b64encode(last).decode("ascii")
        return self._fernet.encrypt(last).decode("ascii")

    def open(self, token: str) -> bytes:
        if self._fernet is None or not token:
            return _decode_page_token(token)
        return self._fernet.decrypt(token.encode("ascii"))


def _decode_page_token(token: str) -> bytes:
    if not token:
        return b""
    # validate=True: a character outside the alphabet is an error, not skipped.
    return base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)


class AdminService:
    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.backups = BackupService(
            node.store, node.replicator.wait_seen, page_bytes_max=node.config.server.scan_page_bytes_max
        )

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.StatusResponse:
        store = self.node.store
        replicator = self.node.replicator
        watches = self.node.watches
        feed_records, feed_bytes = await asyncio.to_thread(store.feed_stats)
        peers = []
        for name, link in replicator.links.items():
            acked = replicator.core.peers[name].acked
            peers.append(
                pb.PeerStatus(
                    region=name,
                    address=link.address,
                    connected=replicator.connected(name),
                    acked=token_of(acked),
                    behind=sum(replicator.core.behind(name).values()),
                    clock_offset_ms=link.clock_offset_ms or 0,
                    clock_error_ms=link.clock_error_ms,
                )
            )
        return pb.StatusResponse(
            region=store.region,
            version=crdtstore.__version__,
            # The node's own records are not keys (read apart from the count: a write between may make it negative).
            keys=max(0, store.count_keys() - self.node.access.system_keys()),
            token=token_of(store.context.vv),
            draining=self.node.draining,
            data_bytes=store.data_bytes(),
            commits=self.node.writer.batches_committed,
            requests_committed=self.node.writer.requests_committed,
            peers=peers,
            clock_skew_events=replicator.skew_events,
            clock_fenced=replicator.clock_fenced(),
            origin=store.origin,
            conflicting_events=store.conflicting_events,
            auth_enabled=self.node.access.enabled,
            refused_unauthenticated=self.node.access.refused_unauthenticated,
            refused_permission_denied=self.node.access.refused_permission,
            watch_streams=watches.open if watches else 0,
            watch_events_sent=watches.events_sent if watches else 0,
            watch_streams_cut=watches.cut_stalled if watches else 0,
            feed_records=feed_records,
            feed_bytes=feed_bytes,
            audit_enabled=store.audit_enabled,
            audit_records=store.audit_record_count(),
            audit_refusals_dropped=self.node.refusals.dropped,
            audit_head_mismatches=replicator.audit_heads.mismatches,
            audit_retention_blocked=self.node.audit_retention.blocked if self.node.audit_retention else "",
            rejoin_waiting=replicator.rejoining() or "",
        )

    # -- roles and revocations ---------------------------------------------------------------

    async def _write_rules(
        self, ops: list[Operation], context: grpc.aio.ServicerContext[Any, Any], rpc: str
    ) -> pb.CausalToken:
        """Apply a write to the system keyspace like any client write; it replicates like one."""
        if self.node.draining:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the node is shutting down; retry on another node")
        if self.node.replicator.clock_fenced():
            # A role stamped by a clock far ahead would win over every later change until real time caught up.
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "this node's clock is out of bounds against most of its peers; it refuses changes of roles and "
                "revocations until it is back in bounds (check NTP). Nothing was applied",
            )
        await _refuse_while_rejoining(self.node, context)
        info = request_info(rpc, context, "local")
        result = await self.node.writer.submit(WriteRequest(ops, info=info))
        current_note().recorded = refusal_recorded(result)
        if not isinstance(result, Applied):
            error = result.error
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(error, StoreFull) else grpc.StatusCode.INTERNAL
            await _abort(context, code, f"the change was not applied: {error}")
        # The writer told the replicator of the commit (on_commit); the rules' caches start afresh.
        self.node.access.changed()
        return token_of(result.token.vv)

    async def _role_name(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            validate_role_name(name)
        except PolicyError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def PutRole(
        self, request: pb.PutRoleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PutRoleResponse:
        await self._role_name(request.name, context)
        grants: list[Grant] = []
        try:
            for i, grant in enumerate(request.grants):
                if is_reserved(grant.prefix):
                    raise PolicyError(f"grant {i}: {_reserved_key(grant.prefix)}")
                grants.append(Grant(grant.prefix, parse_rights(list(grant.rights), f"grant {i} ({grant.prefix!r})")))
        except PolicyError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not grants:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a role needs at least one grant")
        store, caller = self.node.store, _caller.get()
        now_ms = store.wall_ms()
        token = await self._write_rules(
            role_operations(request.name, grants, caller.subject, store.origin, now_ms), context, "PutRole"
        )
        record = RoleRecord(request.name, tuple(grants), caller.subject, store.origin, now_ms)
        return pb.PutRoleResponse(role=_role_pb(record), token=token)

    async def GetRole(
        self, request: pb.GetRoleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRoleResponse:
        if request.name == ADMIN_ROLE:
            return pb.GetRoleResponse(role=_built_in_admin_pb())
        await self._role_name(request.name, context)
        record = await asyncio.to_thread(self.node.access.role_record, request.name)
        if record is None or record.grants is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no role {request.name!r}")
        return pb.GetRoleResponse(role=_role_pb(record))

    async def ListRoles(
        self, request: pb.ListRolesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRolesResponse:
        records = await asyncio.to_thread(self.node.access.role_records)
        roles = [_built_in_admin_pb(), *(_role_pb(r) for r in records if r.grants is not None)]
        return pb.ListRolesResponse(roles=roles)

    async def DeleteRole(
        self, request: pb.DeleteRoleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteRoleResponse:
        await self._role_name(request.name, context)
        record = await asyncio.to_thread(self.node.access.role_record, request.name)
        if record is None or record.grants is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no role {request.name!r}")
        store, caller = self.node.store, _caller.get()
        ops = role_operations(request.name, None, caller.subject, store.origin, store.wall_ms())
        return pb.DeleteRoleResponse(token=await self._write_rules(ops, context, "DeleteRole"))

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeTokenResponse:
        jti = request.jti
        if not jti or len(jti.encode("utf-8")) > self.node.config.limits.key_bytes_max // 2:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"name the token's id (its jti claim), 1 to {self.node.config.limits.key_bytes_max // 2} bytes",
            )
        store, caller = self.node.store, _caller.get()
        ops = revocation_operations(jti, caller.subject, store.origin, store.wall_ms())
        return pb.RevokeTokenResponse(token=await self._write_rules(ops, context, "RevokeToken"))

    # -- backup and verification: crdtstore.backup.rpc ----------------------------------------

    async def Backup(
        self, request: pb.BackupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BackupChunk]:
        access, caller = self.node.access, _caller.get()
        async for chunk in self.backups.backup(request, context):
            if access.enabled:  # a backup is the whole store: it stops once the token expires or is revoked
                try:
                    access.check_current(caller)
                    access.authorize(caller, _needs_admin(request))
                except Refusal as refusal:
                    await _abort(context, refusal.code, f"the backup stops: {refusal.message}")
            yield chunk

    async def Digest(self, request: pb.DigestRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DigestResponse:
        return await self.backups.digest(request, context)

    async def BucketKeys(
        self, request: pb.BucketKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BucketKeysResponse:
        return await self.backups.bucket_keys(request, context)


def _role_pb(record: RoleRecord) -> pb.Role:
    return pb.Role(
        name=record.name,
        grants=[pb.Grant(prefix=g.prefix, rights=sorted(g.rights)) for g in record.grants or ()],
        changed_by=record.changed_by,
        changed_in=record.changed_in,
        changed_at_ms=record.changed_at_ms,
    )


def _built_in_admin_pb() -> pb.Role:
    return pb.Role(
        name=BUILT_IN_ADMIN.name,
        grants=[pb.Grant(prefix=g.prefix, rights=sorted(g.rights)) for g in BUILT_IN_ADMIN.grants],
        built_in=True,
    )


# -- what each RPC needs ------------------------------------------------------------------

Needs = Callable[[Any], Sequence[Need]]


def _reads_key(request: Any) -> Sequence[Need]:
    return (Need("read", request.key),)


def _needs_nothing(request: Any) -> Sequence[Need]:
    """Scan: the caller must be authenticated; the keys it may not read are left out of the answer."""
    return ()


def _needs_admin(request: Any) -> Sequence[Need]:
    return (Need("admin", EVERY_KEY),)


def _needs_audit(request: Any) -> Sequence[Need]:
    return (Need("audit", EVERY_KEY),)


def _explain_needs(request: pb.ExplainRequest) -> Sequence[Need]:
    return (Need("read", request.key), Need("audit", EVERY_KEY))


_OPERATION_RIGHTS: dict[str, Right] = {"set": "set", "add": "add", "remove": "remove", "delete": "delete"}


def _mutate_needs(request: pb.MutateRequest) -> Sequence[Need]:
    """One need per operation: a batch with one forbidden operation is refused whole."""
    needs: list[Need] = []
    for op in request.operations:
        kind = op.WhichOneof("op")
        if kind == "increment":
            needs.append(Need("decr" if op.increment.amount < 0 else "incr", op.key))
        elif kind is not None:
            needs.append(Need(_OPERATION_RIGHTS[kind], op.key))
    return needs


# A request refused before its caller is known is parsed for its audit record only up to this size:
# an anonymous caller must not make the node parse megabytes, nor write them to every region's trail.
_UNAUTHENTICATED_PARSED_BYTES_MAX = 4096


def _note_asked(raw: bytes, request_type: type[Message], needs: Needs) -> None:
    """What a request refused before its caller was known asked (each right on each key), for its audit record.

    So that ``audit log --key K`` finds the attempts on K without a valid
    token too ("the same fields that are known", issue 19). Only a small
    request is read (``_UNAUTHENTICATED_PARSED_BYTES_MAX``: a Get, a write of
    a few keys): a larger one, or one that does not parse, names nothing (found
    in review: a 13 MB anonymous Mutate held the event loop for seconds and
    left a record of hundreds of kilobytes in every region).
    """
    if len(raw) > _UNAUTHENTICATED_PARSED_BYTES_MAX:
        return
    try:
        asked = needs(request_type.FromString(raw))
    except DecodeError:
        return
    current_note().asked = [(need.right, need.key) for need in asked]


async def _admit(
    raw: bytes,
    context: grpc.aio.ServicerContext[Any, Any],
    request_type: type[Message],
    access: AccessControl,
    needs: Needs,
    *,
    rpc: str,
    recording: bool = False,
) -> Any:
    """The caller checked, then the request parsed and authorized; aborts the call otherwise.

    A refusal is logged (at INFO, with the request id and, once known, the principal: docs/observability.md).
    """
    try:
        principal = access.authenticate(context.invocation_metadata()) if access.enabled else ANONYMOUS
    except Refusal as refusal:
        log.info("refused %s: %s", rpc, refusal.message)
        if recording:  # the refusal gets an audit record
            _note_asked(raw, request_type, needs)
        await _abort(context, refusal.code, refusal.message)
    try:
        request = request_type.FromString(raw)
    except DecodeError as exc:
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name} message: {exc}",
        )
    if access.enabled:  # without access control, what a request needs is not even worked out
        set_principal(principal.subject)  # for the log lines of this request from here on
        asked = needs(request)
        try:
            access.authorize(principal, asked)
        except Refusal as refusal:
            log.info("refused %s: %s", rpc, refusal.message)
            current_note().asked = [(need.right, need.key) for need in asked]  # for the refusal's audit record
            await _abort(context, refusal.code, refusal.message)
    _caller.set(principal)
    return request


def _parsing(
    method: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
    request_type: type[Message],
    response_type: type[Message],
    access: AccessControl,
    needs: Needs,
    *,
    metrics: NodeMetrics | None = None,
    recorder: RefusalRecorder | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that checks the caller, then parses the request itself, so a malformed one is INVALID_ARGUMENT.

    Every unary RPC goes through here: the caller is authenticated before
    anything else, and authorized for what ``needs`` says the request asks
    before the method runs; the request's id is set and answered, and it is
    counted in the metrics (``crdtstore.node.requests``). gRPC's own deserialisation would answer UNKNOWN
    with a Python traceback in the details; the contract promises
    INVALID_ARGUMENT for malformed input.
    """

    rpc = method.__name__

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await serve_rpc(rpc, context, metrics, functools.partial(checked, raw, context), recorder)

    async def checked(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request = await _admit(raw, context, request_type, access, needs, rpc=rpc, recording=recorder is not None)
        return await method(request, context)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=response_type.SerializeToString)


def _parsing_stream(
    method: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None] | AsyncIterator[Any]],
    request_type: type[Message],
    response_type: type[Message],
    access: AccessControl,
    needs: Needs,
    *,
    metrics: NodeMetrics | None = None,
    rpc: str = "",
    recorder: RefusalRecorder | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``_parsing`` for a server stream: the same checks before the first message.

    The method writes its responses with ``context.write`` (Watch, which
    bounds how long a send may wait), or yields them (Backup). Counted like a
    unary RPC when it ends, as ``rpc`` (its duration is the stream's life).
    """
    rpc = rpc or method.__name__

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await serve_rpc(rpc, context, metrics, functools.partial(checked, raw, context), recorder)

    async def checked(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        request = await _admit(raw, context, request_type, access, needs, rpc=rpc, recording=recorder is not None)
        answer = method(request, context)
        if isinstance(answer, AsyncIterator):
            async for response in answer:
                await context.write(response)
        else:
            await answer

    return grpc.unary_stream_rpc_method_handler(handle, response_serializer=response_type.SerializeToString)


def add_services(server: grpc.aio.Server, node: NodeState) -> list[str]:
    """Register KV, Admin and Replication on ``server``; returns their full service names."""
    kv, admin = KVService(node), AdminService(node)
    audit, explain = AuditService(node), ExplainService(node)
    access, metrics = node.access, node.metrics
    watches = node.watches = WatchStreams(node)
    recorder = node.refusals.record if node.store.audit_enabled else None

    async def watch(request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        caller = _caller.get()

        def still_allowed() -> None:
            if access.enabled:  # a token expires, or is revoked, or loses its role while the stream runs
                access.check_current(caller)
                access.authorize(caller, read_need(request))

        principals = access.allows(caller, _needs_audit(request))
        await watches.watch(request, context, still_allowed, principals=principals)

    def admin_rpc(method: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]], name: str) -> Any:
        request, response = getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response")
        return _parsing(method, request, response, access, _needs_admin, metrics=metrics, recorder=recorder)

    handlers = {
        "crdtstore.v1.KV": {
            "Get": _parsing(
                kv.Get, pb.GetRequest, pb.GetResponse, access, _reads_key, metrics=metrics, recorder=recorder
            ),
            "Mutate": _parsing(
                kv.Mutate,
                pb.MutateRequest,
                pb.MutateResponse,
                access,
                _mutate_needs,
                metrics=metrics,
                recorder=recorder,
            ),
            "Scan": _parsing(
                kv.Scan, pb.ScanRequest, pb.ScanResponse, access, _needs_nothing, metrics=metrics, recorder=recorder
            ),
            "Contains": _parsing(
                kv.Contains,
                pb.ContainsRequest,
                pb.ContainsResponse,
                access,
                _reads_key,
                metrics=metrics,
                recorder=recorder,
            ),
            "Members": _parsing(
                kv.Members,
                pb.MembersRequest,
                pb.MembersResponse,
                access,
                _reads_key,
                metrics=metrics,
                recorder=recorder,
            ),
            "Watch": _parsing_stream(
                watch,
                pb.WatchRequest,
                pb.WatchResponse,
                access,
                read_need,
                metrics=metrics,
                rpc="Watch",
                recorder=recorder,
            ),
        },
        "crdtstore.v1.Admin": {
            name: admin_rpc(getattr(admin, name), name)
            for name in (
                "Status",
                "PutRole",
                "GetRole",
                "ListRoles",
                "DeleteRole",
                "RevokeToken",
                "Digest",
                "BucketKeys",
            )
        }
        | {
            "Backup": _parsing_stream(
                admin.Backup, pb.BackupRequest, pb.BackupChunk, access, _needs_admin, metrics=metrics, recorder=recorder
            ),
            "AuditExport": _parsing_stream(
                audit.AuditExport,
                pb.AuditExportRequest,
                pb.AuditExportChunk,
                access,
                _needs_audit,
                metrics=metrics,
                recorder=recorder,
            ),
            "Explain": _parsing(
                explain.Explain,
                pb.ExplainRequest,
                pb.ExplainResponse,
                access,
                _explain_needs,
                metrics=metrics,
                recorder=recorder,
            ),
        }
        | {
            name: _parsing(
                getattr(audit, name),
                getattr(pb, f"{name}Request"),
                getattr(pb, f"{name}Response"),
                access,
                _needs_audit,
                metrics=metrics,
                recorder=recorder,
            )
            for name in ("AuditLog", "AuditVerify", "AuditExported")
        },
        "crdtstore.v1.Replication": {
            # Messages arrive as bytes: the replicator parses them, so a
            # malformed one closes the stream with INVALID_ARGUMENT. It checks
            # the peer (certificate or token, and the right replicate) itself.
            "Sync": grpc.stream_stream_rpc_method_handler(
                node.replicator.serve_stream, response_serializer=rpb.SyncMessage.SerializeToString
            ),
        },
    }
    declared = {
        s.full_name: {m.name for m in s.methods}
        for descriptor in (pb.DESCRIPTOR, rpb.DESCRIPTOR)
        for s in descriptor.services_by_name.values()
    }
    assert declared == {name: set(methods) for name, methods in handlers.items()}, "every RPC of the proto is served"
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(name, methods) for name, methods in handlers.items())
    )
    return list(handlers)

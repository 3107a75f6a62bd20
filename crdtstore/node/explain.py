"""Explain: why a key reads as it does, with the audit records of the changes that made it (docs/explain.md).

The handler reads the key's state once, asks the pure ``crdtstore.audit.explain``
what the versions are and which one reads as the value, and attaches to each
version the audit record of the request whose events include its dot. The
entry is the one Get would answer (a set too large for one answer shows its
size, as Get's ``members_omitted``); the versions of such a set are its first
``EXPLAIN_MEMBERS_MAX`` members, read in the same transaction, and the answer
says ``truncated``. The caller needs the read right on the key and the audit
right (the service's ``_explain_needs``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from crdtstore.audit.explain import ExplainedVersion, explain
from crdtstore.audit.record import AuditRecord
from crdtstore.crdt import encode
from crdtstore.crdt.keyed import ValueType
from crdtstore.node.access import is_reserved
from crdtstore.node.audit_rpc import record_pb
from crdtstore.node.requests import abort
from crdtstore.node.values import key_value_pb
from crdtstore.v1 import kv_pb2 as pb

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState
    from crdtstore.storage import LmdbStore

__all__ = ["EXPLAIN_MEMBERS_MAX", "ExplainService"]

# The most set members one answer explains: each is a version with its audit record.
EXPLAIN_MEMBERS_MAX = 1000

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ExplainService:
    def __init__(self, node: NodeState) -> None:
        self.node = node

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExplainResponse:
        node = self.node
        if node.draining:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the node is shutting down; retry on another node")
        key = request.key
        size = len(key.encode("utf-8", "surrogatepass"))
        if not size:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the key is empty")
        if is_reserved(key):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"key {key!r} starts with a NUL character: that keyspace is reserved for the node's own records",
            )
        if size > node.config.limits.key_bytes_max:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"key of {size} bytes; the maximum is {node.config.limits.key_bytes_max}",
            )
        return await asyncio.to_thread(explain_key, node.store, key)


def explain_key(store: LmdbStore, key: str) -> pb.ExplainResponse:
    """The answer to Explain for ``key`` (blocking: LMDB reads)."""
    token = pb.CausalToken(vector=encode(store.context.vv))  # read before the value: the value is at least this new
    entry_state, state, members_total = store.get_with_some_members(key, EXPLAIN_MEMBERS_MAX)
    told = explain(state, members_total=members_total)
    # Only when the versions are the set's: beside a register or a counter a set is a conflict, not explained.
    truncated = members_total is not None and told.type is ValueType.SET
    response = pb.ExplainResponse(
        entry=key_value_pb(key, entry_state, members_total or 0),
        reason=told.reason,
        explanation=told.explanation,
        truncated=truncated,
        token=token,
    )
    records = _Records(store)
    for version in told.versions:
        response.versions.append(_version_pb(version, records.covering(version.origin, version.counter)))
    return response


class _Records:
    """Audit records by dot, each read once: the members of one add share their request's record."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.held: dict[str, list[AuditRecord]] = {}

    def covering(self, origin: str, counter: int) -> AuditRecord | None:
        for held in self.held.get(origin, ()):
            if held.first <= counter <= held.last:
                return held
        record = self.store.audit_record_at(origin, counter)
        if record is not None:
            self.held.setdefault(origin, []).append(record)
        return record


def _version_pb(version: ExplainedVersion, record: AuditRecord | None) -> pb.ExplainVersion:
    out = pb.ExplainVersion(
        origin=version.origin,
        region=version.region,
        counter=version.counter,
        wall_ms=version.wall_ms,
        logical=version.logical,
        value=version.value,
        # A contribution beyond 64 bits (the counter itself is exact) is in the explanation's sentence only.
        amount=version.amount if _INT64_MIN <= version.amount <= _INT64_MAX else 0,
        member=version.member,
        winner=version.winner,
    )
    if record is not None:
        out.record.CopyFrom(record_pb(record))
    return out

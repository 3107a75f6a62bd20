"""The node's side of the audit trail: recording refused requests, and comparing chain heads with peers.

A request refused inside a write batch is recorded by the batch itself
(``crdtstore.storage.audit``). Every other refusal (authentication,
permission, validation, a limit, a request that never reached the writer)
ends in ``crdtstore.node.requests.serve_rpc``, which hands it to
``RefusalLog.record``: the record is written through the writer like any
request, before the caller hears the refusal, so a refused request that was
answered has its record. When the writer's queue is full (the node is
overloaded), waiting for a place would make refusals a way to stall the
node: the record is then dropped and counted (``dropped``, in Status and the
metrics), never queued without bound.

Replication streams (``Replication.Sync``) refused at their start (no token,
no ``replicate`` right, the wrong region, a certificate that does not name the
peer) go through ``StreamRefusals``: a misconfigured peer dials again every
few seconds for as long as it stays misconfigured, so such refusals are
recorded at most once a minute per caller address and status code, each
record saying how many like it were not recorded since the last.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack

from crdtstore.audit.record import OpSummary
from crdtstore.crdt import Dot
from crdtstore.node.metrics import NodeMetrics
from crdtstore.node.requests import REFUSAL_CODES, RequestNote, current_principal, current_request_id, set_principal
from crdtstore.storage import LmdbStore, WriteRequest
from crdtstore.storage.audit import RequestInfo
from crdtstore.storage.writes import refusal_recorded
from crdtstore.v1 import replication_pb2 as rpb

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["AuditHeads", "PeerHeads", "RefusalLog", "StreamRefusals", "compare_head"]

log = logging.getLogger("crdtstore.audit")


class RefusalLog:
    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.dropped = 0  # refusals not recorded because the writer was full or closed

    async def record(self, rpc: str, code: str, reason: str, note: RequestNote, peer: str) -> None:
        node = self.node
        principal = current_principal() or ("" if node.access.enabled else "anonymous")
        info = RequestInfo(
            principal=principal,
            request_id=current_request_id(),
            method=rpc,
            peer=peer,
            durability=note.durability,
            refused=(code, reason),
            asked=tuple(OpSummary(key, right) for right, key in note.asked),  # type: ignore[arg-type]
        )
        pending = node.writer.try_submit(WriteRequest(tuple(note.operations), note.idempotency_key, info))
        if pending is not None:
            try:
                result = await pending
            except RuntimeError:  # the writer closed under it
                pass
            else:
                if refusal_recorded(result):
                    return
                # The store is full: not even the record fits (counted, and the alert fires).
                log.error("the refusal of a %s request could not be recorded: %s", rpc, result)
        self.dropped += 1
        if node.metrics is not None:
            node.metrics.audit_refusals_dropped.inc()


class StreamRefusals:
    """Refused replication streams to the audit trail, at most one record per ``interval_s`` per caller and code.

    Keyed by the caller's host (not its port, which changes at every dial)
    and the status code, in a table of at most ``keys_max`` entries (the
    oldest goes first): what a caller sends cannot make it grow without bound.
    Over every caller together at most ``records_max`` records per interval
    (a caller cycling through addresses cannot make one record per dial). A
    record says how many refusals like it were left out since the last.
    """

    def __init__(
        self,
        refusals: RefusalLog,
        *,
        interval_s: float = 60.0,
        keys_max: int = 256,
        records_max: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refusals = refusals
        self.interval_s = interval_s
        self.keys_max = keys_max
        self.records_max = records_max
        self.clock = clock
        self.left_out = 0  # refusals not recorded because one like them was, lately
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (host, code) -> (recorded at, left out since)
        self._recent: collections.deque[float] = collections.deque()  # when the last records were made

    async def record(self, code: str, reason: str, peer: str, principal: str = "") -> None:
        if code not in REFUSAL_CODES:
            return
        host = peer.rsplit(":", 1)[0]
        key, now = (host, code), self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            self.left_out += 1
            return
        while self._recent and now - self._recent[0] >= self.interval_s:
            self._recent.popleft()
        if len(self._recent) >= self.records_max:
            self.left_out += 1  # many callers at once: counted, not recorded
            return
        self._recent.append(now)
        if last is not None and last[1]:
            reason = f"{reason} ({last[1]} more like it from {host} since the last record were not recorded)"
        self._last.pop(key, None)
        while len(self._last) >= self.keys_max:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        if principal:
            set_principal(principal)
        await self.refusals.record("Sync", code, reason, RequestNote(asked=(("replicate", ""),)), peer)


class PeerHeads(NamedTuple):
    """What a peer last said it holds of each chain, and what this node found comparing."""

    reported_ms: int  # this node's wall clock when it heard
    heads: dict[str, tuple[int, bytes, int]]  # origin -> (seq, digest, own dot counter)
    problems: dict[str, str]  # origin -> what differs ("" entries are not kept)


def compare_head(store: LmdbStore, origin: str, seq: int, head: bytes, last: int) -> str:
    """ "" when this node's copy agrees with a peer's head of ``origin`` (or cannot tell yet); else what differs.

    The peer's head is its record ``seq`` of the chain, which sits under the
    dot ``origin:last``. This node compares it when it holds that dot's
    record; a node that has not reached it yet has nothing to compare.
    """
    if store.context.vv.get(origin) < last and not store.context.contains(Dot(origin, last)):
        return ""
    record = store.audit_record_at(origin, last)
    if record is None or record.last != last:
        floor = store.audit_floor(origin)
        if floor is not None and last <= floor.last:
            return ""  # trimmed here after export
        return f"the peer holds record {seq} of {origin} at event {last}; this node has no record there"
    if record.seq != seq or record.digest() != head:
        return (
            f"the peer's record {seq} of {origin} (event {last}) hashes to {head.hex()[:16]}; this node's record "
            f"there is {record.seq}, hashing to {record.digest().hex()[:16]}: one copy of the history was altered"
        )
    return ""


class AuditHeads:
    """Chain heads on replication acknowledgements, both ways, compared off the stream's path.

    Every ``interval_s`` (and on the first acknowledgement of each stream)
    this node puts the head of every chain it holds on its next
    acknowledgement to each peer (``SyncAck.audit_heads``). What a peer
    says is compared with this node's copy of the same record; a
    difference is counted (Status ``audit_head_mismatches``, the metric
    ``crdtstore_audit_head_mismatches``) and logged at error level, once
    per peer and origin until it clears. ``AuditVerify`` reports the last
    comparison with each peer.
    """

    def __init__(self, store: LmdbStore, metrics: NodeMetrics | None, interval_s: float, wall_ms: Callable[[], int]):
        self._store = store
        self._metrics = metrics
        self.interval_s = interval_s
        self._wall_ms = wall_ms
        self._outgoing = b""
        self._read_at = -math.inf
        self._owed: set[str] = set()
        self._comparing: set[str] = set()
        self.peers: dict[str, PeerHeads] = {}
        self.mismatches = 0

    def new_stream(self, peer: str) -> None:
        self._owed.add(peer)

    def stamp(self, peer: str, message: rpb.SyncMessage) -> None:
        """Put this node's heads on ``message`` if it is an acknowledgement and ``peer`` is owed them."""
        if message.WhichOneof("body") != "ack":
            return
        now = time.monotonic()
        if now - self._read_at >= self.interval_s:
            heads = self._store.audit_heads_at()
            self._outgoing = msgpack.packb({o: list(h) for o, h in heads.items()}, use_bin_type=True)
            self._read_at = now
            self._owed.update(self.peers)
        if peer in self._owed and self._outgoing:
            message.ack.audit_heads = self._outgoing
            self._owed.discard(peer)

    def received(self, peer: str, message: rpb.SyncMessage) -> Coroutine[Any, Any, None] | None:
        if message.WhichOneof("body") != "ack" or not message.ack.audit_heads or peer in self._comparing:
            return None
        self._comparing.add(peer)
        return self._compare(peer, message.ack.audit_heads)

    async def _compare(self, peer: str, raw: bytes) -> None:
        try:
            try:
                heads = _parse_heads(raw)
            except (ValueError, TypeError, msgpack.UnpackException):
                log.warning("peer %s sent audit chain heads that do not decode; ignored", peer)
                return
            store = self._store
            found = await asyncio.to_thread(
                lambda: {o: compare_head(store, o, seq, h, last) for o, (seq, h, last) in heads.items()}
            )
            problems = {o: p for o, p in found.items() if p}
            before = self.peers.get(peer)
            for origin, problem in problems.items():
                if before is None or origin not in before.problems:
                    self.mismatches += 1
                    if self._metrics is not None:
                        self._metrics.audit_head_mismatches.inc()
                    log.error("audit chain head mismatch with peer %s: %s (run crdtstore audit verify)", peer, problem)
            self.peers[peer] = PeerHeads(self._wall_ms(), heads, problems)
        finally:
            self._comparing.discard(peer)


def _parse_heads(raw: bytes) -> dict[str, tuple[int, bytes, int]]:
    decoded = msgpack.unpackb(raw, raw=False)
    if not isinstance(decoded, dict):
        raise ValueError("not a map")
    heads: dict[str, tuple[int, bytes, int]] = {}
    for origin, value in decoded.items():
        seq, head, last = value
        if not isinstance(origin, str) or not isinstance(seq, int) or not isinstance(head, bytes):
            raise ValueError("not a head")
        if not isinstance(last, int):
            raise ValueError("not a head")
        heads[origin] = (seq, head, last)
    return heads

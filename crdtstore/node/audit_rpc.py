"""The audit trail's Admin RPCs: AuditLog, AuditVerify, AuditExport, AuditExported (docs/audit.md).

Every region holds every region's chain as ordinary data (records under
``"\\x00audit/<origin>\\x00<dot>"``), so each RPC reads the chains from the
store:

- ``AuditLog`` merges the chains into causal order (``region`` selects the
  chains of a region by its name, or one chain by its origin, ``eu#4f1c...``). Each chain is monotonic
  in hybrid logical time (a region's clock never goes back, and a request's
  record carries its timestamp), so a k-way merge by (hlc wall ms, logical,
  origin, seq) gives the order, newest last. The page token is the position
  reached in every chain (the dot of the last record taken), so the next
  page resumes each chain exactly. A ``since`` bound seeks each chain by a
  binary search over its dots instead of reading it from the start, and a
  page reads at most ``_SCAN_MAX`` records whatever the filters, so a filter
  that matches little returns short (even empty) pages with a token rather
  than working without bound; and holds about 1 MiB of records at most, so
  records of very large batches never make a message too large.
- ``AuditVerify`` checks every chain in one read transaction (records,
  vector and the node's own head agree), off the event loop, and adds what
  the peers last said of their heads (``crdtstore.node.audit.AuditHeads``).
  Every configured peer is listed: one that has not reported its heads, or
  not within ``STALE_REPORTS`` times ``[replication] audit_heads_ms`` (or
  ``anti_entropy_ms``, if longer: heads ride on acknowledgements), comes
  as one entry with ``not_compared`` set and a ``problem`` saying why
  (``peer_heads``): a partitioned peer does not make verify fail,
  and nobody reads its silence as agreement.
- ``AuditExport`` streams the records of a time range, chain by chain, in
  chunks bounded in bytes, then each chain's last exported record.
- ``AuditExported`` moves the export marks retention needs
  (``crdtstore.node.audit_retention``): per chain, the last record known to
  be in a durable archive. Marks only move contiguously: an export counts
  for a chain only if it starts at or before the chain's first record not
  yet exported, so a gap in the archive never lets retention drop a record.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import heapq
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import msgpack

from crdtstore.audit.export import iso_time
from crdtstore.audit.record import AuditError, AuditRecord, decode, parse_record_key, record_key
from crdtstore.node.requests import abort
from crdtstore.storage import LmdbStore
from crdtstore.storage.keys import lmdb_key
from crdtstore.v1 import kv_pb2 as pb

if TYPE_CHECKING:
    from crdtstore.node.audit import PeerHeads
    from crdtstore.node.service import NodeState

__all__ = ["AuditService", "ChainCursor", "log_page", "mark_exported", "peer_heads", "record_pb", "seek"]

PAGE_DEFAULT = 100
PAGE_MAX = 1000
_SCAN_MAX = 10_000  # records one AuditLog page reads at most, matched or not
_PAGE_BYTES_MAX = 1024 * 1024  # encoded record bytes one AuditLog page holds at most (past its first record)
_READ_CHUNK = 256  # records read from a chain at a time
_EXPORT_CHUNK_BYTES = 1024 * 1024  # encoded record bytes per AuditExport message (about)
_TOKEN_VERSION = 1
# A peer's report of its heads older than this many audit_heads_ms intervals is not a comparison any more.
STALE_REPORTS = 3


def record_pb(record: AuditRecord) -> pb.AuditRecord:
    """The record as the API shows it: its fields, its hash and its one encoding."""
    return pb.AuditRecord(
        origin=record.origin,
        region=record.region,
        seq=record.seq,
        prev=record.prev,
        hash=record.digest(),
        first=record.first,
        last=record.last,
        hlc_wall_ms=record.hlc_wall_ms,
        hlc_logical=record.hlc_logical,
        wall_ms=record.wall_ms,
        kind=record.kind,
        principal=record.principal,
        request_id=record.request_id,
        method=record.method,
        peer=record.peer,
        idempotency_key=record.idempotency_key,
        operations=[
            pb.AuditOperation(key=op.key, kind=op.kind, amount=op.amount, value_sha256=op.value_sha256)
            for op in record.operations
        ],
        durability=record.durability,
        token=record.token,
        code=record.code,
        reason=record.reason,
        encoded=record.encode(),
    )


# -- reading chains ---------------------------------------------------------------------------


@dataclass
class ChainCursor:
    """One chain read forward from a position (the dot of the last record passed), a chunk at a time."""

    store: LmdbStore
    origin: str
    position: int
    _buffer: list[tuple[int, bytes]] = field(default_factory=list)
    _exhausted: bool = False
    _next: tuple[int, AuditRecord | None] | None = None  # the next record, once decoded

    def peek(self) -> tuple[int, AuditRecord | None] | None:
        """The next record as (its dot, the record or None when it does not decode); None at the end."""
        if self._next is not None:
            return self._next
        if not self._buffer and not self._exhausted:
            after = lmdb_key(record_key(self.origin, self.position))
            chunk = self.store.audit_raw(origin=self.origin, after=after, limit=_READ_CHUNK)
            self._exhausted = len(chunk) < _READ_CHUNK
            self._buffer = [(parse_record_key(key)[1], raw) for key, raw in reversed(chunk)]
        if not self._buffer:
            return None
        at, raw = self._buffer[-1]
        try:
            self._next = (at, decode(raw))
        except AuditError:
            self._next = (at, None)
        return self._next

    def advance(self) -> None:
        at, _ = self._buffer.pop()
        self.position = at
        self._next = None


def seek(store: LmdbStore, origin: str, since_ms: int, head_last: int | None = None) -> int:
    """The position in ``origin``'s chain just before its first record with ``hlc_wall_ms >= since_ms``.

    A binary search over the chain's dots (records are in dot order and their
    timestamps grow along the chain): about log2(records) single-record reads.
    ``head_last``: the chain's newest record's dot, when the caller has it.
    """
    first = store.audit_record_from(origin, 0)
    if since_ms <= 0 or first is None or first.hlc_wall_ms >= since_ms:
        return 0
    if head_last is None:
        head_last = store.audit_heads_at().get(origin, (0, b"", first.last))[2]
    lo, hi = first.last, head_last
    head = store.audit_record_from(origin, hi)
    if head is None or head.hlc_wall_ms < since_ms:
        return hi  # every record is older
    # Invariant: the record from lo is older than since_ms; the record from hi is not.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        record = store.audit_record_from(origin, mid)
        if record is not None and record.hlc_wall_ms >= since_ms:
            hi = mid
        else:
            lo = mid
    return hi - 1


def encode_page_token(positions: dict[str, int]) -> str:
    raw = msgpack.packb([_TOKEN_VERSION, positions], use_bin_type=True)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_page_token(token: str) -> dict[str, int]:
    """The positions a page token holds; ValueError if it is not one."""
    try:
        version, positions = msgpack.unpackb(base64.urlsafe_b64decode(token.encode("ascii")), raw=False)
    except (ValueError, TypeError, binascii.Error, msgpack.UnpackException) as exc:
        raise ValueError(f"the page token is not one AuditLog gave: {exc}") from None
    if version != _TOKEN_VERSION or not isinstance(positions, dict):
        raise ValueError("the page token is not one this node's AuditLog gives")
    if not all(isinstance(o, str) and isinstance(p, int) and p >= 0 for o, p in positions.items()):
        raise ValueError("the page token is not one this node's AuditLog gives")
    return positions


def _matches(record: AuditRecord, request: pb.AuditLogRequest) -> bool:
    if request.principal and record.principal != request.principal:
        return False
    return not request.key or any(op.key == request.key for op in record.operations)


def _of_region(origin: str, region: str) -> bool:
    """Whether ``AuditLog``'s ``region`` selects ``origin``'s chain: a region's name, or one origin exactly."""
    if not region:
        return True
    if "#" in region:
        return origin == region
    return origin.partition("#")[0] == region


def log_page(store: LmdbStore, request: pb.AuditLogRequest) -> tuple[list[AuditRecord], str]:
    """One page of ``AuditLog``: the records and the next page's token ("" on the last page)."""
    limit = min(request.limit or PAGE_DEFAULT, PAGE_MAX)
    positions = decode_page_token(request.page_token) if request.page_token else {}
    heads = store.audit_heads_at()
    origins = [o for o in heads if _of_region(o, request.region)]
    cursors: dict[str, ChainCursor] = {}
    heap: list[tuple[tuple[int, int, str, int], str]] = []
    for origin in origins:
        position = positions.get(origin)
        if position is None:
            position = seek(store, origin, request.since_ms, heads[origin][2])
        positions[origin] = position
        cursor = cursors[origin] = ChainCursor(store, origin, position)
        _push(heap, cursor)
    out: list[AuditRecord] = []
    scanned = size = 0
    while heap and len(out) < limit and scanned < _SCAN_MAX and size < _PAGE_BYTES_MAX:
        order, origin = heap[0]
        if request.until_ms and order[0] >= request.until_ms:
            heap.clear()  # the oldest record left is past the bound: so is every other
            break
        heapq.heappop(heap)
        cursor = cursors[origin]
        found = cursor.peek()
        assert found is not None
        record = found[1]
        cursor.advance()
        positions[origin] = cursor.position
        scanned += 1
        if record is not None and _matches(record, request):
            out.append(record)
            size += len(record.encode())
        _push(heap, cursor)
    return out, encode_page_token(positions) if heap else ""


def _push(heap: list[tuple[tuple[int, int, str, int], str]], cursor: ChainCursor) -> None:
    """Queue ``cursor``'s next record (skipping ahead of any that do not decode: verify reports those)."""
    while (found := cursor.peek()) is not None:
        record = found[1]
        if record is not None:
            heapq.heappush(heap, ((record.hlc_wall_ms, record.hlc_logical, record.origin, record.seq), cursor.origin))
            return
        cursor.advance()


def peer_heads(
    configured: Iterable[str], heard: Mapping[str, PeerHeads], now_ms: int, stale_ms: int
) -> list[pb.AuditPeerHead]:
    """``AuditVerify``'s peers: every head each peer reported, and an entry for each peer not compared.

    A configured peer that never reported its heads, or whose last report is
    older than ``stale_ms``, is one entry with ``not_compared``, no
    ``origin``, ``agrees`` true (nothing is known to differ) and a
    ``problem`` that says why; a stale report's mismatches are kept (history found altered
    stays found), its agreements are not (they are old news).
    """
    out: list[pb.AuditPeerHead] = []
    for peer in sorted({*configured, *heard}):
        report = heard.get(peer)
        if report is None:
            problem = f"no heads reported by peer {peer}: not compared"
            out.append(pb.AuditPeerHead(peer=peer, agrees=True, problem=problem, not_compared=True))
            continue
        stale = now_ms - report.reported_ms > stale_ms
        for origin, (seq, head, _) in sorted(report.heads.items()):
            problem = report.problems.get(origin, "")
            if stale and not problem:
                continue
            out.append(
                pb.AuditPeerHead(
                    peer=peer,
                    origin=origin,
                    seq=seq,
                    hash=head,
                    agrees=not problem,
                    problem=problem,
                    reported_ms=report.reported_ms,
                )
            )
        if stale:
            age_s = (now_ms - report.reported_ms) / 1000
            out.append(
                pb.AuditPeerHead(
                    peer=peer,
                    agrees=True,
                    problem=f"no heads reported by peer {peer} for {age_s:.0f} s (the last at "
                    f"{iso_time(report.reported_ms)}; more than {STALE_REPORTS} report intervals): "
                    "not compared since",
                    reported_ms=report.reported_ms,
                    not_compared=True,
                )
            )
    return out


def export_records(store: LmdbStore, origin: str, since_ms: int, until_ms: int) -> Iterator[AuditRecord]:
    """``origin``'s records with ``since_ms <= hlc_wall_ms < until_ms``, in chain order (AuditError if one is bad)."""
    cursor = ChainCursor(store, origin, seek(store, origin, since_ms))
    while (found := cursor.peek()) is not None:
        at, record = found
        if record is None:
            raise AuditError(
                f"the record of {origin} at event {at} does not decode: the trail was altered here "
                "(crdtstore audit verify names it); nothing past it can be exported"
            )
        if record.hlc_wall_ms >= until_ms:
            return
        cursor.advance()
        yield record


# -- export marks -----------------------------------------------------------------------------


def mark_exported(
    store: LmdbStore, since_ms: int, through_ms: int, heads: dict[str, tuple[int, bytes, int]]
) -> tuple[dict[str, tuple[int, int]], int]:
    """The export marks once an export of ``[since_ms, through_ms)`` is stored; and when every record before is.

    ``heads``: the export's last record of each chain, (seq, hash, dot); a
    head that is not a record this node holds (another seq or hash at that
    dot) is not taken, and a chain the export names no head of does not
    move. A chain's mark moves only when the export started at or before
    the chain's first record not yet exported (contiguity).
    """
    through_ms = min(through_ms, store.wall_ms())
    marks = store.audit_exported()
    for origin in store.audit_origins():
        seq_mark, last_mark = marks.get(origin, (0, 0))
        pending = store.audit_record_from(origin, last_mark + 1)
        if pending is None or (since_ms > pending.hlc_wall_ms and since_ms > 0):
            continue  # nothing left to export, or the export left a gap before it
        # Only a chain whose head the export names moves (found in review: an export that held no record
        # sent no heads, and was taken to hold every record before its end).
        if origin not in heads:
            continue
        seq, head, last = heads[origin]
        held = store.audit_record_at(origin, last)
        if held is None or held.last != last or held.seq != seq or held.digest() != head:
            continue
        if seq > seq_mark:
            marks[origin] = (seq, last)
    exported_through = through_ms
    for origin in store.audit_origins():
        pending = store.audit_record_from(origin, marks.get(origin, (0, 0))[1] + 1)
        if pending is not None:
            exported_through = min(exported_through, pending.hlc_wall_ms)
    return marks, exported_through


# -- the service ------------------------------------------------------------------------------


class AuditService:
    def __init__(self, node: NodeState) -> None:
        self.node = node

    async def AuditLog(
        self, request: pb.AuditLogRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuditLogResponse:
        if request.until_ms and request.since_ms >= request.until_ms:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "since_ms must be before until_ms")
        try:
            records, token = await asyncio.to_thread(log_page, self.node.store, request)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.AuditLogResponse(records=[record_pb(r) for r in records], next_page_token=token)

    async def AuditVerify(
        self, request: pb.AuditVerifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuditVerifyResponse:
        reports = await asyncio.to_thread(self.node.store.audit_chain_reports)
        chains = [
            pb.AuditChain(
                origin=r.origin,
                records=r.records,
                head_seq=r.head_seq,
                head_hash=r.head_hash,
                findings=[pb.AuditFinding(origin=f.origin, at=f.at, seq=f.seq, problem=f.problem) for f in r.findings],
            )
            for r in reports
        ]
        config = self.node.config
        peers = peer_heads(
            config.peers,
            self.node.replicator.audit_heads.peers,
            self.node.store.wall_ms(),
            # Heads ride on acknowledgements, which a quiet stream sends once per anti_entropy_ms.
            STALE_REPORTS * max(config.replication.audit_heads_ms, config.replication.anti_entropy_ms),
        )
        ok = all(r.ok for r in reports) and all(p.agrees for p in peers)
        return pb.AuditVerifyResponse(ok=ok, chains=chains, peers=peers)

    async def AuditExport(
        self, request: pb.AuditExportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.AuditExportChunk]:
        store = self.node.store
        since_ms, until_ms = request.since_ms, request.until_ms or store.wall_ms()
        if since_ms >= until_ms:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "since_ms must be before until_ms (and now)")
        heads: list[pb.AuditChainHead] = []
        self.node.audit_exports += 1  # this node's retention waits until the export ends
        try:
            for origin in await asyncio.to_thread(store.audit_origins):
                records = export_records(store, origin, since_ms, until_ms)
                newest: AuditRecord | None = None
                while True:
                    try:
                        chunk = await asyncio.to_thread(_take_bytes, records, _EXPORT_CHUNK_BYTES)
                    except AuditError as exc:
                        await abort(context, grpc.StatusCode.DATA_LOSS, str(exc))
                    if not chunk:
                        break
                    # A chain is read a page at a time: a peer's retention may drop records between two
                    # pages. An export with a hole would not verify; the caller runs it again (found in review).
                    expected = (newest.seq + 1) if newest is not None else chunk[0].seq
                    if any(r.seq != expected + i for i, r in enumerate(chunk)):
                        await abort(
                            context,
                            grpc.StatusCode.ABORTED,
                            f"the records of {origin} do not follow each other from record {expected}: retention "
                            f"dropped some while the export read them (run it again), or they are missing (run "
                            f"audit verify)",
                        )
                    newest = chunk[-1]
                    yield pb.AuditExportChunk(records=[record_pb(r) for r in chunk])
                if newest is not None:
                    heads.append(
                        pb.AuditChainHead(origin=origin, seq=newest.seq, hash=newest.digest(), last=newest.last)
                    )
        finally:
            self.node.audit_exports -= 1
        yield pb.AuditExportChunk(heads=heads, done=True, through_ms=until_ms)

    async def AuditExported(
        self, request: pb.AuditExportedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuditExportedResponse:
        if not request.through_ms or request.since_ms >= request.through_ms:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "through_ms must be set, and after since_ms")
        store, writer = self.node.store, self.node.writer
        heads = {h.origin: (h.seq, bytes(h.hash), h.last) for h in request.heads}
        marks, through = await asyncio.to_thread(mark_exported, store, request.since_ms, request.through_ms, heads)
        await writer.call(functools.partial(store.put_audit_exported, marks))
        return pb.AuditExportedResponse(exported_through_ms=through)


def _take_bytes(records: Iterator[AuditRecord], bytes_max: int) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    size = 0
    for record in records:
        out.append(record)
        size += len(record.encode())
        if size >= bytes_max:
            break
    return out

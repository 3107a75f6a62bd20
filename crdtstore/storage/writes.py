"""Local writes: client requests committed in batches, each with its log entry and idempotency record.

Everything a write changes (the keys, the log entry, the context, the clock's
mark, the idempotency record) is written in one write transaction, so a crash
leaves all of it or none. ``write_batch`` takes many client requests and
commits them in that one transaction, with one fsync (LMDB's default
``sync=True``; acknowledged means fsynced; only the simulator's throwaway
stores turn sync off, ``StorageOptions.sync``). Each request inside the batch is still all-or-nothing on its own: it is
computed in memory first and written only if every operation in it is valid.

Idempotency records (``idem``, with its expiry index ``idem_time``) are
bounded by age and count; each batch's housekeeping removes the excess.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeGuard

import lmdb
import msgpack

from crdtstore.audit.record import OpSummary, summarize
from crdtstore.crdt import (
    CausalContext,
    CodecError,
    Dot,
    HybridLogicalClock,
    KeyState,
    Register,
    RegisterWrite,
    StoreMap,
    Timestamp,
    TypeMismatch,
    ValueType,
    VersionVector,
    decode_as,
    encode,
    encode_register_write,
    encode_register_writes,
)
from crdtstore.operations import (
    AddMembers,
    DeleteKey,
    Operation,
    RemoveMembers,
    SetRegister,
    apply_operations,
    fingerprint,
)
from crdtstore.storage.audit import AuditTrail, RefusalRecorded, RequestInfo, Sealed, refusal_code
from crdtstore.storage.delta_log import DeltaLog, _log_value
from crdtstore.storage.environment import _META_HLC, _META_HORIZON, _META_LOG_BYTES
from crdtstore.storage.errors import (
    CommitFailed,
    DataCorruption,
    IdempotencyConflict,
    KeyTooLarge,
    StorageError,
    StoreFull,
)
from crdtstore.storage.feed import KIND_SET, FeedIndex, FeedRecord, changes_of
from crdtstore.storage.keys import lmdb_key
from crdtstore.storage.records import KeyRecord, SetRecords, decode_record, plain_record


@dataclass(frozen=True)
class WriteRequest:
    operations: Sequence[Operation]
    idempotency_key: bytes = b""
    # Who asked, and how, for its audit record (``crdtstore.storage.audit``); with ``info.refused``
    # the request was refused before it reached the writer, and only its record is written.
    info: RequestInfo | None = None


@dataclass(frozen=True)
class Applied:
    token: CausalContext  # the context right after this request: its causal token
    replayed: bool = False


@dataclass(frozen=True)
class Failed:
    error: Exception  # TypeMismatch, IdempotencyConflict, StoreFull, ValueError


Result = Applied | Failed


def refusal_recorded(result: Result) -> bool:
    """Whether ``result`` is a refusal whose audit record its batch wrote (with auditing on).

    Every refusal in a batch is recorded in the batch's transaction, but for
    ``StoreFull`` and ``CommitFailed``: that transaction could not commit, so
    nothing of it was written, the record neither; the caller records a
    ``StoreFull`` apart (a record is small, and may still fit). A
    ``CommitFailed`` is the node's failure, not a refusal: answered INTERNAL.
    """
    return isinstance(result, Failed) and not isinstance(result.error, StoreFull | CommitFailed)


@dataclass
class _Batch:
    """What one write transaction has done so far, so requests in it see each other."""

    origin: str  # what its writes mint under
    context: CausalContext
    log_bytes: int
    next_seq: int
    feed_seq: int  # the change feed's next record number
    chain: list[object]  # the audit chain's running head: [origin, seq, digest]
    trimmed: dict[str, int] = field(default_factory=dict)
    replies: dict[bytes, tuple[bytes, Applied]] = field(default_factory=dict)


class LocalWrites(DeltaLog, FeedIndex, AuditTrail):
    """``write_batch`` and what one batch's transaction does."""

    # How long the last batch's commit took: LMDB writes its pages and fsyncs as the transaction closes (metrics).
    last_sync_s: float = 0.0
    # Whether the last batch wrote anything (an applied request, or only audit records): replication has news.
    last_batch_wrote: bool = False

    if TYPE_CHECKING:
        # Defined by ``LmdbStore``, which keeps the store's origin: a batch may be the first to mint under a new one.
        def _new_origin(self, txn: lmdb.Transaction) -> str: ...
        def _took_incarnation(self, previous: str, reason: str) -> None: ...

    def write_batch(self, requests: Sequence[WriteRequest], clock: HybridLogicalClock) -> list[Result]:
        """Apply every request in one transaction and one fsync; one result per request.

        On a full map the map grows and the batch is retried; when it cannot
        grow, each request is retried alone so that the ones that fit still
        land, and the rest fail with ``StoreFull``.
        """
        while True:
            try:
                return self._commit(requests, clock)
            except lmdb.MapFullError:
                if self._grow():
                    continue
                if len(requests) == 1:
                    return [Failed(StoreFull(self._full_message()))]
                return [self.write_batch([r], clock)[0] for r in requests]
            except lmdb.DiskError as exc:
                return [Failed(StoreFull(f"the disk is full or failing: {exc}"))] * len(requests)

    def _commit(self, requests: Sequence[WriteRequest], clock: HybridLogicalClock) -> list[Result]:
        results: list[Result] = []
        now_ms = self._wall_ms()
        retire = self._retire_reason
        with self.env.begin(write=True) as txn:
            # A new incarnation is recorded in the transaction of the first batch that mints under it,
            # and is this store's only once that commits (a batch retried after a full map takes another).
            origin = self.origin if retire is None else self._new_origin(txn)
            first_seq = self._next_seq(txn)
            batch = _Batch(
                origin,
                self._context_in(txn),
                self._log_bytes,
                first_seq,
                self._feed_next_seq(txn),
                list(self._audit_head),
            )
            for request in requests:
                results.append(self._apply_one(txn, batch, request, clock, now_ms))
            self.last_batch_wrote = wrote = batch.next_seq > first_seq
            if wrote:
                # Remove at least twice what this batch could add, so the
                # bounds hold however large batches get.
                budget = max(self.config.options.housekeeping_per_batch_max, 2 * len(requests))
                self._housekeeping(txn, batch, now_ms, budget)
                self._put_context(txn, batch.context)
                txn.put(_META_HLC, encode(clock.high_water), db=self.meta)
                txn.put(_META_LOG_BYTES, str(batch.log_bytes).encode(), db=self.meta)
                if batch.trimmed:
                    horizon = self._horizon.join(VersionVector(batch.trimmed))
                    txn.put(_META_HORIZON, encode(horizon), db=self.meta)
                if batch.chain[1]:
                    self._put_audit_head(txn, batch.chain)
            applied_at = time.perf_counter()
        # The transaction committed (and fsynced) when the with-block closed: that is what this times.
        self.last_sync_s = time.perf_counter() - applied_at
        if retire is not None:
            if self._retire_reason is retire:
                self._retire_reason = None
            previous, self.origin = self.origin, batch.origin
            self._took_incarnation(previous, retire)
        if batch.trimmed:
            self._horizon = horizon
        self._context = batch.context
        self._audit_head = (str(batch.chain[0]), int(batch.chain[1]), bytes(batch.chain[2]))  # type: ignore[call-overload]
        self._hlc_mark = clock.high_water
        self._log_bytes = batch.log_bytes
        return results

    def _apply_one(
        self,
        txn: lmdb.Transaction,
        batch: _Batch,
        request: WriteRequest,
        clock: HybridLogicalClock,
        now_ms: int,
    ) -> Result:
        idem_key = request.idempotency_key
        ops = request.operations
        audit = self.audit_enabled
        info = request.info
        if info is not None and info.resume_chain:
            if audit:
                self._resume_chain(txn, batch, clock, now_ms, request)
            return Applied(batch.context)
        if info is not None and info.refused is not None:
            if audit:
                code, reason = info.refused
                self._audit_only(txn, batch, clock, now_ms, request, kind="refused", code=code, reason=reason)
            return Failed(RefusalRecorded(info.refused[1]))
        print_ = fingerprint(ops) if idem_key else b""
        if idem_key:
            previous = batch.replies.get(idem_key) or self._stored_reply(txn, idem_key)
            if previous is not None:
                stored_print, applied = previous
                if stored_print != print_:
                    refused = IdempotencyConflict("this idempotency key was used for a different request")
                    if audit:
                        code = refusal_code(refused)
                        self._audit_only(
                            txn, batch, clock, now_ms, request, kind="refused", code=code, reason=str(refused)
                        )
                    return Failed(refused)
                if audit:
                    self._audit_only(txn, batch, clock, now_ms, request, kind="replay", token=encode(applied.token.vv))
                return Applied(applied.token, replayed=True)
        note = _AuditNote(request, summarize(ops)) if audit else None
        written = self._write_registers(txn, batch, ops, clock, now_ms, note=note) if _registers_only(ops) else None
        if written is None:
            written = self._write_general(txn, batch, ops, clock, now_ms, note=note)
        if isinstance(written, Failed):
            if audit:
                error = written.error
                self._audit_only(
                    txn, batch, clock, now_ms, request, kind="refused", code=refusal_code(error), reason=str(error)
                )
            return written
        context, last, log_value, (changes, hlc) = written
        self._logged(txn, batch, last, log_value, now_ms=now_ms, hlc=hlc, changes=changes)
        batch.context = context
        applied = Applied(context)
        if idem_key:
            record = msgpack.packb([now_ms, print_, encode(context)])
            txn.put(idem_key, record, db=self.idem)
            txn.put(now_ms.to_bytes(8, "big") + idem_key, b"", db=self.idem_time)
            batch.replies[idem_key] = (print_, applied)
        return applied

    def _logged(
        self,
        txn: lmdb.Transaction,
        batch: _Batch,
        last: int,
        log_value: bytes,
        *,
        now_ms: int,
        hlc: tuple[int, int] | None,
        changes: Sequence[tuple[str, int]],
    ) -> None:
        """Append a request's entry (its events end at ``last``) to the delta log and the change feed."""
        origin = batch.origin
        self._append_log(txn, batch.next_seq, origin, last, log_value)
        batch.next_seq += 1
        before = batch.context.vv
        change = FeedRecord(batch.feed_seq, origin, before.get(origin) + 1, last, now_ms, hlc, changes)
        self._feed_append(txn, change, before)
        batch.feed_seq += 1
        batch.log_bytes += len(log_value)

    def _resume_chain(
        self, txn: lmdb.Transaction, batch: _Batch, clock: HybridLogicalClock, now_ms: int, request: WriteRequest
    ) -> None:
        """Auditing is back on: one ``resumed`` record covers the events this origin minted without records.

        Worked out in the batch's transaction, so it follows whatever the
        batch wrote before it; nothing is written when no event lacks a record.
        """
        origin = batch.origin
        if batch.chain[0] != origin or not batch.chain[1]:
            return  # no chain of this origin yet (or a new incarnation): its first record starts one
        newest = self._newest_record_in(txn, origin)
        held = batch.context.vv.get(origin)
        if newest is None or held <= newest.last:
            return
        reason = (
            f"auditing was off (storage.audit = false): the events {newest.last + 1}..{held} of {origin} "
            f"have no records of their own"
        )
        self._audit_only(txn, batch, clock, now_ms, request, kind="resumed", reason=reason, first=newest.last + 1)

    def _audit_only(
        self,
        txn: lmdb.Transaction,
        batch: _Batch,
        clock: HybridLogicalClock,
        now_ms: int,
        request: WriteRequest,
        *,
        kind: str,
        token: bytes = b"",
        code: str = "",
        reason: str = "",
        first: int = 0,
    ) -> None:
        """Write an audit-only entry: the record of a request that changed nothing, under a dot of its own.

        ``first``: the record covers the events from there to its own (a
        ``resumed`` record, after events minted without records).

        Bounded whatever the request held (found in review: the record of a
        refused request of millions of operations outgrew what one
        replication message carries, and stopped replication): at most
        ``_REFUSED_OPERATIONS_MAX`` operations (the reason says how many
        there were), keys, idempotency key and principal cut short.
        """
        origin = batch.origin
        dot = batch.context.next_dot(origin)
        timestamp = clock.now()
        info = request.info
        ops = request.operations
        count = len(ops) or (len(info.asked) if info else 0)
        summaries = _summaries(ops[:_REFUSED_OPERATIONS_MAX]) or (info.asked if info else ())[:_REFUSED_OPERATIONS_MAX]
        summaries = tuple(op._replace(key=op.key[:_RECORDED_CHARS_MAX]) for op in summaries)
        if count > len(summaries):
            reason = f"{reason} ({count} operations; the first {len(summaries)} are recorded)"
        if info is not None and len(info.principal) > _RECORDED_CHARS_MAX:
            info = replace(info, principal=info.principal[:_RECORDED_CHARS_MAX])
        sealed = self._seal_record(
            batch.chain,
            origin=origin,
            first=first or dot.counter,
            last=dot.counter,
            timestamp=timestamp,
            now_ms=now_ms,
            kind=kind,
            info=info,
            idempotency_key=request.idempotency_key[:_RECORDED_CHARS_MAX],
            operations=summaries,
            token=token,
            code=code,
            reason=reason,
        )
        self._put_record(txn, batch.chain, sealed)
        delta = sealed.delta()
        log_value = _log_value(origin, dot.counter, dot.counter, delta, source="", arrived_ms=now_ms)
        self._logged(
            txn, batch, dot.counter, log_value, now_ms=now_ms, hlc=(timestamp.wall_ms, timestamp.logical), changes=[]
        )
        batch.context = batch.context.add(dot)

    def _write_general(
        self,
        txn: lmdb.Transaction,
        batch: _Batch,
        operations: Sequence[Operation],
        clock: HybridLogicalClock,
        now_ms: int,
        *,
        note: _AuditNote | None,
    ) -> tuple[CausalContext, int, bytes, _FeedNote] | Failed:
        """Any request: the touched keys read, the operations applied to them, the new states written.

        Returns the context after the request, its last dot's counter, its
        log entry and what the change feed records of it, or why it failed
        (having written nothing).
        """
        keys = sorted({op.key for op in operations})
        # A key the batch does not delete is read for the members it names alone (``records``).
        named = _members_named(operations)
        records = self._records(txn)
        loaded: dict[str, tuple[KeyState | None, KeyRecord | None]] = {}
        try:
            for k in keys:
                record, members = records.record(lmdb_key(k)), named.get(k)
                if record is None:
                    loaded[k] = (None, None)
                    continue
                if members is None and (refused := self._delete_too_large(records, record)) is not None:
                    return refused
                if members is not None and (other := records.member_besides(record, members)) is not None:
                    # A live member the batch does not name keeps the set non-empty whatever the batch
                    # does: with it the key's type reads as it would whole. (Any member at all would
                    # not: the batch may remove it, and the set would read empty.)
                    members = named[k] = members | {other}
                loaded[k] = (records.assemble(record, members), record)
        except (CodecError, StorageError) as exc:
            return Failed(DataCorruption(f"a stored key of this request cannot be read: {exc}"))
        window = StoreMap({k: s for k, (s, _) in loaded.items() if s is not None}, batch.context)
        try:
            after, delta = apply_operations(window, operations, batch.origin, clock)
        except (TypeMismatch, ValueError, TypeError) as exc:
            return Failed(exc)
        bodies: dict[str, bytes] = {}
        for key in keys:
            state = after.entries.get(key)
            if state is not None and not state.is_bottom():
                # A set's members are records of their own: the bound is on the rest of the key.
                others = state if ValueType.SET not in state.slots else _without_set(state)
                bodies[key] = value = encode(others)
                if len(value) > self.config.options.key_state_bytes_max:
                    return Failed(_too_large(key, len(value), self.config.options.key_state_bytes_max))
        # The batch's own dots are the contiguous run first..last of this
        # node's origin (every operation mints at least one); replication sends
        # entries per origin in that order, and a peer has an entry once its
        # version vector reaches ``last``. The source is "" for local writes
        # and the sending peer for relayed ones (provenance).
        origin = batch.origin
        first = batch.context.vv.get(origin) + 1
        last = after.context.max_counter(origin)
        assert last >= first, "a batch mints at least one dot"
        latest = delta.latest_timestamp()
        changes = changes_of(delta)
        sealed = None
        if note is not None:
            # The record is the batch's last write: its dot ends the run, and the token it names includes it.
            last += 1
            timestamp = clock.now()
            token = after.context.add(Dot(origin, last))
            sealed = note.seal(
                self,
                batch.chain,
                origin=origin,
                first=first,
                last=last,
                timestamp=timestamp,
                now_ms=now_ms,
                token=token,
            )
            delta = StoreMap({**delta.entries, **sealed.delta().entries}, delta.context.add(sealed.dot))
            after = StoreMap(after.entries, token)
            latest = timestamp
        log_value = _log_value(origin, first, last, delta, source="", arrived_ms=now_ms)
        if len(log_value) > self.config.options.log_entry_bytes_max:
            # A delete names every member of a set (so that every region removes them): a set of
            # millions is emptied in batches of removes first.
            deleted = [op.key for op in operations if isinstance(op, DeleteKey)]
            big = [k for k in deleted if (r := loaded[k][1]) is not None and r.members > 0]
            return self._log_too_big(
                len(log_value),
                f"remove the members of {big[0]!r} in batches first (srem), then delete it" if big else "",
            )
        # Checked above, written now: a refused request writes nothing.
        if sealed is not None:
            self._put_record(txn, batch.chain, sealed)
        allocate = self._set_ids(txn)
        for key in keys:
            state, stored = after.entries.get(key) or KeyState(), loaded[key][1]
            records.store(key, state, stored, allocate=allocate, members=named.get(key), others_body=bodies.get(key))
        hlc = None if latest is None else (latest.wall_ms, latest.logical)
        return after.context, last, log_value, (changes, hlc)

    def _write_registers(
        self,
        txn: lmdb.Transaction,
        batch: _Batch,
        operations: Sequence[SetRegister],
        clock: HybridLogicalClock,
        now_ms: int,
        *,
        note: _AuditNote | None,
    ) -> tuple[CausalContext, int, bytes, _FeedNote] | Failed | None:
        """Register writes to distinct keys that hold nothing or a register alone, written directly.

        What ``_write_general`` computes for such a request, without building
        a key state, a window or a delta object per key: each key's new state
        is its one new version, so its record and the request's delta are
        encoded straight from the writes (``encode_register_write(s)``, the
        same bytes). None when the request is not of that kind (a key written
        twice, a key holding another type, a stored key that does not decode):
        nothing has been written or stamped then, and the general path takes it.
        """
        data = self.data
        targets: list[tuple[bytes, Iterable[Dot]]] = []  # each key's LMDB key, and the versions its write supersedes
        for op in operations:
            db_key = lmdb_key(op.key)
            raw = txn.get(db_key, db=data)
            if raw is None:
                targets.append((db_key, ()))
                continue
            try:
                record = decode_record(db_key, bytes(raw))
                state = decode_as(record.body, KeyState)
            except (CodecError, StorageError):
                return None
            register = state.slots.get(ValueType.REGISTER)
            if record.set_id or len(state.slots) != 1 or type(register) is not Register:
                return None
            targets.append((db_key, register.entries.keys()))
        if len(targets) != len({db_key for db_key, _ in targets}):
            return None
        origin = batch.origin
        first = batch.context.max_counter(origin) + 1
        writes: list[RegisterWrite] = []
        bodies: list[bytes] = []
        dots: list[Dot] = []
        state_max = self.config.options.key_state_bytes_max
        for counter, op in enumerate(operations, first):
            dot = Dot(origin, counter)
            write = (op.key, dot, clock.now(), op.value)
            body = encode_register_write(dot, write[2], write[3])
            if len(body) > state_max:
                return Failed(_too_large(op.key, len(body), state_max))
            writes.append(write)
            bodies.append(body)
            dots.append(dot)
        superseded = [dot for _, old in targets for dot in old]
        newest = writes[-1][2]  # the clock's last reading: the newest
        last = dots[-1].counter
        sealed = None
        token: CausalContext | None = None
        if note is not None:
            # The record is the batch's last write: its dot ends the run, and the token it names includes it.
            last += 1
            newest = clock.now()
            token = batch.context.add_run(origin, first, last)
            sealed = note.seal(
                self, batch.chain, origin=origin, first=first, last=last, timestamp=newest, now_ms=now_ms, token=token
            )
            dots.append(sealed.dot)
        logged = writes if sealed is None else [*writes, sealed.write()]
        log_value = _log_value(
            origin,
            first,
            last,
            encode_register_writes(logged, CausalContext.from_dots(dots + superseded)),
            source="",
            arrived_ms=now_ms,
        )
        if len(log_value) > self.config.options.log_entry_bytes_max:
            return self._log_too_big(len(log_value), "")
        if sealed is not None:
            self._put_record(txn, batch.chain, sealed)
        for (db_key, _), (key, _, _, _), body in zip(targets, writes, bodies, strict=True):
            txn.put(db_key, plain_record(key, body), db=data)
        keys = sorted(op.key for op in operations) if len(operations) > 1 else [operations[0].key]
        feed = ([(key, KIND_SET) for key in keys], (newest.wall_ms, newest.logical))
        context = token if token is not None else batch.context.add_run(origin, first, last)
        return context, last, log_value, feed

    def _delete_too_large(self, records: SetRecords, record: KeyRecord) -> Failed | None:
        """Refuse, before reading it whole, the delete of a set too large to name every member of.

        A delete names every member of the key's set in its delta (so that
        every region removes what this one saw). Counting each member at
        its name's bytes and two more (its delta holds at least that), a set
        whose names already pass ``log_entry_bytes_max`` cannot be in one
        replication message: it is refused without being loaded (memory would
        grow with the set), having read at most that many bytes of names.
        """
        if record.members <= _LOAD_BEFORE_CHECKING_MEMBERS:
            return None
        limit = self.config.options.log_entry_bytes_max
        at_least = 3 * record.members  # a name of one byte at least
        if at_least <= limit:
            at_least = 0
            for _, member, _ in records.member_stream(record.set_id):
                at_least += len(member.encode("utf-8")) + 2
                if at_least > limit:
                    break
            else:
                return None
        advice = f"remove the members of {record.key!r} in batches first (srem), then delete it"
        return self._log_too_big(at_least, advice, at_least=True)

    def _log_too_big(self, size: int, advice: str, *, at_least: bool = False) -> Failed:
        return Failed(
            KeyTooLarge(
                f"the request's change is {'at least ' if at_least else ''}{size} bytes, more than one replication "
                f"message carries ({self.config.options.log_entry_bytes_max}, log_entry_bytes_max): "
                f"{advice or 'split it into smaller batches'}"
            )
        )

    def _stored_reply(self, txn: lmdb.Transaction, idem_key: bytes) -> tuple[bytes, Applied] | None:
        raw = txn.get(idem_key, db=self.idem)
        if raw is None:
            return None
        _, print_, token = msgpack.unpackb(raw)
        return print_, Applied(decode_as(token, CausalContext))

    def _housekeeping(self, txn: lmdb.Transaction, batch: _Batch, now_ms: int, budget: int) -> None:
        # Expired or excess idempotency records, oldest first.
        expire_before = now_ms - self.config.options.idempotency_ttl_s * 1000
        excess = txn.stat(self.idem)["entries"] - self.config.options.idempotency_records_max
        cursor = txn.cursor(db=self.idem_time)
        while budget and cursor.first():
            stamp = int.from_bytes(cursor.key()[:8], "big")
            if stamp >= expire_before and excess <= 0:
                break
            txn.delete(cursor.key()[8:], db=self.idem)
            cursor.delete()
            excess -= 1
            budget -= 1
        batch.log_bytes = self._bound_log(txn, batch.log_bytes, batch.trimmed, budget)


@dataclass(frozen=True, slots=True)
class _AuditNote:
    """What a request's record says besides where its events fall (``AuditTrail._audit_write``)."""

    request: WriteRequest
    operations: tuple[OpSummary, ...]

    def seal(
        self,
        trail: AuditTrail,
        chain: list[object],
        *,
        origin: str,
        first: int,
        last: int,
        timestamp: Timestamp,
        now_ms: int,
        token: CausalContext,
    ) -> Sealed:
        """The record of this request, written as events ``origin:first..last`` with ``token`` after them."""
        return trail._seal_record(
            chain,
            origin=origin,
            first=first,
            last=last,
            timestamp=timestamp,
            now_ms=now_ms,
            kind="write",
            info=self.request.info,
            idempotency_key=self.request.idempotency_key,
            operations=self.operations,
            token=encode(token.vv),  # the token as Mutate answers it
        )


def _summaries(operations: Sequence[Operation]) -> tuple[OpSummary, ...]:
    try:
        return summarize(operations)
    except (TypeError, AttributeError):  # a malformed request refused before it was parsed whole
        return ()


# A record of a request that changed nothing (refused, or a replay) names at most this many of its
# operations, and cuts keys, the idempotency key and the principal to this many characters (bytes).
_REFUSED_OPERATIONS_MAX = 100
_RECORDED_CHARS_MAX = 1024

# What the change feed records of a request: each key with what it did to it, and its newest register timestamp.
_FeedNote = tuple[list[tuple[str, int]], tuple[int, int] | None]

# A set of at most this many members is read whole for a delete (its delta's size is then known exactly).
_LOAD_BEFORE_CHECKING_MEMBERS = 10_000


def _registers_only(operations: Sequence[Operation]) -> TypeGuard[Sequence[SetRegister]]:
    return all(type(op) is SetRegister for op in operations)


def _too_large(key: str, size: int, limit: int) -> KeyTooLarge:
    return KeyTooLarge(
        f"key {key[:60]!r} would hold {size} bytes; a key holds at most {limit} (key_state_bytes_max): "
        f"remove members or spread the data over more keys"
    )


def _members_named(operations: Sequence[Operation]) -> dict[str, set[str]]:
    """Per key, the members a batch names, for the keys it does not delete (a delete names every member).

    Such a key is read for those members alone (and one more: see ``_write_general``).
    """
    named: dict[str, set[str]] = {}
    deleted: set[str] = set()
    for op in operations:
        if isinstance(op, AddMembers | RemoveMembers):
            named.setdefault(op.key, set()).update(op.members)
        elif isinstance(op, DeleteKey):
            deleted.add(op.key)
        else:
            named.setdefault(op.key, set())
    return {k: members for k, members in named.items() if k not in deleted}


def _without_set(state: KeyState) -> KeyState:
    return KeyState({t: slot for t, slot in state.slots.items() if t != ValueType.SET})

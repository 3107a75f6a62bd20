"""Group commit: one writer thread turns many concurrent requests into one transaction and one fsync.

Callers on the event loop ``await submit(request)``. The writer thread takes
the first waiting request, then everything else that queued up while the
previous commit was being fsynced (up to ``batch_requests_max``), commits them
in one LMDB write transaction, and answers every caller. There is no
artificial delay: under light load a batch is one request and its latency is
one fsync; under heavy load batches grow by themselves and the fsync is shared.

LMDB allows one write transaction at a time and wants it on one thread, so all
writes happen on this thread, and so does every use of the hybrid logical
clock that stamps them. Other writes (deltas from peers, log trims) come as
jobs (``call``): the thread commits the client batch it has gathered, then
runs the job, in arrival order.

Backpressure: at most ``pending_requests_max`` requests wait at once; further
callers wait for a place (their deadline still applies), so memory stays
bounded however fast clients send. A place is given back when its request is
answered, on the event loop, in the same callback that answers the batch.

``on_commit`` (set by the node to the replicator's ``local_committed``) runs
on the event loop once per batch that applied something new, before its
callers are answered: replication hears of a batch once, not once per request.

A caller that gives up (deadline, cancellation) does not withdraw its request:
it may still be applied. That is why mutations carry idempotency keys.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from crdtstore.crdt import HybridLogicalClock
from crdtstore.node import tracing
from crdtstore.node.metrics import NodeMetrics
from crdtstore.storage import Applied, Failed, LmdbStore, WriteRequest
from crdtstore.storage.audit import RefusalRecorded
from crdtstore.storage.errors import CommitFailed
from crdtstore.storage.lmdb_store import Result

log = logging.getLogger("crdtstore.writer")

__all__ = ["GroupCommitWriter"]

T = TypeVar("T")
_Item = tuple[WriteRequest, "asyncio.Future[Result]"]


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


class GroupCommitWriter:
    def __init__(
        self,
        store: LmdbStore,
        clock: HybridLogicalClock,
        *,
        batch_requests_max: int = 1024,
        pending_requests_max: int = 16_384,
        metrics: NodeMetrics | None = None,
    ) -> None:
        if batch_requests_max < 1 or pending_requests_max < 1:
            raise ValueError("batch_requests_max and pending_requests_max must be positive")
        self._store = store
        self._clock = clock
        self._batch_requests_max = batch_requests_max
        self._queue: queue.SimpleQueue[_Item | _Job | None] = queue.SimpleQueue()
        self._places = asyncio.Semaphore(pending_requests_max)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="crdtstore-writer", daemon=True)
        self._closed = False
        # Runs on the event loop once per committed batch that wrote something (a request, or audit records).
        self.on_commit: Callable[[], None] | None = None
        self.batches_committed = 0
        self.requests_committed = 0
        self._metrics = metrics
        # With tracing on: the timing of the commit that answered each waiting future, until its caller reads it.
        self._timings: dict[int, _Timing] = {}
        if metrics is not None:
            pending_max = pending_requests_max
            # Read at scrape time: the places taken are the requests and jobs queued or being committed.
            metrics.writer_queue_depth.set_function(lambda: pending_max - self._places._value)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def submit(self, request: WriteRequest) -> Result:
        future: asyncio.Future[Result] = await self._place()
        traced = tracing.active()
        if traced is None:
            self._queue.put((request, future))
            # A caller that gives up cancels only its wait: the writer answers (and frees the place) regardless.
            return await future
        queued_ns = time.time_ns()
        self._queue.put((request, future))
        result = await future
        timing = self._timings.pop(id(future), None)
        if timing is not None:
            _trace_commit(traced, queued_ns, timing)
        return result

    def try_submit(self, request: WriteRequest) -> Awaitable[Result] | None:
        """``submit`` when a place is free now and the writer is open; None otherwise (nothing queued)."""
        if self._closed or self._places.locked():
            return None
        return self.submit(request)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread, between client batches; its result or exception comes back."""
        future: asyncio.Future[T] = await self._place()
        self._queue.put(_Job(fn, future))
        return await future

    async def _place(self) -> asyncio.Future[Any]:
        """Wait for a place in the queue; the future that answers the item put there."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        loop = self._loop
        assert loop is not None, "start() first"
        await self._places.acquire()
        # The place is given back when the item is answered (``_answer``), not
        # when the caller stops waiting: a caller that gives up leaves its
        # request queued, and the bound must still count it.
        return loop.create_future()

    async def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # -- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        job: _Job | None = None
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Job):
                self._run_job(item)
                continue
            batch = [item]
            while len(batch) < self._batch_requests_max:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                if isinstance(more, _Job):
                    job = more
                    break
                batch.append(more)
            self._commit(batch)
            if job is not None:
                self._run_job(job)
                job = None

    def _run_job(self, job: _Job) -> None:
        loop = self._loop
        assert loop is not None
        try:
            result = job.fn()
        except BaseException as exc:  # the caller hears of it, whatever it is
            loop.call_soon_threadsafe(self._answer_job, job.future, None, exc)
        else:
            loop.call_soon_threadsafe(self._answer_job, job.future, result, None)

    def _commit(self, batch: Sequence[_Item]) -> None:
        metrics = self._metrics
        started = time.perf_counter() if metrics is not None else 0.0
        traced = tracing.active() is not None
        started_ns = time.time_ns() if traced else 0
        wrote = False
        try:
            results = self._store.write_batch([request for request, _ in batch], self._clock)
            wrote = self._store.last_batch_wrote
        except Exception as exc:  # an LMDB failure nobody planned for: every caller hears of it
            log.exception("a batch of %d requests failed to commit", len(batch))
            failure = CommitFailed(f"the write failed: {exc!r}")
            failure.__cause__ = exc
            results = [Failed(failure)] * len(batch)
        else:
            self.batches_committed += 1
            self.requests_committed += len(batch)
        if metrics is not None:
            _observe_commit(metrics, time.perf_counter() - started, self._store.last_sync_s, results)
        loop = self._loop
        assert loop is not None
        timing = _Timing(started_ns, time.time_ns(), self._store.last_sync_s, len(batch)) if traced else None
        # One wake-up of the event loop for the whole batch, not one per caller.
        loop.call_soon_threadsafe(self._answer, [future for _, future in batch], results, wrote, timing)

    # -- on the event loop -------------------------------------------------------------

    def _answer(
        self,
        futures: Sequence[asyncio.Future[Any]],
        results: Sequence[Result],
        wrote: bool,
        timing: _Timing | None = None,
    ) -> None:
        on_commit = self.on_commit
        if on_commit is not None and wrote:  # an applied request, or audit records alone
            on_commit()
        release = self._places.release
        for future, result in zip(futures, results, strict=True):
            release()
            if not future.done():
                if timing is not None:  # read back by the waiting submit(); a caller that gave up left no waiter
                    self._timings[id(future)] = timing
                future.set_result(result)

    def _answer_job(self, future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
        self._places.release()
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


class _Timing(NamedTuple):
    """When a group commit started and ended (unix ns), how long its fsync took, and how many requests it held."""

    started_ns: int
    ended_ns: int
    sync_s: float
    requests: int


def _trace_commit(traced: tracing.Tracing, queued_ns: int, timing: _Timing) -> None:
    """The writer's part of a traced Mutate: queue wait, commit, and the fsync that ends it."""
    parent = traced.current()
    traced.record("queue wait", parent, queued_ns, timing.started_ns, {})
    attributes = {"crdtstore.batch.requests": timing.requests}
    traced.record("commit", parent, timing.started_ns, timing.ended_ns, attributes)
    sync_ns = int(timing.sync_s * 1e9)
    traced.record("fsync", parent, max(timing.started_ns, timing.ended_ns - sync_ns), timing.ended_ns, attributes)


# Failure reasons as labels: a fixed list (bounded cardinality), whatever else fails is "other".
_FAILURE_REASONS = {
    "TypeMismatch": "type_mismatch",
    "IdempotencyConflict": "idempotency_conflict",
    "StoreFull": "store_full",
    "KeyTooLarge": "key_too_large",
    "DataCorruption": "data_corruption",
    "ValueError": "invalid",
    "TypeError": "invalid",
}


def _observe_commit(metrics: NodeMetrics, seconds: float, sync_s: float, results: Sequence[Result]) -> None:
    """One group commit in the metrics: its size, duration and fsync, replays, and failures by kind."""
    metrics.write_batch_requests.observe(len(results))
    metrics.write_commit_duration.observe(seconds)
    metrics.fsync_duration.observe(sync_s)
    replays = 0
    for result in results:
        if isinstance(result, Applied):
            replays += result.replayed
        elif not isinstance(result.error, RefusalRecorded):  # the record of a refusal counted where it was refused
            metrics.write_failures.labels(_FAILURE_REASONS.get(type(result.error).__name__, "other")).inc()
    if replays:
        metrics.idempotent_replays.inc(replays)

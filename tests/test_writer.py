"""Group commit: requests that queue during a commit share the next transaction and fsync."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from crdtstore.crdt import HybridLogicalClock
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.operations import Increment
from crdtstore.storage import Applied, LmdbStore, StorageConfig, WriteRequest
from crdtstore.storage.lmdb_store import Result
from crdtstore.testing.clock import FakeClock


class GatedStore(LmdbStore):
    """Holds the first commit until told, so the next requests must queue behind it."""

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def write_batch(self, requests: Sequence[WriteRequest], clock: HybridLogicalClock) -> list[Result]:
        self.entered.set()
        self.gate.wait(timeout=30)
        self.batch_sizes.append(len(requests))
        return super().write_batch(requests, clock)


def test_requests_queued_during_a_commit_share_one_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = GatedStore(StorageConfig(tmp_path / "s", "eu"))
        writer = GroupCommitWriter(store, HybridLogicalClock(FakeClock()), batch_requests_max=64)
        writer.start()
        first = asyncio.create_task(writer.submit(WriteRequest([Increment("n", 1)])))
        await asyncio.to_thread(store.entered.wait, 30)
        rest = [asyncio.create_task(writer.submit(WriteRequest([Increment("n", 1)]))) for _ in range(100)]
        # One turn of the loop runs every new task up to its first await,
        # which is after it has queued its request: no timing involved.
        await asyncio.sleep(0)
        assert writer._queue.qsize() == 100
        store.gate.set()
        results = await asyncio.gather(first, *rest)
        await writer.close()
        assert all(isinstance(r, Applied) for r in results)
        assert store.batch_sizes == [1, 64, 36], "everything that queued went in full batches"
        state = store.get("n")
        assert state is not None
        read = state.read()
        assert read is not None
        assert read.value == 101
        store.close()

    asyncio.run(scenario())


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LmdbStore(StorageConfig(tmp_path / "s", "eu"))
        writer = GroupCommitWriter(store, HybridLogicalClock(FakeClock()))
        writer.start()
        tasks = [asyncio.create_task(writer.submit(WriteRequest([Increment("n", 1)]))) for _ in range(50)]
        await asyncio.sleep(0)
        await writer.close()
        results = await asyncio.gather(*tasks)
        assert all(isinstance(r, Applied) for r in results)
        assert writer.requests_committed == 50
        store.close()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_still_holds_its_place(tmp_path: Path) -> None:
    """Regression (review): cancelled callers freed their place while their request stayed queued."""

    async def scenario() -> None:
        store = GatedStore(StorageConfig(tmp_path / "s", "eu"))
        writer = GroupCommitWriter(store, HybridLogicalClock(FakeClock()), pending_requests_max=4)
        writer.start()
        tasks = [asyncio.create_task(writer.submit(WriteRequest([Increment("n", 1)]))) for _ in range(10)]
        await asyncio.sleep(0)
        await asyncio.to_thread(store.entered.wait, 30)  # the first request is in the (held) commit
        for task in tasks[:4]:  # the four that got places give up
            task.cancel()
        await asyncio.gather(*tasks[:4], return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0)
        in_commit = 1
        assert writer._queue.qsize() + in_commit <= 4, "the six others still wait: the four requests are queued"
        store.gate.set()
        await asyncio.gather(*tasks[4:])
        await writer.close()
        state = store.get("n")
        assert state is not None
        assert state.read() is not None
        assert state.read().value == 10  # type: ignore[union-attr]
        store.close()

    asyncio.run(scenario())


class FailingStore(LmdbStore):
    """A commit that fails in a way nobody planned for (a bug, or LMDB itself)."""

    def write_batch(self, requests: Sequence[WriteRequest], clock: HybridLogicalClock) -> list[Result]:
        raise ValueError("something inside the commit")


def test_regression_a_commit_that_fails_unplanned_is_the_nodes_failure_not_a_recorded_refusal(
    tmp_path: Path,
) -> None:
    """Found in review: such a failure came back as ``Failed(ValueError)``: answered INVALID_ARGUMENT (the
    caller's fault) and taken as a refusal its batch had recorded, though the batch wrote nothing."""
    from crdtstore.storage import Failed
    from crdtstore.storage.errors import CommitFailed
    from crdtstore.storage.writes import refusal_recorded

    async def scenario() -> Result:
        store = FailingStore(StorageConfig(tmp_path / "s", "eu"))
        writer = GroupCommitWriter(store, HybridLogicalClock(FakeClock()))
        writer.start()
        try:
            return await writer.submit(WriteRequest([Increment("n", 1)]))
        finally:
            await writer.close()
            store.close()

    result = asyncio.run(scenario())
    assert isinstance(result, Failed) and isinstance(result.error, CommitFailed)
    assert isinstance(result.error.__cause__, ValueError)
    assert not refusal_recorded(result)

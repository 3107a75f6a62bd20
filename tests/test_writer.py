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
        await asyncio.sleep(0)  # let every task enqueue
        for _ in range(100):
            if all(t.done() for t in rest) or writer._queue.qsize() >= 100:
                break
            await asyncio.sleep(0.01)
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

"""A node stops when asked, whatever it was doing, and says where it is stuck when it cannot.

The regressions here were found by CI and by a review of the drain
(``crdtstore.node.main.run_node``, after ``stop``):

- On Python 3.11, ``asyncio.wait_for`` returns the inner result when the
  outer task is cancelled in the same turn the inner one completes: the
  cancellation is lost. The replication tick loop waited with it; closing the
  replicator ended the streams, which woke the tick loop, and cancelled it in
  the same turn; the tick loop went on waiting for its next tick, forever, and
  ``close`` waited for it (the backup benchmark's node never exited).
- The store was closed under reads still running on threads (a backup's copy,
  a page whose request had been cancelled): a use after close.
- A Backup call cancelled twice (the client gone, then the server stopping)
  closed its copy's generator while the copy was still running, and freed the
  one-backup slot with a copy under way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtstore.backup import rpc as backup_rpc
from crdtstore.crdt import HybridLogicalClock
from crdtstore.node.config import NodeConfig
from crdtstore.node.main import _ShutdownWatch, _stop_signal
from crdtstore.node.replication import Replicator
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.operations import SetRegister
from crdtstore.storage import Applied, LmdbStore, StorageConfig, WriteRequest
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.waits import wait_for
from crdtstore.v1 import kv_pb2

# Only bounds a run that hangs; nothing is asserted about how soon anything returns.
BOUND_S = 10.0


def _replicator(tmp_path: Path) -> tuple[Replicator, GroupCommitWriter, LmdbStore]:
    # The peer's address is never dialled: region "b" sorts after "a", and "a" dials.
    config = NodeConfig.load(
        flags={"region": "b", "data_dir": str(tmp_path / "b"), "listen": "127.0.0.1:0"},
        peer_flags=["a=127.0.0.1:9"],
        environ={},
    )
    store = LmdbStore(StorageConfig(tmp_path / "b", "b"))
    clock = HybridLogicalClock(FakeClock())
    writer = GroupCommitWriter(store, clock)
    writer.start()
    return Replicator(config, store, writer, clock), writer, store


def test_regression_close_ends_the_tick_loop_woken_in_the_same_turn(tmp_path: Path) -> None:
    async def scenario() -> None:
        replicator, writer, store = _replicator(tmp_path)
        try:
            replicator.start()
            for _ in range(20):  # the tick loop runs its first round and waits for the next
                await asyncio.sleep(0)
            replicator._wake.set()  # what a stream ending does, as close() ends them
            closing = asyncio.ensure_future(replicator.close())
            # asyncio.wait, not a timeout on close(): cancelling close() would cancel the stuck task too, and
            # hide the bug.
            done, _ = await asyncio.wait({closing}, timeout=BOUND_S)
            stuck = [task.get_name() for task in replicator._tasks if not task.done()]
            assert closing in done, f"close() did not return; still running: {stuck}"
            closing.result()
            assert stuck == []
        finally:
            await writer.close()
            store.close()

    asyncio.run(scenario())


def test_a_drain_that_overruns_names_its_step_and_the_pending_tasks(caplog: pytest.LogCaptureFixture) -> None:
    async def drain() -> None:
        stuck = asyncio.Event()
        waiter = asyncio.ensure_future(stuck.wait())
        waiter.set_name("a stuck task")
        with _ShutdownWatch(limit_s=0.05) as watch:
            watch.step("ending replication streams")
            await asyncio.wait([waiter], timeout=0.5)  # the watch fires in here
        waiter.cancel()

    with caplog.at_level(logging.INFO, logger="crdtstore.node"):
        asyncio.run(drain())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "stuck at: ending replication streams" in errors[0]
    assert "a stuck task:" in errors[0] and "wait" in errors[0]


def test_the_first_stop_signal_drains_and_a_second_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr("crdtstore.node.main.os._exit", exits.append)
    monkeypatch.setattr("crdtstore.node.main.faulthandler.dump_traceback", lambda **_: None)
    stop = asyncio.Event()
    received = _stop_signal(stop)
    received()
    assert stop.is_set() and exits == []
    received()
    assert exits == [1]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    opened = LmdbStore(StorageConfig(tmp_path / "data", "eu"))
    (result,) = opened.write_batch([WriteRequest([SetRegister("k", b"v")])], HybridLogicalClock(FakeClock()))
    assert isinstance(result, Applied)
    yield opened
    opened.close()  # a second close does nothing


def test_regression_the_store_closes_only_once_the_reads_under_way_have_finished(store: LmdbStore) -> None:
    holding, release = threading.Event(), threading.Event()
    read: list[Any] = []

    def reader() -> None:  # a read on a thread whose request was cancelled: nobody waits for it
        try:
            with store._gate.read(), store.env.begin(db=store.data) as txn:
                holding.set()
                release.wait(BOUND_S)
                read.append(sum(1 for _ in txn.cursor()))
        except Exception as exc:
            read.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=store.close)]
    threads[0].start()
    assert holding.wait(BOUND_S)
    threads[1].start()
    # Either the close waits for the read (it holds the gate back), or it has already closed under it.
    wait_for(lambda: store._gate._exclusive or not threads[1].is_alive(), "the close began", BOUND_S)
    release.set()
    for thread in threads:
        thread.join(BOUND_S)
    assert read == [1], f"the read saw the store closed under it: {read}"


def test_regression_a_backup_cancelled_twice_closes_its_copy_only_once_it_has_stopped(store: LmdbStore) -> None:
    copying, finish = threading.Event(), threading.Event()
    closed_while_running: list[bool] = []

    def slow_copy(_store: LmdbStore, _chunk_bytes: int) -> Iterator[bytes]:
        try:
            copying.set()
            finish.wait(BOUND_S)  # the copy: it cannot be interrupted
            yield b"chunk"
        finally:
            closed_while_running.append(not finish.is_set())

    async def scenario() -> None:
        async def seen(_vector: object, _timeout_s: float) -> bool:
            return True

        service = backup_rpc.BackupService(store, seen)
        context: Any = None  # not used unless the call is refused

        async def client() -> None:
            async for _ in service.backup(kv_pb2.BackupRequest(), context):
                pass

        call = asyncio.ensure_future(client())
        await asyncio.to_thread(copying.wait, BOUND_S)
        call.cancel()  # the client went away
        for _ in range(5):
            await asyncio.sleep(0)
        call.cancel()  # and the server stops
        for _ in range(5):
            await asyncio.sleep(0)
        finish.set()  # the copy ends in its own time
        await asyncio.wait({call}, timeout=BOUND_S)
        assert call.done()
        assert closed_while_running == [False]
        assert service._running.acquire(blocking=False), "the backup slot was released"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backup_rpc, "copy_chunks", slow_copy)
        asyncio.run(scenario())

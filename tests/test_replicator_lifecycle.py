"""The replicator's lifecycle in one process: it stops when asked, whatever its tasks were doing.

Regression (found by CI: the backup benchmark's node did not exit after SIGTERM):
on Python 3.11, ``asyncio.wait_for`` returns the inner result when the outer task
is cancelled in the same turn the inner one completes, so a cancellation is lost.
The tick loop waited with it: closing the replicator ended the streams, which
woke the tick loop, and cancelled it in the same turn; the tick loop went on
waiting for its next tick, forever, and ``close`` waited for it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from crdtstore.crdt import HybridLogicalClock
from crdtstore.node.config import NodeConfig
from crdtstore.node.replication import Replicator
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.storage import LmdbStore, StorageConfig
from crdtstore.testing.clock import FakeClock

# Only bounds a run that hangs; nothing is asserted about how soon close returns.
CLOSE_BOUND_S = 10.0


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
            # asyncio.wait, not wait_for: a timeout must not cancel close() (that cancellation would reach the
            # stuck task and end it, and hide the bug).
            done, _ = await asyncio.wait({closing}, timeout=CLOSE_BOUND_S)
            stuck = [task.get_name() for task in replicator._tasks if not task.done()]
            assert closing in done, f"close() did not return; still running: {stuck}"
            closing.result()
            assert stuck == []
        finally:
            await writer.close()
            store.close()

    asyncio.run(scenario())

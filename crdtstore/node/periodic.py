"""Retention passes: a pass every second on the node's event loop, until the node closes.

The change feed's index (``crdtstore.node.feed.FeedRetention``) and the audit
trail (``crdtstore.node.audit_retention.AuditRetention``) are both trimmed
this way: each says when a pass may run (``due``) and what a pass does
(``trim_once``, which goes through the writer); a pass that fails is logged
and tried again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["Periodic"]

log = logging.getLogger("crdtstore.node")


class Periodic:
    what = "a retention pass"  # for the log line of a pass that failed

    def __init__(self, node: NodeState, interval_s: float = 1.0) -> None:
        self.node = node
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.what)
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def due(self) -> bool:
        """Whether this round may run a pass."""
        return True

    async def trim_once(self) -> int:
        """One pass; returns how many records went."""
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.due():
                continue
            try:
                await self.trim_once()
            except Exception:
                log.exception("%s failed; retrying in %g s", self.what, self.interval_s)

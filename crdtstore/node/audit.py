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
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from crdtstore.node.requests import RequestNote, current_principal, current_request_id
from crdtstore.storage import WriteRequest
from crdtstore.storage.audit import RequestInfo

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["RefusalLog"]

log = logging.getLogger("crdtstore.audit")


class RefusalLog:
    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.recorded = 0
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
        )
        pending = node.writer.try_submit(WriteRequest(tuple(note.operations), note.idempotency_key, info))
        if pending is None:
            self.dropped += 1
            if node.metrics is not None:
                node.metrics.audit_refusals_dropped.inc()
            return
        try:
            await pending
        except RuntimeError:  # the writer closed under it
            self.dropped += 1
            return
        self.recorded += 1

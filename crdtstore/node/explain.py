"""Explain: why a key reads as it does, with the audit records of the changes that made it (docs/audit.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from crdtstore.node.requests import abort
from crdtstore.v1 import kv_pb2 as pb

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["ExplainService"]


class ExplainService:
    def __init__(self, node: NodeState) -> None:
        self.node = node

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "not yet")

"""The audit trail's Admin RPCs: AuditLog, AuditVerify, AuditExport, AuditExported (docs/audit.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from crdtstore.node.requests import abort
from crdtstore.v1 import kv_pb2 as pb

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["AuditService"]


class AuditService:
    def __init__(self, node: NodeState) -> None:
        self.node = node

    async def AuditLog(self, request: pb.AuditLogRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "not yet")

    async def AuditVerify(self, request: pb.AuditVerifyRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "not yet")

    async def AuditExport(self, request: pb.AuditExportRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "not yet")

    async def AuditExported(self, request: pb.AuditExportedRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, "not yet")

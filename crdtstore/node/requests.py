"""Request ids, the caller, and per-RPC metrics: what every request carries through the node.

Each RPC gets a request id: the client's ``x-request-id`` metadata when it
sent a usable one (printable ASCII, at most ``REQUEST_ID_MAX`` characters),
or a new one (a uuid4 in hex). The node returns it in the response's
trailing metadata ``x-request-id`` (on errors too), so a client can quote it; while the
request is served it is ``current_request_id()`` for the rest of the node:
every log line carries it (``crdtstore.node.logs``), and so will the audit
record of the request. ``current_principal()`` is the subject of the caller's
token, once access control has authenticated it ("" before, or without
access control).

``serve_rpc`` wraps one handler call: it sets both context variables,
answers the request id, logs a request the node failed (``INTERNAL``,
``UNKNOWN``, ``DATA_LOSS``), and, with metrics on, counts the request by
method and final status code and observes its duration.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc

from crdtstore.node import tracing
from crdtstore.node.metrics import NodeMetrics

__all__ = [
    "REQUEST_ID_HEADER",
    "REQUEST_ID_MAX",
    "current_principal",
    "current_request_id",
    "request_id_from",
    "send_request_id",
    "serve_rpc",
    "set_principal",
]

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_MAX = 128

T = TypeVar("T")

log = logging.getLogger("crdtstore.requests")

# Codes that say the node failed, not the caller: each gets a log line with the request's id.
_SERVER_FAULTS = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})

_request_id: ContextVar[str] = ContextVar("crdtstore_request_id", default="")
_principal: ContextVar[str] = ContextVar("crdtstore_principal", default="")


def current_request_id() -> str:
    """The id of the request being served in this context; "" outside one."""
    return _request_id.get()


def current_principal() -> str:
    """The authenticated caller's subject in this context; "" when unknown (before authentication, or no auth)."""
    return _principal.get()


def set_principal(subject: str) -> None:
    _principal.set(subject)


def _usable(value: str) -> bool:
    return 0 < len(value) <= REQUEST_ID_MAX and value.isascii() and value.isprintable()


def request_id_from(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The client's ``x-request-id`` when usable, else a new uuid4 in hex.

    A client's id that is empty, too long, or holds control or non-ASCII
    characters is not taken (it would end up in log lines and audit
    records): the request gets a new one, which the response tells.
    """
    for name, value in metadata or ():
        if name == REQUEST_ID_HEADER and isinstance(value, str) and _usable(value):
            return value
    return uuid.uuid4().hex


def _code_name(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # grpc.aio keeps the number it was given in some versions
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    return default


async def send_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """For a streaming RPC: the request id in the stream's initial metadata too (once per stream)."""
    await context.send_initial_metadata(((REQUEST_ID_HEADER, current_request_id()),))


async def serve_rpc(
    rpc: str,
    context: grpc.aio.ServicerContext[Any, Any],
    metrics: NodeMetrics | None,
    call: Callable[[], Awaitable[T]],
) -> T:
    """Run ``call`` as the request ``rpc``: its id set and answered, and counted when metrics are on."""
    request_id = request_id_from(context.invocation_metadata())
    _request_id.set(request_id)
    _principal.set("")
    # In the trailing metadata, which travels with the status at no cost: initial metadata sent on its own
    # is one more batch through gRPC's core per request, which took a sixth of a write's throughput here
    # (docs/observability.md, "Request ids and logs"). A streaming handler, which sends initial metadata
    # once per stream anyway, may send it there too (``send_request_id``).
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    traced = tracing.active()
    if traced is not None:
        with traced.server_span(rpc, context.invocation_metadata()):
            return await _counted(rpc, context, metrics, call)
    return await _counted(rpc, context, metrics, call)


async def _counted(
    rpc: str,
    context: grpc.aio.ServicerContext[Any, Any],
    metrics: NodeMetrics | None,
    call: Callable[[], Awaitable[T]],
) -> T:
    started = time.perf_counter()
    code = "OK"
    try:
        return await call()
    except grpc.aio.AbortError:
        code = _code_name(context, "UNKNOWN")
        raise
    except BaseException as exc:  # cancelled by the client, or a bug: gRPC answers CANCELLED or UNKNOWN
        code = "UNKNOWN" if isinstance(exc, Exception) else "CANCELLED"
        raise
    finally:
        if metrics is not None:
            metrics.count_request(rpc, code, time.perf_counter() - started)
        if code in _SERVER_FAULTS:  # the line carries the request id the client was given
            log.warning("%s answered %s", rpc, code)

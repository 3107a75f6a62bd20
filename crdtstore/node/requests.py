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

Refused requests reach the audit trail here too. A refusal goes through
``abort``, which hands it (code, message, and the request's ``RequestNote``)
to the ``recorder`` that ``serve_rpc`` was given before the caller hears the
answer (gRPC sends the status as ``context.abort`` is called). A refusal
inside a write batch is recorded in the batch's own transaction and marked
``recorded``, so it is not recorded twice; a call that ends with a refusal
code (``REFUSAL_CODES``) some other way is recorded as it ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from crdtstore.node import tracing
from crdtstore.node.metrics import NodeMetrics

__all__ = [
    "REFUSAL_CODES",
    "REQUEST_ID_HEADER",
    "REQUEST_ID_MAX",
    "RefusalRecorder",
    "RequestNote",
    "abort",
    "current_note",
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

# What a caller got wrong, as opposed to the node failing or going away: each such answer is audited.
REFUSAL_CODES = frozenset(
    {
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "OUT_OF_RANGE",
    }
)


@dataclass
class RequestNote:
    """What a handler learned of its request, for the audit record of a refusal."""

    operations: Sequence[Any] = ()  # ``crdtstore.operations`` values, once parsed
    asked: Sequence[tuple[str, str]] = ()  # (right, key) the request needs, once worked out
    idempotency_key: bytes = b""
    durability: str = ""
    refusal: tuple[str, str] | None = None  # (code name, message) given to ``abort``
    recorded: bool = False  # the writer wrote the refusal's record in its batch


class RefusalRecorder(Protocol):
    async def __call__(self, rpc: str, code: str, reason: str, note: RequestNote, peer: str) -> None: ...


_request_id: ContextVar[str] = ContextVar("crdtstore_request_id", default="")
_note: ContextVar[RequestNote | None] = ContextVar("crdtstore_request_note", default=None)
_recorder: ContextVar[RefusalRecorder | None] = ContextVar("crdtstore_refusal_recorder", default=None)
_rpc: ContextVar[str] = ContextVar("crdtstore_rpc", default="")
_principal: ContextVar[str] = ContextVar("crdtstore_principal", default="")


def current_request_id() -> str:
    """The id of the request being served in this context; "" outside one."""
    return _request_id.get()


def current_principal() -> str:
    """The authenticated caller's subject in this context; "" when unknown (before authentication, or no auth)."""
    return _principal.get()


def set_principal(subject: str) -> None:
    _principal.set(subject)


def current_note() -> RequestNote:
    """The note of the request being served (a throwaway one outside a request)."""
    note = _note.get()
    return RequestNote() if note is None else note


async def abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and ``message``; a refusal is recorded first, so its caller hears of it after.

    (gRPC sends the status as ``context.abort`` is called, not when the handler returns.)
    """
    note, recorder = _note.get(), _recorder.get()
    if note is not None:
        note.refusal = (code.name, message)
        if recorder is not None and code.name in REFUSAL_CODES and not note.recorded:
            note.recorded = True
            await recorder(_rpc.get(), code.name, message, note, str(context.peer() or ""))
    await context.abort(code, message)
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


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
    recorder: RefusalRecorder | None = None,
) -> T:
    """Run ``call`` as the request ``rpc``: its id set and answered, counted when metrics are on, refusals audited."""
    request_id = request_id_from(context.invocation_metadata())
    _request_id.set(request_id)
    _principal.set("")
    _note.set(RequestNote())
    _recorder.set(recorder)
    _rpc.set(rpc)
    # In the trailing metadata, which travels with the status at no cost: initial metadata sent on its own
    # is one more batch through gRPC's core per request, which took a sixth of a write's throughput here
    # (docs/observability.md, "Request ids and logs"). A streaming handler, which sends initial metadata
    # once per stream anyway, may send it there too (``send_request_id``).
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    traced = tracing.active()
    if traced is not None:
        with traced.server_span(rpc, context.invocation_metadata()):
            return await _counted(rpc, context, metrics, call, recorder)
    return await _counted(rpc, context, metrics, call, recorder)


async def _counted(
    rpc: str,
    context: grpc.aio.ServicerContext[Any, Any],
    metrics: NodeMetrics | None,
    call: Callable[[], Awaitable[T]],
    recorder: RefusalRecorder | None,
) -> T:
    started = time.perf_counter()
    code = "OK"
    try:
        return await call()
    except grpc.aio.AbortError:
        code = _code_name(context, "UNKNOWN")
        note = _note.get()
        if recorder is not None and note is not None and code in REFUSAL_CODES and not note.recorded:
            # Refused without ``abort`` (which records first): recorded all the same, after the answer.
            note.recorded = True
            reason = note.refusal[1] if note.refusal is not None else ""
            await recorder(rpc, code, reason, note, str(context.peer() or ""))
        raise
    except BaseException as exc:  # cancelled by the client, or a bug: gRPC answers CANCELLED or UNKNOWN
        code = "UNKNOWN" if isinstance(exc, Exception) else "CANCELLED"
        raise
    finally:
        if metrics is not None:
            metrics.count_request(rpc, code, time.perf_counter() - started)
        if code in _SERVER_FAULTS:  # the line carries the request id the client was given
            log.warning("%s answered %s", rpc, code)

"""OpenTelemetry traces, optional: ``pip install 'crdtstore[otel]'`` and the standard ``OTEL_*`` variables.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set; then ``start_tracing`` builds a tracer provider that exports spans
over OTLP (``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc``, the default, or
``http/protobuf``; headers, timeouts and certificates from the standard
variables, which the exporter reads itself; ``OTEL_SERVICE_NAME`` defaults
to ``crdtstore``). Without the variables, or without the extra installed,
nothing of OpenTelemetry is imported and every hook here is a test of one
module variable.

Spans:

* every RPC (``crdtstore.v1.KV/Mutate``, ``.../Get``, ...), a server span
  that continues the caller's trace when its metadata carries a W3C
  ``traceparent``;
* inside Mutate: ``validate``, ``queue wait`` (from the request's arrival
  at the writer to the start of its group commit), ``commit`` (the group
  commit, shared by every request in it; ``crdtstore.batch.requests`` says
  how many), ``fsync`` (the commit's transaction closing, pages written and
  synced) and ``replicated wait`` (for ``replicated:N`` durability);
* ``replication apply``: persisting entries a peer sent (attribute
  ``crdtstore.peer``).

The log lines written inside a span carry its ``trace_id`` (``crdtstore.node.logs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Tracing", "active", "enable", "span", "start_tracing"]

log = logging.getLogger("crdtstore.tracing")

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_active: Tracing | None = None


def active() -> Tracing | None:
    """The process's tracing, or None when it is off."""
    return _active


class Tracing:
    """A tracer and the few operations the node's hooks need (imports OpenTelemetry: only when on)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace  # noqa: PLC0415 (the optional extra: imported only when on)

        self._trace = trace
        self._propagate = propagate
        self.provider = provider
        self.tracer = provider.get_tracer("crdtstore")

    @contextlib.contextmanager
    def server_span(self, name: str, metadata: Any) -> Iterator[None]:
        carrier = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
        parent = self._propagate.extract(carrier)
        kind = self._trace.SpanKind.SERVER
        with self.tracer.start_as_current_span(name, context=parent, kind=kind, attributes={"rpc.system": "grpc"}):
            yield

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[None]:
        with self.tracer.start_as_current_span(name, attributes=dict(attributes or {})):
            yield

    def current(self) -> Any:
        """The current span's context, to hang spans on later from elsewhere (``record``)."""
        return self._trace.set_span_in_context(self._trace.get_current_span())

    def record(self, name: str, parent: Any, start_ns: int, end_ns: int, attributes: Mapping[str, Any]) -> None:
        """A span that already happened (measured on the writer thread), under ``parent``."""
        span = self.tracer.start_span(name, context=parent, start_time=start_ns, attributes=dict(attributes))
        span.end(end_time=max(start_ns, end_ns))

    def trace_id(self) -> str:
        context = self._trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else ""


def enable(provider: Any) -> Tracing:
    """Trace with ``provider`` (an SDK ``TracerProvider``) from now on; tests pass one with an in-memory exporter."""
    from crdtstore.node.logs import set_trace_id_source  # noqa: PLC0415 (logs imports requests, which imports this)

    global _active  # noqa: PLW0603 (tracing is process-wide, as OpenTelemetry's provider is)
    _active = tracing = Tracing(provider)
    set_trace_id_source(tracing.trace_id)
    return tracing


def disable() -> None:
    from crdtstore.node.logs import set_trace_id_source  # noqa: PLC0415

    global _active  # noqa: PLW0603
    _active = None
    set_trace_id_source(lambda: "")


def start_tracing(region: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Trace over OTLP when the standard variables ask for it and the extra is installed; None otherwise."""
    env = os.environ if environ is None else environ
    if not any(env.get(name) for name in _ENDPOINT_VARIABLES):
        return None
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: no traces "
            "(pip install 'crdtstore[otel]')"
        )
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]  # noqa: PLC0415
                OTLPSpanExporter,
            )
        else:
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (grpc, http/protobuf): no traces", protocol)
            return None
    except ImportError:
        log.warning("the OTLP exporter for %s is not installed: no traces (pip install 'crdtstore[otel]')", protocol)
        return None
    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or "crdtstore", "crdtstore.region": region}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on: spans go over OTLP (%s)", protocol)
    return enable(provider)


def stop_tracing() -> None:
    """Flush and stop the exporter (at the node's stop)."""
    tracing = _active
    disable()
    if tracing is not None:
        with contextlib.suppress(Exception):
            tracing.provider.shutdown()


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[None]:
    """A child span of the current one when tracing is on; nothing otherwise."""
    tracing = _active
    if tracing is None:
        return contextlib.nullcontext()
    return tracing.span(name, attributes)

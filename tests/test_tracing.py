"""Traces: the spans of a Mutate, a Get and a replication apply; and nothing at all without configuration."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from crdtstore.node import tracing
from crdtstore.node.config import NodeConfig
from crdtstore.node.main import run_node
from crdtstore.operations import SetRegister
from crdtstore.testing.regions import free_port


def test_without_configuration_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys\n"
        "import crdtstore.node.main, crdtstore.node.tracing as t\n"
        "assert t.start_tracing('eu', {}) is None and t.active() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_an_endpoint_without_the_extra_is_a_warning_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the extra were not installed
    assert tracing.start_tracing("eu", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) is None
    assert tracing.active() is None


def test_spans_of_mutate_get_and_the_apply_of_replication(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from crdtstore.client import AsyncClient

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ports = {"a": free_port(), "b": free_port()}
    configs = {
        name: NodeConfig.load(
            flags={"region": name, "data_dir": str(tmp_path / name), "listen": f"127.0.0.1:{ports[name]}"},
            peer_flags=[f"{other}=127.0.0.1:{ports[other]}" for other in ports if other != name],
            environ={},
        )
        for name in ports
    }

    async def scenario() -> None:
        stop = asyncio.Event()
        ready = {name: asyncio.Event() for name in ports}
        nodes = [asyncio.ensure_future(run_node(configs[n], ready=ready[n], stop=stop)) for n in ports]
        try:
            for event in ready.values():
                async with asyncio.timeout(30):
                    await event.wait()
            async with AsyncClient(f"127.0.0.1:{ports['a']}", timeout_s=20) as client:
                await client.mutate([SetRegister("k", b"v")], durability="replicated:2")
                await client.get("k")
        finally:
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.gather(*nodes)

    tracing.enable(provider)
    try:
        asyncio.run(scenario())
    finally:
        tracing.disable()
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    mutate = by_name["Mutate"]
    for child in ("validate", "queue wait", "commit", "fsync", "replicated wait"):
        assert child in by_name, f"no {child} span: {sorted(by_name)}"
        span = by_name[child]
        assert span.parent is not None and span.parent.span_id == mutate.context.span_id, child
        assert span.context.trace_id == mutate.context.trace_id
    assert by_name["commit"].attributes["crdtstore.batch.requests"] == 1  # type: ignore[index]
    assert by_name["fsync"].start_time >= by_name["commit"].start_time  # type: ignore[operator]
    assert by_name["fsync"].end_time == by_name["commit"].end_time
    assert "Get" in by_name
    applies = [span for span in spans if span.name == "replication apply"]
    assert applies and {span.attributes["crdtstore.peer"] for span in applies} == {"a"}  # type: ignore[index]

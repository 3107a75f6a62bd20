"""Metrics on the write path: what exporting Prometheus metrics costs a node's writes.

Two figures, each beside a baseline measured in the same run: single-operation
writes, and batched writes (``BATCH_OPS`` operations per request), to a node
started with ``--metrics-listen`` (every request counted and timed, every
group commit observed, replication counted, scraped once a second as
Prometheus would) against the same writes to a node without it (metrics off:
no registry, every hook skipped). The two nodes are measured in alternation.

Run it from the repository root::

    python -m benchmarks.metrics              # 5 repeats of 5 s per node and kind
    python -m benchmarks.metrics --quick      # 3 repeats of 1 s (about 20 s)

Placement and caveats: ``benchmarks/METHODS.md``, section "metrics".
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio

from benchmarks.common import group_main, process_cpu_s, stats
from benchmarks.figures import Baseline, Figure
from benchmarks.node import CHANNEL_OPTIONS, RPC_TIMEOUT_S, closed_loop
from benchmarks.replication import Keys, single_op_writes
from crdtstore.testing.process import ServerProcess
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

GROUP = "metrics"
SINGLE = "Single-operation writes with metrics on"
BATCHED = "Batched writes with metrics on"
TARGET = ">= 0.95x the same run's writes with metrics off"
BATCH_OPS = 50
SCRAPE_EVERY_S = 1.0

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Config:
    repeats: int
    duration_s: float
    in_flight: int


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(repeats or 3, 1.0, 32)
    return Config(repeats or 5, 5.0, 32)


def batched_writes(keys: Keys, count: int) -> list[pb.MutateRequest]:
    return [
        pb.MutateRequest(
            operations=[pb.Operation(key=key, set=pb.SetRegister(value=b"x" * 64)) for key in keys.take(BATCH_OPS)],
            idempotency_key=uuid.uuid4().bytes,
            durability=pb.DURABILITY_LOCAL,
        )
        for _ in range(count)
    ]


class _Scraper:
    """Scrapes ``/metrics`` every second on a thread, as Prometheus would, while the node is measured."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_EVERY_S):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                response.read()
            self.scrapes += 1

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


async def _writes_per_s(
    server: ServerProcess, requests: Sequence[pb.MutateRequest], cfg: Config
) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request, over one repeat."""
    assert server.proc is not None
    async with grpc.aio.insecure_channel(server.addr, options=CHANNEL_OPTIONS) as channel:
        stub: Any = pb_grpc.KVStub(channel)  # untyped generated code

        async def mutate(request: pb.MutateRequest) -> Any:
            return await stub.Mutate(request, timeout=RPC_TIMEOUT_S)

        await closed_loop(mutate, requests[:50], 50, cfg.in_flight, 1.0)  # warm the connection and the caches
        cpu_s = process_cpu_s(server.proc.pid)
        sample = await closed_loop(mutate, requests[50:], len(requests) - 50, cfg.in_flight, cfg.duration_s)
        cpu_s = process_cpu_s(server.proc.pid) - cpu_s
    return sample.rps, cpu_s / sample.requests * 1e6


def measure(cfg: Config, root: Path, log: Log, step: Log) -> tuple[list[Figure], dict[str, Any]]:
    off = ServerProcess(root / "off", region="off")
    on = ServerProcess(root / "on", region="on", extra_args=("--metrics-listen", "127.0.0.1:0"))
    kinds: dict[str, tuple[str, Callable[[Keys, int], list[pb.MutateRequest]], int]] = {
        "single": (SINGLE, single_op_writes, 20_000),
        "batched": (BATCHED, batched_writes, 2_000),
    }
    rates: dict[str, dict[str, list[float]]] = {kind: {"on": [], "off": []} for kind in kinds}
    cpu_us: dict[str, dict[str, list[float]]] = {kind: {"on": [], "off": []} for kind in kinds}
    scrapes = 0
    with off, on:
        keys = Keys("bench/{:012d}")
        for repeat in range(cfg.repeats):
            for kind, (_, make, per_s) in kinds.items():
                step(f"{kind} writes, repeat {repeat + 1}/{cfg.repeats}")
                count = 50 + int(per_s * cfg.duration_s)
                runs = [("off", off), ("on", on)]
                for name, server in runs if repeat % 2 == 0 else reversed(runs):
                    requests = make(keys, count)
                    if name == "on":
                        with _Scraper(on.metrics_port) as scraper:
                            rate, cpu = asyncio.run(_writes_per_s(server, requests, cfg))
                        scrapes += scraper.scrapes
                    else:
                        rate, cpu = asyncio.run(_writes_per_s(server, requests, cfg))
                    rates[kind][name].append(rate)
                    cpu_us[kind][name].append(cpu)
                log(
                    f"repeat {repeat + 1}, {kind}: {rates[kind]['on'][-1]:,.0f} requests/s with metrics "
                    f"({cpu_us[kind]['on'][-1]:.0f} us of server CPU each), {rates[kind]['off'][-1]:,.0f} without "
                    f"({cpu_us[kind]['off'][-1]:.0f} us)"
                )
    figures = [
        Figure(
            GROUP,
            title,
            f"{'single-operation' if kind == 'single' else f'{BATCH_OPS}-operation'} writes, {cfg.in_flight} in "
            f"flight, to a node with --metrics-listen scraped every {SCRAPE_EVERY_S:g} s",
            stats(rates[kind]["on"], "writes/s" if kind == "single" else "requests/s"),
            cfg.repeats,
            (
                Baseline(
                    "the same writes to a node with metrics off",
                    stats(rates[kind]["off"], "writes/s" if kind == "single" else "requests/s"),
                    cfg.repeats,
                ),
            ),
            target=TARGET,
            better="higher",
            params={"in_flight": cfg.in_flight, "ops_per_request": 1 if kind == "single" else BATCH_OPS},
        )
        for kind, (title, _, _) in kinds.items()
    ]
    return figures, {"rates": rates, "server_cpu_us": cpu_us, "scrapes": scrapes, "in_flight": cfg.in_flight}


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-metrics-") as tmp:
        figures, detail = measure(cfg, Path(tmp), log, step)
    return detail, figures


def main(argv: Sequence[str] | None = None) -> int:
    return group_main(
        GROUP,
        __doc__,
        quick="3 repeats of 1 s",
        repeats="repeats per node and kind (default 5; 3 quick)",
        make_config=make_config,
        collect=collect,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

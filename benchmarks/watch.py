"""The change feed: events delivered to watchers, what watchers cost writers, and how soon a change reaches one.

Figures, each beside a baseline measured in the same run:

* events per second delivered to 1 watcher, and to 10 (all of them
  together), while single-operation writes run at full speed, beside the
  write rate of the same node with no watcher;
* the write rate with 10 watchers, beside the write rate with none (the
  cost of watchers to writers);
* the node's heap growth while a consumer has stopped reading and writers
  go on, beside the same writes with no watcher (the stream is cut; nothing
  is buffered for it);
* commit-to-consumer latency, p50 and p99: from sending a write to one
  region until a watcher of that region receives its event, and until a
  watcher of another region does, beside the time until the other region
  shows the write to a polling reader (the replication lag) and the write's
  own acknowledgement.

The watchers run in a process of their own (``multiprocessing``, spawned),
so that they take CPU from the machine as a real consumer would, not from
this process's load generator; times across the two processes are
``time.monotonic`` (one clock for every process of the machine).

Run it from the repository root::

    python -m benchmarks.watch             # 5 repeats of 5 s for each watcher count, 200 probes
    python -m benchmarks.watch --quick     # 3 repeats of 1 s, 40 probes

Placement and caveats: ``benchmarks/METHODS.md``, section "watch".
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from benchmarks.common import group_main, memory_of, percentile, stats, wait_until
from benchmarks.figures import Baseline, Figure
from benchmarks.node import CHANNEL_OPTIONS, RPC_TIMEOUT_S, closed_loop
from benchmarks.replication import Keys, single_op_writes
from crdtstore.client import AsyncClient, Change, Client, Progress
from crdtstore.testing.process import ServerProcess
from crdtstore.testing.regions import RegionProcesses
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

GROUP = "watch"
DELIVERY = "Change feed: events delivered"
COST = "Change feed: what watchers cost writers"
LATENCY = "Change feed: commit to consumer"
POLL_S = 0.002

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Config:
    repeats: int
    duration_s: float
    in_flight: int
    probes: int
    stalled_writes: int


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(repeats or 3, 1.0, 32, 40, 500)
    return Config(repeats or 5, 5.0, 32, 200, 4000)


# -- the watchers' process ------------------------------------------------------------------


async def _watchers(addresses: Sequence[str], prefix: str, conn: multiprocessing.connection.Connection) -> None:
    """One watch stream per address (from now on); reports each stream's events and first/last arrival."""
    counts = [0] * len(addresses)
    first = [0.0] * len(addresses)
    last = [0.0] * len(addresses)
    arrivals: list[dict[str, float]] = [{} for _ in addresses]
    started = [asyncio.Event() for _ in addresses]

    async def follow(i: int, address: str) -> None:
        async with AsyncClient(address) as kv:
            async for item in kv.watch(prefix, start="now", progress_interval_ms=200):
                if isinstance(item, Progress):
                    started[i].set()
                elif isinstance(item, Change):
                    now = time.monotonic()
                    counts[i] += 1
                    first[i] = first[i] or now
                    last[i] = now
                    if item.key.startswith("probe/"):
                        arrivals[i][item.key] = now

    tasks = [asyncio.create_task(follow(i, a)) for i, a in enumerate(addresses)]
    await asyncio.gather(*(e.wait() for e in started))
    conn.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    conn.send({"counts": counts, "first": first, "last": last, "arrivals": arrivals})


def _watchers_main(addresses: Sequence[str], prefix: str, conn: multiprocessing.connection.Connection) -> None:
    asyncio.run(_watchers(addresses, prefix, conn))


class Watchers:
    """The watchers' process: started, ready (every stream open), stopped with what it saw."""

    def __init__(self, addresses: Sequence[str], prefix: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_watchers_main, args=(list(addresses), prefix, child), daemon=True)

    def __enter__(self) -> Watchers:
        self.proc.start()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            self.proc.kill()
            raise RuntimeError("the watchers did not start")
        return self

    def stop(self) -> dict[str, Any]:
        self.conn.send("stop")
        if not self.conn.poll(60):
            raise RuntimeError("the watchers did not report")
        report: dict[str, Any] = self.conn.recv()
        return report

    def __exit__(self, *exc: object) -> None:
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


# -- throughput -------------------------------------------------------------------------------


async def _write_rate(addr: str, requests: Sequence[pb.MutateRequest], cfg: Config) -> float:
    async with grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) as channel:
        stub: Any = pb_grpc.KVStub(channel)  # untyped generated code

        async def mutate(request: pb.MutateRequest) -> Any:
            return await stub.Mutate(request, timeout=RPC_TIMEOUT_S)

        sample = await closed_loop(mutate, requests, len(requests), cfg.in_flight, cfg.duration_s)
    return sample.rps


def throughput(cfg: Config, root: Path, log: Log, step: Log) -> tuple[list[Figure], dict[str, Any]]:
    rates: dict[int, list[float]] = {0: [], 1: [], 10: []}
    delivered: dict[int, list[float]] = {1: [], 10: []}
    kept_up: dict[int, list[float]] = {1: [], 10: []}
    root.mkdir(parents=True, exist_ok=True)
    with ServerProcess(root / "node", region="bench") as server:
        keys = Keys("bench/{:012d}")
        count = int(20_000 * cfg.duration_s)
        asyncio.run(_write_rate(server.addr, single_op_writes(keys, 200), cfg))  # warm up
        for repeat in range(cfg.repeats):
            order = [0, 1, 10] if repeat % 2 == 0 else [10, 1, 0]
            for watchers in order:
                step(f"throughput, repeat {repeat + 1}/{cfg.repeats}, {watchers} watchers")
                requests = single_op_writes(keys, count)
                if not watchers:
                    rates[0].append(asyncio.run(_write_rate(server.addr, requests, cfg)))
                    continue
                with Watchers([server.addr] * watchers, "bench/") as process:
                    began = time.monotonic()
                    rate = asyncio.run(_write_rate(server.addr, requests, cfg))
                    written = rate * (time.monotonic() - began)
                    time.sleep(0.5)  # what is still on its way arrives
                    report = process.stop()
                rates[watchers].append(rate)
                # Events per second from the first to the last arrival, summed over the streams.
                total = sum(
                    n / (b - a)
                    for n, a, b in zip(report["counts"], report["first"], report["last"], strict=True)
                    if b > a
                )
                delivered[watchers].append(total)
                kept_up[watchers].append(min(report["counts"]) / written if written else 0.0)
            log(
                f"repeat {repeat + 1}: writes/s {rates[0][-1]:,.0f} with no watcher, {rates[1][-1]:,.0f} with 1 "
                f"({delivered[1][-1]:,.0f} events/s), {rates[10][-1]:,.0f} with 10 ({delivered[10][-1]:,.0f} events/s)"
            )
    none = Baseline("writes/s of the same node with no watcher", stats(rates[0], "writes/s"), cfg.repeats)
    figures = [
        Figure(
            GROUP,
            DELIVERY,
            f"events/s delivered to {n} watcher{'s' if n > 1 else ''} (together) during single-op writes",
            stats(delivered[n], "events/s"),
            cfg.repeats,
            (none,),
            better="higher",
            params={"watchers": n, "in_flight": cfg.in_flight},
        )
        for n in (1, 10)
    ]
    figures.append(
        Figure(
            GROUP,
            COST,
            "writes/s with 10 watchers",
            stats(rates[10], "writes/s"),
            cfg.repeats,
            (none,),
            better="higher",
            params={"watchers": 10, "in_flight": cfg.in_flight},
            note="watchers in a process of their own, on the same 2-core machine",
        )
    )
    detail = {"write_rates": rates, "delivered": delivered, "fraction_delivered_by_the_end": kept_up}
    return figures, detail


# -- latency ----------------------------------------------------------------------------------


def latency(cfg: Config, root: Path, log: Log, step: Log) -> tuple[list[Figure], dict[str, Any]]:
    ack: list[float] = []
    visible: list[float] = []
    sent: dict[str, float] = {}
    with RegionProcesses(root, ("a", "b")) as cluster:
        cluster.wait_connected()
        addresses = [cluster.servers["a"].addr, cluster.servers["b"].addr]
        a, b = cluster.clients["a"], cluster.clients["b"]
        with Watchers(addresses, "probe/") as process:
            for i in range(cfg.probes):
                if i % 10 == 0:
                    step(f"latency, probe {i + 1}/{cfg.probes}")
                key = f"probe/{i}"
                sent[key] = time.monotonic()  # the watchers' process reads the same clock
                began = time.perf_counter()
                a.set(key, "x")
                ack.append((time.perf_counter() - began) * 1000)
                shown = wait_until(lambda key=key: b.get(key).exists, poll_s=POLL_S)  # type: ignore[misc]
                visible.append((shown - began) * 1000)
            time.sleep(0.5)
            report = process.stop()
    local = [(report["arrivals"][0][k] - t) * 1000 for k, t in sent.items() if k in report["arrivals"][0]]
    remote = [(report["arrivals"][1][k] - t) * 1000 for k, t in sent.items() if k in report["arrivals"][1]]
    log(
        f"p50/p99 ms: watcher in a {percentile(local, 50):.1f}/{percentile(local, 99):.1f}, watcher in b "
        f"{percentile(remote, 50):.1f}/{percentile(remote, 99):.1f}, visible in b {percentile(visible, 50):.1f}/"
        f"{percentile(visible, 99):.1f}, ack {percentile(ack, 50):.1f}/{percentile(ack, 99):.1f}"
    )
    figures = []
    for q in (50, 99):
        baselines = (
            Baseline(
                f"write until region b shows it (p{q}; b polled every 2 ms)", stats([percentile(visible, q)], "ms"), 1
            ),
            Baseline(f"write until its acknowledgement (p{q})", stats([percentile(ack, q)], "ms"), 1),
        )
        for where, values in (("the same region", local), ("another region", remote)):
            figures.append(
                Figure(
                    GROUP,
                    LATENCY,
                    f"write sent until a watcher in {where} receives it, p{q}",
                    stats([percentile(values, q)], "ms"),
                    1,
                    baselines,
                    better="lower",
                    params={"percentile": q},
                    note=f"{len(values)} of {cfg.probes} sequential probes; two regions on loopback",
                )
            )
    return figures, {"ack_ms": ack, "visible_ms": visible, "watch_local_ms": local, "watch_remote_ms": remote}


def stalled(cfg: Config, root: Path, log: Log, step: Log) -> tuple[list[Figure], dict[str, Any]]:
    """A consumer that stops reading: the node's heap growth while writers go on, beside the same writes unwatched.

    The stream is cut (``watch_stall_s`` = 2 here) and writers are never held back; the heap (RssAnon) of
    the node is read before the writes and after them.
    """
    config = root / "node.toml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text("[server]\nwatch_stall_s = 2\n")
    value = b"v" * 16_384
    growth: dict[str, list[float]] = {"stalled": [], "none": []}
    cut: list[int] = []
    for repeat in range(cfg.repeats):
        for case in ("stalled", "none") if repeat % 2 == 0 else ("none", "stalled"):
            step(f"stalled consumer, repeat {repeat + 1}/{cfg.repeats}, {case}")
            with ServerProcess(
                root / f"{case}-{repeat}", region="bench", extra_args=("--config", str(config))
            ) as server:
                assert server.proc is not None
                before = memory_of(server.proc.pid).get("RssAnon", float("nan"))
                with grpc.insecure_channel(server.addr) as channel, Client(server.addr) as kv:
                    if case == "stalled":
                        stub: Any = pb_grpc.KVStub(channel)
                        call = stub.Watch(pb.WatchRequest(prefix="big/", start="now"))
                        next(call)  # the first progress message; then nothing is read
                    for i in range(cfg.stalled_writes):
                        kv.set(f"big/{i}", value)
                    after = memory_of(server.proc.pid).get("RssAnon", float("nan"))
                    if case == "stalled":
                        wait_until(lambda: kv.status()["watch_streams_cut"] > 0, timeout_s=30, poll_s=0.1)
                        cut.append(kv.status()["watch_streams_cut"])
                        call.cancel()
                growth[case].append(after - before)
        log(
            f"repeat {repeat + 1}: heap grew {growth['stalled'][-1]:.1f} MiB with a stalled consumer, "
            f"{growth['none'][-1]:.1f} MiB without ({cfg.stalled_writes} writes of 16 KiB)"
        )
    figure = Figure(
        GROUP,
        COST,
        f"node heap growth (RssAnon) over {cfg.stalled_writes} writes of 16 KiB with a consumer that stopped reading",
        stats(growth["stalled"], "MiB"),
        cfg.repeats,
        (Baseline("the same writes with no watcher", stats(growth["none"], "MiB"), cfg.repeats),),
        better="lower",
        note="the stream is cut after watch_stall_s = 2 s; every write is acknowledged meanwhile",
    )
    return [figure], {"heap_growth_mib": growth, "streams_cut": cut}


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-watch-") as tmp:
        root = Path(tmp)
        rate_figures, rate_detail = throughput(cfg, root / "throughput", log, step)
        latency_figures, latency_detail = latency(cfg, root / "latency", log, step)
        stalled_figures, stalled_detail = stalled(cfg, root / "stalled", log, step)
    detail = {"throughput": rate_detail, "latency": latency_detail, "stalled": stalled_detail}
    return detail, [*rate_figures, *latency_figures, *stalled_figures]


def main(argv: Sequence[str] | None = None) -> int:
    return group_main(
        GROUP,
        __doc__,
        quick="3 repeats of 1 s and 40 probes",
        repeats="repeats of the throughput measurement (default 5; 3 quick)",
        make_config=make_config,
        collect=collect,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

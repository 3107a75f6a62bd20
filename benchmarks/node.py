"""End-to-end benchmark of one durable node, each figure next to baselines measured in the same run.

Write and read throughput at 1 to 64 requests in flight, batched writes, and write latency at half the peak rate,
against an echo server of the same messages and a raw LMDB loop. Run it from the repository root::

    python -m benchmarks.node                  # full run, 5 repeats (about three and a half minutes)
    python -m benchmarks.node --quick          # shorter runs, 2 repeats (about 30 s)
    python -m benchmarks.node --repeats 9 --json bench-out/node.json

Placement, what is measured, the baselines and the caveats: ``benchmarks/METHODS.md``, section "node".
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import lmdb

from benchmarks.common import group_parser, machine_busy_s, percentile, print_line, process_cpu_s, stats
from benchmarks.figures import Baseline, Figure, Stats
from benchmarks.micro import rate, table
from crdtstore.testing.process import ServerProcess
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------

VALUE = random.Random(7).randbytes(100)  # every register value: 100 bytes
KEY_FORMAT = "bench/{:012d}"  # 18-byte keys, unique over the run
BATCH_IN_FLIGHT = 8
LMDB_PUTS_PER_TXN = (1, 16, 64, 256, 100 * BATCH_IN_FLIGHT, 1000 * BATCH_IN_FLIGHT)
RPC_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

# The targets, printed for reference only.
TARGET_WRITES_VS_ECHO = 0.7
TARGET_BATCH_VS_ECHO = 0.5
TARGET_READS_VS_ECHO = 0.8
TARGET_P99_MS = 5.0


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    repeats: int
    duration_s: float  # time bound of one timed run
    warmup_s: float  # time bound of a warm-up run
    ops_per_run_max: int  # count bound of one timed run, in operations
    prefill_keys: int  # keys written before the measurements, read by the read test
    latency_requests: int  # count bound of one latency run
    latency_s_max: float  # time bound of one latency run (its request count is cut to fit)
    lmdb_s: float  # time bound of one raw LMDB run
    lmdb_puts_max: int  # count bound of one raw LMDB run


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(True, repeats or 2, 0.6, 0.3, 60_000, 3_000, 800, 1.5, 0.25, 200_000)
    return Config(False, repeats or 5, 2.0, 1.0, 600_000, 20_000, 3_000, 4.0, 0.6, 2_000_000)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    label: str
    kind: str  # "mutate" or "get"
    ops: int  # operations per request
    in_flight: int


SCENARIOS = (
    Scenario("write_1", "single-op writes/s, 1 in flight", "mutate", 1, 1),
    Scenario("write_16", "single-op writes/s, 16 in flight", "mutate", 1, 16),
    Scenario("write_64", "single-op writes/s, 64 in flight", "mutate", 1, 64),
    Scenario("batch_100", f"batch of 100 ops, {BATCH_IN_FLIGHT} in flight", "mutate", 100, BATCH_IN_FLIGHT),
    Scenario("batch_1000", f"batch of 1,000 ops, {BATCH_IN_FLIGHT} in flight", "mutate", 1000, BATCH_IN_FLIGHT),
    Scenario("read_1", "reads/s (Get), 1 in flight", "get", 1, 1),
    Scenario("read_16", "reads/s (Get), 16 in flight", "get", 1, 16),
    Scenario("read_64", "reads/s (Get), 64 in flight", "get", 1, 64),
)
PERCENTILES = (50.0, 99.0, 99.9)


def pname(q: float) -> str:
    """``p50``, ``p99``, ``p999``."""
    return "p" + f"{q:g}".replace(".", "")


# ---------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------


class Keys:
    """Hands out keys never used before in this run."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[str]:
        start, self.next = self.next, self.next + n
        return [KEY_FORMAT.format(i) for i in range(start, start + n)]


def mutate_requests(keys: Keys, count: int, ops: int) -> list[pb.MutateRequest]:
    out: list[pb.MutateRequest] = []
    for _ in range(count):
        operations = [pb.Operation(key=k, set=pb.SetRegister(value=VALUE)) for k in keys.take(ops)]
        out.append(
            pb.MutateRequest(operations=operations, idempotency_key=uuid.uuid4().bytes, durability=pb.DURABILITY_LOCAL)
        )
    return out


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------


class EchoProcess:
    """``benchmarks/echo_server.py`` in its own process on an OS-chosen loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, token_bytes: int, get_response: bytes) -> None:
        script = Path(__file__).with_name("echo_server.py")
        cmd = [
            sys.executable,
            str(script),
            "--listen",
            "127.0.0.1:0",
            "--token-bytes",
            str(token_bytes),
            "--get-response",
            get_response.hex(),
        ]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the echo server did not start within {START_TIMEOUT_S} s; see {self.log_path}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the echo server exited with {self.proc.wait()}; see {self.log_path}")
            if "listening on " in line:
                self.port = int(line.rsplit(":", 1)[1])
                return

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------

Call = Callable[[Any], Awaitable[Any]]


@dataclass
class Target:
    """One server under load: how to call it and whose CPU to watch."""

    name: str
    pid: int
    channel: grpc.aio.Channel
    mutate: Call
    get: Call
    estimate: dict[str, float] = field(default_factory=dict)  # scenario -> requests/s seen so far


def make_target(name: str, addr: str, pid: int) -> Target:
    channel = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
    stub = pb_grpc.KVStub(channel)

    def mutate(request: pb.MutateRequest) -> Awaitable[pb.MutateResponse]:
        response: Awaitable[pb.MutateResponse] = stub.Mutate(request, timeout=RPC_TIMEOUT_S)
        return response

    def get(request: pb.GetRequest) -> Awaitable[pb.GetResponse]:
        response: Awaitable[pb.GetResponse] = stub.Get(request, timeout=RPC_TIMEOUT_S)
        return response

    return Target(name, pid, channel, mutate, get)


@dataclass(frozen=True, slots=True)
class Sample:
    requests: int
    elapsed_s: float
    server_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float  # everything else on the machine: processes that are not part of the benchmark

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s

    @property
    def server_cpu(self) -> float:  # fraction of one core
        return self.server_cpu_s / self.elapsed_s

    @property
    def client_cpu(self) -> float:
        return self.client_cpu_s / self.elapsed_s

    @property
    def other_cpu(self) -> float:
        return self.other_cpu_s / self.elapsed_s


async def closed_loop(call: Call, requests: Sequence[Any], count: int, in_flight: int, duration_s: float) -> Sample:
    """``in_flight`` workers send ``requests`` (cycled) back to back until ``count`` are sent or time is up.

    At least one request is sent, however short the time.
    """
    sent = 0
    done = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        nonlocal sent, done
        while sent < count and (sent == 0 or time.perf_counter() < deadline):
            request = requests[sent % len(requests)]
            sent += 1
            await call(request)
            done += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(in_flight):
            group.create_task(worker())
    return Sample(done, time.perf_counter() - start, math.nan, math.nan, math.nan)


async def timed(target: Target, run: Awaitable[Sample]) -> Sample:
    """``run``'s sample with the CPU the server, this process and the rest of the machine used meanwhile."""
    gc.collect()
    server0, client0, machine0 = process_cpu_s(target.pid), time.process_time(), machine_busy_s()
    sample = await run
    server = process_cpu_s(target.pid) - server0
    client = time.process_time() - client0
    other = max(0.0, machine_busy_s() - machine0 - server - client)
    return Sample(sample.requests, sample.elapsed_s, server, client, other)


async def timed_open_loop(target: Target, requests: Sequence[Any], count: int, rps: float) -> tuple[Latencies, Sample]:
    latencies: list[Latencies] = []

    async def run() -> Sample:
        start = time.perf_counter()
        latencies.append(await open_loop(target.mutate, requests, count, rps))
        return Sample(count, time.perf_counter() - start, math.nan, math.nan, math.nan)

    sample = await timed(target, run())
    return latencies[0], sample


@dataclass(frozen=True, slots=True)
class Latencies:
    rate: float  # requests/s offered
    requests: int
    from_schedule_ms: list[float]  # answer time - scheduled send time
    from_call_ms: list[float]  # answer time - time the call was issued
    late_ms_max: float  # how late the load generator issued its most delayed call


async def open_loop(call: Call, requests: Sequence[Any], count: int, rps: float) -> Latencies:
    """Send ``count`` requests at ``rps``, each at its scheduled time; collect every latency."""
    from_schedule: list[float] = []
    from_call: list[float] = []
    late_max = 0.0
    interval = 1.0 / rps
    start = time.perf_counter() + 0.005

    async def one(request: Any, scheduled: float) -> None:
        nonlocal late_max
        issued = time.perf_counter()
        late_max = max(late_max, issued - scheduled)
        await call(request)
        answered = time.perf_counter()
        from_schedule.append((answered - scheduled) * 1e3)
        from_call.append((answered - issued) * 1e3)

    async with asyncio.TaskGroup() as group:
        for i in range(count):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(one(requests[i % len(requests)], scheduled))
    return Latencies(rps, count, from_schedule, from_call, late_max * 1e3)


# ---------------------------------------------------------------------------
# raw LMDB
# ---------------------------------------------------------------------------


class RawLmdb:
    """The storage baseline: puts of the node's key and value sizes, fsync on every commit."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path), map_size=8 * 1024**3, max_dbs=8, subdir=True, sync=True, metasync=True, readahead=False
        )
        self.db = self.env.open_db(b"data")
        self.next = 0

    def run(self, per_txn: int, duration_s: float, puts_max: int) -> tuple[int, float, list[float]]:
        """Puts done, seconds taken, and the milliseconds of each transaction (begin to durable commit)."""
        puts = 0
        txn_ms: list[float] = []
        start = time.perf_counter()
        deadline = start + duration_s
        while puts + per_txn <= puts_max and time.perf_counter() < deadline:
            keys = [KEY_FORMAT.format(i).encode() for i in range(self.next, self.next + per_txn)]
            self.next += per_txn
            began = time.perf_counter()
            with self.env.begin(write=True, db=self.db) as txn:
                for key in keys:
                    txn.put(key, VALUE)
            txn_ms.append((time.perf_counter() - began) * 1e3)
            puts += per_txn
        return puts, time.perf_counter() - start, txn_ms

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

Log = Callable[[str], None]


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)  # (scenario, target) -> repeats
    latencies: dict[str, list[Latencies]] = field(default_factory=dict)  # target -> repeats
    latency_samples: dict[str, list[Sample]] = field(default_factory=dict)  # target -> repeats (for the CPU)
    lmdb: dict[int, list[float]] = field(default_factory=dict)  # puts per txn -> puts/s per repeat
    lmdb_txn_ms: dict[int, list[tuple[float, ...]]] = field(default_factory=dict)  # -> PERCENTILES per repeat
    token_bytes: int = 0
    get_response_bytes: int = 0
    mutate_request_bytes: dict[int, int] = field(default_factory=dict)  # ops per request -> serialized size
    latency_rate: float = 0.0
    data_dir_stats: dict[str, Any] = field(default_factory=dict)
    commits: tuple[int, int] = (0, 0)  # the node's write transactions (fsyncs), and requests in them


class Bench:
    def __init__(
        self, cfg: Config, log: Log, *, node: Target, echo: Target, keys: Keys, reads: list[pb.GetRequest]
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.node = node
        self.echo = echo
        self.keys = keys
        self.reads = reads
        self.echo_pools: dict[str, list[Any]] = {}

    def requests_for(self, scenario: Scenario, target: Target, seconds: float) -> tuple[list[Any], int]:
        """The requests of one run and its count bound: fresh ones for the node, a reused pool for the echo."""
        count_max = max(scenario.in_flight, self.cfg.ops_per_run_max // scenario.ops)
        if scenario.kind == "get":
            return self.reads, count_max
        if target is self.echo:
            pool = self.echo_pools.get(scenario.name)
            if pool is None:
                size = max(2 * scenario.in_flight, min(512, 20_000 // scenario.ops))
                pool = self.echo_pools[scenario.name] = mutate_requests(self.keys, size, scenario.ops)
            return pool, count_max
        # As many fresh requests as the node is expected to answer in the time (from its rate so far):
        # requests still queued at the end would be applied while the next measurement runs. When one
        # request takes longer than the whole run, a run is one request, however many are meant to be
        # in flight (the report says so).
        count = min(count_max, max(1, math.ceil(target.estimate[scenario.name] * seconds * 1.3)))
        return mutate_requests(self.keys, count, scenario.ops), count

    async def run_once(self, scenario: Scenario, target: Target, seconds: float, in_flight: int = 0) -> Sample:
        requests, count = self.requests_for(scenario, target, seconds)
        call = target.get if scenario.kind == "get" else target.mutate
        sample = await timed(target, closed_loop(call, requests, count, in_flight or scenario.in_flight, seconds))
        target.estimate[scenario.name] = max(target.estimate.get(scenario.name, 0.0), sample.rps)
        return sample

    async def warm_up(self, scenario: Scenario, target: Target) -> None:
        """A single request first (its rate, one over its latency, is the first estimate), then the load."""
        target.estimate[scenario.name] = 0.0
        await self.run_once(scenario, target, 0.0, in_flight=1)
        await self.run_once(scenario, target, self.cfg.warmup_s)

    async def throughput(self, results: Results) -> None:
        cfg = self.cfg
        self.log(f"warming up ({len(SCENARIOS)} loads x 2 servers, {cfg.warmup_s:g} s each)")
        for scenario in SCENARIOS:
            for target in (self.node, self.echo):
                await self.warm_up(scenario, target)
        for rep in range(cfg.repeats):
            began = time.perf_counter()
            order = (self.node, self.echo) if rep % 2 == 0 else (self.echo, self.node)
            for scenario in SCENARIOS:
                for target in order:
                    sample = await self.run_once(scenario, target, cfg.duration_s)
                    results.samples.setdefault((scenario.name, target.name), []).append(sample)
            self.log(f"  throughput repeat {rep + 1}/{cfg.repeats}: {time.perf_counter() - began:.1f} s")

    async def latency(self, results: Results) -> None:
        cfg = self.cfg
        peak = max(
            statistics.median(s.rps for s in results.samples[(sc.name, self.node.name)])
            for sc in SCENARIOS
            if sc.kind == "mutate" and sc.ops == 1
        )
        rps = results.latency_rate = peak / 2
        count = max(10, min(cfg.latency_requests, int(rps * cfg.latency_s_max)))
        self.log(f"latency: {count:,} single-op writes per run, open loop at {rate(rps)}/s (half the node's peak)")
        pool = mutate_requests(self.keys, min(count, 512), 1)
        # a short warm-up of the open loop itself
        await open_loop(self.echo.mutate, pool, min(count, 200), rps)
        await open_loop(self.node.mutate, mutate_requests(self.keys, min(count, 200), 1), min(count, 200), rps)
        for rep in range(cfg.repeats):
            order = (self.node, self.echo) if rep % 2 == 0 else (self.echo, self.node)
            for target in order:
                requests = mutate_requests(self.keys, count, 1) if target is self.node else pool
                measured, sample = await timed_open_loop(target, requests, count, rps)
                results.latencies.setdefault(target.name, []).append(measured)
                results.latency_samples.setdefault(target.name, []).append(sample)


def lmdb_baseline(cfg: Config, path: Path, results: Results, log: Log) -> None:
    log(f"raw LMDB: puts per transaction {', '.join(map(str, LMDB_PUTS_PER_TXN))}; {cfg.lmdb_s:g} s each")
    raw = RawLmdb(path)
    try:
        for per_txn in LMDB_PUTS_PER_TXN:  # warm-up
            raw.run(per_txn, cfg.lmdb_s / 4, cfg.lmdb_puts_max)
        for _ in range(cfg.repeats):
            for per_txn in LMDB_PUTS_PER_TXN:
                puts, elapsed, txn_ms = raw.run(per_txn, cfg.lmdb_s, cfg.lmdb_puts_max)
                results.lmdb.setdefault(per_txn, []).append(puts / elapsed)
                results.lmdb_txn_ms.setdefault(per_txn, []).append(tuple(percentile(txn_ms, q) for q in PERCENTILES))
    finally:
        raw.close()


async def prefill(node: Target, keys: Keys, n: int, log: Log) -> tuple[list[str], pb.MutateResponse]:
    """Write ``n`` keys (the read test's keys) in batches of 500; returns them and the last answer."""
    log(f"prefill: {n:,} keys in batches of 500")
    written: list[str] = []
    response = pb.MutateResponse()
    deadline = time.perf_counter() + 120
    while len(written) < n:
        if time.perf_counter() > deadline:
            raise RuntimeError("the prefill took more than 120 s")
        [request] = mutate_requests(keys, 1, min(500, n - len(written)))
        response = await node.mutate(request)
        written.extend(op.key for op in request.operations)
    return written, response


def data_dir_stats(data_dir: Path) -> dict[str, Any]:
    """Entries and average sizes in each of the node's databases, read after it stopped."""
    out: dict[str, Any] = {}
    env = lmdb.open(str(data_dir), readonly=True, lock=False, max_dbs=8, subdir=True)
    try:
        for name in ("data", "log", "idem", "idem_time", "meta"):
            db = env.open_db(name.encode(), create=False)
            entries, key_bytes, value_bytes = 0, 0, 0
            with env.begin(db=db) as txn:
                for key, value in txn.cursor():
                    entries += 1
                    key_bytes += len(key)
                    value_bytes += len(value)
            out[name] = {
                "entries": entries,
                "key_bytes_avg": key_bytes / entries if entries else 0.0,
                "value_bytes_avg": value_bytes / entries if entries else 0.0,
            }
        out["data_mdb_bytes"] = (data_dir / "data.mdb").stat().st_size
    finally:
        env.close()
    return out


def stop_node(node: ServerProcess) -> None:
    """SIGTERM (drain), then SIGKILL if it has not exited within 20 s."""
    if node.proc is None:
        return
    try:
        node.stop(timeout_s=20)
    except subprocess.TimeoutExpired:
        node.kill()


async def run(cfg: Config, workdir: Path, log: Log) -> Results:
    results = Results()
    node_proc = ServerProcess(workdir / "node", start_timeout_s=START_TIMEOUT_S)
    echo_proc = EchoProcess(workdir / "echo.log")
    targets: list[Target] = []
    try:
        node_proc.start()
        assert node_proc.proc is not None
        node = make_target("node", node_proc.addr, node_proc.proc.pid)
        targets.append(node)
        async with asyncio.timeout(START_TIMEOUT_S):
            await node.channel.channel_ready()
        keys = Keys()
        written, last = await prefill(node, keys, cfg.prefill_keys, log)
        results.token_bytes = len(last.token.vector)
        got: pb.GetResponse = await node.get(pb.GetRequest(key=written[0]))
        if got.entry.value.register != VALUE:
            raise RuntimeError("the node did not return the value written by the prefill")
        captured = got.SerializeToString()
        results.get_response_bytes = len(captured)

        echo_proc.start(results.token_bytes, captured)
        echo = make_target("echo", echo_proc.addr, echo_proc.pid)
        targets.append(echo)
        async with asyncio.timeout(START_TIMEOUT_S):
            await echo.channel.channel_ready()
        log(
            f"node pid {node.pid} on {node_proc.addr}, echo pid {echo.pid} on {echo_proc.addr}, "
            f"load generator pid {os.getpid()}"
        )

        shuffled = list(written)
        random.Random(11).shuffle(shuffled)
        bench = Bench(cfg, log, node=node, echo=echo, keys=keys, reads=[pb.GetRequest(key=k) for k in shuffled])
        for ops in sorted({s.ops for s in SCENARIOS if s.kind == "mutate"}):
            results.mutate_request_bytes[ops] = mutate_requests(Keys(), 1, ops)[0].ByteSize()
        await bench.throughput(results)
        await bench.latency(results)
        status: pb.StatusResponse = await pb_grpc.AdminStub(node.channel).Status(pb.StatusRequest())
        results.commits = (status.commits, status.requests_committed)
    finally:
        for target in targets:
            await target.channel.close()
        try:
            echo_proc.stop()
        finally:
            stop_node(node_proc)
    lmdb_baseline(cfg, workdir / "raw-lmdb", results, log)
    try:
        results.data_dir_stats = data_dir_stats(workdir / "node")
    except lmdb.Error as exc:  # informative only
        log(f"could not read the node's data directory after the run: {exc}")
    return results


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def spread(s: Stats) -> str:
    return f"{rate(s.median)} [{rate(s.minimum)}..{rate(s.maximum)}]"


def spread_ms(s: Stats) -> str:
    return f"{s.median:.2f} [{s.minimum:.2f}..{s.maximum:.2f}]"


def cpu(samples: Sequence[Sample]) -> str:
    server = statistics.median(s.server_cpu for s in samples)
    client = statistics.median(s.client_cpu for s in samples)
    other = statistics.median(s.other_cpu for s in samples)
    return f"{server * 100:.0f}/{client * 100:.0f}/{other * 100:.0f}"


LMDB_FOR = {"write_1": 1, "write_16": 16, "write_64": 64, "batch_100": 800, "batch_1000": 8000}
TARGETS = {
    "write_64": f">= {TARGET_WRITES_VS_ECHO}x echo",
    "batch_100": f">= {TARGET_BATCH_VS_ECHO}x echo",
    "batch_1000": f">= {TARGET_BATCH_VS_ECHO}x echo",
    "read_64": f">= {TARGET_READS_VS_ECHO}x echo",
}


def sample_json(node_samples: Sequence[Sample], echo_samples: Sequence[Sample], scenario: Scenario) -> dict[str, Any]:
    node_rps = stats([s.rps for s in node_samples], "requests/s")
    echo_rps = stats([s.rps for s in echo_samples], "requests/s")
    entry: dict[str, Any] = {
        "label": scenario.label,
        "in_flight": scenario.in_flight,
        "operations_per_request": scenario.ops,
        "node_requests_per_s": node_rps.as_json(),
        "echo_requests_per_s": echo_rps.as_json(),
        "node_vs_echo": {"value": node_rps.median / echo_rps.median, "unit": "node median / echo median"},
        "node_server_cpu": stats([s.server_cpu for s in node_samples], "cores").as_json(),
        "node_client_cpu": stats([s.client_cpu for s in node_samples], "cores").as_json(),
        "echo_server_cpu": stats([s.server_cpu for s in echo_samples], "cores").as_json(),
        "echo_client_cpu": stats([s.client_cpu for s in echo_samples], "cores").as_json(),
        "node_run_other_cpu": stats([s.other_cpu for s in node_samples], "cores").as_json(),
        "echo_run_other_cpu": stats([s.other_cpu for s in echo_samples], "cores").as_json(),
        "node_server_cpu_ms_per_request": {
            "value": statistics.median(s.server_cpu_s / s.requests * 1e3 for s in node_samples),
            "unit": "ms",
        },
        "echo_server_cpu_ms_per_request": {
            "value": statistics.median(s.server_cpu_s / s.requests * 1e3 for s in echo_samples),
            "unit": "ms",
        },
        "requests_per_run": {"node": [s.requests for s in node_samples], "echo": [s.requests for s in echo_samples]},
    }
    if scenario.ops > 1:
        entry["node_ops_per_s"] = stats([s.rps * scenario.ops for s in node_samples], "ops/s").as_json()
        entry["echo_ops_per_s"] = stats([s.rps * scenario.ops for s in echo_samples], "ops/s").as_json()
    return entry


def throughput_rows(results: Results, lmdb_stats: dict[int, Stats]) -> tuple[list[list[str]], dict[str, Any]]:
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for scenario in SCENARIOS:
        node_samples = results.samples[(scenario.name, "node")]
        echo_samples = results.samples[(scenario.name, "echo")]
        entry = figures[scenario.name] = sample_json(node_samples, echo_samples, scenario)
        per_txn = LMDB_FOR.get(scenario.name)
        raw = lmdb_stats.get(per_txn) if per_txn is not None else None
        if raw is not None:
            entry["raw_lmdb_puts_per_txn"] = per_txn
            entry["raw_lmdb_puts_per_s"] = raw.as_json()
        node_rps = stats([s.rps for s in node_samples], "requests/s")
        echo_rps = stats([s.rps for s in echo_samples], "requests/s")
        node_ops = stats([s.rps * scenario.ops for s in node_samples], "ops/s")
        echo_ops = stats([s.rps * scenario.ops for s in echo_samples], "ops/s")
        label = f"{scenario.label}: ops/s" if scenario.ops > 1 else scenario.label
        rows.append(
            [
                label,
                spread(node_ops),
                spread(echo_ops),
                f"{node_ops.median / echo_ops.median:.2f}x",
                f"{spread(raw)} ({per_txn}/txn)" if raw is not None else "",
                f"{node_ops.median / raw.median:.2f}x" if raw is not None else "",
                f"{cpu(node_samples)} | {cpu(echo_samples)}",
                TARGETS.get(scenario.name, ""),
            ]
        )
        if scenario.ops > 1:
            rows.append(
                [
                    f"{scenario.label}: requests/s",
                    spread(node_rps),
                    spread(echo_rps),
                    f"{node_rps.median / echo_rps.median:.2f}x",
                    *([""] * 4),
                ]
            )
    return rows, figures


def latency_rows(results: Results) -> tuple[list[list[str]], dict[str, Any]]:
    node_lat = results.latencies["node"]
    echo_lat = results.latencies["echo"]
    rows: list[list[str]] = []
    figures: dict[str, Any] = {
        "offered_rate": {"value": results.latency_rate, "unit": "requests/s"},
        "requests_per_run": node_lat[0].requests,
        "load_generator_late_ms_max": {
            "node": [lat.late_ms_max for lat in node_lat],
            "echo": [lat.late_ms_max for lat in echo_lat],
        },
        "cpu": {
            name: {
                "server": stats([s.server_cpu for s in samples], "cores").as_json(),
                "client": stats([s.client_cpu for s in samples], "cores").as_json(),
                "other": stats([s.other_cpu for s in samples], "cores").as_json(),
            }
            for name, samples in results.latency_samples.items()
        },
    }
    for i, q in enumerate(PERCENTILES):
        node_q = stats([percentile(lat.from_schedule_ms, q) for lat in node_lat], "ms")
        echo_q = stats([percentile(lat.from_schedule_ms, q) for lat in echo_lat], "ms")
        raw_q = stats([pair[i] for pair in results.lmdb_txn_ms[1]], "ms")
        figures[pname(q)] = {
            "node_from_schedule": node_q.as_json(),
            "echo_from_schedule": echo_q.as_json(),
            "node_from_call": stats([percentile(lat.from_call_ms, q) for lat in node_lat], "ms").as_json(),
            "echo_from_call": stats([percentile(lat.from_call_ms, q) for lat in echo_lat], "ms").as_json(),
            "raw_lmdb_commit_1_put": raw_q.as_json(),
        }
        rows.append(
            [
                f"{pname(q)} write latency ms at {rate(results.latency_rate)}/s",
                spread_ms(node_q),
                spread_ms(echo_q),
                f"{node_q.median / echo_q.median:.2f}x",
                f"{spread_ms(raw_q)} (commit of 1/txn)",
                f"{node_q.median / raw_q.median:.2f}x",
                f"{cpu(results.latency_samples['node'])} | {cpu(results.latency_samples['echo'])}" if q == 50 else "",
                f"<= {TARGET_P99_MS:g} ms" if q == 99 else "",
            ]
        )
    return rows, figures


def ceilings(results: Results) -> list[str]:
    """Targets that lie beyond a baseline of this same run: what no implementation could reach on this machine.

    A batched write target above what raw LMDB puts alone reach (one put per
    operation, as many per fsync-ed transaction) cannot be met by any store
    that writes each operation; a latency target below what the echo server,
    doing no work, shows at the same rate cannot be met by any server on
    this gRPC stack.
    """
    out: list[str] = []
    for scenario in SCENARIOS:
        if scenario.name not in ("batch_100", "batch_1000"):
            continue
        echo = statistics.median(s.rps * scenario.ops for s in results.samples[(scenario.name, "echo")])
        per_txn = LMDB_FOR[scenario.name]
        raw = results.lmdb.get(per_txn)
        if not raw:
            continue
        wanted, ceiling = TARGET_BATCH_VS_ECHO * echo, statistics.median(raw)
        if wanted > ceiling:
            out.append(
                f"{scenario.label}: the target, {TARGET_BATCH_VS_ECHO}x echo = {rate(wanted)} ops/s, is above raw "
                f"LMDB's {rate(ceiling)} puts/s at {per_txn:,} puts per fsync-ed transaction in this run: out of "
                "reach of any store that writes each operation, on this machine."
            )
        else:
            out.append(
                f"{scenario.label}: the target, {TARGET_BATCH_VS_ECHO}x echo = {rate(wanted)} ops/s, is "
                f"{wanted / ceiling:.0%} of raw LMDB's {rate(ceiling)} puts/s at {per_txn:,} puts per transaction: "
                f"{1e6 / wanted:.1f} us per operation for everything but the puts."
            )
    echo_p99 = statistics.median(percentile(lat.from_schedule_ms, 99.0) for lat in results.latencies["echo"])
    if echo_p99 > TARGET_P99_MS:
        out.append(
            f"p99 write latency: the echo server, doing no work, answers at p99 {echo_p99:.2f} ms at the same rate, "
            f"above the {TARGET_P99_MS:g} ms target: out of reach of any server on this gRPC stack and machine."
        )
    return out


def notes(results: Results, log: Log) -> None:
    log("")
    log("Notes")
    log(
        "  - placement: node = its own `crdtstore serve` process, echo = its own process, load generator = this "
        f"process; all on 127.0.0.1, {os.cpu_count()} CPUs, none pinned. CPU% srv/cli/other = median CPU during "
        "the runs, in % of one core, of the server process / of this process / of everything else on the machine "
        "(other work there makes the figures noisier and lower)."
    )
    sizes = results.mutate_request_bytes
    log(
        f"  - messages: Mutate of 1 op = {sizes.get(1, 0)} B, of 100 ops = {sizes.get(100, 0):,} B, "
        f"of 1,000 ops = {sizes.get(1000, 0):,} B; token {results.token_bytes} B (echo answers one as long); "
        f"GetResponse {results.get_response_bytes} B."
    )
    commits, requests = results.commits
    log(
        f"  - group commit (Admin.Status over the whole run, warm-ups and prefill included): {requests:,} write "
        f"requests in {commits:,} transactions (fsyncs), {requests / max(commits, 1):.1f} requests per fsync on "
        "average; with N in flight a transaction holds at most N requests, which is what the raw LMDB column assumes."
    )
    log(
        "  - the raw LMDB column is the best case of storage, not an equal: per single-op request the node "
        "puts 4 records (data, log, idem, idem_time) and per commit 3 meta records, and computes the CRDT state."
    )
    for line in ceilings(results):
        log(f"  - {line}")
    for scenario in SCENARIOS:
        node_samples = results.samples[(scenario.name, "node")]
        fewest = min(s.requests for s in node_samples)
        if fewest < scenario.in_flight:
            slowest = max(s.elapsed_s / s.requests for s in node_samples)
            log(
                f"  - {scenario.label}: the node took up to {slowest:.2f} s per request, so to stay within the time "
                f"bound its runs were sized to as few as {fewest} request(s), i.e. fewer than {scenario.in_flight} "
                f"in flight; the echo had all {scenario.in_flight}."
            )
    others = [
        s.other_cpu
        for group in (results.samples, results.latency_samples)
        for samples in group.values()
        for s in samples
    ]
    busiest = max(others)
    if busiest > 0.1:
        log(
            f"  - other work on the machine during the runs: median {statistics.median(others) * 100:.0f}%, "
            f"at most {busiest * 100:.0f}% of one core (not this benchmark's; it competes with all three processes)."
        )
    stored = results.data_dir_stats
    if stored:
        parts = [
            f"{name} {stored[name]['entries']:,} x {stored[name]['key_bytes_avg']:.0f}+"
            f"{stored[name]['value_bytes_avg']:.0f} B"
            for name in ("data", "log", "idem", "idem_time", "meta")
        ]
        log(f"  - the node's databases after the run (entries x avg key+value): {', '.join(parts)}")


def report(results: Results, log: Log) -> dict[str, Any]:
    lmdb_stats = {n: stats(v, "puts/s") for n, v in results.lmdb.items()}
    rows, figures = throughput_rows(results, lmdb_stats)
    more, figures["latency_half_peak"] = latency_rows(results)
    rows.extend(more)
    figures["raw_lmdb"] = [
        {
            "puts_per_txn": n,
            "puts_per_s": s.as_json(),
            **{
                f"txn_{pname(q)}": stats([row[i] for row in results.lmdb_txn_ms[n]], "ms").as_json()
                for i, q in enumerate(PERCENTILES)
            },
        }
        for n, s in lmdb_stats.items()
    ]
    if results.data_dir_stats:
        figures["node_databases_after_run"] = results.data_dir_stats
    figures["targets_beyond_baselines"] = ceilings(results)

    log("")
    log("Node vs baselines: median [min..max] over repeats; ratio = node median / baseline median")
    log("")
    header = [
        "figure",
        "node",
        "echo (a)",
        "node/echo",
        "raw LMDB puts/s (b)",
        "node/LMDB",
        "CPU% srv/cli/other: node | echo",
        "target (not asserted)",
    ]
    for line in table(header, rows, [False, True, True, True, True, True, True, False]):
        log(line)
    log("")
    lat = figures["latency_half_peak"]
    for q in PERCENTILES:
        log(
            f"  {pname(q)} counted from the call's issue instead of its schedule: "
            f"node {lat[pname(q)]['node_from_call']['median']:.2f} ms, "
            f"echo {lat[pname(q)]['echo_from_call']['median']:.2f} ms"
        )
    late = max(max(v) for v in lat["load_generator_late_ms_max"].values())
    log(f"  the load generator issued its most delayed call {late:.2f} ms after its scheduled time")

    log("")
    log("Raw LMDB (b): puts of an 18-byte key and a 100-byte value, sync=True, in this process")
    log("")
    lmdb_rows = [
        [
            f"{n:,}",
            spread(s),
            spread(Stats(s.median / n, s.minimum / n, s.maximum / n, "txn/s")),
            *(spread_ms(stats([row[i] for row in results.lmdb_txn_ms[n]], "ms")) for i in range(len(PERCENTILES))),
        ]
        for n, s in lmdb_stats.items()
    ]
    header = ["puts/txn", "puts/s", "commits (fsyncs)/s", *(f"txn {pname(q)} ms" for q in PERCENTILES)]
    for line in table(header, lmdb_rows, [True] * len(header)):
        log(f"  {line}")
    notes(results, log)
    return figures


GROUP = "node"
CLIENT_PATH = "Client path: durable writes and reads per second"
LATENCY = "Client path: write latency at half the peak rate"


def suite_figures(results: Results) -> list[Figure]:
    """The suite's figures: every load beside the echo server and, for writes, raw LMDB; latency percentiles."""
    out: list[Figure] = []
    lmdb_stats = {n: stats(v, "puts/s") for n, v in results.lmdb.items()}
    for scenario in SCENARIOS:
        node_samples = results.samples[(scenario.name, "node")]
        echo_samples = results.samples[(scenario.name, "echo")]
        repeats = len(node_samples)
        unit = "ops/s" if scenario.kind == "mutate" else "reads/s"
        baselines = [
            Baseline(
                "echo server, same messages and load",
                stats([s.rps * scenario.ops for s in echo_samples], unit),
                repeats,
            )
        ]
        per_txn = LMDB_FOR.get(scenario.name)
        if per_txn is not None and per_txn in lmdb_stats:
            raw = lmdb_stats[per_txn]
            baselines.append(
                Baseline(
                    f"raw LMDB puts, {per_txn:,} per fsync-ed txn",
                    Stats(raw.median, raw.minimum, raw.maximum, unit),
                    len(results.lmdb[per_txn]),
                )
            )
        out.append(
            Figure(
                GROUP,
                CLIENT_PATH,
                scenario.label,
                stats([s.rps * scenario.ops for s in node_samples], unit),
                repeats,
                tuple(baselines),
                target=TARGETS.get(scenario.name, ""),
                better="higher",
                params={"kind": scenario.kind, "ops_per_request": scenario.ops, "in_flight": scenario.in_flight},
                note=f"node CPU% srv/cli/other {cpu(node_samples)}; echo {cpu(echo_samples)}",
            )
        )
    node_lat = results.latencies["node"]
    echo_lat = results.latencies["echo"]
    for i, q in enumerate(PERCENTILES):
        raw_rows = results.lmdb_txn_ms.get(1, [])
        out.append(
            Figure(
                GROUP,
                LATENCY,
                f"{pname(q)} single-op write latency at {rate(results.latency_rate)}/s",
                stats([percentile(lat.from_schedule_ms, q) for lat in node_lat], "ms"),
                len(node_lat),
                (
                    Baseline(
                        "echo server, same rate",
                        stats([percentile(lat.from_schedule_ms, q) for lat in echo_lat], "ms"),
                        len(echo_lat),
                    ),
                    Baseline(
                        "raw LMDB commit of 1 put (fsync)", stats([row[i] for row in raw_rows], "ms"), len(raw_rows)
                    ),
                ),
                target=f"<= {TARGET_P99_MS:g} ms" if q == 99 else "",
                better="lower",
                params={"percentile": q, "offered_rate": results.latency_rate},
                note=f"{node_lat[0].requests:,} requests per run, open loop, counted from the scheduled send time",
            )
        )
    return out


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    """Run the benchmark: the JSON of ``--json`` (its ``figures``) and the suite's figures.

    ``step`` gets the progress lines, ``log`` the report.
    """
    workdir = Path(tempfile.mkdtemp(prefix="crdtstore-bench-node-"))
    ok = False
    try:
        results = asyncio.run(run(cfg, workdir, step))
        ok = True
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (data and server logs)", file=sys.stderr)
    return report(results, log), suite_figures(results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = group_parser(
        "node",
        __doc__,
        "shorter runs and 2 repeats (under a minute)",
        "repeats per measurement (default 5, 2 with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data and server logs)")
    args = parser.parse_args(argv)
    cfg = make_config(args.quick, args.repeats)
    began = time.perf_counter()

    log = print_line

    log(
        f"crdtstore node benchmark ({'quick' if cfg.quick else 'full'}): {cfg.repeats} repeats of {cfg.duration_s:g} s "
        f"per figure; Python {platform.python_version()}, grpcio {grpc.__version__}, lmdb {lmdb.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    log(
        "placement: node and echo server each in their own process, load generator (grpc.aio, generated stub) "
        "in this one; same machine, 127.0.0.1, no CPU pinning"
    )
    log("")
    workdir = Path(tempfile.mkdtemp(prefix="crdtstore-bench-node-"))
    ok = False
    try:
        results = asyncio.run(run(cfg, workdir, log))
        figures = report(results, log)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (data and server logs)", file=sys.stderr)
    elapsed = time.perf_counter() - began
    log("")
    log(f"total {elapsed:.1f} s")
    if args.json is not None:
        out = {
            "meta": {
                "mode": "quick" if cfg.quick else "full",
                "repeats": cfg.repeats,
                "duration_seconds_per_run": cfg.duration_s,
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "lmdb": lmdb.__version__,
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "placement": "node and echo server in their own processes, load generator in this one; "
                "same machine, 127.0.0.1, unpinned",
                "total_seconds": elapsed,
            },
            "figures": figures,
            "targets_not_asserted": {
                "single_op_writes_64_vs_echo": TARGET_WRITES_VS_ECHO,
                "batched_writes_vs_echo": TARGET_BATCH_VS_ECHO,
                "reads_vs_echo": TARGET_READS_VS_ECHO,
                "p99_write_latency_ms_at_half_peak": TARGET_P99_MS,
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

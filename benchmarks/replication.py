"""End-to-end benchmark of replication between regions: lag under steady load, convergence after a partition.

Also the rate of applying incoming deltas with no network. Run it from the repository root::

    python -m benchmarks.replication                 # full run, 5 repeats (about ten minutes)
    python -m benchmarks.replication --quick         # lag + 3 regions x 1,000 keys, 2 repeats (about 25 s)
    python -m benchmarks.replication --repeats 3 --json bench-out/replication.json

Placement, what is measured, the baselines and the time budget: ``benchmarks/METHODS.md``, section "replication".
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import platform
import random
import shutil
import statistics
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
from benchmarks.figures import Baseline, Figure, Stats, write_json
from benchmarks.micro import rate, table
from crdtstore.crdt import CausalContext, HybridLogicalClock, KeyState, StoreMap, VersionVector, decode_as, encode
from crdtstore.node.config import ReplicationSettings
from crdtstore.operations import SetRegister
from crdtstore.storage import LmdbStore, LogEntry, StorageConfig, WriteRequest
from crdtstore.testing.regions import RegionProcesses
from crdtstore.tools.proxy import DOWNSTREAM, UPSTREAM
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------

VALUE = random.Random(7).randbytes(100)  # every register value: 100 bytes
LAG_KEY = "lag/{:012d}"
CONV_PREFIX = "conv/"
CONV_KEY = CONV_PREFIX + "{:08d}"
NAMES = ("a", "b", "c", "d", "e", "f", "g")
BATCH_OPS = 1000
PEAK_IN_FLIGHT = 64
LIGHT_RPS = 50.0  # the second lag load: far below what the regions can take
PROBE_RPS = 50.0  # at most this many writes a second are followed by the three reads that measure lag
HALF_PEAK = "half_peak"
LIGHT = "light"
RPC_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 60.0  # every stream up after start
CATCH_UP_TIMEOUT_S = 120.0  # b and c caught up with a between lag runs
CONVERGE_TIMEOUT_S = 300.0
STATUS_POLL_S = 0.02
COUNTER_POLL_S = 0.002
SETTLE_S = 0.3  # counters that grow by less than SETTLE_BYTES in this long have settled
SETTLE_BYTES = 1024
SETTLE_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 30
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

# The targets, printed for reference only.
BATCH_WINDOW_MS = ReplicationSettings().batch_window_ms
TARGET_LAG_P99_MS = BATCH_WINDOW_MS + 5.0
TARGET_CONVERGE_S = 1.0  # 3 regions, 10,000 keys
TARGET_BYTES_RATIO = 1.5
TARGET_APPLY_OPS = 100_000.0


@dataclass(frozen=True, slots=True)
class Case:
    regions: int
    keys: int

    @property
    def name(self) -> str:
        return f"{self.regions}_regions_{self.keys}_keys"


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    repeats: int
    peak_warmup_s: float
    peak_s: float
    peak_requests_max: int  # count bound of the peak run
    lag_writes_max: int  # count bound of one lag run at half the peak
    lag_s_max: float  # time bound of one lag run at half the peak (its count is cut to fit)
    light_writes_max: int  # writes of one lag run at LIGHT_RPS
    cases: tuple[Case, ...]
    budget_s: float  # no run starts after this many seconds


def make_config(quick: bool, repeats: int | None) -> Config:
    if quick:
        return Config(True, repeats or 2, 0.5, 3.0, 30_000, 600, 3.0, 100, (Case(3, 1_000),), 85.0)
    cases = (
        Case(3, 1_000),
        Case(3, 10_000),
        Case(3, 100_000),
        Case(5, 1_000),
        Case(5, 10_000),
        Case(5, 100_000),
        Case(7, 1_000),
        Case(7, 10_000),
    )
    return Config(False, repeats or 5, 0.5, 3.0, 30_000, 3_000, 10.0, 250, cases, 20 * 60.0)


Log = Callable[[str], None]


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Where progress (and, on a failure, the tail of each region's log) goes: stderr, or what ``collect`` is given.
_progress_sink: list[Log] = [_to_stderr]


def progress(msg: str) -> None:
    _progress_sink[-1](msg)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


class CpuMeter:
    """CPU used by some processes, by this one (load generator and proxies) and by the rest of the machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.began = time.perf_counter()
        self.processes0 = {name: process_cpu_s(pid) for name, pid in pids.items()}
        self.self0 = time.process_time()
        self.machine0 = machine_busy_s()

    def read(self) -> dict[str, float]:
        """Fractions of one core since the meter was made: ``server NAME``, ``this process``, ``rest of machine``."""
        elapsed = max(time.perf_counter() - self.began, 1e-9)
        used = {f"server {name}": process_cpu_s(pid) - self.processes0[name] for name, pid in self.pids.items()}
        used["this process"] = time.process_time() - self.self0
        used["rest of machine"] = max(0.0, machine_busy_s() - self.machine0 - sum(used.values()))
        return {name: seconds / elapsed for name, seconds in used.items()}


def spread_ms(s: Stats) -> str:
    return f"{s.median:.2f} [{s.minimum:.2f}..{s.maximum:.2f}]"


def spread_s(s: Stats) -> str:
    return f"{s.median:.3f} [{s.minimum:.3f}..{s.maximum:.3f}]"


def spread_rate(s: Stats) -> str:
    return f"{rate(s.median)} [{rate(s.minimum)}..{rate(s.maximum)}]"


def spread_bytes(s: Stats) -> str:
    def mib(x: float) -> str:
        return f"{x / 2**20:.2f}"

    return f"{mib(s.median)} [{mib(s.minimum)}..{mib(s.maximum)}]"


def spread_ratio(s: Stats) -> str:
    return f"{s.median:.2f}x [{s.minimum:.2f}..{s.maximum:.2f}]"


def server_pid(cluster: RegionProcesses, name: str) -> int:
    proc = cluster.servers[name].proc
    assert proc is not None
    return proc.pid


def proxy_bytes(cluster: RegionProcesses) -> dict[str, int]:
    """Bytes forwarded so far, per link ("a-b"), both directions together."""
    return {
        "-".join(sorted(pair)): link.bytes_forwarded[UPSTREAM] + link.bytes_forwarded[DOWNSTREAM]
        for pair, link in cluster.links.items()
    }


def wait_connected(cluster: RegionProcesses, timeout_s: float = CONNECT_TIMEOUT_S) -> float:
    """Poll until every region reports every peer connected; returns the seconds it took."""
    began = time.perf_counter()
    deadline = began + timeout_s
    while True:
        statuses = [cluster.clients[name].status() for name in cluster.names]
        if all(peer["connected"] for status in statuses for peer in status["peers"]):
            return time.perf_counter() - began
        if time.perf_counter() > deadline:
            down = [
                f"{status['region']}->{peer['region']}"
                for status in statuses
                for peer in status["peers"]
                if not peer["connected"]
            ]
            raise RuntimeError(f"replication streams not up within {timeout_s} s: {', '.join(down)}")
        time.sleep(0.05)


def log_tails(root: Path, names: Sequence[str]) -> None:
    for name in names:
        path = root / f"{name}.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as exc:
            progress(f"--- {path}: {exc}")
            continue
        progress(f"--- last {LOG_TAIL_LINES} lines of {path} ---")
        for line in lines[-LOG_TAIL_LINES:]:
            progress(f"    {line}")


def keep_logs(root: Path, names: Sequence[str], label: str) -> Path:
    kept = Path(tempfile.mkdtemp(prefix=f"crdtstore-bench-replication-{label}-"))
    for name in names:
        path = root / f"{name}.log"
        if path.exists():
            shutil.copy2(path, kept / path.name)
    return kept


# ---------------------------------------------------------------------------
# figure 1: lag under steady load
# ---------------------------------------------------------------------------


class Region:
    """One region as the load generator sees it: a ``grpc.aio`` channel and typed calls on the generated stubs."""

    def __init__(self, name: str, addr: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        self.channel = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
        self._kv = pb_grpc.KVStub(self.channel)
        self._admin = pb_grpc.AdminStub(self.channel)

    def mutate(self, request: pb.MutateRequest) -> Awaitable[pb.MutateResponse]:
        response: Awaitable[pb.MutateResponse] = self._kv.Mutate(request, timeout=RPC_TIMEOUT_S)
        return response

    def get(self, request: pb.GetRequest) -> Awaitable[pb.GetResponse]:
        response: Awaitable[pb.GetResponse] = self._kv.Get(request, timeout=RPC_TIMEOUT_S)
        return response

    def status(self) -> Awaitable[pb.StatusResponse]:
        response: Awaitable[pb.StatusResponse] = self._admin.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S)
        return response


class Keys:
    """Hands out keys never used before in this run."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.next = 0

    def take(self, n: int) -> list[str]:
        start, self.next = self.next, self.next + n
        return [self.fmt.format(i) for i in range(start, start + n)]


def single_op_writes(keys: Keys, count: int) -> list[pb.MutateRequest]:
    return [
        pb.MutateRequest(
            operations=[pb.Operation(key=key, set=pb.SetRegister(value=VALUE))],
            idempotency_key=uuid.uuid4().bytes,
            durability=pb.DURABILITY_LOCAL,
        )
        for key in keys.take(count)
    ]


@dataclass(frozen=True, slots=True)
class RpcFailure:
    call: str  # "write a", "after-read b", "after-read c", "plain read b"
    code: str
    sent_s: float  # seconds from the start of the run to the call
    elapsed_s: float  # from the call to the error
    details: str

    def as_json(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "code": self.code,
            "sent_seconds_into_run": self.sent_s,
            "seconds_to_error": self.elapsed_s,
            "details": self.details,
        }


@dataclass
class LagRun:
    rate: float  # writes/s offered
    writes: int
    elapsed_s: float
    probe_every: int = 1  # every probe_every-th write is followed by the three reads
    write_ms: list[float] = field(default_factory=list)  # ack - scheduled send time
    lag_b_ms: list[float] = field(default_factory=list)  # after-read on b returned - write acked
    lag_c_ms: list[float] = field(default_factory=list)
    base_b_ms: list[float] = field(default_factory=list)  # plain read on b returned - write acked
    lag_minus_base_ms: list[float] = field(default_factory=list)  # per write, on b
    late_ms_max: float = 0.0  # how late the load generator issued its most delayed write
    wrong_reads: int = 0  # after-reads that did not return the value written (a set-up failure)
    errors: list[RpcFailure] = field(default_factory=list)  # failed calls, left out of the figures
    cpu: dict[str, float] = field(default_factory=dict)  # process -> fraction of one core during the run


@dataclass
class LagResults:
    peak_rps: float = 0.0
    peak_requests: int = 0
    runs: dict[str, list[LagRun]] = field(default_factory=dict)  # load -> one per repeat
    connect_s: float = 0.0


async def closed_loop(region: Region, requests: Sequence[pb.MutateRequest], in_flight: int, duration_s: float) -> float:
    """Writes answered per second with ``in_flight`` workers, until time is up or the requests are used up."""
    sent = 0
    done = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        nonlocal sent, done
        while sent < len(requests) and time.perf_counter() < deadline:
            request = requests[sent]
            sent += 1
            await region.mutate(request)
            done += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(in_flight):
            group.create_task(worker())
    return done / (time.perf_counter() - start)


async def caught_up(a: Region, others: Sequence[Region], timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
    """Wait until every region of ``others`` has applied everything a has (a takes no writes meanwhile)."""
    deadline = time.perf_counter() + timeout_s
    target = (await a.status()).token.vector
    while True:
        tokens = [(await region.status()).token.vector for region in others]
        if all(token == target for token in tokens):
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"b and c did not catch up with a within {timeout_s} s")
        await asyncio.sleep(0.02)


async def lag_run(regions: dict[str, Region], keys: Keys, rps: float, count: int) -> LagRun:
    a, b, c = regions["a"], regions["b"], regions["c"]
    requests = single_op_writes(keys, count)
    run = LagRun(rps, count, 0.0, max(1, round(rps / PROBE_RPS)))
    interval = 1.0 / rps
    meter = CpuMeter({name: r.pid for name, r in regions.items()})
    start = time.perf_counter() + 0.005

    def failed(call: str, exc: grpc.aio.AioRpcError, sent: float) -> None:
        now = time.perf_counter()
        run.errors.append(RpcFailure(call, exc.code().name, sent - start, now - sent, str(exc.details())))

    async def one(request: pb.MutateRequest, scheduled: float, probe: bool) -> None:
        issued = time.perf_counter()
        run.late_ms_max = max(run.late_ms_max, (issued - scheduled) * 1e3)
        try:
            response = await a.mutate(request)
        except grpc.aio.AioRpcError as exc:
            failed("write a", exc, issued)
            return
        acked = time.perf_counter()
        run.write_ms.append((acked - scheduled) * 1e3)
        if not probe:
            return
        key = request.operations[0].key
        after = pb.CausalToken(vector=response.token.vector)

        async def read(call: str, region: Region, request: pb.GetRequest, check: bool) -> float | None:
            try:
                got = await region.get(request)
            except grpc.aio.AioRpcError as exc:
                failed(call, exc, acked)
                return None
            answered = time.perf_counter()
            if check and got.entry.value.register != VALUE:
                run.wrong_reads += 1
            return (answered - acked) * 1e3

        lag_b, lag_c, base_b = await asyncio.gather(
            read("after-read b", b, pb.GetRequest(key=key, after=after), True),
            read("after-read c", c, pb.GetRequest(key=key, after=after), True),
            read("plain read b", b, pb.GetRequest(key=key), False),
        )
        if lag_b is not None:
            run.lag_b_ms.append(lag_b)
        if lag_c is not None:
            run.lag_c_ms.append(lag_c)
        if base_b is not None:
            run.base_b_ms.append(base_b)
        if lag_b is not None and base_b is not None:
            run.lag_minus_base_ms.append(lag_b - base_b)

    async with asyncio.TaskGroup() as group:
        for i, request in enumerate(requests):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(one(request, scheduled, i % run.probe_every == 0))
    run.elapsed_s = time.perf_counter() - start
    run.cpu = meter.read()
    return run


async def lag_async(cfg: Config, cluster: RegionProcesses, results: LagResults, deadline: float) -> None:
    regions = {name: Region(name, cluster.servers[name].addr, server_pid(cluster, name)) for name in ("a", "b", "c")}
    try:
        for region in regions.values():
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await region.channel.channel_ready()
        a = regions["a"]
        others = [regions["b"], regions["c"]]
        keys = Keys(LAG_KEY)
        progress(f"lag: peak of a, {PEAK_IN_FLIGHT} in flight: warm-up {cfg.peak_warmup_s:g} s, then {cfg.peak_s:g} s")
        await closed_loop(a, single_op_writes(keys, 2_000), PEAK_IN_FLIGHT, cfg.peak_warmup_s)
        await caught_up(a, others)
        requests = single_op_writes(keys, cfg.peak_requests_max)
        began = time.perf_counter()
        results.peak_rps = await closed_loop(a, requests, PEAK_IN_FLIGHT, cfg.peak_s)
        results.peak_requests = round(results.peak_rps * (time.perf_counter() - began))
        loads = {
            HALF_PEAK: (results.peak_rps / 2, cfg.lag_writes_max, cfg.lag_s_max),
            LIGHT: (LIGHT_RPS, cfg.light_writes_max, cfg.light_writes_max / LIGHT_RPS),
        }
        counts = {load: max(10, min(most, int(rps * seconds))) for load, (rps, most, seconds) in loads.items()}
        progress(
            f"lag: peak {rate(results.peak_rps)} writes/s; per repeat {counts[HALF_PEAK]:,} writes at "
            f"{rate(loads[HALF_PEAK][0])}/s (half of it), {counts[LIGHT]:,} at {rate(LIGHT_RPS)}/s"
        )
        await caught_up(a, others)
        # a short warm-up of the open loop itself
        await lag_run(regions, keys, loads[HALF_PEAK][0], min(counts[HALF_PEAK], 100))
        for rep in range(cfg.repeats):
            if time.perf_counter() > deadline:
                progress(f"lag: time budget used up, skipping repeats {rep + 1}..{cfg.repeats}")
                break
            for load, (rps, _, _) in loads.items():
                await caught_up(a, others)
                run = await lag_run(regions, keys, rps, counts[load])
                results.runs.setdefault(load, []).append(run)
                progress(
                    f"  lag repeat {rep + 1}/{cfg.repeats}, {rate(rps)} writes/s: {run.elapsed_s:.1f} s, "
                    f"lag b p99 {percentile(run.lag_b_ms, 99):.1f} ms, c p99 {percentile(run.lag_c_ms, 99):.1f} ms"
                )
    finally:
        for region in regions.values():
            await region.channel.close()


def measure_lag(cfg: Config, deadline: float) -> LagResults:
    results = LagResults()
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-replication-lag-") as tmp:
        root = Path(tmp)
        progress("lag: starting 3 regions")
        with RegionProcesses(root, list(NAMES[:3])) as cluster:
            results.connect_s = wait_connected(cluster)
            try:
                asyncio.run(lag_async(cfg, cluster, results, deadline))
            except BaseException:
                log_tails(root, cluster.names)
                progress(f"logs kept in {keep_logs(root, cluster.names, 'lag')}")
                raise
    return results


# ---------------------------------------------------------------------------
# figure 2: convergence after a partition heals
# ---------------------------------------------------------------------------


@dataclass
class ConvergeRun:
    case: Case
    converged: bool
    converge_s: float
    reconnect_first_s: float  # first byte through a proxy of a's links (NaN if none)
    reconnect_last_s: float  # the last of a's links to carry a byte (NaN if one never did)
    bytes: int  # through every proxy, heal -> converged
    bytes_settled: int  # heal -> counters settled after convergence
    bytes_per_link: dict[str, int]  # heal -> converged
    minimum_bytes: int  # sum of len(encode(state)) over the K keys, times (regions - 1)
    key_name_bytes: int  # sum of the key names' UTF-8 lengths, times (regions - 1)
    write_s: float  # writing the K keys on a
    keys_per_region: dict[str, int]
    polls: int
    cpu: dict[str, float]  # heal -> converged, fractions of one core

    @property
    def ratio(self) -> float:
        return self.bytes / self.minimum_bytes if self.minimum_bytes else math.nan

    @property
    def apply_ops(self) -> float:
        return self.case.keys / self.converge_s

    @property
    def apply_ops_connected(self) -> float:
        transfer = self.converge_s - self.reconnect_first_s
        return self.case.keys / transfer if transfer > 0 else math.nan


def write_diverged(cluster: RegionProcesses, keys: int) -> float:
    client = cluster.clients["a"]
    began = time.perf_counter()
    for start in range(0, keys, BATCH_OPS):
        names = [CONV_KEY.format(i) for i in range(start, min(keys, start + BATCH_OPS))]
        client.mutate([SetRegister(name, VALUE) for name in names], durability="local")
    return time.perf_counter() - began


def settle(cluster: RegionProcesses) -> int:
    """The total forwarded once the counters stop growing (bounded in time)."""
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    total = sum(proxy_bytes(cluster).values())
    while time.perf_counter() < deadline:
        time.sleep(SETTLE_S)
        now = sum(proxy_bytes(cluster).values())
        if now - total < SETTLE_BYTES:
            return now
        total = now
    return total


def changed_state_bytes(root: Path, keys: int) -> tuple[int, int]:
    """Sum of ``len(encode(state))`` and of the key names' lengths over the diverged keys, from a's stopped store."""
    store = LmdbStore(StorageConfig(root / "a", "a"))
    try:
        state_bytes = 0
        name_bytes = 0
        seen = 0
        after = b""
        while True:
            page, after = store.scan(CONV_PREFIX, after=after, limit=1000)
            for key, state in page:
                state_bytes += len(encode(state))
                name_bytes += len(key.encode("utf-8"))
                seen += 1
            if not after:
                break
    finally:
        store.close()
    if seen != keys:
        raise RuntimeError(f"region a holds {seen} of the {keys} keys it wrote")
    return state_bytes, name_bytes


@dataclass
class Poll:
    converged: bool
    converge_s: float
    tokens: dict[str, bytes]  # at the last poll
    first_byte: dict[str, float]  # a's link -> seconds from the heal to its first forwarded byte
    polls: int
    cpu: dict[str, float]  # heal -> end of polling, fractions of one core (CpuMeter)


def heal_and_poll(cluster: RegionProcesses, before: dict[str, int], timeout_s: float) -> Poll:
    """Heal every link, then poll the proxies' counters and every region's token until the tokens agree."""
    names = cluster.names
    a_links = [link for link in before if "a" in link.split("-")]
    first_byte: dict[str, float] = {}
    tokens: dict[str, bytes] = {}
    polls = 0
    meter = CpuMeter({name: server_pid(cluster, name) for name in names})
    heal_at = time.perf_counter()
    cluster.heal()
    deadline = heal_at + timeout_s
    next_status = time.perf_counter()
    while True:
        now_bytes = proxy_bytes(cluster)
        now = time.perf_counter()
        for link in a_links:
            if link not in first_byte and now_bytes[link] > before[link]:
                first_byte[link] = now - heal_at
        if now >= next_status:
            polls += 1
            tokens = {name: cluster.clients[name].status()["token"] for name in names}
            if len(set(tokens.values())) == 1:
                return Poll(True, time.perf_counter() - heal_at, tokens, first_byte, polls, meter.read())
            next_status = time.perf_counter() + STATUS_POLL_S
        if now > deadline:
            return Poll(False, time.perf_counter() - heal_at, tokens, first_byte, polls, meter.read())
        time.sleep(COUNTER_POLL_S)


def converge_once(case: Case, rep: int, timeout_s: float) -> ConvergeRun:
    names = list(NAMES[: case.regions])
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-replication-conv-") as tmp:
        root = Path(tmp)
        with RegionProcesses(root, names) as cluster:
            try:
                wait_connected(cluster)
                cluster.isolate("a", "drop")
                write_s = write_diverged(cluster, case.keys)
                tokens = {name: cluster.clients[name].status()["token"] for name in names}
                if len(set(tokens.values())) == 1:
                    raise RuntimeError("a's writes reached the other regions although a was cut off")
                before = proxy_bytes(cluster)
                poll = heal_and_poll(cluster, before, timeout_s)
                at_converge = proxy_bytes(cluster)
                if not poll.converged:
                    progress(f"  {case.name} repeat {rep}: NOT converged {timeout_s:.0f} s after heal; tokens:")
                    for name, token in poll.tokens.items():
                        progress(f"    {name}: {token.hex()}")
                    log_tails(root, names)
                    progress(f"  logs kept in {keep_logs(root, names, case.name)}")
                settled = settle(cluster) if poll.converged else sum(at_converge.values())
                keys_per_region = {name: cluster.clients[name].status()["keys"] for name in names}
                cluster.stop("a")
                state_bytes, name_bytes = changed_state_bytes(root, case.keys)
            except BaseException:
                log_tails(root, names)
                progress(f"logs kept in {keep_logs(root, names, case.name)}")
                raise
    base_total = sum(before.values())
    others = case.regions - 1
    first_byte = poll.first_byte
    return ConvergeRun(
        case=case,
        converged=poll.converged,
        converge_s=poll.converge_s,
        reconnect_first_s=min(first_byte.values(), default=math.nan),
        reconnect_last_s=max(first_byte.values()) if len(first_byte) == case.regions - 1 else math.nan,
        bytes=sum(at_converge.values()) - base_total,
        bytes_settled=settled - base_total,
        bytes_per_link={link: at_converge[link] - before[link] for link in sorted(at_converge)},
        minimum_bytes=state_bytes * others,
        key_name_bytes=name_bytes * others,
        write_s=write_s,
        keys_per_region=keys_per_region,
        polls=poll.polls,
        cpu=poll.cpu,
    )


def measure_convergence(cfg: Config, deadline: float) -> tuple[dict[Case, list[ConvergeRun]], list[str]]:
    runs: dict[Case, list[ConvergeRun]] = {case: [] for case in cfg.cases}
    skipped: list[str] = []
    failed: set[Case] = set()
    for rep in range(1, cfg.repeats + 1):
        for case in cfg.cases:
            if case in failed:
                skipped.append(f"{case.name} repeat {rep} (an earlier run did not converge)")
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                skipped.append(f"{case.name} repeat {rep} (time budget used up)")
                continue
            progress(f"convergence {case.regions} regions x {case.keys:,} keys, repeat {rep}/{cfg.repeats}")
            began = time.perf_counter()
            run = converge_once(case, rep, min(CONVERGE_TIMEOUT_S, max(30.0, remaining)))
            runs[case].append(run)
            if not run.converged:
                failed.add(case)
            progress(
                f"  wrote {case.keys:,} keys on a in {run.write_s:.2f} s; "
                f"{'converged' if run.converged else 'NOT converged'} {run.converge_s:.3f} s after heal "
                f"(first byte on an a link after {run.reconnect_first_s:.3f} s), "
                f"{run.bytes / 2**20:.2f} MiB = {run.ratio:.2f}x minimum; run took {time.perf_counter() - began:.1f} s"
            )
    for item in skipped:
        progress(f"skipped: {item}")
    return runs, skipped


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


LAG_SERIES: tuple[tuple[str, str, Callable[[LagRun], list[float]], bool], ...] = (
    ("lag_b", "lag a->b: Get(after=token) on b returned - write acked", lambda r: r.lag_b_ms, True),
    ("lag_c", "lag a->c: Get(after=token) on c returned - write acked", lambda r: r.lag_c_ms, True),
    ("baseline_b", "baseline: Get without after on b, same moment", lambda r: r.base_b_ms, False),
    ("lag_b_minus_baseline", "lag a->b - baseline, per write", lambda r: r.lag_minus_base_ms, False),
    ("write_ack", "write on a: acked - scheduled send", lambda r: r.write_ms, False),
)


def lag_load_json(runs: Sequence[LagRun]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "offered_rate": {"value": runs[0].rate, "unit": "writes/s"},
        "writes_per_run": [run.writes for run in runs],
        "probed_every_nth_write": runs[0].probe_every,
        "load_generator_late_ms_max": [run.late_ms_max for run in runs],
        "cpu_cores": {name: stats([run.cpu[name] for run in runs], "cores").as_json() for name in runs[0].cpu},
        "wrong_after_reads": sum(run.wrong_reads for run in runs),
        "failed_calls": [[failure.as_json() for failure in run.errors] for run in runs],
    }
    for key, label, values, _ in LAG_SERIES:
        out[key] = {"label": label}
        for q in (50, 99):
            out[key][f"p{q}"] = stats([percentile(values(run), q) for run in runs], "ms").as_json()
    return out


def lag_report(results: LagResults, log: Log) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "peak_single_op_writes_per_s": {
            "value": results.peak_rps,
            "unit": "writes/s",
            "in_flight": PEAK_IN_FLIGHT,
            "writes": results.peak_requests,
        },
        "streams_up_after_start_seconds": results.connect_s,
    }
    loads = [load for load in (HALF_PEAK, LIGHT) if results.runs.get(load)]
    log("")
    log(
        f"1. Replication lag, 3 regions: open-loop single-op writes to a; a's peak with {PEAK_IN_FLIGHT} in flight "
        f"was {rate(results.peak_rps)} writes/s (measured once); ms, median [min..max] over "
        f"{len(results.runs.get(HALF_PEAK, []))} repeats"
    )
    log("")
    if not loads:
        log("  (no run)")
        return figures
    rows: list[list[str]] = []
    for _, label, values, targeted in LAG_SERIES:
        for q in (50, 99):
            cells = [
                spread_ms(stats([percentile(values(run), q) for run in results.runs[load]], "ms")) for load in loads
            ]
            target = f"<= {TARGET_LAG_P99_MS:g} ms (window {BATCH_WINDOW_MS} ms + 5 ms)" if targeted and q == 99 else ""
            rows.append([f"{label}: p{q}", *cells, target])
    header = [
        "figure",
        *(
            f"{rate(results.runs[load][0].rate)}/s"
            + (" (half peak)" if load == HALF_PEAK else "")
            + f", {results.runs[load][0].writes:,} writes"
            + (f" (1 in {results.runs[load][0].probe_every} probed)" if results.runs[load][0].probe_every > 1 else "")
            for load in loads
        ),
        "target (not asserted)",
    ]
    for line in table(header, rows, [False, *([True] * len(loads)), False]):
        log(f"  {line}")
    log("")
    log("  lag includes the after-read's own round trip from this process; the baseline is that round trip alone.")
    for load in loads:
        runs = results.runs[load]
        figures[load] = lag_load_json(runs)
        cpu = ", ".join(f"{name} {statistics.median(run.cpu[name] for run in runs) * 100:.0f}" for name in runs[0].cpu)
        total = statistics.median(sum(run.cpu.values()) for run in runs)
        log(
            f"  at {rate(runs[0].rate)}/s: the load generator issued its most delayed write "
            f"{max(run.late_ms_max for run in runs):.2f} ms late; CPU, % of one core (median): {cpu}; "
            f"machine {total * 100:.0f}% of {(os.cpu_count() or 1) * 100}%"
        )
        failures = [failure for run in runs for failure in run.errors]
        if failures:
            counts: dict[str, int] = {}
            for failure in failures:
                counts[f"{failure.call} {failure.code}"] = counts.get(f"{failure.call} {failure.code}", 0) + 1
            worst = max(failures, key=lambda f: f.elapsed_s)
            log(
                f"  at {rate(runs[0].rate)}/s: {len(failures)} calls FAILED and are left out of the figures: "
                + ", ".join(f"{n} x {what}" for what, n in sorted(counts.items()))
                + f" (e.g. {worst.call} {worst.code} {worst.elapsed_s:.3f} s after it was sent, "
                f"{worst.sent_s:.1f} s into the run: {worst.details!r}; all in the JSON)"
            )
        wrong = figures[load]["wrong_after_reads"]
        if wrong:
            log(f"  SET-UP FAILURE at {rate(runs[0].rate)}/s: {wrong} after-reads did not return the value written")
    return figures


def case_json(runs: Sequence[ConvergeRun]) -> dict[str, Any]:
    ok = [run for run in runs if run.converged]
    out: dict[str, Any] = {
        "runs": len(runs),
        "converged_runs": len(ok),
        "per_run": [
            {
                "converged": run.converged,
                "converge_seconds": run.converge_s,
                "reconnect_first_byte_seconds": run.reconnect_first_s,
                "reconnect_last_link_seconds": run.reconnect_last_s,
                "bytes": run.bytes,
                "bytes_until_settled": run.bytes_settled,
                "bytes_per_link": run.bytes_per_link,
                "minimum_bytes": run.minimum_bytes,
                "key_name_bytes": run.key_name_bytes,
                "bytes_over_minimum": run.ratio,
                "apply_ops_per_s": run.apply_ops,
                "apply_ops_per_s_once_connected": run.apply_ops_connected,
                "write_seconds": run.write_s,
                "keys_per_region": run.keys_per_region,
                "status_polls": run.polls,
                "cpu_cores_heal_to_converged": run.cpu,
            }
            for run in runs
        ],
    }
    if ok:
        out["converge"] = stats([run.converge_s for run in ok], "s").as_json()
        out["reconnect_first_byte"] = stats([run.reconnect_first_s for run in ok], "s").as_json()
        out["bytes"] = stats([run.bytes for run in ok], "bytes").as_json()
        out["bytes_over_minimum"] = stats([run.ratio for run in ok], "x").as_json()
        out["apply_ops_per_s"] = stats([run.apply_ops for run in ok], "ops/s").as_json()
        out["apply_ops_per_s_once_connected"] = stats([run.apply_ops_connected for run in ok], "ops/s").as_json()
    return out


def servers_cpu(run: ConvergeRun) -> float:
    return sum(v for name, v in run.cpu.items() if name.startswith("server "))


def converge_report(runs: dict[Case, list[ConvergeRun]], skipped: Sequence[str], log: Log) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    log("")
    log(
        "2. Convergence after healing a partition: K keys written on a while it was cut off ('drop'); "
        "median [min..max] over the runs that converged"
    )
    log("")
    rows: list[list[str]] = []
    for case, case_runs in runs.items():
        figures[case.name] = {"regions": case.regions, "keys": case.keys, **case_json(case_runs)}
        ok = [run for run in case_runs if run.converged]
        label = [str(case.regions), f"{case.keys:,}", f"{len(ok)}/{len(case_runs)}"]
        if not ok:
            rows.append([*label, "did not converge" if case_runs else "not run", *([""] * 6)])
            continue
        target = case.regions == 3 and case.keys == 10_000
        minimum = stats([run.minimum_bytes for run in ok], "bytes")
        rows.append(
            [
                *label,
                spread_s(stats([run.converge_s for run in ok], "s")),
                spread_s(stats([run.reconnect_first_s for run in ok], "s")),
                spread_bytes(stats([run.bytes for run in ok], "bytes")),
                f"{minimum.median / 2**20:.2f}",
                spread_ratio(stats([run.ratio for run in ok], "x")),
                spread_rate(stats([run.apply_ops for run in ok], "ops/s")),
                f"<= {TARGET_CONVERGE_S:g} s" if target else "",
            ]
        )
    header = [
        "regions",
        "keys",
        "conv.",
        "converge s",
        "reconnect s",
        "MiB through proxies",
        "min MiB",
        "bytes / min",
        "apply ops/s",
        "target (not asserted)",
    ]
    for line in table(header, rows, [True] * 9 + [False]):
        log(f"  {line}")
    log("")
    log(
        f"  targets for reference: 3 regions x 10,000 keys converge within {TARGET_CONVERGE_S:g} s of the heal; "
        f"bytes <= {TARGET_BYTES_RATIO:g}x minimum; incoming apply >= {rate(TARGET_APPLY_OPS)} ops/s"
    )
    log(
        "  converge s: heal -> every region's status token equal (polled every 20 ms); reconnect s: heal -> first "
        "byte through a proxy of one of a's links (a redials with a jittered backoff of at most 1 s)"
    )
    log(
        "  minimum = sum of len(encode(KeyState)) of the K keys in a's store x (regions - 1), key names excluded; "
        "apply ops/s = K / converge s"
    )
    extra: list[str] = []
    for case, case_runs in runs.items():
        ok = [run for run in case_runs if run.converged]
        if not ok:
            continue
        connected = statistics.median(run.apply_ops_connected for run in ok)
        last = [run.reconnect_last_s for run in ok if not math.isnan(run.reconnect_last_s)]
        with_names = statistics.median(run.bytes / (run.minimum_bytes + run.key_name_bytes) for run in ok)
        settled = statistics.median(run.bytes_settled / run.minimum_bytes for run in ok)
        per_key = statistics.median(run.minimum_bytes / (case.regions - 1) / case.keys for run in ok)
        copies = statistics.median(run.ratio * (case.regions - 1) for run in ok)
        extra.append(
            f"  {case.regions} x {case.keys:,}: {per_key:.0f} B of state per key; the links carried "
            f"{copies:.1f} copies of the changed state ({case.regions - 1} needed); apply once connected "
            f"{rate(connected)} ops/s; every a link carrying bytes after "
            f"{statistics.median(last) if last else math.nan:.3f} s; bytes / (minimum + key names) "
            f"{with_names:.2f}x; bytes until the counters settled / minimum {settled:.2f}x; "
            f"writing the keys on a took {statistics.median(run.write_s for run in ok):.2f} s; CPU heal -> "
            f"converged, % of one core: servers {statistics.median(servers_cpu(run) for run in ok) * 100:.0f} "
            f"together, this process {statistics.median(run.cpu['this process'] for run in ok) * 100:.0f}, "
            f"rest of machine {statistics.median(run.cpu['rest of machine'] for run in ok) * 100:.0f}"
        )
        short = [f"{name}={count}" for run in ok for name, count in run.keys_per_region.items() if count != case.keys]
        if short:
            extra.append(f"  SET-UP FAILURE {case.name}: regions hold other key counts than {case.keys}: {short}")
    if extra:
        log("")
        log("  Per case (medians):")
        for line in extra:
            log(line)
    for item in skipped:
        log(f"  skipped: {item}")
    figures["skipped"] = list(skipped)
    return figures


APPLY_MESSAGE_ENTRIES = 1_000


def measure_apply(cfg: Config) -> dict[str, Any]:
    """Incoming deltas applied durably with no network, beside raw baselines on the same bytes.

    The entries are a region's real log: single-op register writes of 100-byte
    values to fresh keys, sent in messages of 1,000 entries. crdtstore's figure
    is ``LmdbStore.apply_remote`` (decode with every invariant check, the
    causal-delivery check, per-key get/join/encode/put, the log append, one
    fsync per message). Baselines: (a) the same decode and the same key-by-key
    join into a dict in memory, no storage (what crdtstore's apply must do at
    the least, in this Python); (b) a raw LMDB loop putting each
    entry's bytes under its key, one fsync-ed transaction per message.
    """
    entries_total = 2_000 if cfg.quick else 10_000
    runs: dict[str, list[float]] = {"apply_remote": [], "decode_join": [], "lmdb_put": []}
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-apply-") as tmp:
        root = Path(tmp)
        source = LmdbStore(StorageConfig(root / "source", "a"))
        clock = HybridLogicalClock(lambda: time.time_ns() // 1_000_000)
        try:
            for start in range(0, entries_total, APPLY_MESSAGE_ENTRIES):
                requests = [
                    WriteRequest([SetRegister(f"k{start + j}", b"x" * 100)]) for j in range(APPLY_MESSAGE_ENTRIES)
                ]
                source.write_batch(requests, clock)
            raw, _, _ = source.log_since(VersionVector(), 1 << 40)
        finally:
            source.close()
        messages = [raw[i : i + APPLY_MESSAGE_ENTRIES] for i in range(0, len(raw), APPLY_MESSAGE_ENTRIES)]
        for rep in range(cfg.repeats):
            target = LmdbStore(StorageConfig(root / f"apply-{rep}", "b"))
            began = time.perf_counter()
            try:
                for message in messages:
                    decoded = [
                        LogEntry(e.origin, e.first, e.last, "a", decode_as(e.delta, StoreMap), e.delta) for e in message
                    ]
                    target.apply_remote(decoded, source="a")
            finally:
                target.close()
            runs["apply_remote"].append(len(raw) / (time.perf_counter() - began))

            began = time.perf_counter()
            states: dict[str, KeyState] = {}
            context = CausalContext()
            for e in raw:
                delta = decode_as(e.delta, StoreMap)
                for key, named in delta.entries.items():
                    states[key] = states.get(key, KeyState()).join_delta(named, context, delta.context)
                context = context.join(delta.context)
            runs["decode_join"].append(len(raw) / (time.perf_counter() - began))

            env = lmdb.open(str(root / f"raw-{rep}"), map_size=1 << 30, sync=True, metasync=True)
            began = time.perf_counter()
            try:
                for message in messages:
                    with env.begin(write=True) as txn:
                        for e in message:
                            txn.put(f"{e.origin}:{e.last}".encode(), e.delta)
            finally:
                env.close()
            runs["lmdb_put"].append(len(raw) / (time.perf_counter() - began))
    return {name: stats(values, "entries/s").as_json() for name, values in runs.items()} | {"entries": entries_total}


def apply_report(figures: dict[str, Any], log: Log) -> None:
    log("")
    log(
        f"3. Incoming deltas applied with no network: {figures['entries']:,} single-op entries in messages of "
        f"{APPLY_MESSAGE_ENTRIES:,}, one transaction and fsync per message; entries/s, median [min..max]"
    )
    log("")
    node = figures["apply_remote"]["median"]
    rows = []
    for name, what in (
        ("apply_remote", "crdtstore: LmdbStore.apply_remote (checks, join, log, fsync)"),
        ("decode_join", "baseline: the same decode + join, in memory"),
        ("lmdb_put", "baseline: raw LMDB put of each entry's bytes, fsync per message"),
    ):
        f = figures[name]
        rows.append([what, f"{rate(f['median'])} [{rate(f['min'])}..{rate(f['max'])}]", f"{node / f['median']:.2f}x"])
    for line in table(["figure", "entries/s", "crdtstore / it"], rows, [False, True, True]):
        log("  " + line)
    log(f"  target for reference: incoming apply >= {rate(TARGET_APPLY_OPS)} ops/s")


GROUP = "replication"
LAG = "Replication lag under steady load, 3 regions"
CONVERGE = "Convergence after a partition heals"
APPLY = "Incoming deltas applied with no network"


def lag_figures(lag: LagResults) -> list[Figure]:
    out: list[Figure] = []
    for load in (HALF_PEAK, LIGHT):
        runs = lag.runs.get(load, [])
        if not runs:
            continue
        where = f"at {rate(runs[0].rate)} writes/s" + (" (half peak)" if load == HALF_PEAK else "")
        for key, label, values, targeted in LAG_SERIES:
            if key in ("baseline_b", "write_ack"):
                continue
            for q in (50, 99):
                base = [] if key == "lag_b_minus_baseline" else [percentile(run.base_b_ms, q) for run in runs]
                target = f"<= {TARGET_LAG_P99_MS:g} ms" if targeted and q == 99 else ""
                out.append(
                    Figure(
                        GROUP,
                        LAG,
                        f"{label.split(':')[0]} p{q}, {where}",
                        stats([percentile(values(run), q) for run in runs], "ms"),
                        len(runs),
                        (
                            Baseline(
                                "a plain Get on b at the same moment (its round trip)", stats(base, "ms"), len(runs)
                            ),
                        )
                        if base
                        else (),
                        target=target,
                        better="lower",
                        params={"load": load, "rate": runs[0].rate, "percentile": q, "series": key},
                    )
                )
    return out


def converge_figures(runs: dict[Case, list[ConvergeRun]]) -> list[Figure]:
    out: list[Figure] = []
    for case, case_runs in runs.items():
        ok = [run for run in case_runs if run.converged]
        if not ok:
            continue
        params = {"regions": case.regions, "keys": case.keys}
        shape = f"{case.regions} regions, {case.keys:,} keys"
        note = f"{len(ok)}/{len(case_runs)} runs converged"
        out.append(
            Figure(
                GROUP,
                CONVERGE,
                f"time to converge, {shape}",
                stats([run.converge_s for run in ok], "s"),
                len(ok),
                (
                    Baseline(
                        "reconnect: heal to a's first byte through a proxy",
                        stats([r.reconnect_first_s for r in ok], "s"),
                        len(ok),
                    ),
                ),
                target=f"<= {TARGET_CONVERGE_S:g} s" if (case.regions, case.keys) == (3, 10_000) else "",
                better="lower",
                params=params,
                note=note,
            )
        )
        out.append(
            Figure(
                GROUP,
                CONVERGE,
                f"bytes to converge, {shape}",
                stats([run.bytes for run in ok], "bytes"),
                len(ok),
                (
                    Baseline(
                        "minimum: encoded changed state x (regions - 1)",
                        stats([run.minimum_bytes for run in ok], "bytes"),
                        len(ok),
                    ),
                ),
                target=f"ratio <= {TARGET_BYTES_RATIO:g}",
                better="lower",
                params=params,
                note=note,
            )
        )
        out.append(
            Figure(
                GROUP,
                CONVERGE,
                f"apply rate while converging (keys / converge s), {shape}",
                stats([run.apply_ops for run in ok], "ops/s"),
                len(ok),
                target=f">= {rate(TARGET_APPLY_OPS)} ops/s",
                better="higher",
                params=params,
            )
        )
    return out


def apply_figures(applied: dict[str, Any], repeats: int) -> list[Figure]:
    def of(name: str) -> Stats:
        f = applied[name]
        return Stats(f["median"], f["min"], f["max"], f["unit"])

    return [
        Figure(
            GROUP,
            APPLY,
            "LmdbStore.apply_remote (checks, join, log, fsync per message)",
            of("apply_remote"),
            repeats,
            (
                Baseline("msgpack decode + join in memory, no storage", of("decode_join"), repeats),
                Baseline("raw LMDB put of each entry's bytes, fsync per message", of("lmdb_put"), repeats),
            ),
            target=f">= {rate(TARGET_APPLY_OPS)} ops/s",
            better="higher",
            params={"entries": applied["entries"], "entries_per_message": APPLY_MESSAGE_ENTRIES},
        )
    ]


def collect(cfg: Config, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    """Run the benchmark: the JSON of ``--json`` (its ``figures``) and the suite's figures.

    ``log`` gets the report, ``step`` the progress; when ``step`` is not this module's ``progress`` (stderr),
    the progress lines (and, on a failure, the tail of each region's log) go into ``log`` as well.
    """
    # A region dials its peers through the proxies as soon as it starts, often before the peer listens;
    # the proxy logs each refused connection as a warning. That is expected here; errors still show.
    logging.getLogger("crdtstore.tools.proxy").setLevel(logging.ERROR)
    deadline = time.perf_counter() + cfg.budget_s
    if step is not progress:

        def sink(msg: str) -> None:
            log(msg)
            step(msg.strip())

        _progress_sink.append(sink)
    try:
        step("lag under steady load, 3 regions")
        lag = measure_lag(cfg, deadline)
        step("convergence: " + ", ".join(f"{c.regions}x{c.keys:,}" for c in cfg.cases))
        converge_runs, skipped = measure_convergence(cfg, deadline)
        step("applying incoming deltas with no network")
        applied = measure_apply(cfg)
    finally:
        if step is not progress:
            _progress_sink.pop()
    figures = {"lag": lag_report(lag, log), "convergence": converge_report(converge_runs, skipped, log)}
    apply_report(applied, log)
    figures["apply"] = applied
    suite = lag_figures(lag) + converge_figures(converge_runs) + apply_figures(applied, cfg.repeats)
    return figures, suite


def main(argv: Sequence[str] | None = None) -> int:
    parser = group_parser(
        "replication",
        __doc__,
        "3 regions x 1,000 keys only, shorter lag runs, 2 repeats",
        "repeats per measurement (default 5, 2 with --quick)",
    )
    args = parser.parse_args(argv)
    cfg = make_config(args.quick, args.repeats)
    began = time.perf_counter()

    log = print_line

    log(
        f"crdtstore replication benchmark ({'quick' if cfg.quick else 'full'}): {cfg.repeats} repeats; "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs"
    )
    log(
        "placement: every region its own `crdtstore serve` process, every inter-region link through a LinkProxy "
        "on a thread of this process, load generator (grpc.aio, generated stubs) in this process; 127.0.0.1, "
        "no CPU pinning"
    )
    figures, _ = collect(cfg, log, progress)
    elapsed = time.perf_counter() - began
    log("")
    log(f"total {elapsed:.1f} s")
    if args.json is not None:
        out = {
            "meta": {
                "mode": "quick" if cfg.quick else "full",
                "repeats": cfg.repeats,
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "placement": "regions in their own processes; link proxies on a thread of the benchmark process; "
                "load generator in the benchmark process; same machine, 127.0.0.1, unpinned",
                "total_seconds": elapsed,
            },
            "figures": figures,
            "targets_not_asserted": {
                "lag_p99_ms": TARGET_LAG_P99_MS,
                "converge_seconds_3_regions_10000_keys": TARGET_CONVERGE_S,
                "bytes_over_minimum": TARGET_BYTES_RATIO,
                "apply_ops_per_s": TARGET_APPLY_OPS,
            },
        }
        write_json(args.json, out)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Redis beside crdtstore: the store a user would pick instead, measured in the same run on the same machine.

Durable single-operation writes (1 and 64 in flight), adding one member to a set of N members, membership of a
member, and batches of 100 and 1,000 writes, each against ``redis-server`` with ``appendfsync always`` (an fsync
before every answer, as crdtstore fsyncs every group commit); every crdtstore figure is a ratio to Redis. Run it
from the repository root::

    python -m benchmarks.redis_anchor              # sets of up to 10,000,000 members, 5 repeats (about 15 minutes)
    python -m benchmarks.redis_anchor --quick      # sets of up to 100,000 members, 3 repeats (about a minute)
    python -m benchmarks.redis_anchor --json bench-out/redis_anchor.json

Placement, what each side does, the skips and the caveats: ``benchmarks/METHODS.md``, section "redis_anchor".
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import group_parser, machine_busy_s, memory_of, print_line, process_cpu_s, stats
from benchmarks.figures import Baseline, Figure, Stats, write_json
from benchmarks.groups import Mode
from benchmarks.micro import member, rate
from benchmarks.micro import table as micro_table
from benchmarks.node import VALUE, Sample, closed_loop, stop_node
from benchmarks.report import ratio_text, table
from crdtstore.client import AsyncClient, ClientError
from crdtstore.operations import AddMembers, SetRegister
from crdtstore.testing.process import ServerProcess

__all__ = ["GROUP", "Config", "RedisServer", "Skipped", "collect", "make_config", "redis_unavailable"]

GROUP = "redis_anchor"
SEC_WRITES = "Durable single-operation writes: crdtstore set against Redis SET"
SEC_ADD = "Adding one member to a set of N: crdtstore add against Redis SADD"
SEC_MEMBER = "Membership of one member in a set of N: crdtstore sismember against Redis SISMEMBER"
SEC_REMOVE = "Removing one member from a set of N: crdtstore srem against Redis SREM"
SEC_BATCH = "Batched writes: one crdtstore request against a Redis pipeline"

CRDTSTORE, REDIS = "crdtstore", "redis"
WRITE_IN_FLIGHT = (1, 64)
BATCH_OPS = (100, 1_000)
# Big sets are built in requests this large on both sides: crdtstore's limits.members_per_operation_max and
# limits.members_per_batch_max (one request of ten operations on the same key).
BUILD_MEMBERS_PER_OP = 10_000
BUILD_MEMBERS_PER_REQUEST = 100_000
RPC_TIMEOUT_S = 120.0
START_TIMEOUT_S = 30.0
VERSION_TIMEOUT_S = 10.0  # redis-server --version
START_ATTEMPTS = 3  # a free port may be taken between choosing it and redis-server binding it
# Default settings: a set's members are records of their own, so no limit needs raising for large sets.
NODE_CONFIG = ""
# Durable per write like crdtstore; no snapshots; no background AOF rewrite (a fork) in the middle of a run.
REDIS_SETTINGS: tuple[tuple[str, str], ...] = (
    ("appendonly", "yes"),
    ("appendfsync", "always"),
    ("save", ""),
    ("auto-aof-rewrite-percentage", "0"),
    ("databases", "1"),
)
KEY_FORMAT = "{}/{:012d}"
SET_KEY_FORMAT = "set/{:d}"

Log = Callable[[str], None]
Call = Callable[[Any], Awaitable[Any]]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode
    repeats: int
    run_s: float  # time bound of one timed run of writes, batches or reads
    warmup_s: float  # time bound of a warm-up run
    ops_per_run_max: int  # count bound of one run of writes or batches, in operations
    set_sizes: tuple[int, ...]
    add_run_s: float  # time bound of one timed run of adds (a run makes at least one)
    adds_per_run_max: int
    reads_per_run_max: int
    one_op_s_max: float  # a set size whose single add (or read) takes longer is skipped; 0: none is skipped


def make_config(quick: bool, repeats: int | None = None, smoke: bool = False) -> Config:
    if smoke:
        cfg = Config("smoke", 1, 0.15, 0.05, 3_000, (0, 1_000), 0.3, 200, 500, 1.0)
    elif quick:
        cfg = Config("quick", 3, 0.5, 0.2, 30_000, (0, 1_000, 100_000), 1.5, 500, 2_000, 1.0)
    else:
        sizes = (0, 1_000, 100_000, 1_000_000, 10_000_000)
        cfg = Config("full", 5, 2.0, 0.5, 300_000, sizes, 4.0, 2_000, 20_000, 0.0)
    return cfg if repeats is None else replace(cfg, repeats=repeats)


# ---------------------------------------------------------------------------
# availability and the redis-server process
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skipped:
    what: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"what": self.what, "reason": self.reason}


def redis_client_module() -> Any:
    """``redis.asyncio``, imported on first use: the ``redis`` package is an optional extra (``bench``)."""
    import redis.asyncio

    return redis.asyncio


def redis_unavailable(search_path: str | None = None) -> tuple[str | None, str]:
    """The redis-server executable (found on ``search_path``, default PATH) and why the group cannot run, if so."""
    try:
        redis_client_module()
    except ImportError as exc:
        return None, f"the Python package redis is not importable ({exc}); install it with pip install -e '.[bench]'"
    executable = shutil.which("redis-server", path=search_path)
    if executable is None:
        return None, "redis-server not found on PATH (Debian: apt-get install redis-server)"
    return executable, ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _tail(path: Path, lines: int = 5) -> str:
    try:
        kept = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " / ".join(kept[-lines:]) or "(empty log)"


class RedisStartError(RuntimeError):
    """redis-server could not be run or did not start: the group records a skip."""


class RedisServer(ServerProcess):
    """``redis-server`` on a free loopback port, its append-only file in ``data_dir``.

    A ``ServerProcess`` but for how it starts: stopped, killed and waited for as the node is
    (``benchmarks.node.stop_node``: SIGTERM, on which it fsyncs the AOF and exits, then SIGKILL).
    """

    def __init__(self, executable: str, data_dir: Path) -> None:
        super().__init__(data_dir, start_timeout_s=START_TIMEOUT_S)
        self.executable = executable

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def version(self) -> str:
        try:
            done = subprocess.run(
                [self.executable, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        return done.stdout.strip() or done.stderr.strip() or "unknown"

    def start(self) -> RedisServer:
        """Start it and wait until its port accepts connections; ``RedisStartError`` with its log's tail otherwise."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            args = ["--bind", self.host, "--port", str(self.port), "--dir", str(self.data_dir)]
            args += ["--daemonize", "no", "--logfile", str(self.log_path)]
            for name, value in REDIS_SETTINGS:
                args += [f"--{name}", value]
            try:
                self.proc = subprocess.Popen(
                    [self.executable, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, text=True
                )
            except OSError as exc:
                raise RedisStartError(f"redis-server could not be run: {exc}") from exc
            problem = self._wait_listening()
            if not problem:
                return self
            self.kill()
        raise RedisStartError(f"redis-server did not start: {problem}")

    def _wait_listening(self) -> str:
        """'' once the port accepts connections; otherwise what went wrong."""
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return f"exited with {code}: {_tail(self.log_path)}"
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return ""
            except OSError:
                time.sleep(0.02)
        return f"its port accepted no connection within {self.start_timeout_s:g} s: {_tail(self.log_path)}"


# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------


@dataclass
class Side:
    """One system under load: its server's pid and the calls of each workload."""

    name: str
    pid: int
    write: Call  # one key -> a durable single write
    batch: Call  # a list of keys -> one request (crdtstore) or one pipeline (Redis) of writes
    add: Callable[[str], Call]  # set key -> (one member -> add it)
    remove: Callable[[str], Call]  # set key -> (one member -> remove it)
    member: Callable[[str, bool], Call]  # set key, the answer expected -> (one member -> is it in the set?)
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # measurement -> one per repeat


async def timed(pid: int, run: Awaitable[Sample]) -> Sample:
    """``run``'s sample with the CPU of the server ``pid``, of this process and of the rest of the machine."""
    gc.collect()
    before = _cpu(pid)
    sample = await run
    server, client, busy = (now - then for now, then in zip(_cpu(pid), before, strict=True))
    return Sample(sample.requests, sample.elapsed_s, server, client, max(0.0, busy - server - client))


def _cpu(pid: int) -> tuple[float, float, float]:
    return process_cpu_s(pid), time.process_time(), machine_busy_s()


@dataclass(frozen=True, slots=True)
class Measurement:
    section: str
    name: str  # also the key of its samples
    unit: str
    ops_per_request: int
    params: dict[str, float | int | str]
    note: str


# kind -> section, name, unit and note, formatted with in_flight, ops (operations per request) and n (set size)
KINDS: dict[str, tuple[str, str, str, str]] = {
    "write": (
        SEC_WRITES,
        "durable single-op writes, {in_flight} in flight",
        "ops/s",
        f"crdtstore: AsyncClient.set of a {len(VALUE)}-byte value under a fresh key (durability local: fsynced "
        "group commit); Redis: SET of the same, appendfsync always",
    ),
    "batch": (
        SEC_BATCH,
        "batch of {ops:,} writes, 1 in flight",
        "ops/s",
        "crdtstore: one AsyncClient.mutate of {ops:,} SetRegister operations (atomic, one fsynced commit); Redis: a "
        "pipeline of {ops:,} SETs without MULTI (not atomic; fsynced before the answers go out)",
    ),
    "member": (
        SEC_MEMBER,
        "membership of one member, set of {n:,}, 1 in flight",
        "reads/s",
        "crdtstore: AsyncClient.sismember (KV.Contains, one member record read); Redis: SISMEMBER",
    ),
    "add": (
        SEC_ADD,
        "add one member to a set of {n:,}, 1 in flight",
        "adds/s",
        "crdtstore: AsyncClient.sadd of one new member (the node writes that member's record and the key's small "
        "record); Redis: SADD of the same member",
    ),
    "remove": (
        SEC_REMOVE,
        "remove one member from a set of {n:,}, 1 in flight",
        "removes/s",
        "crdtstore: AsyncClient.srem of one member the set holds (the node deletes that member's record); Redis: "
        "SREM of the same member",
    ),
}


def measurement(kind: str, *, in_flight: int = 1, ops: int = 1, n: int | None = None) -> Measurement:
    section, name, unit, note = KINDS[kind]
    values = {"in_flight": in_flight, "ops": ops, "n": n or 0}
    params: dict[str, float | int | str] = {"kind": kind, "in_flight": in_flight, "ops_per_request": ops}
    if n is not None:
        params["set_size"] = n
        if n == 0:
            note += "; the set is empty (no key on either side)"
    return Measurement(section, name.format(**values), unit, ops, params, note.format(**values))


@dataclass
class Results:
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    crdtstore: dict[str, list[Sample]] = field(default_factory=dict)
    redis: dict[str, list[Sample]] = field(default_factory=dict)
    set_builds_s: dict[str, dict[int, float]] = field(default_factory=dict)  # side -> set size -> seconds
    # Set size -> each server's memory once the set of that size was built and measured (see ``memory_of``).
    memory_mib: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    one_op_s: dict[str, dict[str, float]] = field(default_factory=dict)  # side -> probe -> seconds
    versions: dict[str, str] = field(default_factory=dict)


class Bench:
    def __init__(self, cfg: Config, sides: tuple[Side, Side], results: Results, step: Log) -> None:
        self.cfg = cfg
        self.crdtstore, self.redis = sides
        self.results = results
        self.step = step
        self.runs = 0

    def fresh_keys(self, count: int) -> list[str]:
        """``count`` keys never written before in this run (the same names on both sides)."""
        self.runs += 1
        return [KEY_FORMAT.format(self.runs, i) for i in range(count)]

    def order(self, rep: int) -> tuple[Side, Side]:
        """Which side goes first alternates between repeats."""
        return (self.crdtstore, self.redis) if rep % 2 == 0 else (self.redis, self.crdtstore)

    async def writes(self, in_flight: int) -> None:
        cfg = self.cfg
        m = measurement("write", in_flight=in_flight)
        self.step(m.name)
        count = max(in_flight, cfg.ops_per_run_max)
        for side in (self.crdtstore, self.redis):
            await closed_loop(side.write, self.fresh_keys(count), count, in_flight, cfg.warmup_s)
        for rep in range(cfg.repeats):
            for side in self.order(rep):
                run = closed_loop(side.write, self.fresh_keys(count), count, in_flight, cfg.run_s)
                side.samples.setdefault(m.name, []).append(await timed(side.pid, run))
        self.results.measurements.append(m)

    async def batches(self, ops: int) -> None:
        cfg = self.cfg
        m = measurement("batch", ops=ops)
        self.step(m.name)
        count = max(1, cfg.ops_per_run_max // ops)

        def requests() -> list[list[str]]:
            keys = self.fresh_keys(count * ops)
            return [keys[i : i + ops] for i in range(0, len(keys), ops)]

        for side in (self.crdtstore, self.redis):
            await closed_loop(side.batch, requests(), count, 1, cfg.warmup_s)
        for rep in range(cfg.repeats):
            for side in self.order(rep):
                run = closed_loop(side.batch, requests(), count, 1, cfg.run_s)
                side.samples.setdefault(m.name, []).append(await timed(side.pid, run))
        self.results.measurements.append(m)

    async def sets(self, n: int, build: dict[str, Call]) -> None:
        """Build a set of ``n`` members on both sides; time membership in it, then adding one member to it."""
        results = self.results
        key = SET_KEY_FORMAT.format(n)
        self.step(f"a set of {n:,} members on both sides")
        for side in (self.crdtstore, self.redis):
            began = time.perf_counter()
            try:
                for start in range(0, n, BUILD_MEMBERS_PER_REQUEST):
                    await build[side.name]((key, range(start, min(n, start + BUILD_MEMBERS_PER_REQUEST))))
            except ClientError as exc:
                results.skipped.append(Skipped(f"sets of {n:,}", f"the crdtstore node refused the build: {exc}"))
                return
            results.set_builds_s.setdefault(side.name, {})[n] = time.perf_counter() - began
        await self.membership(n, key)
        await self.adds(n, key)
        if n:
            await self.removes(n, key)
        results.memory_mib[n] = {side.name: memory_of(side.pid) for side in (self.crdtstore, self.redis)}

    async def membership(self, n: int, key: str) -> None:
        """Reads of the set as both sides built it: members 0 .. n-1 (none: a member of a set that is not there)."""
        m = measurement("member", n=n)
        self.step(m.name)
        asked = [member(i) for i in range(0, n, max(1, n // 997))] or [member(0)]
        why = await self._probe(f"membership in {n:,}", lambda side: side.member(key, n > 0), asked[0])
        if why is not None:
            self.results.skipped.append(Skipped(m.name, why))
            return
        count = self.cfg.reads_per_run_max
        for rep in range(self.cfg.repeats):
            for side in self.order(rep):
                run = closed_loop(side.member(key, n > 0), asked, count, 1, self.cfg.run_s)
                side.samples.setdefault(m.name, []).append(await timed(side.pid, run))
        self.results.measurements.append(m)

    async def adds(self, n: int, key: str) -> None:
        """Adds of new members, one at a time; each side's set grows by as many as its runs made."""
        cfg = self.cfg
        m = measurement("add", n=n)
        self.step(m.name)
        size = {self.crdtstore.name: n, self.redis.name: n}  # each side's set holds members 0 .. size-1
        why = await self._probe(f"add into {n:,}", lambda side: side.add(key), member(n))
        if why is not None:
            self.results.skipped.append(Skipped(m.name, why))
            return
        size = {name: count + 1 for name, count in size.items()}
        for rep in range(cfg.repeats):
            for side in self.order(rep):
                new = [member(i) for i in range(size[side.name], size[side.name] + cfg.adds_per_run_max)]
                run = closed_loop(side.add(key), new, cfg.adds_per_run_max, 1, cfg.add_run_s)
                sample = await timed(side.pid, run)
                side.samples.setdefault(m.name, []).append(sample)
                size[side.name] += sample.requests
        self.results.measurements.append(replace(m, params={**m.params, "set_size_after_max": max(size.values())}))

    async def removes(self, n: int, key: str) -> None:
        """Removes of members the set holds, one at a time, from its first member on; the set shrinks as much."""
        cfg = self.cfg
        m = measurement("remove", n=n)
        self.step(m.name)
        why = await self._probe(f"remove from {n:,}", lambda side: side.remove(key), member(0))
        if why is not None:
            self.results.skipped.append(Skipped(m.name, why))
            return
        removed = {self.crdtstore.name: 1, self.redis.name: 1}
        # Every repeat finds members left to remove, and the set keeps at least half of them.
        per_run = max(1, min(cfg.adds_per_run_max, n // (2 * cfg.repeats)))
        for rep in range(cfg.repeats):
            for side in self.order(rep):
                gone = [member(i) for i in range(removed[side.name], min(n, removed[side.name] + per_run))]
                if not gone:
                    break
                run = closed_loop(side.remove(key), gone, len(gone), 1, cfg.add_run_s)
                sample = await timed(side.pid, run)
                side.samples.setdefault(m.name, []).append(sample)
                removed[side.name] += sample.requests
        self.results.measurements.append(m)

    async def _probe(self, what: str, call_of: Callable[[Side], Call], arg: str) -> str | None:
        """One untimed call on each side (also the warm-up); why the measurement is skipped, or None."""
        for side in (self.crdtstore, self.redis):
            began = time.perf_counter()
            await call_of(side)(arg)
            seconds = time.perf_counter() - began
            self.results.one_op_s.setdefault(side.name, {})[what] = seconds
            if self.cfg.one_op_s_max and seconds > self.cfg.one_op_s_max:
                return (
                    f"one {what} took {seconds:.2f} s on {side.name}, over the {self.cfg.one_op_s_max:g} s bound of "
                    f"--{self.cfg.mode} (the full run measures it)"
                )
        return None


# ---------------------------------------------------------------------------
# the two sides
# ---------------------------------------------------------------------------


def _check_member(who: str, key: str, name: str, found: bool, expected: bool) -> None:
    """The side's answer is the one its set calls for; a side answering otherwise is not measuring what it says."""
    if found != expected:
        raise RuntimeError(f"{who}: {name!r} {'is not' if expected else 'is'} in the set {key!r}")


def crdtstore_side(kv: AsyncClient, pid: int) -> tuple[Side, Call]:
    """crdtstore's calls: the client's ``set``, ``mutate``, ``sadd``, ``srem`` and ``sismember``."""

    async def contains(key: str, expected: bool, name: str) -> None:
        _check_member(CRDTSTORE, key, name, await kv.sismember(key, name), expected)

    async def build(job: tuple[str, range]) -> None:
        key, indexes = job
        names = [member(i) for i in indexes]
        chunks = range(0, len(names), BUILD_MEMBERS_PER_OP)
        await kv.mutate([AddMembers(key, tuple(names[i : i + BUILD_MEMBERS_PER_OP])) for i in chunks])

    side = Side(
        CRDTSTORE,
        pid,
        write=lambda key: kv.set(key, VALUE),
        batch=lambda keys: kv.mutate([SetRegister(key, VALUE) for key in keys]),
        add=lambda key: partial(kv.sadd, key),
        remove=lambda key: partial(kv.srem, key),
        member=lambda key, expected: partial(contains, key, expected),
    )
    return side, build


def redis_side(client: Any, pid: int) -> tuple[Side, Call]:
    """Redis's calls through redis.asyncio: SET, a pipeline of SETs, SADD, SREM and SISMEMBER."""

    async def pipelined(keys: list[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, VALUE)
        await pipe.execute()

    async def sismember(key: str, expected: bool, name: str) -> None:
        _check_member(REDIS, key, name, bool(await client.sismember(key, name)), expected)

    async def build(job: tuple[str, range]) -> None:
        key, indexes = job
        names = [member(i) for i in indexes]
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(names), BUILD_MEMBERS_PER_OP):
            pipe.sadd(key, *names[i : i + BUILD_MEMBERS_PER_OP])
        await pipe.execute()

    side = Side(
        REDIS,
        pid,
        write=lambda key: client.set(key, VALUE),
        batch=pipelined,
        add=lambda key: partial(client.sadd, key),
        remove=lambda key: partial(client.srem, key),
        member=lambda key, expected: partial(sismember, key, expected),
    )
    return side, build


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


async def run(cfg: Config, workdir: Path, executable: str, step: Log, log: Log) -> Results:
    """Start both servers, measure, and stop both, on error too (redis-server first: it is the one that may not
    start, which is a skip, not an error)."""
    results = Results()
    redis_asyncio = redis_client_module()
    server = RedisServer(executable, workdir / "redis")
    results.versions = {"redis-server": server.version(), "redis (Python)": _version("redis")}
    config_file = workdir / "node.toml"
    config_file.write_text(NODE_CONFIG)
    node = ServerProcess(workdir / "node", extra_args=("--config", str(config_file)), start_timeout_s=START_TIMEOUT_S)
    try:
        step("starting redis-server and crdtstore serve")
        server.start()
        node.start()
        assert node.proc is not None
        async with AsyncClient(node.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            redis = redis_asyncio.Redis(host="127.0.0.1", port=server.port, socket_timeout=RPC_TIMEOUT_S)
            try:
                await redis.ping()
                log(
                    f"crdtstore serve pid {node.proc.pid} on {node.addr}; redis-server pid {server.pid} on "
                    f"127.0.0.1:{server.port} ({results.versions['redis-server']}); load generator pid {os.getpid()}"
                )
                crdt, crdt_build = crdtstore_side(kv, node.proc.pid)
                red, red_build = redis_side(redis, server.pid)
                bench = Bench(cfg, (crdt, red), results, step)
                for in_flight in WRITE_IN_FLIGHT:
                    await bench.writes(in_flight)
                for ops in BATCH_OPS:
                    await bench.batches(ops)
                for n in cfg.set_sizes:
                    await bench.sets(n, {crdt.name: crdt_build, red.name: red_build})
                results.crdtstore, results.redis = crdt.samples, red.samples
            finally:
                await redis.aclose()
    finally:
        try:
            stop_node(server)
        finally:
            stop_node(node)
    return results


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------
# figures and the text report
# ---------------------------------------------------------------------------


def _rates(samples: Sequence[Sample], ops: int, unit: str) -> Stats:
    return stats([s.rps * ops for s in samples], unit)


def _cpu_text(samples: Sequence[Sample]) -> str:
    """Server and load-generator CPU of the median run, in % of one core."""
    median = sorted(samples, key=lambda s: s.rps)[len(samples) // 2]
    return f"{median.server_cpu * 100:.0f}%/{median.client_cpu * 100:.0f}%"


def figures_of(results: Results) -> list[Figure]:
    out: list[Figure] = []
    for m in results.measurements:
        mine, theirs = results.crdtstore[m.name], results.redis[m.name]
        baselines = [Baseline("Redis, same run, same load", _rates(theirs, m.ops_per_request, m.unit), len(theirs))]
        cpu = f"CPU server/client, % of one core, median run: crdtstore {_cpu_text(mine)}, Redis {_cpu_text(theirs)}"
        out.append(
            Figure(
                GROUP,
                m.section,
                m.name,
                _rates(mine, m.ops_per_request, m.unit),
                len(mine),
                tuple(baselines),
                better="higher",
                params={
                    **m.params,
                    "crdtstore_requests_timed": sum(s.requests for s in mine),
                    "redis_requests_timed": sum(s.requests for s in theirs),
                },
                note=f"{m.note}; {cpu}",
            )
        )
    return out


def _quoted(value: str) -> str:
    """A setting as redis.conf writes it: an empty value is ``""``."""
    return value or '""'


def report_notes(results: Results) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in results.versions.items())
    notes = [
        f"Redis: {versions}; started by the group with "
        + ", ".join(f"{name} {_quoted(value)}" for name, value in REDIS_SETTINGS)
        + "; crdtstore serve with default settings.",
        "Clients: crdtstore.client.AsyncClient (one gRPC channel) and redis.asyncio.Redis (a connection pool: one "
        "connection per request in flight), both in this process.",
    ]
    builds = results.set_builds_s
    if builds:
        parts = [
            f"{n:,}: crdtstore {builds[CRDTSTORE][n]:.2f} s, Redis {builds[REDIS].get(n, math.nan):.2f} s"
            for n in sorted(builds.get(CRDTSTORE, {}))
            if n
        ]
        if parts:
            notes.append(f"Building the sets ({BUILD_MEMBERS_PER_REQUEST:,} members per request): " + "; ".join(parts))
    if results.memory_mib:
        parts = []
        for n, sides in sorted(results.memory_mib.items()):
            mine, theirs = sides.get(CRDTSTORE, {}), sides.get(REDIS, {})
            parts.append(
                f"{n:,}: crdtstore {mine.get('RssAnon', math.nan):,.0f} MiB (peak resident "
                f"{mine.get('VmHWM', math.nan):,.0f} MiB), Redis {theirs.get('RssAnon', math.nan):,.0f} MiB"
            )
        notes.append(
            "Memory after each set size was built and measured, anonymous resident (the heap; crdtstore's LMDB pages "
            "are file pages, counted only in its peak resident): " + "; ".join(parts)
        )
    notes += [f"skipped: {s.what}: {s.reason}" for s in results.skipped]
    return notes


def text_table(figures: Sequence[Figure]) -> list[str]:
    """crdtstore beside Redis, one line per measurement."""
    rows = [["measurement", "crdtstore", "Redis", "crdtstore/Redis"]]
    for f in figures:
        base = f.baselines[0]
        unit = f" {f.stats.unit}"
        rows.append([f.name, rate(f.stats.median) + unit, rate(base.stats.median) + unit, ratio_text(f.ratio(base))])
    return micro_table(rows[0], rows[1:], [False, True, True, True])


def skipped_group(reason: str, log: Log) -> tuple[dict[str, Any], list[Figure]]:
    log(f"skipped: {reason}")
    return {"skipped": [Skipped(GROUP, reason).as_json()], "report_notes": [f"skipped: {reason}"]}, []


def collect(
    cfg: Config, log: Log, step: Log = _quiet, *, search_path: str | None = None
) -> tuple[dict[str, Any], list[Figure]]:
    """Run the group: its detail (with ``report_notes`` and ``skipped``) and its figures.

    A missing redis client package or ``redis-server`` (looked for on ``search_path``, default PATH), or a
    redis-server that does not start, is a recorded skip with no figures; anything else that fails is an error.
    """
    executable, reason = redis_unavailable(search_path)
    if executable is None:
        return skipped_group(reason, log)
    workdir = Path(tempfile.mkdtemp(prefix="crdtstore-bench-redis-"))
    try:
        results = asyncio.run(run(cfg, workdir, executable, step, log))
    except RedisStartError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        return skipped_group(str(exc), log)
    except BaseException:
        print(f"kept {workdir} (data and server logs of the failed run)", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    figures = figures_of(results)
    log("")
    log("crdtstore against Redis: medians over the repeats; ratio = crdtstore median / Redis median")
    log("")
    for line in text_table(figures):
        log(line)
    log("")
    notes = report_notes(results)
    for note in notes:
        log(f"- {note}")
    detail = {
        "config": asdict(cfg),
        "versions": results.versions,
        "redis_settings": dict(REDIS_SETTINGS),
        "node_config": NODE_CONFIG,
        "set_builds_s": {side: {str(n): s for n, s in by.items()} for side, by in results.set_builds_s.items()},
        "memory_mib": {str(n): sides for n, sides in results.memory_mib.items()},
        "one_op_s": results.one_op_s,
        "skipped": [s.as_json() for s in results.skipped],
        "report_notes": notes,
    }
    return detail, figures


def main(argv: Sequence[str] | None = None) -> int:
    repeats_help = "repeats per measurement (default 5, 3 with --quick)"
    args = group_parser(GROUP, __doc__, "sets of up to 100,000 members, 3 repeats", repeats_help).parse_args(argv)
    began = time.perf_counter()
    detail, figures = collect(make_config(args.quick, args.repeats), print_line, print_line)
    print("\n" + "\n".join(table(figures)) + f"\n\n{len(figures)} figures in {time.perf_counter() - began:.1f} s")
    if args.json is not None:
        write_json(args.json, {"figures": [f.as_json() for f in figures], "detail": detail})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite: every group in turn, with a progress line, into ``results.json``, ``REPORT.md`` and plots.

``python -m benchmarks run [--quick] [--only NAME,...] [--repeats N] --out DIR``
runs the groups (``micro``, ``node``, ``replication``, ``storage``, ``sync_cost``, ``peers``)
one after the other in this process, each with its own servers (or, for
``peers``, its ``node`` subprocess) where it has any, and
writes into DIR:

* ``results.json``: every figure with its unit, median, min and max over the
  repeats, its baselines and the ratios to them, the issue's target where it
  states one; the machine, the commit (and whether the tree had changes), the
  start time, the exact command and where client and servers ran; and each
  group's own detailed figures (``groups.NAME.detail``);
* ``REPORT.md``: one table per section, and the plots;
* ``*.png``: the plots (``benchmarks.report``);
* ``logs/NAME.txt``: each group's own text report, as its
  ``python -m benchmarks.NAME`` prints it.

A group that fails is recorded with its error and the others still run; the
exit status is then 1. Nothing here judges speed: the suite's own test
(``tests/test_benchmarks.py``) only checks that the files and figures are there.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks import micro, node, peers, replication, storage, sync_cost
from benchmarks.figures import Figure, json_safe

__all__ = ["GROUPS", "Progress", "SuiteResult", "run_suite"]

Mode = Literal["smoke", "quick", "full"]
Log = Callable[[str], None]
Runner = Callable[[Mode, int | None, Log, Log], tuple[dict[str, Any], list[Figure]]]

REPO = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1


def _micro(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    return micro.collect(micro.make_config(mode != "full", repeats, smoke=mode == "smoke"), log, step)


def _node(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # The node benchmark has no size below --quick: it needs a server under real load.
    return node.collect(node.make_config(mode != "full", repeats), log, step)


def _replication(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    return replication.collect(replication.make_config(mode != "full", repeats), log, step)


def _storage(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # Sizes are counted, not timed: there is nothing to repeat.
    return storage.collect(storage.make_config(mode != "full", smoke=mode == "smoke"), log, step)


def _sync_cost(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # Bytes counted in virtual time from one seed: a repeat would count the same bytes.
    return sync_cost.collect(sync_cost.make_config(mode != "full", smoke=mode == "smoke"), log, step)


def _peers(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    return peers.collect(peers.make_config(mode != "full", repeats, smoke=mode == "smoke"), log, step)


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    title: str
    placement: str
    run: Runner


GROUPS: dict[str, Group] = {
    g.name: g
    for g in (
        Group(
            "micro",
            "CRDT core, in memory",
            "one process (this one), no network or storage; baselines on plain Python data of the same size and shape",
            _micro,
        ),
        Group(
            "node",
            "One durable node: the client path",
            "node (`crdtstore serve`) and echo server each in their own process, load generator (grpc.aio, generated "
            "stubs) in this process; same machine, 127.0.0.1, no CPU pinning; raw LMDB baseline in this process on the "
            "same file system",
            _node,
        ),
        Group(
            "replication",
            "Replication between regions",
            "every region its own `crdtstore serve` process; every inter-region link through a LinkProxy on a thread "
            "of this process; load generator in this process; same machine, 127.0.0.1, no CPU pinning",
            _replication,
        ),
        Group(
            "storage",
            "Memory and disk",
            "one process (this one); sizes counted from encoded states and LMDB files, nothing timed",
            _storage,
        ),
        Group(
            "sync_cost",
            "Synchronisation cost against Enes et al. (ICDE 2019)",
            "one process (this one): 15 nodes, each an LmdbStore (sync off, in a temporary directory under /dev/shm) "
            "and a ReplicaCore driven as the node drives it, on a network in virtual time; bytes counted, nothing "
            "timed",
            _sync_cost,
        ),
        Group(
            "peers",
            "Library peers: npm delta-crdts and PyPI pycrdt on the same set workloads",
            "everything in one process (this one) but delta-crdts, which runs in a `node` subprocess that gets the "
            "workload as JSON on stdin, times itself and answers JSON on stdout; no network (`npm ci` into "
            "benchmarks/peers_js/node_modules once, when it lacks the locked packages)",
            _peers,
        ),
    )
}


class Progress:
    """One progress line on stderr: a bar over the groups, the group and figure under way, the time elapsed.

    On a terminal the line is rewritten in place; otherwise every step is a line of its own.
    """

    def __init__(self, groups: Sequence[str], width: int = 20) -> None:
        self.groups = list(groups)
        self.width = width
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.index = 0
        self.group_started = self.started
        self._shown = 0

    def _show(self, text: str, final: bool = False) -> None:
        now = time.perf_counter()
        filled = self.width * (self.index + final) // max(len(self.groups), 1)
        bar = "#" * filled + "." * (self.width - filled)
        name = self.groups[min(self.index, len(self.groups) - 1)] if self.groups else ""
        line = (
            f"[{bar}] {min(self.index + 1, len(self.groups))}/{len(self.groups)} {name} "
            f"{now - self.group_started:.0f} s (total {now - self.started:.0f} s): {text}"
        )
        if self.tty:
            columns = max(40, _terminal_columns() - 1)
            sys.stderr.write("\r" + line[:columns].ljust(self._shown) + ("\n" if final else ""))
            self._shown = 0 if final else min(len(line), columns)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def start(self, index: int) -> None:
        self.index = index
        self.group_started = time.perf_counter()
        self._show("starting")

    def step(self, text: str) -> None:
        self._show(text)

    def finish(self, text: str) -> None:
        self._show(text, final=True)


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return 100


# ---------------------------------------------------------------------------
# the run's circumstances
# ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_bytes = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_bytes = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    import grpc
    import lmdb
    import msgpack

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory_bytes,
        "load_average_at_start": load,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "versions": {
            "grpcio": grpc.__version__,
            "lmdb": lmdb.__version__,
            "msgpack": ".".join(map(str, msgpack.version)),
        },
    }


def commit() -> dict[str, Any]:
    """The checked-out commit and whether the tree differs from it (read-only git commands)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


@dataclass
class GroupResult:
    name: str
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "title": GROUPS[self.name].title,
            "placement": GROUPS[self.name].placement,
            "seconds": self.seconds,
            "ok": not self.error,
            "error": self.error or None,
            "figures": len(self.figures),
            "detail": self.detail,
        }


@dataclass
class SuiteResult:
    command: str
    mode: Mode
    repeats: int | None
    started: str
    groups: list[GroupResult]
    seconds: float
    machine: dict[str, Any]
    commit: dict[str, Any]

    @property
    def figures(self) -> list[Figure]:
        return [f for g in self.groups for f in g.figures]

    @property
    def ok(self) -> bool:
        return all(not g.error for g in self.groups)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json_safe(
            {
                "schema": SCHEMA_VERSION,
                "command": self.command,
                "mode": self.mode,
                "repeats": self.repeats,
                "started": self.started,
                "seconds": self.seconds,
                "machine": self.machine,
                "commit": self.commit,
                "placement": {g.name: GROUPS[g.name].placement for g in self.groups},
                "groups": {g.name: g.as_json() for g in self.groups},
                "figures": [f.as_json() for f in self.figures],
            }
        )
        return out


def run_suite(
    out: Path,
    names: Sequence[str],
    mode: Mode,
    repeats: int | None,
    command: str,
    *,
    progress: Progress | None = None,
) -> SuiteResult:
    """Run the groups ``names`` in turn and write every file into ``out``."""
    from benchmarks.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    progress = progress or Progress(names)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    circumstances = machine(), commit()
    began = time.perf_counter()
    results: list[GroupResult] = []
    for index, name in enumerate(names):
        group = GROUPS[name]
        result = GroupResult(name)
        progress.start(index)
        group_began = time.perf_counter()
        with (logs / f"{name}.txt").open("w") as text:

            def log(msg: str, text: Any = text) -> None:
                text.write(msg + "\n")
                text.flush()

            try:
                result.detail, result.figures = group.run(mode, repeats, log, progress.step)
            except Exception as exc:  # recorded, and the other groups still run
                result.error = f"{type(exc).__name__}: {exc}"
                text.write(traceback.format_exc())
        result.seconds = time.perf_counter() - group_began
        results.append(result)
        outcome = f"FAILED: {result.error}" if result.error else f"{len(result.figures)} figures"
        progress.finish(f"done in {result.seconds:.1f} s, {outcome}")
    suite = SuiteResult(
        command=command,
        mode=mode,
        repeats=repeats,
        started=started,
        groups=results,
        seconds=time.perf_counter() - began,
        machine=circumstances[0],
        commit=circumstances[1],
    )
    (out / "results.json").write_text(json.dumps(suite.as_json(), indent=2) + "\n")
    write_report(suite, out)
    return suite

"""The benchmark suite: every group in turn, with a progress line, into ``results.json``, ``REPORT.md`` and plots.

``python -m benchmarks run [--quick] [--only NAME,...] [--repeats N] --out DIR``
runs the groups (``micro``, ``node``, ``replication``, ``storage``, ``sync_cost``, ``peers``,
``redis_anchor``, ``auth``, ``watch``, ``audit``, ``backup``) one after the other in this process, each with its own
servers (or, for ``peers``, its ``node`` subprocess; for ``redis_anchor``, a ``redis-server``) where it has any, and
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
from pathlib import Path
from typing import Any

import grpc
import lmdb
import msgpack

from benchmarks import (
    audit,
    auth,
    backup,
    metrics,
    micro,
    node,
    peers,
    redis_anchor,
    replication,
    storage,
    sync_cost,
    watch,
)
from benchmarks.figures import Figure
from benchmarks.groups import GROUPS, GroupResult, Mode, SuiteResult
from benchmarks.report import write_report

__all__ = ["GROUPS", "RUNNERS", "Mode", "Progress", "SuiteResult", "run_suite"]

Log = Callable[[str], None]
Runner = Callable[[Mode, int | None, Log, Log], tuple[dict[str, Any], list[Figure]]]

REPO = Path(__file__).resolve().parent.parent


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


def _redis_anchor(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    return redis_anchor.collect(redis_anchor.make_config(mode != "full", repeats, smoke=mode == "smoke"), log, step)


def _auth(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # Needs servers under real load, like node: no size below --quick.
    return auth.collect(auth.make_config(mode != "full", repeats), log, step)


def _metrics(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # Needs servers under real load, like node: no size below --quick.
    return metrics.collect(metrics.make_config(mode != "full", repeats), log, step)


def _watch(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    return watch.collect(watch.make_config(mode != "full", repeats), log, step)


def _audit(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # Needs servers under real load, like node: no size below --quick.
    return audit.collect(audit.make_config(mode != "full", repeats), log, step)


def _backup(mode: Mode, repeats: int | None, log: Log, step: Log) -> tuple[dict[str, Any], list[Figure]]:
    # Needs servers and a store of some size: no size below --quick.
    return backup.collect(backup.make_config(mode != "full", repeats), log, step)


# How the suite runs each group of GROUPS (benchmarks/groups.py) in a mode; the test checks both name the same.
RUNNERS: dict[str, Runner] = {
    "micro": _micro,
    "node": _node,
    "replication": _replication,
    "storage": _storage,
    "sync_cost": _sync_cost,
    "peers": _peers,
    "redis_anchor": _redis_anchor,
    "auth": _auth,
    "metrics": _metrics,
    "watch": _watch,
    "audit": _audit,
    "backup": _backup,
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
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    progress = progress or Progress(names)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    circumstances = machine(), commit()
    began = time.perf_counter()
    results: list[GroupResult] = []
    for index, name in enumerate(names):
        result = GroupResult(name)
        progress.start(index)
        group_began = time.perf_counter()
        with (logs / f"{name}.txt").open("w") as text:

            def log(msg: str, text: Any = text) -> None:
                text.write(msg + "\n")
                text.flush()

            try:
                result.detail, result.figures = RUNNERS[name](mode, repeats, log, progress.step)
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

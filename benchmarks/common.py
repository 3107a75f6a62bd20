"""Helpers shared by the benchmark groups: each group's command line, CPU from /proc, percentiles, medians."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.figures import Figure, Stats, write_json
from benchmarks.report import table

__all__ = [
    "group_main",
    "group_parser",
    "machine_busy_s",
    "memory_of",
    "percentile",
    "print_line",
    "process_cpu_s",
    "report_group",
    "stats",
    "wait_until",
]

C = TypeVar("C")
Log = Callable[[str], None]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_parser(name: str, doc: str | None, quick: str, repeats: str | None = None) -> argparse.ArgumentParser:
    """The command line every ``python -m benchmarks.NAME`` has: ``--quick``, ``--repeats`` (where the group
    times anything; ``repeats`` is its help) and ``--json FILE``; the description is the docstring's first
    paragraph. A group adds its own options to it."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    if repeats is not None:
        parser.add_argument("--repeats", type=_at_least_one, default=None, help=repeats)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write every figure to FILE")
    return parser


def group_main(
    name: str,
    doc: str | None,
    *,
    quick: str,
    repeats: str,
    make_config: Callable[[bool, int | None], C],
    collect: Callable[[C, Log, Log], tuple[dict[str, Any], list[Figure]]],
    argv: Sequence[str] | None,
) -> int:
    """``python -m benchmarks.NAME`` of a group made of ``make_config`` and ``collect``: run it, print its table.

    ``quick`` and ``repeats``: the help of ``--quick`` and ``--repeats`` (``group_parser``).
    """
    args = group_parser(name, doc, quick, repeats).parse_args(argv)
    detail, figures = collect(make_config(args.quick, args.repeats), print_line, lambda _: None)
    report_group(figures, detail, args.json)
    return 0


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def print_line(msg: str) -> None:
    """The log of a group run on its own: each line to stdout at once."""
    print(msg, flush=True)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc; NaN where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs, everything but idle and iowait); NaN without /proc."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def stats(values: Sequence[float], unit: str) -> Stats:
    return Stats(statistics.median(values), min(values), max(values), unit)


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, poll_s: float = 0.002) -> float:
    """Poll ``condition`` every ``poll_s`` until it holds; the moment it first held (``time.perf_counter``).

    ``TimeoutError`` after ``timeout_s``: a region that never catches up fails the run, not the figure.
    """
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not caught up after {timeout_s:g} s")
        time.sleep(poll_s)
    return time.perf_counter()


def report_group(figures: Sequence[Figure], detail: dict[str, object], json_path: Path | None) -> None:
    """The end of a group run on its own: the table of its figures, and with ``--json`` every figure to the file."""
    print()
    print("\n".join(table(figures)))
    if json_path is not None:
        write_json(json_path, {"figures": [f.as_json() for f in figures], "detail": detail})


def memory_of(pid: int) -> dict[str, float]:
    """A server's memory in MiB from /proc: anonymous resident (its heap: what grows with what it holds in memory,
    unlike LMDB's file pages, which the kernel may drop) and peak resident (VmHWM, file pages included)."""
    fields: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields

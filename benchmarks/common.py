"""Measurement helpers shared by the node and replication benchmarks: CPU from /proc, percentiles, medians."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence

from benchmarks.figures import Stats

__all__ = ["machine_busy_s", "percentile", "process_cpu_s", "stats"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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

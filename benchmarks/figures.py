"""What a benchmark hands to the suite: a figure with its unit and spread over repeats, beside its baselines.

Every benchmark group (the table is in ``benchmarks.groups``) returns a list
of ``Figure``; ``benchmarks.suite`` writes them to ``results.json`` and
``benchmarks.report`` turns them into ``REPORT.md`` and plots (and
``benchmarks.summary`` into the README's table, read back from the JSON). A figure's
ratio is always *measured median / baseline median*, whatever the unit, so a
throughput ratio below 1 and a latency ratio above 1 both mean "slower than
the baseline"; ``better`` says which way is good.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Baseline", "Figure", "Stats", "json_safe", "rate_problems", "stats_of", "write_json"]


@dataclass(frozen=True, slots=True)
class Stats:
    median: float
    minimum: float
    maximum: float
    unit: str

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.minimum, "max": self.maximum, "unit": self.unit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stats:
        """The stats of a figure or baseline as results.json has them (null, written for NaN, read back as NaN)."""
        return cls(
            _number(data.get("median")), _number(data.get("min")), _number(data.get("max")), data.get("unit", "")
        )


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def stats_of(values: Sequence[float], unit: str) -> Stats:
    """Median, min and max of ``values`` (NaN when there are none)."""
    if not values:
        return Stats(math.nan, math.nan, math.nan, unit)
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return Stats(median, ordered[0], ordered[-1], unit)


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a figure is compared with, measured in the same run (or, for sizes, counted from the same data)."""

    name: str
    stats: Stats
    repeats: int

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.stats.as_json(), "repeats": self.repeats}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(str(data.get("name", "")), Stats.from_json(data), int(data.get("repeats") or 1))


@dataclass(frozen=True, slots=True)
class Figure:
    group: str  # "micro", "node", "replication", "storage"
    section: str  # the table it belongs to in REPORT.md
    name: str
    stats: Stats
    repeats: int
    baselines: tuple[Baseline, ...] = ()
    target: str = ""  # the target, for reference only: nothing asserts it
    better: Literal["higher", "lower", ""] = ""
    # Numbers that place the figure in a series, for the plots: in_flight, regions, keys, percentile, ...
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    note: str = ""

    def ratio(self, baseline: Baseline) -> float:
        """Measured median / baseline median (NaN when the baseline is zero or missing)."""
        if not baseline.stats.median or math.isnan(baseline.stats.median):
            return math.nan
        return self.stats.median / baseline.stats.median

    def as_json(self) -> dict[str, Any]:
        first = self.baselines[0] if self.baselines else None
        out: dict[str, Any] = json_safe(
            {
                "group": self.group,
                "section": self.section,
                "name": self.name,
                **self.stats.as_json(),
                "repeats": self.repeats,
                "baseline": first.as_json() if first else None,
                "ratio": self.ratio(first) if first else None,
                "other_baselines": [{**b.as_json(), "ratio": self.ratio(b)} for b in self.baselines[1:]],
                "ratio_meaning": "measured median / baseline median",
                "better": self.better or None,
                "target": self.target or None,
                "params": dict(self.params),
                "note": self.note or None,
            }
        )
        return out


def rate_problems(figures: Sequence[Mapping[str, Any]]) -> list[str]:
    """What is wrong with the speed figures (units ending in ``/s``) of a results.json: the suite's promise
    that every one sits beside a baseline in the same unit, with ratio = median / baseline median."""
    problems: list[str] = []
    for f in figures:
        if not str(f["unit"]).endswith("/s"):
            continue
        name, base = f["name"], f["baseline"]
        if base is None:
            problems.append(f"{name}: no baseline")
            continue
        if base["unit"] != f["unit"] or any(o["unit"] != f["unit"] for o in f["other_baselines"]):
            problems.append(f"{name}: a baseline in another unit")
        if not math.isclose(f["ratio"], f["median"] / base["median"], rel_tol=1e-9):
            problems.append(f"{name}: ratio {f['ratio']} is not median / baseline median")
        if not f["min"] <= f["median"] <= f["max"]:
            problems.append(f"{name}: median outside [min, max]")
    return problems


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None, so the file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as standard JSON (no NaN), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=2) + "\n")

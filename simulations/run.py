"""Many seeds of the simulator, in parallel, checked, summarised and reported.

``run_seed`` runs and checks one scenario in a throwaway directory;
``run_many`` spreads seeds over worker processes and gathers their
summaries; ``write_report`` writes ``report.json``, ``REPORT.md`` and, for
every failing seed, its history and the command that replays it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simulations.checkers import KINDS, CheckResult, Violation, check
from simulations.history import dump
from simulations.sim import Scenario, SimResult, Simulation

__all__ = ["SeedSummary", "parse_seeds", "run_many", "run_seed", "scratch_dir", "summarise", "write_report"]


@dataclass
class SeedSummary:
    seed: int
    ok: bool
    violations: dict[str, int]
    digest: str
    converged_after_ms: int | None
    messages: int
    bytes: int
    keys: int
    ops: dict[str, int]
    seconds: float
    command: str
    store_seconds: float  # of ``seconds``, in the production store's commits and applies
    details: list[str] = field(default_factory=list)  # the first violations, for the report
    history: list[str] = field(default_factory=list)  # JSON lines, kept only for failing seeds


def scratch_dir() -> str | None:
    """Memory-backed scratch space when the machine has it: the stores never need to outlive a seed."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_seed(scenario: Scenario, *, keep_history: bool = False) -> tuple[SeedSummary, SimResult]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crdtstore-sim-", dir=scratch_dir()) as root:
        simulation = Simulation(scenario, Path(root))
        try:
            result = simulation.run()
        except Exception as exc:
            # A region raised: that is a finding, with the seed that reproduces it.
            result = simulation.partial_result()
            error: Violation | None = Violation("error", "", f"{type(exc).__name__}: {exc}")
        else:
            error = None
    verdict = check(result.history) if error is None else CheckResult([error], check(result.history).counts)
    if error is None and result.converged_after_ms is None:
        verdict.violations.insert(0, _not_converged())
    summary = SeedSummary(
        seed=scenario.seed,
        ok=verdict.ok,
        violations=verdict.by_kind(),
        digest=result.digest,
        converged_after_ms=result.converged_after_ms,
        messages=result.messages,
        bytes=result.bytes,
        keys=result.keys,
        ops={k: verdict.counts[k] for k in ("ok", "fail", "unknown")},
        seconds=time.perf_counter() - started,
        command=scenario.command(),
        store_seconds=result.store_seconds,
        details=[f"{v.kind} {v.key}: {v.detail}" for v in verdict.violations[:20]],
        history=[dump(r) for r in result.history] if keep_history or not verdict.ok else [],
    )
    return summary, result


def _not_converged() -> Violation:
    return Violation("diverged", "", "the regions did not agree within the settling limit after every fault healed")


def _work(scenario: Scenario) -> SeedSummary:
    return run_seed(scenario)[0]


def run_many(
    scenarios: Sequence[Scenario], *, jobs: int, progress: Callable[[int, int, int], None] | None = None
) -> list[SeedSummary]:
    """Run every scenario (``jobs`` at a time); ``progress(done, total, failed)`` after each."""
    summaries: list[SeedSummary] = []
    failed = 0

    def gather(results: Iterator[SeedSummary]) -> None:
        nonlocal failed
        for summary in results:
            summaries.append(summary)
            failed += 0 if summary.ok else 1
            if progress is not None:
                progress(len(summaries), len(scenarios), failed)

    if jobs <= 1:
        gather(_work(s) for s in scenarios)
    else:
        # Fresh interpreters: nothing of the parent (open stores, threads) leaks into a worker.
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            gather(pool.imap_unordered(_work, scenarios, chunksize=1))
    summaries.sort(key=lambda s: s.seed)
    return summaries


def parse_seeds(text: str) -> list[int]:
    """``"1-1000"``, ``"7"`` or ``"1,5,9-12"``."""
    seeds: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise ValueError(f"seeds must look like 1-1000, 7 or 1,5,9-12; got {text!r}") from None
        if high < low:
            raise ValueError(f"the seed range {part!r} runs backwards")
        seeds.extend(range(low, high + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(summaries: Sequence[SeedSummary], wall_s: float, jobs: int) -> dict[str, Any]:
    converged = [s.converged_after_ms for s in summaries if s.converged_after_ms is not None]
    by_kind = dict.fromkeys(KINDS, 0)
    for s in summaries:
        for kind, n in s.violations.items():
            by_kind[kind] = by_kind.get(kind, 0) + n
    keys = sum(s.keys for s in summaries) or 1
    ops = {k: sum(s.ops.get(k, 0) for s in summaries) for k in ("ok", "fail", "unknown")}
    return {
        "runs": len(summaries),
        "failed_runs": sum(1 for s in summaries if not s.ok),
        "violations_by_kind": {k: n for k, n in by_kind.items() if n},
        "operations": ops,
        "convergence_ms": {
            "p50": _percentile(converged, 0.5) if converged else None,
            "p99": _percentile(converged, 0.99) if converged else None,
            "max": max(converged) if converged else None,
            "not_converged": len(summaries) - len(converged),
        },
        "messages_per_converged_key": sum(s.messages for s in summaries) / keys,
        "bytes_per_converged_key": sum(s.bytes for s in summaries) / keys,
        "wall_seconds": wall_s,
        "seconds_per_seed_median": statistics.median(s.seconds for s in summaries) if summaries else 0.0,
        # What the store's commits and applies alone would take at this many workers: a floor on the wall time.
        "store_seconds_per_seed_median": statistics.median(s.store_seconds for s in summaries) if summaries else 0.0,
        "store_wall_floor_seconds": sum(s.store_seconds for s in summaries) / max(jobs, 1),
        "jobs": jobs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
    }


def write_report(out: Path, scenario: Scenario, summaries: Sequence[SeedSummary], totals: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    failing = [s for s in summaries if not s.ok]
    for s in failing:
        (out / f"seed-{s.seed}.history.jsonl").write_text("\n".join(s.history) + "\n", encoding="utf-8")
    data = {
        "scenario": {k: v for k, v in asdict(scenario).items() if k != "seed"},
        "totals": totals,
        "seeds": [{k: v for k, v in asdict(s).items() if k != "history"} for s in summaries],
    }
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    conv = totals["convergence_ms"]
    lines = [
        "# Simulation report",
        "",
        f"{totals['runs']} seeds of {scenario.regions} regions, {scenario.ops} operations from "
        f"{scenario.clients} clients, faults: {scenario.faults}. {totals['machine']}; {totals['jobs']} worker(s); "
        f"{totals['wall_seconds']:.1f} s wall.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| runs with a violation | {totals['failed_runs']} |",
        f"| operations ok / fail / unknown | {totals['operations']['ok']} / {totals['operations']['fail']} / "
        f"{totals['operations']['unknown']} |",
        f"| convergence after the final heal, p50 / p99 / max (simulated) | {conv['p50']} / {conv['p99']} / "
        f"{conv['max']} ms |",
        f"| runs that did not converge | {conv['not_converged']} |",
        f"| messages per converged key | {totals['messages_per_converged_key']:.1f} |",
        f"| bytes per converged key | {totals['bytes_per_converged_key']:.0f} |",
        f"| median seconds per seed | {totals['seconds_per_seed_median']:.2f} |",
        f"| of which in the store's commits and applies (median) | {totals['store_seconds_per_seed_median']:.2f} |",
        f"| those alone, over {totals['jobs']} worker(s) | {totals['store_wall_floor_seconds']:.1f} s |",
        "",
    ]
    if totals["violations_by_kind"]:
        lines += ["## Violations by kind", "", "| kind | count |", "|---|---|"]
        lines += [f"| {k} | {n} |" for k, n in sorted(totals["violations_by_kind"].items())]
        lines.append("")
    if failing:
        lines += ["## Failing seeds", ""]
        for s in failing:
            lines += [f"### Seed {s.seed}", "", f"Replay: `{s.command}`", ""]
            lines += [f"- {d}" for d in s.details]
            lines += ["", f"History: `seed-{s.seed}.history.jsonl`", ""]
    else:
        lines += ["No violations.", ""]
    (out / "REPORT.md").write_text("\n".join(lines), encoding="utf-8")


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self._last_line = 0.0

    def __call__(self, done: int, total: int, failed: int) -> None:
        elapsed = time.perf_counter() - self.started
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {done}/{total} seeds, {failed} with violations, {elapsed:.0f} s"
        if self.tty:
            sys.stderr.write("\r" + text + ("\n" if done == total else ""))
            sys.stderr.flush()
        elif done == total or elapsed - self._last_line >= 10:
            self._last_line = elapsed
            sys.stderr.write(text + "\n")

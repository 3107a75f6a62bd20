"""``python -m simulations run | replay | chaos``: see ``simulations/README.md``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from simulations import chaos
from simulations.checkers import check
from simulations.faults import region_names
from simulations.history import dump
from simulations.run import Progress, parse_seeds, run_many, scratch_dir, summarise, write_report
from simulations.sim import FAULT_KINDS, Scenario, SimResult, Simulation


def _scenario_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", type=int, default=5, help="regions per scenario (default 5)")
    parser.add_argument("--ops", type=int, default=1000, help="client operations per scenario (default 1000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument(
        "--faults",
        default="all",
        help=f"all, none, or a comma-separated choice of {', '.join(FAULT_KINDS)} (default all)",
    )
    parser.add_argument(
        "--audit",
        choices=("on", "off"),
        default="on",
        help="whether the regions audit every request and the audit checker runs (default on; off: about half the "
        "time of a run, for work on other properties)",
    )


def _scenario(args: argparse.Namespace, seed: int) -> Scenario:
    scenario = Scenario(
        seed, regions=args.regions, ops=args.ops, clients=args.clients, faults=args.faults, audit=args.audit == "on"
    )
    scenario.fault_kinds()  # refuses unknown kinds with a message
    region_names(args.regions, least=2, what="--regions")  # refuses a count out of bounds with a message
    if args.ops < 1 or args.clients < 1:
        raise ValueError("--ops and --clients must be at least 1")
    return scenario


def _run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    scenarios = [_scenario(args, seed) for seed in seeds]
    jobs = args.jobs or os.cpu_count() or 1
    started = time.perf_counter()
    summaries = run_many(scenarios, jobs=jobs, progress=None if args.json else Progress())
    totals = summarise(summaries, time.perf_counter() - started, jobs)
    out = Path(args.out)
    write_report(out, scenarios[0], summaries, totals)
    if args.json:
        print(json.dumps(totals, indent=2))
    else:
        conv = totals["convergence_ms"]
        print(f"runs: {totals['runs']}, with violations: {totals['failed_runs']}")
        print(f"violations by kind: {totals['violations_by_kind'] or 'none'}")
        ops = totals["operations"]
        print(f"operations: {ops['ok']} ok, {ops['fail']} failed, {ops['unknown']} unknown")
        print(
            f"convergence after the final heal (simulated): p50 {conv['p50']} ms, p99 {conv['p99']} ms, "
            f"max {conv['max']} ms; not converged: {conv['not_converged']}"
        )
        print(
            f"per converged key: {totals['messages_per_converged_key']:.1f} messages, "
            f"{totals['bytes_per_converged_key']:.0f} bytes"
        )
        print(
            f"wall {totals['wall_seconds']:.1f} s with {jobs} worker(s); "
            f"median {totals['seconds_per_seed_median']:.2f} s per seed"
        )
        print(
            f"in the store's commits and applies: median {totals['store_seconds_per_seed_median']:.2f} s per seed, "
            f"{totals['store_wall_floor_seconds']:.1f} s of the wall time with {jobs} worker(s)"
        )
        for s in summaries:
            if not s.ok:
                print(f"seed {s.seed}: {s.violations}; replay: {s.command}")
        print(f"report: {out / 'REPORT.md'}")
    return 0 if totals["failed_runs"] == 0 else 1


def _replay(args: argparse.Namespace) -> int:
    scenario = _scenario(args, args.seed)

    with tempfile.TemporaryDirectory(prefix="crdtstore-sim-", dir=scratch_dir()) as root:
        simulation = Simulation(scenario, Path(root), trace=not args.quiet)
        try:
            result = simulation.run()
        except Exception:
            for line in simulation.trace:
                print(line)
            print(f"seed {scenario.seed} raised at {simulation.now} ms (simulated):", file=sys.stderr)
            raise
    for line in result.trace:
        print(line)
    verdict = check(result.history)
    print(f"history digest {result.digest}")
    print(f"converged {result.converged_after_ms} ms after the final heal (simulated)")
    print(f"{len(verdict.violations)} violation(s)")
    for v in verdict.violations:
        print(f"  {v.kind} {v.key}: {v.detail}")
    if args.history:
        Path(args.history).write_text("\n".join(_lines(result)) + "\n", encoding="utf-8")
        print(f"history written to {args.history}")
    return 0 if verdict.ok and result.converged_after_ms is not None else 1


def _lines(result: SimResult) -> list[str]:
    return [dump(r) for r in result.history]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run many seeded scenarios in the deterministic simulator and check them")
    run.add_argument("--seeds", default="1-200", help="e.g. 1-1000, 7 or 1,5,9-12 (default 1-200)")
    _scenario_arguments(run)
    run.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per CPU)")
    run.add_argument("--out", default="simulation-report", help="where REPORT.md, report.json and failing histories go")
    run.add_argument("--json", action="store_true", help="print the totals as JSON")
    replay = sub.add_parser("replay", help="replay one seed with a readable trace")
    replay.add_argument("--seed", type=int, required=True)
    _scenario_arguments(replay)
    replay.add_argument("--quiet", action="store_true", help="no trace, only the verdict and the digest")
    replay.add_argument("--history", help="also write the history (JSON lines) to this file")
    chaos_parser = sub.add_parser("chaos", help="real crdtstore processes on loopback under faults, checked")
    chaos.add_arguments(chaos_parser)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "replay":
            return _replay(args)
        return int(chaos.main(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

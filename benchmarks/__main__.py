"""``python -m benchmarks run [--quick] [--only NAME,...] [--repeats N] --out DIR``: see ``benchmarks/suite.py``.

``python -m benchmarks summary RESULTS_JSON [RESULTS_JSON ...] [--readme FILE]``: see ``benchmarks/summary.py``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.suite import GROUPS, Mode, run_suite
from benchmarks.summary import summary_main


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown group(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(GROUPS)}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="crdtstore's benchmark suite")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the benchmarks; write results.json, REPORT.md and plots",
        description="Run the benchmark groups in turn and write results.json, REPORT.md, PNG plots and logs/ to DIR.",
    )
    size = run.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repeats: a smoke run of under two minutes"
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest sizes and one repeat where a group has them (micro, storage, sync_cost, peers, "
        "redis_anchor; the others run as --quick): for the suite's own test",
    )
    run.add_argument(
        "--only",
        type=_names,
        default=list(GROUPS),
        metavar="NAME[,NAME...]",
        help=f"groups to run, in this order (default all: {','.join(GROUPS)})",
    )
    run.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default: each group's own)")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the results")
    summary = commands.add_parser(
        "summary",
        help="the README's short results table from a run's results.json",
        description="Print the headline figures of a run as a Markdown table, or write them into a README "
        "between its summary markers.",
    )
    summary.add_argument(
        "results",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="results.json of a run; with several, each group's figures come from the last run that has it",
    )
    summary.add_argument(
        "--readme", type=Path, default=None, metavar="FILE", help="replace the table between FILE's markers"
    )
    args = parser.parse_args(argv)
    if args.command == "summary":
        return summary_main(args.results, args.readme)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    mode: Mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    suite = run_suite(args.out, args.only, mode, args.repeats, command)
    print(f"{len(suite.figures)} figures in {suite.seconds:.0f} s; report: {args.out / 'REPORT.md'}")
    for group in suite.groups:
        if group.error:
            print(f"group {group.name} FAILED: {group.error} (see {args.out / 'logs' / (group.name + '.txt')})")
    return 0 if suite.ok else 1


if __name__ == "__main__":
    sys.exit(main())

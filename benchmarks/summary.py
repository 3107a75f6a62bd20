"""The README's short results table, from a suite run's ``results.json``.

::

    python -m benchmarks run --out bench                                # the whole suite (about 25 minutes)
    python -m benchmarks summary bench/results.json                     # print the table
    python -m benchmarks summary bench/results.json --readme README.md  # rewrite the README's copy
    python -m benchmarks summary bench/results.json again/results.json  # each group from the last run that has it

The table holds the headline figures: every figure the issues set a target
for (of the synchronisation cost, the grow-only set on both overlays, the
workload of the paper's headline numbers; state-based synchronisation, a
reference, is left to ``REPORT.md``), every figure beside Redis (the anchor
a user would pick instead), and from the library peers the delta of one add
at the largest set measured and the two merge rates. Each row is the median
[min..max] over the run's repeats, its baseline from the same run and the
ratio, as in ``REPORT.md``; the line under the table names the command, the
commit, the date and the machine. ``--readme`` replaces what lies between the two marker comments
``BEGIN`` and ``END`` and nothing else; a README without both is refused. The groups the
given runs hold replace theirs there; the rows and source lines of every other group stay
as they are, so one group measured again (``run --only audit``) updates its rows alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.figures import Baseline, Stats
from benchmarks.report import baseline_cell, cell, ratio_text, spread

__all__ = ["BEGIN", "END", "headline", "kept_from", "render", "replace_between_markers"]

BEGIN = "<!-- benchmark summary: begin (written by python -m benchmarks summary; edit the code, not this) -->"
END = "<!-- benchmark summary: end -->"

_GROUP_ORDER = (
    "node",
    "redis_anchor",
    "replication",
    "sync_cost",
    "storage",
    "micro",
    "peers",
    "auth",
    "audit",
    "watch",
)


class SummaryError(Exception):
    """A results file or README this command cannot use, with what to do about it."""


def _is_headline_peer(figure: dict[str, Any], largest: dict[str, int]) -> bool:
    params = figure.get("params") or {}
    kind = params.get("kind")
    if kind == "delta_merge":
        return True
    if kind == "state_merge":
        return params.get("count") == max(largest.values(), default=None)
    if kind == "delta" and not params.get("variant"):
        return params.get("set_size") == largest.get(str(params.get("implementation")))
    return False


def _is_headline_target(figure: dict[str, Any]) -> bool:
    name = str(figure.get("name", ""))
    if figure.get("group") == "sync_cost":
        # The set is the workload of the paper's headline figures (the README's own table has the rest);
        # state-based synchronisation is a reference, not a figure of ours.
        return name.startswith("gset,") and "state-based" not in name
    # One direction of the lag is enough here, and the apply rate has its own row (apply_remote).
    return not name.startswith(("lag a->c", "apply rate while converging"))


def headline(figures: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures the README shows, in group order, each group in the order the run wrote them."""
    largest: dict[str, int] = {}
    for f in figures:
        params = f.get("params") or {}
        if f.get("group") == "peers" and params.get("kind") == "delta":
            name = str(params.get("implementation"))
            largest[name] = max(largest.get(name, 0), int(params.get("set_size", 0)))
    picked = [
        f
        for f in figures
        if (f.get("target") and _is_headline_target(f))
        or (f.get("group") == "peers" and _is_headline_peer(f, largest))
        or f.get("group") == "redis_anchor"
    ]
    return sorted(picked, key=lambda f: _group_rank(f.get("group", "")))  # sorted() is stable


def _group_rank(group: str) -> int:
    return _GROUP_ORDER.index(group) if group in _GROUP_ORDER else len(_GROUP_ORDER)


def _source_line(results: dict[str, Any], groups: Sequence[str]) -> str:
    commit = results.get("commit") or {}
    machine = results.get("machine") or {}
    sha = str(commit.get("sha") or "unknown")[:10]
    dirty = " (with uncommitted changes)" if commit.get("dirty") else ""
    mode = results.get("mode", "?")
    caution = " (a `--quick` run: smoke sizes and few repeats, not for judging speed)" if mode != "full" else ""
    return (
        f"- {', '.join(groups)}: `{results.get('command', '?')}` ({mode} mode{caution}) at commit `{sha}`{dirty}, "
        f"started {results.get('started', '?')}, on {machine.get('cpu_count', '?')} CPUs shared with everything "
        f"else on the machine."
    )


def render(runs: Sequence[dict[str, Any]], kept: tuple[list[str], list[str]] = ([], [])) -> str:
    """The Markdown table and the lines that say where it came from.

    With several runs, each group's figures come from the last run that has
    the group (a later ``--only`` run replaces that group's figures).
    ``kept``: rows and source lines of groups no run has (``kept_from``), placed
    among the new ones in group order.
    """
    latest: dict[str, int] = {}
    for i, results in enumerate(runs):
        try:
            figures = results["figures"]
        except (KeyError, TypeError) as exc:
            raise SummaryError(f"not a results.json of python -m benchmarks run (no {exc})") from None
        for f in figures:
            latest[f.get("group", "")] = i
    chosen = [f for i, results in enumerate(runs) for f in results["figures"] if latest[f.get("group", "")] == i]
    kept_rows, kept_sources = kept
    rows = list(kept_rows)
    for f in headline(chosen):
        base = f.get("baseline")
        if base:
            baseline = baseline_cell(Baseline.from_json(base), with_spread=False)
            ratio = ratio_text(math.nan if f.get("ratio") is None else float(f["ratio"]))
        else:
            baseline, ratio = "", ""
        target = cell(str(f.get("target") or ""))
        measured = spread(Stats.from_json(f), f.get("repeats", 1))
        rows.append(f"| {f['group']} | {cell(f['name'])} | {measured} | {baseline} | {ratio} | {target} |")
    rows.sort(key=lambda row: _group_rank(_row_group(row)))  # stable: each group keeps its own order
    rows[:0] = [
        "| group | figure | measured | baseline (same run) | ratio | target |",
        "|---|---|--:|---|--:|---|",
    ]
    sources = [*kept_sources] + [
        _source_line(results, sorted({g for g, j in latest.items() if j == i}, key=_group_rank))
        for i, results in enumerate(runs)
        if i in latest.values()
    ]
    note = (
        "Medians [min..max] over each figure's repeats. Every figure, with its spread and both baselines where it "
        "has two, is in its run's `REPORT.md`. The runs:"
    )
    return "\n".join([*rows, "", note, "", *sources])


def _row_group(row: str) -> str:
    return row.split("|")[1].strip()


def kept_from(text: str, runs: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The rows and source lines of ``text``'s table for the groups none of ``runs`` has: they stay.

    A source line naming several groups keeps the names of those that stay.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        return [], []
    measured = {str(f.get("group", "")) for results in runs for f in results.get("figures", ())}
    rows: list[str] = []
    sources: list[str] = []
    for line in text[start + len(BEGIN) : end].splitlines():
        if line.startswith("| ") and not line.startswith(("| group |", "|---")):
            if _row_group(line) not in measured:
                rows.append(line)
        elif line.startswith("- ") and ": `" in line:
            groups, rest = line[2:].split(": `", 1)
            staying = [g for g in groups.split(", ") if g not in measured]
            if staying:
                sources.append(f"- {', '.join(staying)}: `{rest}")
    return rows, sources


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with what lies between ``BEGIN`` and ``END`` replaced by ``body``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise SummaryError(f"the README lacks the two marker lines; put\n{BEGIN}\n{END}\nwhere the table belongs")
    return text[: start + len(BEGIN)] + "\n" + body + "\n" + text[end:]


def summary_main(results_paths: Sequence[Path], readme: Path | None) -> int:
    try:
        runs = [json.loads(path.read_text(encoding="utf-8")) for path in results_paths]
        if readme is None:
            print(render(runs))
            return 0
        before = readme.read_text(encoding="utf-8")
        after = replace_between_markers(before, render(runs, kept_from(before, runs)))
    except OSError as exc:
        print(f"python -m benchmarks summary: {exc}")
        return 2
    except (json.JSONDecodeError, SummaryError) as exc:
        print(f"python -m benchmarks summary: {', '.join(map(str, results_paths))}: {exc}")
        return 2
    if after != before:
        readme.write_text(after, encoding="utf-8")
    print(f"{readme}: the results table written between the summary markers")
    return 0

"""The README's short results table, from a suite run's ``results.json``.

::

    python -m benchmarks run --out bench                                # the whole suite (about 40 minutes)
    python -m benchmarks summary bench/results.json                     # print the table
    python -m benchmarks summary bench/results.json --readme README.md  # rewrite the README's copy

The table holds the headline figures: every figure the issues set a target
for (of the synchronisation cost, the grow-only set on both overlays, the
workload of the paper's headline numbers; state-based synchronisation, a
reference, is left to ``REPORT.md``), and from the library peers the delta of one add at the largest set measured and
the two merge rates. Each row is the median [min..max] over the run's
repeats, its baseline from the same run and the ratio, as in ``REPORT.md``;
the line under the table names the command, the commit, the date and the
machine. ``--readme`` replaces what lies between the two marker comments
``BEGIN`` and ``END`` and nothing else; a README without both is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import cell, fmt, ratio_text

__all__ = ["BEGIN", "END", "headline", "render", "replace_between_markers"]

BEGIN = "<!-- benchmark summary: begin (written by python -m benchmarks summary; edit the code, not this) -->"
END = "<!-- benchmark summary: end -->"

_GROUP_ORDER = ("node", "replication", "sync_cost", "storage", "micro", "peers")


class SummaryError(Exception):
    """A results file or README this command cannot use, with what to do about it."""


def _is_headline_peer(figure: dict[str, Any], largest: dict[str, int]) -> bool:
    params = figure.get("params") or {}
    kind = params.get("kind")
    if kind in ("delta_merge", "state_merge"):
        return True
    if kind == "delta" and not params.get("variant"):
        return params.get("set_size") == largest.get(str(params.get("implementation")))
    return False


def _is_headline_sync_cost(figure: dict[str, Any]) -> bool:
    # The set is the workload the paper's headline figures are for; the README's own table has the rest.
    return figure.get("group") != "sync_cost" or str(figure.get("name", "")).startswith("gset,")


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
        if (f.get("target") and "state-based" not in f.get("name", "") and _is_headline_sync_cost(f))
        or (f.get("group") == "peers" and _is_headline_peer(f, largest))
    ]
    order = {name: i for i, name in enumerate(_GROUP_ORDER)}
    return sorted(picked, key=lambda f: order.get(f.get("group", ""), len(order)))  # sorted() is stable


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _measured(f: dict[str, Any]) -> str:
    unit = f.get("unit", "")
    median, low, high = _number(f.get("median")), _number(f.get("min")), _number(f.get("max"))
    text = fmt(median, unit)
    if f.get("repeats", 1) > 1 and not math.isnan(low) and low != high:
        text += f" [{fmt(low, unit).rsplit(' ', 1)[0]}..{fmt(high, unit).rsplit(' ', 1)[0]}]"
    return text


def render(results: dict[str, Any]) -> str:
    """The Markdown table and the line that says where it came from."""
    try:
        figures = results["figures"]
        commit = results.get("commit") or {}
        machine = results.get("machine") or {}
    except (KeyError, TypeError) as exc:
        raise SummaryError(f"not a results.json of python -m benchmarks run (no {exc})") from None
    rows = [
        "| group | figure | measured | baseline (same run) | ratio | target |",
        "|---|---|--:|---|--:|---|",
    ]
    for f in headline(figures):
        base = f.get("baseline")
        if base:
            baseline = f"{fmt(_number(base.get('median')), base.get('unit', ''))}: {cell(str(base.get('name', '')))}"
            ratio = ratio_text(_number(f.get("ratio")))
        else:
            baseline, ratio = "", ""
        target = cell(str(f.get("target") or ""))
        rows.append(f"| {f['group']} | {cell(f['name'])} | {_measured(f)} | {baseline} | {ratio} | {target} |")
    sha = str(commit.get("sha") or "unknown")[:10]
    dirty = " (with uncommitted changes)" if commit.get("dirty") else ""
    mode = results.get("mode", "?")
    caution = " A `--quick` run: smoke sizes and few repeats, not for judging speed." if mode != "full" else ""
    cpus = machine.get("cpu_count", "?")
    source = (
        f"From `{results.get('command', '?')}` ({mode} mode) at commit `{sha}`{dirty}, started "
        f"{results.get('started', '?')}, on {cpus} CPUs shared with everything else on the machine; medians "
        f"[min..max] over each figure's repeats.{caution} Every figure, with its spread and both baselines where it "
        f"has two, is in that run's `REPORT.md`."
    )
    return "\n".join([*rows, "", source])


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with what lies between ``BEGIN`` and ``END`` replaced by ``body``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise SummaryError(f"the README lacks the two marker lines; put\n{BEGIN}\n{END}\nwhere the table belongs")
    return text[: start + len(BEGIN)] + "\n" + body + "\n" + text[end:]


def summary_main(results_path: Path, readme: Path | None) -> int:
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        body = render(results)
        if readme is None:
            print(body)
            return 0
        before = readme.read_text(encoding="utf-8")
        after = replace_between_markers(before, body)
    except OSError as exc:
        print(f"python -m benchmarks summary: {exc}")
        return 2
    except (json.JSONDecodeError, SummaryError) as exc:
        print(f"python -m benchmarks summary: {results_path}: {exc}")
        return 2
    if after != before:
        readme.write_text(after, encoding="utf-8")
    print(f"{readme}: {len(headline(results['figures']))} figures written between the summary markers")
    return 0

"""``python -m benchmarks summary``: the README's results table from a run's results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main
from benchmarks.figures import Stats
from benchmarks.report import spread
from benchmarks.summary import BEGIN, END, SummaryError, headline, render, replace_between_markers


def _figure(group: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "group": group,
        "section": "s",
        "name": name,
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "unit": "ops/s",
        "repeats": 3,
        "baseline": {"name": "echo", "median": 4.0, "min": 4.0, "max": 4.0, "unit": "ops/s", "repeats": 3},
        "ratio": 0.5,
        "target": None,
        "params": {},
        **extra,
    }


def _results(figures: list[dict[str, Any]], mode: str = "full") -> dict[str, Any]:
    return {
        "command": "python -m benchmarks run --out bench",
        "mode": mode,
        "started": "2026-11-21T17:00:00+00:00",
        "machine": {"cpu_count": 2},
        "commit": {"sha": "0123456789abcdef", "dirty": False},
        "figures": figures,
    }


def _peer(name: str, implementation: str, kind: str, set_size: int = 0, variant: str = "") -> dict[str, Any]:
    params = {"implementation": implementation, "kind": kind, "set_size": set_size, "variant": variant}
    return _figure("peers", name, params=params)


FIGURES = [
    _figure("micro", "untargeted micro figure"),
    _peer("crdtstore: delta of one add, set of 10", "crdtstore", "delta", 10),
    _peer("crdtstore: delta of one add, set of 1,000", "crdtstore", "delta", 1000),
    _peer("crdtstore (variant): delta of one add, set of 1,000", "crdtstore", "delta", 1000, variant="StoreMap"),
    _peer("pycrdt: 300 single-add deltas", "pycrdt", "delta_merge"),
    _figure("sync_cost", "gset, tree: crdtstore, every message", target="below 1.27x"),
    _figure("sync_cost", "gmap 10%, tree: crdtstore, every message", target="below 1.27x"),
    _figure("sync_cost", "gset, tree: state-based (computed)", target="Enes et al. measured 104x"),
    _figure("node", "single-op writes/s, 64 in flight", target=">= 0.7x echo"),
]


def test_headline_is_the_targets_the_set_cost_and_the_peers_largest_delta_and_merges() -> None:
    names = [f["name"] for f in headline(FIGURES)]
    assert names == [
        "single-op writes/s, 64 in flight",  # node first, whatever order the run wrote
        "gset, tree: crdtstore, every message",
        "crdtstore: delta of one add, set of 1,000",
        "pycrdt: 300 single-add deltas",
    ]


def test_render_shows_the_spread_the_baseline_the_ratio_and_where_it_came_from() -> None:
    text = render([_results(FIGURES)])
    row = next(line for line in text.splitlines() if "single-op writes/s" in line)
    assert "2 ops/s [1..3]" in row
    assert "4 ops/s: echo" in row
    assert "| 0.5 |" in row
    assert ">= 0.7x echo" in row
    assert "`0123456789`" in text
    assert "python -m benchmarks run --out bench" in text
    assert "--quick" not in text
    assert "not for judging speed" in render([_results(FIGURES, mode="quick")])


def test_a_file_that_is_not_a_results_json_is_refused() -> None:
    with pytest.raises(SummaryError, match="no 'figures'"):
        render([{"command": "x"}])


def test_only_the_text_between_the_markers_changes() -> None:
    text = f"# title\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    out = replace_between_markers(text, "new table")
    assert out == f"# title\nbefore\n{BEGIN}\nnew table\n{END}\nafter\n"
    assert replace_between_markers(out, "new table") == out
    with pytest.raises(SummaryError, match="marker"):
        replace_between_markers("# no markers\n", "table")


def test_the_command_writes_the_readme_and_refuses_what_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results(FIGURES)))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n{END}\nrest\n")
    assert main(["summary", str(results), "--readme", str(readme)]) == 0
    written = readme.read_text()
    assert "single-op writes/s, 64 in flight" in written
    assert written.startswith("intro\n") and written.endswith("rest\n")

    assert main(["summary", str(results)]) == 0
    assert "| group | figure |" in capsys.readouterr().out

    readme.write_text("no markers\n")
    assert main(["summary", str(results), "--readme", str(readme)]) == 2
    assert readme.read_text() == "no markers\n"
    assert main(["summary", str(tmp_path / "missing.json")]) == 2
    results.write_text("{not json")
    assert main(["summary", str(results)]) == 2


def test_with_several_runs_each_group_comes_from_the_last_run_that_has_it() -> None:
    first = _results([_figure("node", "writes/s", target="t"), _figure("replication", "bytes, old", target="t")])
    second = _results([_figure("replication", "bytes, new", target="t")])
    second["command"] = "python -m benchmarks run --only replication --out again"
    text = render([first, second])
    assert "bytes, new" in text and "bytes, old" not in text
    assert "writes/s" in text
    assert "- node: `python -m benchmarks run --out bench`" in text
    assert "- replication: `python -m benchmarks run --only replication --out again`" in text


def test_the_readme_keeps_the_rows_and_source_lines_of_the_groups_no_run_measured(tmp_path: Path) -> None:
    """One group measured again (``run --only audit``) rewrites its rows alone, not the others'."""
    old = _results([_figure("node", "writes/s", target="t"), _figure("audit", "audited writes, old", target="t")])
    old["command"] = "python -m benchmarks run --only node,audit --out old"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n{render([old])}\n{END}\nrest\n")
    new = _results([_figure("audit", "audited writes, new", target="t"), _figure("sync_cost", "gset, x", target="t")])
    new["command"] = "python -m benchmarks run --only audit,sync_cost --out new"
    results = tmp_path / "results.json"
    results.write_text(json.dumps(new))
    assert main(["summary", str(results), "--readme", str(readme)]) == 0
    table = readme.read_text()
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [(g.strip(), n.strip()) for g, n in rows] == [
        ("group", "figure"),
        ("node", "writes/s"),  # kept as it was
        ("sync_cost", "gset, x"),  # in group order
        ("audit", "audited writes, new"),  # replaced
    ]
    assert "- node: `python -m benchmarks run --only node,audit --out old`" in table  # audit no longer from it
    assert "- sync_cost, audit: `python -m benchmarks run --only audit,sync_cost --out new`" in table
    assert table.count(BEGIN) == 1 and table.endswith("rest\n")


def test_the_second_direction_of_the_lag_and_the_apply_rate_while_converging_are_left_to_the_report() -> None:
    figures = [
        _figure("replication", "lag a->b p99, at 50 writes/s", target="<= 15 ms"),
        _figure("replication", "lag a->c p99, at 50 writes/s", target="<= 15 ms"),
        _figure("replication", "apply rate while converging (keys / converge s), 3 regions", target=">= 100k"),
    ]
    assert [f["name"] for f in headline(figures)] == ["lag a->b p99, at 50 writes/s"]


def test_the_readme_has_one_generated_results_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    table = readme[readme.index(BEGIN) : readme.index(END)]
    assert "| group | figure | measured | baseline (same run) | ratio | target |" in table
    assert "python -m benchmarks run" in table, "the table says which runs it came from"


def test_regression_a_spread_across_a_unit_boundary_keeps_each_bounds_unit() -> None:
    """Found in the README: "811.15 KiB [807.04..1.18]", the maximum in MiB shown without its unit."""
    kib = 1024.0
    assert spread(Stats(811.15 * kib, 807.04 * kib, 1.18 * kib * kib, "bytes"), 5) == "811.15 KiB [807.04..1.18 MiB]"
    assert spread(Stats(1030.0, 838.0, 1180.0, "ops/s"), 5) == "1.03k ops/s [838..1.18k]"
    assert spread(Stats(38.71, 18.81, 105.0, "ms"), 5) == "38.71 ms [18.81..105]"

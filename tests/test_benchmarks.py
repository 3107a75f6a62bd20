"""The benchmark suite runs and writes what it promises; nothing here looks at how fast anything was.

``python -m benchmarks run --smoke`` with the two groups that need no server
(``micro``, ``storage``) takes a second or two; the server groups are covered
by the ``--quick`` smoke run in CI.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main
from benchmarks.figures import Baseline, Figure, Stats, rate_problems
from benchmarks.report import fmt
from benchmarks.suite import GROUPS, RUNNERS


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    assert main(["run", "--smoke", "--only", "micro,storage", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_the_suite_writes_its_files(suite_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = suite_run
    assert (out / "results.json").is_file()
    assert (out / "REPORT.md").is_file()
    assert (out / "logs" / "micro.txt").read_text()
    assert (out / "logs" / "storage.txt").read_text()


def test_results_record_the_run(suite_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = suite_run
    assert results["command"] == f"python -m benchmarks run --smoke --only micro,storage --out {suite_run[0]}"
    assert results["machine"]["cpu_count"] >= 1
    assert results["machine"]["python"]
    assert "sha" in results["commit"]
    assert "dirty" in results["commit"]
    assert results["started"]
    assert set(results["placement"]) == {"micro", "storage"}
    assert all(group["ok"] for group in results["groups"].values())


def test_every_figure_has_a_unit_and_its_spread(suite_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = suite_run
    figures = results["figures"]
    assert {f["group"] for f in figures} == {"micro", "storage"}
    for f in figures:
        assert f["unit"], f["name"]
        assert f["repeats"] >= 1, f["name"]
        assert f["min"] <= f["median"] <= f["max"], f["name"]


def test_speed_figures_sit_beside_a_baseline_with_a_ratio(suite_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = suite_run
    assert [f for f in results["figures"] if f["unit"].endswith("/s")]
    assert rate_problems(results["figures"]) == []


def test_a_rate_without_its_baseline_or_with_a_wrong_ratio_is_reported() -> None:
    good = {"name": "w", "unit": "ops/s", "median": 2.0, "min": 1.0, "max": 3.0, "ratio": 0.5, "other_baselines": []}
    good["baseline"] = {"unit": "ops/s", "median": 4.0}
    assert rate_problems([good]) == []
    assert rate_problems([{**good, "baseline": None}]) == ["w: no baseline"]
    assert rate_problems([{**good, "ratio": 2.0}]) == ["w: ratio 2.0 is not median / baseline median"]


def test_storage_counts_metadata_and_file_size(suite_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = suite_run
    names = [f["name"] for f in results["figures"] if f["group"] == "storage"]
    assert any(name.startswith("metadata per set element") for name in names)
    assert any(name.startswith("metadata per register key") for name in names)
    assert any(name.startswith("LmdbStore data.mdb") for name in names)


def test_the_report_has_a_table_per_section(suite_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = suite_run
    report = (out / "REPORT.md").read_text()
    assert results["command"] in report
    for section in {f["section"] for f in results["figures"]}:
        assert f"### {section}" in report
    assert report.count("| figure | measured | baseline | ratio | target |") == len(
        {f["section"] for f in results["figures"]}
    )


def test_a_figure_without_a_usable_baseline_has_no_ratio() -> None:
    zero = Baseline("nothing", Stats(0.0, 0.0, 0.0, "ops/s"), 1)
    figure = Figure("micro", "s", "x", Stats(1.0, 1.0, 1.0, "ops/s"), 1, (zero,))
    assert math.isnan(figure.ratio(zero))
    assert figure.as_json()["ratio"] is None


def test_values_read_in_their_units() -> None:
    assert fmt(12_345.0, "ops/s") == "12.3k ops/s"
    assert fmt(3 * 2**20, "bytes") == "3.00 MiB"
    assert fmt(0.5, "s") == "0.500 s"
    assert fmt(math.nan, "ms") == "n/a"


def test_unknown_groups_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--only", "micro,nonesuch", "--out", str(tmp_path)])


def test_node_report_names_targets_beyond_the_same_runs_baselines() -> None:
    """A target above raw LMDB's puts, or below the echo server's own latency, is said to be out of reach."""
    from benchmarks.node import Latencies, Results, Sample, ceilings

    def echo_at(ops_per_s: float, ops: int) -> list[Sample]:
        return [Sample(int(ops_per_s / ops), 1.0, 0.0, 0.0, 0.0)]

    results = Results(
        samples={
            ("batch_100", "echo"): echo_at(100_000, 100),
            ("batch_1000", "echo"): echo_at(2_000_000, 1000),
        },
        latencies={"echo": [Latencies(500.0, 100, [1.0] * 98 + [9.0, 9.0], [1.0] * 100, 0.0)]},
        lmdb={800: [300_000.0], 8000: [500_000.0]},
    )
    lines = ceilings(results)
    assert len(lines) == 3
    batch_100, batch_1000, latency = lines
    assert "17% of raw LMDB's 300k puts/s" in batch_100 and "20.0 us per operation" in batch_100
    assert "1M ops/s, is above raw LMDB's 500k puts/s" in batch_1000 and "out of reach" in batch_1000
    assert "p99 9.00 ms" in latency and "out of reach" in latency

    results.latencies["echo"] = [Latencies(500.0, 100, [1.0] * 100, [1.0] * 100, 0.0)]
    assert not any("latency" in line for line in ceilings(results))


# Third-party packages that a benchmark module may import inside a function: optional extras (pycrdt; redis for
# the Redis anchor; matplotlib for the plots) that the rest of the suite runs without.
LAZY_THIRD_PARTY = frozenset({"pycrdt", "redis", "matplotlib"})


def _benchmarks_imports() -> tuple[dict[str, set[str]], list[str]]:
    """Each benchmarks module's imports of other benchmarks modules, and every import made inside a function or
    class body that is not of an optional third-party package."""
    package = Path(__file__).resolve().parent.parent / "benchmarks"
    modules = {f"benchmarks.{p.stem}": p for p in package.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    nested: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # ``from benchmarks import micro`` imports the module benchmarks.micro.
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            if id(node) not in top and not all(t.split(".")[0] in LAZY_THIRD_PARTY for t in targets):
                nested.append(f"{path.name}:{node.lineno} imports {', '.join(targets)} inside a body")
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph, nested


def test_benchmark_modules_import_at_module_level_only() -> None:
    _, nested = _benchmarks_imports()
    assert nested == []


def test_the_benchmark_modules_import_graph_has_no_cycle() -> None:
    graph, _ = _benchmarks_imports()
    assert "benchmarks.groups" in graph["benchmarks.report"]
    assert "benchmarks.report" in graph["benchmarks.suite"]
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import cycle: " + " -> ".join((*path[path.index(name) :], name))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_every_group_has_a_runner() -> None:
    assert list(RUNNERS) == list(GROUPS)

"""The synchronisation-cost benchmark counts what the algorithm sends; nothing here looks at how fast it ran.

What is checked are properties of delta-based synchronisation with both of
Enes et al.'s optimisations, which the replication core implements: on a tree
every update crosses every edge exactly once, so the deltas sent are exactly
the minimum; on a mesh they are at least the minimum; and full-state
synchronisation of a growing state costs more with every round, while the
deltas do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main
from benchmarks.sync_cost import PARTIAL_MESH, TREE, WORKLOADS, run_cell

(GMAP_10,) = (w for w in WORKLOADS if w.name == "gmap 10%")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sync-cost")
    assert main(["run", "--smoke", "--only", "sync_cost", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _cells(results: dict[str, Any]) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = results["groups"]["sync_cost"]["detail"]["cells"]
    assert cells
    return cells


def test_the_overlays_are_the_papers() -> None:
    for overlay in (TREE, PARTIAL_MESH):
        assert sorted(overlay) == list(range(15))
        for node, near in overlay.items():
            assert all(node in overlay[other] for other in near), "links go both ways"
    assert sum(len(near) for near in TREE.values()) == 2 * 14, "a tree on 15 nodes has 14 edges"
    assert all(len(near) == 4 for near in PARTIAL_MESH.values())


def test_the_suite_reports_every_cell_beside_the_minimum_and_state_based(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    assert results["groups"]["sync_cost"]["ok"]
    figures = [f for f in results["figures"] if f["group"] == "sync_cost"]
    assert len(figures) == 3 * len(_cells(results))
    for f in figures:
        assert f["unit"] == "bytes"
        assert f["baseline"]["name"].startswith("minimum")
        assert f["ratio"] >= 1, f["name"]
    ours = [f for f in figures if f["params"]["counted"] == "all"]
    assert all(f["other_baselines"][0]["name"].startswith("state-based") for f in ours)
    assert "sync_cost" in (out / "REPORT.md").read_text()


def test_on_a_tree_every_delta_crosses_every_edge_once(smoke: tuple[Path, dict[str, Any]]) -> None:
    for cell in _cells(smoke[1]):
        assert cell["ratio_to_minimum"] >= 1, cell
        if cell["topology"] == "tree":
            assert cell["delta_ratio_to_minimum"] == 1, cell
        else:
            assert cell["delta_ratio_to_minimum"] >= 1, cell
        assert cell["agreed_rounds"] >= 1


def test_state_based_costs_grow_with_the_state_and_deltas_do_not(smoke: tuple[Path, dict[str, Any]]) -> None:
    (short,) = (c for c in _cells(smoke[1]) if c["workload"] == GMAP_10.name and c["topology"] == "tree")
    long = run_cell(GMAP_10, "tree", 12)
    assert short["rounds"] < long.rounds
    assert long.state_based_bytes / long.minimum_bytes > 2 * short["state_based_ratio_to_minimum"]
    assert long.total_bytes / long.minimum_bytes < 1.5 * short["ratio_to_minimum"]
    # Once the map holds most of its keys, a round of whole states costs many rounds of deltas.
    assert long.state_based_bytes > 3 * long.total_bytes

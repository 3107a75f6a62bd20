"""The real-process chaos runner: its fault schedule, its timeline, and short runs judged by the checkers.

The runs are real: ``crdtstore serve`` processes, the gRPC client, kill -9,
SIGSTOP, partitions, shifted clocks. Nothing here asserts how long anything
took or how many operations got through; only that the history is whole and
the checkers find nothing wrong.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from simulations.chaos import (
    NETWORK_FAULTS,
    PROCESS_FAULTS,
    QUIET_TAIL_S,
    ChaosResult,
    parse_nemeses,
    plan_faults,
    region_names,
    run_chaos,
)
from simulations.checkers import check
from simulations.history import FinalRead, Meta, Nemesis, Op, read_jsonl
from simulations.netns import netns_unavailable
from simulations.timeline import FINAL_HEAL, fault_spans

NAMES = ["r1", "r2", "r3", "r4", "r5"]


# -- the schedule ------------------------------------------------------------------------------


def test_the_schedule_is_the_seeds() -> None:
    kinds = parse_nemeses("all")
    assert plan_faults(NAMES, 60, 7, kinds) == plan_faults(NAMES, 60, 7, kinds)
    assert plan_faults(NAMES, 60, 7, kinds) != plan_faults(NAMES, 60, 8, kinds)


@pytest.mark.parametrize("seed", range(20))
def test_faults_of_a_lane_never_overlap_and_all_end_before_the_quiet_tail(seed: int) -> None:
    duration_s = 30.0
    faults = plan_faults(NAMES, duration_s, seed, parse_nemeses("all"))
    for lane in (NETWORK_FAULTS, PROCESS_FAULTS):
        mine = [f for f in faults if f.kind in lane]
        assert mine, f"no {lane} faults in {duration_s} s"
        for earlier, later in itertools.pairwise(mine):
            assert earlier.end_s < later.start_s
        assert all(f.end_s <= duration_s - QUIET_TAIL_S for f in mine)
    for fault in faults:
        assert set(fault.regions) <= set(NAMES)
        assert all(a in NAMES and b in NAMES and a != b for a, b in fault.links)


def test_every_kind_comes_up_before_any_repeats() -> None:
    faults = plan_faults(NAMES, 120, 3, parse_nemeses("all"))
    network = [f.kind for f in faults if f.kind in NETWORK_FAULTS]
    assert sorted(network[: len(NETWORK_FAULTS)]) == sorted(NETWORK_FAULTS)
    process = [f.kind for f in faults if f.kind in PROCESS_FAULTS]
    assert sorted(process[: len(PROCESS_FAULTS)]) == sorted(PROCESS_FAULTS)


def test_partition_shapes_cut_what_they_say() -> None:
    faults = plan_faults(NAMES, 300, 11, parse_nemeses("partition"))
    by_kind = {f.kind: f for f in faults}
    all_links = {(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1 :]}
    isolate = by_kind["isolate"]
    assert {frozenset(link) for link in isolate.links} == {frozenset((isolate.regions[0], o)) for o in NAMES} - {
        frozenset((isolate.regions[0],))
    }
    ring = by_kind["ring"]
    assert len(all_links) - len(ring.links) == len(NAMES)  # each region keeps its two neighbours
    bridge = by_kind["bridge"]
    bridging = bridge.description.split()[1]
    assert all(bridging not in link for link in bridge.links)
    majority = by_kind["majority"]
    assert len(majority.links) == 3 * 2
    one_way = by_kind["one-way"]
    assert {sender for sender, _ in one_way.links} == {one_way.regions[0]}
    clog = by_kind["clog"]
    assert set(clog.links) == set(clog.restore) == all_links


def test_process_faults_only_when_asked() -> None:
    faults = plan_faults(NAMES, 60, 5, parse_nemeses("crash,clock"))
    assert faults
    assert {f.kind for f in faults} <= {"crash", "clock"}
    clock = [f for f in faults if f.kind == "clock"]
    assert all(f.offset_ms != 0 for f in clock)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_nemeses("all,meteor")
    with pytest.raises(ValueError, match="2 to"):
        region_names(1)
    assert region_names(3) == ["r1", "r2", "r3"]


def test_fault_spans_pair_each_fault_with_its_end() -> None:
    records = [
        Nemesis(100, "partition", ["r1"], "isolate r1; links r1-r2 r1-r3"),
        Nemesis(150, "pause", ["r2"], "SIGSTOP"),
        Nemesis(200, "clog", ["r2", "r3"], "link r2-r3"),
        Nemesis(300, "heal", ["r1"], "isolate r1; links r1-r2 r1-r3"),
        Nemesis(350, "partition", ["r3"], "one-way: ...; links r3>r1"),
        Nemesis(400, "resume", ["r2"], "SIGCONT"),
        Nemesis(500, "heal", ["r1", "r2", "r3"], f"{FINAL_HEAL}: everything"),
    ]
    spans = {(s.row, s.kind, s.start_ms, s.end_ms) for s in fault_spans(records, end_ms=600)}
    assert spans == {
        ("r1-r2", "cut", 100, 300),
        ("r1-r3", "cut", 100, 300),
        ("r2", "pause", 150, 400),
        ("r2-r3", "clog", 200, 500),
        ("r1-r3", "one-way", 350, 500),
    }


# -- real runs ---------------------------------------------------------------------------------


def _check_run(result: ChaosResult, regions: int) -> None:
    for path in (result.history_path, result.report_path, result.timeline_path):
        assert path.is_file() and path.stat().st_size > 0, path
    records = list(read_jsonl(result.history_path))
    metas = [r for r in records if isinstance(r, Meta)]
    assert len(metas) == 1
    assert metas[0].source == "chaos"
    ops = [r for r in records if isinstance(r, Op)]
    assert ops
    assert all(op.outcome in ("ok", "fail", "unknown") for op in ops)
    assert all(op.token is not None for op in ops if op.outcome == "ok")
    assert not any(op.f == "del" and op.key.startswith("c/") for op in ops)
    assert any(op.outcome == "ok" for op in ops)
    events = Counter(r.event for r in records if isinstance(r, Nemesis))
    starts = {"partition", "clog", "crash", "pause", "clock"} & set(events)
    assert len(starts) >= 2, f"faults of several kinds: {events}"
    finals = [r for r in records if isinstance(r, FinalRead)]
    assert sorted(f.region for f in finals) == region_names(regions)
    assert all(f.digest for f in finals)
    verdict = check(records)
    assert verdict.ok, verdict.violations[:10]
    assert result.ok, result.check.violations[:10]
    assert result.convergence_ms is not None
    assert "PASS" in result.report_path.read_text()


@pytest.mark.processes
def test_a_short_chaos_run_with_every_nemesis_has_no_violations(tmp_path: Path) -> None:
    result = run_chaos(3, 8.0, tmp_path / "out", seed=20261121, nemeses="all")
    _check_run(result, 3)


@pytest.mark.slow
@pytest.mark.processes
def test_a_long_chaos_run_of_five_regions_has_no_violations(tmp_path: Path) -> None:
    """The long form of the run above: five regions, every nemesis, 40 s of faults."""
    result = run_chaos(5, 40.0, tmp_path / "out", seed=20261204, nemeses="all")
    _check_run(result, 5)


@pytest.mark.processes
@pytest.mark.skipif(bool(netns_unavailable()), reason="network namespaces need root, Linux and ip(8)")
def test_a_short_chaos_run_in_network_namespaces_has_no_violations(tmp_path: Path) -> None:
    result = run_chaos(3, 6.0, tmp_path / "out", seed=7, nemeses="partition,pause", netns=True)
    _check_run(result, 3)

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

NAMES = region_names(5)


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
    split = by_kind["halves"]
    assert len(split.links) == 3 * 2
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
    with pytest.raises(ValueError, match="unknown fault kind 'meteor'"):
        parse_nemeses("all,meteor")
    with pytest.raises(ValueError, match="chaos runs cannot inject 'disk' faults"):
        parse_nemeses("partition,disk")
    with pytest.raises(ValueError, match="between 2 and 9"):
        region_names(1)
    with pytest.raises(ValueError, match="between 2 and 9"):
        region_names(10)
    assert region_names(3) == ["ra", "rb", "rc"]


def test_every_nemesis_accepted_before_still_is() -> None:
    every = NETWORK_FAULTS + PROCESS_FAULTS
    assert parse_nemeses("all") == every
    assert parse_nemeses("partition") == NETWORK_FAULTS
    assert parse_nemeses("crash,pause, clock") == ("crash", "pause", "clock")
    assert parse_nemeses("all,crash") == every
    assert parse_nemeses("none") == ()


def test_a_shape_given_by_its_old_name_is_planned_by_its_one_name() -> None:
    faults = plan_faults(NAMES, 60, 5, ["majority"])
    assert faults
    assert {f.kind for f in faults} == {"halves"}


def test_fault_spans_pair_each_fault_with_its_end() -> None:
    records = [
        Nemesis(100, "partition", ["ra"], "isolate ra; links ra-rb ra-rc"),
        Nemesis(150, "pause", ["rb"], "SIGSTOP"),
        Nemesis(200, "clog", ["rb", "rc"], "clog; links rb-rc"),
        Nemesis(300, "heal", ["ra"], "isolate ra; links ra-rb ra-rc"),
        Nemesis(350, "partition", ["rc"], "one-way: ...; links rc>ra"),
        Nemesis(400, "resume", ["rb"], "SIGCONT"),
        Nemesis(500, "heal", ["ra", "rb", "rc"], f"{FINAL_HEAL}: everything"),
    ]
    spans = {(s.row, s.kind, s.start_ms, s.end_ms) for s in fault_spans(records, end_ms=600)}
    assert spans == {
        ("ra-rb", "cut", 100, 300),
        ("ra-rc", "cut", 100, 300),
        ("rb", "pause", 150, 400),
        ("rb-rc", "clog", 200, 500),
        ("ra-rc", "one-way", 350, 500),
    }


def test_a_fault_names_its_links_as_the_timeline_reads_them() -> None:
    faults = plan_faults(NAMES, 300, 11, parse_nemeses("partition"))
    by_kind = {f.kind: f for f in faults}
    assert by_kind["isolate"].links_text().startswith("links ")
    assert ">" not in by_kind["isolate"].links_text()
    one_way = by_kind["one-way"]
    assert one_way.links_text() == "links " + " ".join(f"{a}>{b}" for a, b in sorted(one_way.links))


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


# Slow since the default run holds tests/test_deploy_netns.py, which runs nodes in namespaces made by the same
# helpers (simulations/netns.py); the chaos runner's own namespace mode runs in .ci/run's slow pass.
@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.skipif(bool(netns_unavailable()), reason="network namespaces need root, Linux and ip(8)")
def test_a_short_chaos_run_in_network_namespaces_has_no_violations(tmp_path: Path) -> None:
    result = run_chaos(3, 6.0, tmp_path / "out", seed=7, nemeses="partition,pause", netns=True)
    _check_run(result, 3)

"""The library peers group runs and measures what it says; nothing here looks at how fast anything was.

``python -m benchmarks run --smoke --only peers`` runs once for the module (a
few seconds; on a machine with Node.js and no ``benchmarks/peers_js/node_modules``
the first run installs the locked npm packages with ``npm ci``). delta-crdts
needs ``node`` and pycrdt the ``bench`` extra: where one is missing the group
records it as skipped, and that record is what is checked instead. How the
group skips (no node, no npm, a failing ``npm ci``, no pycrdt) and fails (a
broken driver) is checked with stand-in executables, with no network.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import peers
from benchmarks.__main__ import main
from benchmarks.figures import rate_problems
from benchmarks.micro import R_A, SET_KEY, member
from crdtstore.crdt import AWSet, Causal, CausalContext, KeyState, StoreMap, ValueType, encode

Results = tuple[Path, dict[str, Any]]
SMOKE = peers.make_config(True, smoke=True)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> Results:
    out = tmp_path_factory.mktemp("peers")
    assert main(["run", "--smoke", "--only", "peers", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _detail(results: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = results["groups"]["peers"]["detail"]
    return detail


def _figures(results: dict[str, Any], implementation: str, kind: str, variant: str = "") -> list[dict[str, Any]]:
    return [
        f
        for f in results["figures"]
        if f["params"].get("implementation") == implementation
        and f["params"].get("kind") == kind
        and f["params"].get("variant", "") == variant
    ]


def _check_peer_measured_everything(results: dict[str, Any], implementation: str) -> None:
    """Every workload of the smoke configuration has its figure for ``implementation``."""
    assert sorted(f["params"]["set_size"] for f in _figures(results, implementation, "delta")) == list(SMOKE.sizes)
    assert sorted(f["params"]["set_size"] for f in _figures(results, implementation, "state")) == list(SMOKE.sizes)
    merges = _figures(results, implementation, "delta_merge")
    assert sorted(f["params"]["count"] for f in merges) == list(SMOKE.merge_deltas)
    states = _figures(results, implementation, "state_merge")
    assert sorted(f["params"]["count"] for f in states) == list(SMOKE.merge_states)
    for f in _figures(results, implementation, "delta") + _figures(results, implementation, "state"):
        assert f["median"] > 0, f["name"]
    for f in merges + states:
        assert f["median"] > 0, f["name"]
        assert f["baseline"] is not None, f["name"]
    peer = _detail(results)["peers"][implementation]
    assert peer["encoding"]
    assert peer["mapping"]


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_the_group_writes_its_report(suite_run: Results) -> None:
    out, results = suite_run
    assert results["groups"]["peers"]["ok"], results["groups"]["peers"]["error"]
    assert set(results["placement"]) == {"peers"}
    report = (out / "REPORT.md").read_text()
    assert "## peers:" in report
    assert "### Side by side" in report
    for section in {f["section"] for f in results["figures"]}:
        assert f"### {section}" in report
    for name, reason in _detail(results)["skipped"].items():
        assert f"SKIPPED {name}: {reason}" in report
    assert (out / "peers.png").is_file()
    log = (out / "logs" / "peers.txt").read_text()
    assert "Delta bytes of one add" in log
    assert "Encodings:" in log


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_every_peer_is_run_or_skipped_with_a_reason(suite_run: Results) -> None:
    _, results = suite_run
    detail = _detail(results)
    assert set(detail["peers"]) | set(detail["skipped"]) == set(peers.PEERS)
    assert not set(detail["peers"]) & set(detail["skipped"])
    assert "crdtstore" in detail["peers"]
    assert all(reason for reason in detail["skipped"].values())


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_crdtstore_delta_and_state_sizes_are_its_codecs(suite_run: Results) -> None:
    """The figures equal the encoded sizes of the same adds, made here independently."""
    _, results = suite_run
    _check_peer_measured_everything(results, "crdtstore")
    deltas = {f["params"]["set_size"]: f for f in _figures(results, "crdtstore", "delta")}
    store_deltas = {f["params"]["set_size"]: f for f in _figures(results, "crdtstore", "delta", peers.STORE_VARIANT)}
    states = {f["params"]["set_size"]: f for f in _figures(results, "crdtstore", "state")}
    state: Causal[AWSet] = Causal(AWSet(), CausalContext())
    count = 0
    for n in SMOKE.sizes:
        while count < n:
            state = state.join_delta(state.store.add(member(count), state.next_dot(R_A)))
            count += 1
        assert states[n]["median"] == pytest.approx(len(encode(state)) / n)
        sizes, store_sizes = [], []
        for _ in range(SMOKE.probes):
            store = StoreMap({SET_KEY: KeyState({ValueType.SET: state.store})}, state.context)
            store_sizes.append(len(encode(store.add_members(SET_KEY, [member(count)], R_A))))
            delta = state.store.add(member(count), state.next_dot(R_A))
            sizes.append(len(encode(delta)))
            state = state.join_delta(delta)
            count += 1
        assert deltas[n]["median"] == statistics.median(sizes)
        assert (deltas[n]["min"], deltas[n]["max"]) == (min(sizes), max(sizes))
        assert deltas[n]["repeats"] == SMOKE.probes
        assert store_deltas[n]["median"] == statistics.median(store_sizes)
        assert deltas[n]["baseline"]["median"] == len(b"\xad" + member(0).encode())  # a fixstr of 13 bytes


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_rates_sit_beside_a_baseline_with_a_ratio(suite_run: Results) -> None:
    _, results = suite_run
    assert [f for f in results["figures"] if f["unit"].endswith("/s")]
    assert rate_problems(results["figures"]) == []


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_delta_crdts_is_measured_where_node_is(suite_run: Results) -> None:
    _, results = suite_run
    skipped = _detail(results)["skipped"]
    if shutil.which("node") is None:
        assert "node" in skipped["delta-crdts"]
        pytest.skip("node (Node.js) is not on PATH")
    if "delta-crdts" in skipped:
        # Node is here but the packages could not be installed (no registry, say): a skip, with its reason.
        assert "npm" in skipped["delta-crdts"]
        pytest.skip(f"delta-crdts skipped: {skipped['delta-crdts']}")
    _check_peer_measured_everything(results, "delta-crdts")
    peer = _detail(results)["peers"]["delta-crdts"]
    assert peer["versions"]["delta-crdts"] == "0.10.3"
    assert "delta-crdts-msgpack-codec" in peer["encoding"]
    # The smoke run builds sets by adds up to 10 members: the set of 100 is made directly, and checked.
    assert SMOKE.sizes[-1] in peer["sets_made_directly"]
    assert peer["direct_build_checked_against_adds_at"]
    one_dot = _figures(results, "delta-crdts", "delta", peers.INTENDED_VARIANT)
    assert sorted(f["params"]["set_size"] for f in one_dot) == list(SMOKE.sizes)


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_pycrdt_is_measured_where_it_is_installed(suite_run: Results) -> None:
    _, results = suite_run
    skipped = _detail(results)["skipped"]
    if importlib.util.find_spec("pycrdt") is None:
        assert "pycrdt" in skipped["pycrdt"]
        pytest.skip("pycrdt is not installed (pip install -e '.[bench]')")
    assert "pycrdt" not in skipped
    _check_peer_measured_everything(results, "pycrdt")
    import pycrdt

    doc: Any = pycrdt.Doc(client_id=peers.PYCRDT_CLIENT_A)
    entries = doc.get(peers.PYCRDT_ROOT, type=pycrdt.Map)
    for i in range(SMOKE.sizes[0]):
        entries[member(i)] = True
    before = doc.get_state()
    entries[member(SMOKE.sizes[0])] = True
    first = min(_figures(results, "pycrdt", "delta"), key=lambda f: int(f["params"]["set_size"]))
    assert first["min"] == len(doc.get_update(before))


# ---------------------------------------------------------------------------
# skips and failures, with stand-ins for node and npm
# ---------------------------------------------------------------------------


def _executable(path: Path, script: str) -> None:
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def _js_dir(tmp_path: Path, lock: dict[str, Any] | None = None) -> Path:
    """A copy of benchmarks/peers_js without node_modules (or with only ``lock`` as its lock file)."""
    js = tmp_path / "peers_js"
    js.mkdir()
    shutil.copy(peers.JS_DIR / "package.json", js)
    if lock is None:
        shutil.copy(peers.JS_DIR / "package-lock.json", js)
    else:
        (js / "package-lock.json").write_text(json.dumps(lock))
    return js


def test_no_node_is_a_skip(tmp_path: Path) -> None:
    outcome = peers.run_delta_crdts(SMOKE, search_path=str(tmp_path), js_dir=_js_dir(tmp_path))
    assert isinstance(outcome, peers.Skipped)
    assert "node" in outcome.reason


def test_no_npm_and_no_packages_is_a_skip(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "node", "exit 99")  # never run: the packages are missing first
    outcome = peers.run_delta_crdts(SMOKE, search_path=str(bin_dir), js_dir=_js_dir(tmp_path))
    assert isinstance(outcome, peers.Skipped)
    assert "npm not found" in outcome.reason


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_a_failing_npm_ci_is_a_skip_with_its_message(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "node", "exit 99")
    _executable(bin_dir / "npm", 'echo "npm error network request failed, reason: getaddrinfo ENOTFOUND" >&2; exit 1')
    outcome = peers.run_delta_crdts(SMOKE, search_path=str(bin_dir), js_dir=_js_dir(tmp_path))
    assert isinstance(outcome, peers.Skipped)
    assert "npm ci failed (exit 1)" in outcome.reason
    assert "ENOTFOUND" in outcome.reason


@pytest.mark.processes  # node (or a stand-in) runs as a subprocess
def test_a_failing_driver_is_an_error_not_a_skip(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "node", 'echo "TypeError: something broke" >&2; exit 3')
    js = _js_dir(tmp_path, lock={"name": "x", "lockfileVersion": 3, "packages": {"": {}}})
    with pytest.raises(RuntimeError, match=r"exit 3.*something broke"):
        peers.run_delta_crdts(SMOKE, search_path=str(bin_dir), js_dir=js)


def test_pycrdt_that_does_not_import_is_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycrdt", None)  # makes ``import pycrdt`` raise ImportError
    outcome = peers.run_pycrdt(SMOKE)
    assert isinstance(outcome, peers.Skipped)
    assert "pycrdt is not importable" in outcome.reason


def test_skips_reach_the_report_notes() -> None:
    notes = peers.report_notes([], [peers.Skipped("delta-crdts", "npm ci failed (exit 1): offline")])
    assert "SKIPPED delta-crdts: npm ci failed (exit 1): offline" in notes


def test_sizes_closer_than_the_probe_adds_are_refused() -> None:
    assert peers.make_config(False).sizes == (1, 10, 100, 1_000, 10_000)
    assert peers.make_config(True, repeats=7).repeats == 7
    with pytest.raises(ValueError, match="closer than"):
        peers.Config((1, 3), 5, (10,), (10,), 1, 0.01, 10, 10.0)

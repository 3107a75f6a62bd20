"""``crdtstore verify`` on real regions: agreement, a planted divergence named key by key, no common point."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from crdtstore.client import Client
from crdtstore.storage.keys import bucket_of, lmdb_key
from crdtstore.testing.regions import RegionProcesses
from crdtstore.tools.verify import AGREE, DRIFT, NO_COMMON_POINT, compare_regions

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegionProcesses]:
    with RegionProcesses(tmp_path_factory.mktemp("verify"), ["a", "b"]) as rp:
        a, b = rp.clients["a"], rp.clients["b"]
        for i in range(120):
            a.set(f"reg/{i}", f"v{i}")
            b.sadd(f"set/{i % 10}", f"m{i}")
        b.incr("count", 7)
        rp.wait_converged()
        yield rp


def _verify_cli(rp: RegionProcesses, *extra: str) -> subprocess.CompletedProcess[str]:
    addrs = [arg for name in ("a", "b") for arg in ("--addr", rp.servers[name].addr)]
    return subprocess.run(
        [sys.executable, "-m", "crdtstore", "verify", *addrs, *extra],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _remove_behind_the_nodes_back(rp: RegionProcesses, name: str, key: str) -> None:
    """Delete ``key``'s record from the stopped region's file, its context still claiming the events."""
    rp.stop(name)
    env = lmdb.open(str(rp.servers[name].data_dir), max_dbs=16, subdir=True)
    try:
        data = env.open_db(b"data")
        with env.begin(write=True, db=data) as txn:
            assert txn.delete(lmdb_key(key)), "the key was there to remove"
    finally:
        env.close()
    rp.start(name)
    rp.wait_connected()


def test_regions_that_converged_agree(regions: RegionProcesses) -> None:
    run = _verify_cli(regions, "--json")
    assert run.returncode == AGREE, run.stdout + run.stderr
    out = json.loads(run.stdout)
    assert out["result"] == "agree" and out["common_point"] is True
    assert out["vector"] == out["regions"][regions.servers["a"].addr]["vector"]
    human = _verify_cli(regions)
    assert human.returncode == AGREE and human.stdout.startswith("agree at {")


def test_a_divergence_planted_in_a_stopped_region_is_named_exactly(regions: RegionProcesses) -> None:
    """A record removed behind the node's back (its context still claims the events): only verify can see it."""
    planted = "reg/42"
    _remove_behind_the_nodes_back(regions, "b", planted)
    run = _verify_cli(regions, "--json")
    assert run.returncode == DRIFT, run.stdout + run.stderr
    out = json.loads(run.stdout)
    assert out["result"] == "drift"
    assert [item["key"] for item in out["diverging"]] == [planted]
    seen = out["diverging"][0]["regions"]
    assert seen[f"b@{regions.servers['b'].addr}"] == {"present": False}
    in_a = seen[f"a@{regions.servers['a'].addr}"]
    assert in_a["present"] and in_a["type"] == "register" and in_a["value"] == "v42"
    assert [d["count"] for d in in_a["dots"]] == [1]
    human = _verify_cli(regions)
    assert human.returncode == DRIFT and 'key "reg/42"' in human.stdout and "(missing)" in human.stdout
    # Put it back (the test's cluster is shared): a write of the same value in a replaces it everywhere.
    regions.clients["a"].set(planted, "v42")
    regions.wait_converged()
    assert _verify_cli(regions).returncode == AGREE


def test_regression_a_bucket_of_large_values_is_read_in_pages_that_fit_a_response(regions: RegionProcesses) -> None:
    """A BucketKeys page was bounded by count alone: 256 keys of 1 MiB values made a response larger than gRPC
    sends (RESOURCE_EXHAUSTED), so verify could not compare a bucket holding large values. Pages now also end
    at ``scan_page_bytes_max`` of states."""
    bucket = bucket_of("large/0")
    keys = [key for key in (f"large/{i}" for i in range(20_000)) if bucket_of(key) == bucket][:36]
    value = b"x" * (1024 * 1024 - 1024)  # 36 MiB in one bucket: more than one response may carry
    a = regions.clients["a"]
    for key in keys:
        a.set(key, value)
    regions.wait_converged(timeout_s=120)
    assert _verify_cli(regions).returncode == AGREE
    # A page is bounded, and the pages still cover the bucket.
    seen: list[str] = []
    token = ""
    while True:
        page = a.bucket_keys([bucket], page_token=token)
        assert len(page.keys) >= 1 and page.ByteSize() < 8 * 1024 * 1024
        seen += [item.entry.key for item in page.keys if item.entry.key.startswith("large/")]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(keys)
    planted = keys[-1]
    _remove_behind_the_nodes_back(regions, "b", planted)
    run = _verify_cli(regions, "--json")
    assert run.returncode == DRIFT, run.stdout + run.stderr
    assert [item["key"] for item in json.loads(run.stdout)["diverging"]] == [planted]
    for key in keys:  # the cluster is shared: leave it small again
        a.delete(key)
    regions.wait_converged(timeout_s=120)
    assert _verify_cli(regions).returncode == AGREE


def test_regions_that_cannot_reach_a_common_point_exit_2(regions: RegionProcesses) -> None:
    regions.cut("a", "b")
    try:
        regions.clients["a"].set("while-cut", "x")
        with (
            Client(regions.servers["a"].addr, timeout_s=5) as a,
            Client(regions.servers["b"].addr, timeout_s=5) as b,
        ):
            result = compare_regions({"a": a, "b": b}, deadline_s=1.0)
        assert result.exit_code == NO_COMMON_POINT
        assert not result.common_point
        assert "did not reach" in result.message
    finally:
        regions.heal()
    regions.wait_converged()


def test_verify_needs_two_regions(regions: RegionProcesses) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "crdtstore", "verify", "--addr", regions.servers["a"].addr],
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "at least two regions" in run.stderr


def test_an_unreachable_region_is_no_common_point(regions: RegionProcesses, tmp_path: Path) -> None:
    with Client(regions.servers["a"].addr, timeout_s=1) as a, Client("127.0.0.1:1", timeout_s=1, retries_max=0) as b:
        result = compare_regions({"a": a, "nowhere": b}, deadline_s=1.0)
    assert result.exit_code == NO_COMMON_POINT and "could not be asked" in result.message

"""Scraping a live 3-region cluster: counters follow the operations, a partition shows, a bad clock shows.

Real node processes with ``--metrics-listen 127.0.0.1:0``; every scrape is
parsed with ``prometheus_client``'s own parser. Region ``c`` runs with its
clock 5 s ahead, so it is fenced; ``a`` and ``b`` are healthy. Nothing here
asserts a duration: waits poll for a state, with a generous deadline.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crdtstore.client import Client, ClientError
from crdtstore.operations import SetRegister
from crdtstore.testing.regions import RegionProcesses

pytestmark = pytest.mark.processes

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(regions: RegionProcesses, name: str) -> str:
    port = regions.servers[name].metrics_port
    assert port, f"region {name} serves no metrics"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode("utf-8"))


def scrape(regions: RegionProcesses, name: str) -> Samples:
    """Every sample of a scrape, parsed by the library's parser: (name, labels) -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(regions, name)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout_s:.0f} s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegionProcesses]:
    root = tmp_path_factory.mktemp("metrics")
    config = root / "node.toml"
    # Convergence checks every 300 ms instead of every minute, so the test sees some.
    config.write_text("[replication]\nconvergence_check_ms = 300\n", encoding="utf-8")
    ahead = {"CRDTSTORE_CHAOS_CLOCK_OFFSET_MS": "5000"}  # c's clock 5 s ahead; the bound is 500 ms
    with RegionProcesses(
        root / "regions",
        ["a", "b", "c"],
        extra_args=("--metrics-listen", "127.0.0.1:0", "--config", str(config)),
        env={"c": ahead},
    ) as regions:
        regions.wait_connected()
        yield regions


def _write_under_load(addr: str, writer: int, count: int) -> None:
    with Client(addr, timeout_s=20) as client:
        for i in range(count):
            client.set(f"load/{writer}/{i}", "x")


def test_counters_rise_with_the_operations_made(cluster: RegionProcesses) -> None:
    a = cluster.clients["a"]
    before = scrape(cluster, "a")
    # 4 writers of 50 writes each while the node is scraped again and again: the counter only ever rises.
    writers = [threading.Thread(target=_write_under_load, args=(cluster.servers["a"].addr, n, 50)) for n in range(4)]
    for thread in writers:
        thread.start()
    seen = [value(before, "crdtstore_requests_total", rpc="Mutate", code="OK")]
    while any(thread.is_alive() for thread in writers):
        seen.append(value(scrape(cluster, "a"), "crdtstore_requests_total", rpc="Mutate", code="OK"))
    for thread in writers:
        thread.join()
    assert seen == sorted(seen)
    for i in range(20):
        a.set(f"ops/{i}", f"v{i}")
    for i in range(5):
        a.get(f"ops/{i}")
    with pytest.raises(ClientError):
        a.get("")  # refused: INVALID_ARGUMENT
    after = scrape(cluster, "a")

    def rise(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert rise("crdtstore_requests_total", rpc="Mutate", code="OK") == 220
    assert rise("crdtstore_requests_total", rpc="Get", code="OK") == 5
    assert rise("crdtstore_requests_total", rpc="Get", code="INVALID_ARGUMENT") == 1
    assert rise("crdtstore_request_duration_seconds_count", rpc="Mutate") == 220
    # Every write went through a group commit, and so did the audit record of the refused Get.
    assert rise("crdtstore_write_batch_requests_sum") == 221
    assert 1 <= rise("crdtstore_write_commit_duration_seconds_count") <= 221
    assert rise("crdtstore_fsync_duration_seconds_count") == rise("crdtstore_write_commit_duration_seconds_count")
    assert value(after, "crdtstore_live_keys") >= 220
    assert value(after, "crdtstore_lmdb_used_bytes") > 0
    assert value(after, "crdtstore_lmdb_map_size_bytes") >= value(after, "crdtstore_lmdb_used_bytes")
    assert value(after, "crdtstore_delta_log_entries") > 0
    assert value(after, "process_resident_memory_bytes") > 0
    for peer in ("b", "c"):
        assert value(after, "crdtstore_peer_connected", peer=peer) == 1
    # The writes reach b; its acknowledgements give a's lag histogram samples.
    wait_for(
        "b acknowledged a's writes",
        lambda: (
            value(scrape(cluster, "a"), "crdtstore_replication_lag_seconds_count", peer="b")
            - value(before, "crdtstore_replication_lag_seconds_count", peer="b")
            >= 1
        ),
    )
    later = scrape(cluster, "a")
    assert value(later, "crdtstore_replication_sent_bytes_total", peer="b") > value(
        before, "crdtstore_replication_sent_bytes_total", peer="b"
    )
    assert value(later, "crdtstore_replication_sent_messages_total", peer="b", kind="entries") > 0
    assert value(later, "crdtstore_replication_received_messages_total", peer="b", kind="ack") > 0


def test_the_fenced_clock_shows_in_its_gauges(cluster: RegionProcesses) -> None:
    wait_for("c is fenced", lambda: value(scrape(cluster, "c"), "crdtstore_clock_fenced") == 1)
    with pytest.raises(ClientError) as err:
        cluster.clients["c"].set("fenced", "no")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    c = scrape(cluster, "c")
    assert value(c, "crdtstore_clock_fenced_refusals_total") >= 1
    assert value(c, "crdtstore_requests_total", rpc="Mutate", code="UNAVAILABLE") >= 1
    assert value(c, "crdtstore_clock_offset_seconds", peer="a") < -4  # a's clock is 5 s behind c's
    a = scrape(cluster, "a")
    assert value(a, "crdtstore_clock_fenced") == 0  # one peer of two out of bounds is not most of them
    assert value(a, "crdtstore_clock_offset_seconds", peer="c") > 4


def test_a_partition_raises_lag_and_events_behind_and_healing_brings_them_back(cluster: RegionProcesses) -> None:
    a = cluster.clients["a"]
    cluster.cut("a", "b")
    try:
        for i in range(10):
            a.set(f"partition/{i}", "x")
        wait_for(
            "a counts b behind",
            lambda: value(scrape(cluster, "a"), "crdtstore_replication_events_behind", peer="b") >= 10,
        )
        wait_for(
            "the oldest write b lacks ages",
            lambda: value(scrape(cluster, "a"), "crdtstore_replication_oldest_unacked_seconds", peer="b") > 0.5,
        )
        lag_before = value(scrape(cluster, "a"), "crdtstore_replication_lag_seconds_count", peer="b")
    finally:
        cluster.heal()
    cluster.wait_connected()
    wait_for(
        "b caught up",
        lambda: (
            value(scrape(cluster, "a"), "crdtstore_replication_events_behind", peer="b") == 0
            and value(scrape(cluster, "a"), "crdtstore_replication_oldest_unacked_seconds", peer="b") == 0
        ),
    )
    after = scrape(cluster, "a")
    # The writes made during the partition were observed with their (long) lag once b acknowledged them.
    assert value(after, "crdtstore_replication_lag_seconds_count", peer="b") > lag_before
    assert value(after, "crdtstore_replication_lag_seconds_bucket", peer="b", le="+Inf") == value(
        after, "crdtstore_replication_lag_seconds_count", peer="b"
    )
    assert value(after, "crdtstore_replication_lag_seconds_sum", peer="b") > 0.5


def test_regions_that_converged_report_agreement(cluster: RegionProcesses) -> None:
    cluster.wait_converged()
    # With no writes, vectors stay equal, so the checks (every 300 ms) become comparable and agree.
    wait_for(
        "a and b agree",
        lambda: value(scrape(cluster, "a"), "crdtstore_convergence_checks_total", peer="b", result="agree") >= 1,
    )
    a = scrape(cluster, "a")
    assert value(a, "crdtstore_convergence_agreed", peer="b") == 1
    assert value(a, "crdtstore_convergence_last_agreed_timestamp_seconds", peer="b") > time.time() - 600
    assert value(a, "crdtstore_convergence_checks_total", peer="b", result="differ") == 0


def test_label_cardinality_does_not_grow_with_distinct_keys(cluster: RegionProcesses) -> None:
    a = cluster.clients["a"]
    a.set("warm/0", "x")  # every series of a write exists before counting
    a.get("warm/0")
    series_before = {key for key in scrape(cluster, "a") if not key[0].startswith(("process_", "python_"))}
    for batch in range(20):
        a.mutate([SetRegister(f"card/{batch}/{i}", b"v") for i in range(500)])  # 10,000 distinct keys
    for i in range(0, 10_000, 500):
        a.get(f"card/{i // 500}/{i % 500}")
    series_after = {key for key in scrape(cluster, "a") if not key[0].startswith(("process_", "python_"))}
    assert series_after == series_before, sorted(series_after ^ series_before)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_accepts_a_live_scrape(cluster: RegionProcesses, tmp_path: Path) -> None:
    text = scrape_text(cluster, "a")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _request_id(metadata: Any) -> str:
    return str(dict(metadata)["x-request-id"])


def test_the_request_id_comes_back_in_the_response_metadata(cluster: RegionProcesses) -> None:
    """In the trailing metadata, which costs nothing (initial metadata sent apart costs a sixth of a write)."""
    from crdtstore.v1 import kv_pb2 as pb

    with grpc.insecure_channel(cluster.servers["a"].addr) as channel:
        get = channel.unary_unary(
            "/crdtstore.v1.KV/Get",
            request_serializer=pb.GetRequest.SerializeToString,
            response_deserializer=pb.GetResponse.FromString,
        )
        _, call = get.with_call(
            pb.GetRequest(key="ops/0"), metadata=(("x-request-id", "client-chose-this"),), timeout=20
        )
        assert _request_id(call.trailing_metadata()) == "client-chose-this"
        # Without one (or with one unfit for a log line) the node makes one: 32 hex digits.
        _, call = get.with_call(pb.GetRequest(key="ops/0"), metadata=(("x-request-id", "x" * 200),), timeout=20)
        made = _request_id(call.trailing_metadata())
        assert len(made) == 32 and int(made, 16) >= 0
        # An error carries it too.
        with pytest.raises(grpc.RpcError) as err:
            get.with_call(pb.GetRequest(key=""), metadata=(("x-request-id", "err-1"),), timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _request_id(err.value.trailing_metadata()) == "err-1"


def test_the_change_feed_shows_its_streams_and_events(cluster: RegionProcesses) -> None:
    from crdtstore.watching import Change

    before = scrape(cluster, "a")
    with Client(cluster.servers["a"].addr, timeout_s=20) as watcher:
        items = watcher.watch("feedmetrics/", start="now", progress_interval_ms=200)
        next(items)  # the first progress message: the stream is open
        assert value(scrape(cluster, "a"), "crdtstore_watch_streams") == 1
        cluster.clients["a"].set("feedmetrics/1", "x")
        assert any(isinstance(item, Change) for item in itertools.islice(items, 100))
        items.close()
    # Counted once the node's send returns, which may be after the client has the event: wait for it.
    sent_before = value(before, "crdtstore_watch_events_sent_total")
    wait_for(
        "the events counted", lambda: value(scrape(cluster, "a"), "crdtstore_watch_events_sent_total") > sent_before
    )
    wait_for("the stream closed", lambda: value(scrape(cluster, "a"), "crdtstore_watch_streams") == 0)

    def watches_counted() -> bool:  # once it ended, whatever its code (the client cancelled it)
        samples = scrape(cluster, "a")
        return any(name == "crdtstore_requests_total" and ("rpc", "Watch") in labels for name, labels in samples)

    wait_for("the stream counted among requests", watches_counted)
    assert value(scrape(cluster, "a"), "crdtstore_watch_streams_cut_total", reason="stalled") == 0

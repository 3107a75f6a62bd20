"""Metrics: the setting, the per-node registry, and a live node's ``/metrics``.

The 3-region scrape under load, partitions and a fenced clock is in
``tests/test_metrics_cluster.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crdtstore.node.config import ConfigError, NodeConfig
from crdtstore.node.metrics import NodeMetrics


def test_metrics_are_off_by_default() -> None:
    assert NodeConfig.load(environ={}).metrics_listen == ""


def test_metrics_listen_from_file_environment_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('metrics_listen = "127.0.0.1:9001"\n', encoding="utf-8")
    assert NodeConfig.load(config_file=str(path), environ={}).metrics_listen == "127.0.0.1:9001"
    env = {"CRDTSTORE_METRICS_LISTEN": "127.0.0.1:9002"}
    assert NodeConfig.load(config_file=str(path), environ=env).metrics_listen == "127.0.0.1:9002"
    flags = {"metrics_listen": "[::1]:9003"}
    assert NodeConfig.load(config_file=str(path), environ=env, flags=flags).metrics_listen == "[::1]:9003"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9100", "metrics_listen: listen address '9100' is not HOST:PORT"),
        ("127.0.0.1:99999", "metrics_listen: listen address '127.0.0.1:99999': the port must be a number"),
        ("127.0.0.1:7420", "metrics_listen 127.0.0.1:7420 is the node's own gRPC address"),
    ],
)
def test_bad_metrics_listen_is_refused_with_the_setting_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        NodeConfig.load(environ={"CRDTSTORE_METRICS_LISTEN": value})


def test_metrics_listen_in_a_file_must_be_a_string(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("metrics_listen = 9100\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="metrics_listen must be a string"):
        NodeConfig.load(config_file=str(path), environ={})


def _families(metrics: NodeMetrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_each_node_has_its_own_registry_with_the_process_collectors() -> None:
    from crdtstore.node.metrics import NodeSnapshot

    a, b = NodeMetrics(), NodeMetrics()
    a.attach(lambda: NodeSnapshot(watch_streams=2, watch_events_sent=7, watch_streams_cut_stalled=1), None)
    a.requests.labels("Get", "OK").inc()
    families_a, families_b = _families(a), _families(b)
    assert "process_cpu_seconds" in families_a and "python_gc_objects_collected" in families_a
    samples_a = [s for s in families_a["crdtstore_requests"].samples if s.name == "crdtstore_requests_total"]  # type: ignore[attr-defined]
    samples_b = [s for s in families_b["crdtstore_requests"].samples if s.name == "crdtstore_requests_total"]  # type: ignore[attr-defined]
    assert [s.value for s in samples_a] == [1.0]
    assert samples_b == []
    # The contract names other features feed.
    for name in (
        "crdtstore_watch_streams",
        "crdtstore_watch_events_sent",
        "crdtstore_watch_streams_cut",
        "crdtstore_convergence_agreed",
        "crdtstore_convergence_last_agreed_timestamp_seconds",
        "crdtstore_convergence_checks",
    ):
        assert name in families_a, name


def test_a_scrape_from_another_thread_reads_the_loop_state() -> None:
    """The collector takes its snapshot on the node's event loop, whichever thread scrapes."""
    from crdtstore.node.metrics import NodeSnapshot, PeerSnapshot

    async def run() -> str:
        metrics = NodeMetrics()
        loop = asyncio.get_running_loop()
        taken_on: list[asyncio.AbstractEventLoop] = []

        def snapshot() -> NodeSnapshot:
            taken_on.append(asyncio.get_running_loop())
            return NodeSnapshot(peers={"us-east": PeerSnapshot(True, 7, -1500, 3)}, clock_fenced=True)

        metrics.attach(snapshot, loop)
        text = await asyncio.to_thread(lambda: generate_latest(metrics.registry).decode())
        assert taken_on == [loop]
        return text

    text = asyncio.run(run())
    assert 'crdtstore_replication_events_behind{peer="us-east"} 7.0' in text
    assert 'crdtstore_clock_offset_seconds{peer="us-east"} -1.5' in text
    assert 'crdtstore_peer_connected{peer="us-east"} 1.0' in text
    assert "crdtstore_clock_fenced 1.0" in text


def _lag_count(metrics: NodeMetrics, peer: str) -> tuple[float, float]:
    """(count, sum) of the lag histogram for ``peer``."""
    count = total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.labels.get("peer") != peer:
                continue
            if sample.name == "crdtstore_replication_lag_seconds_count":
                count = sample.value
            elif sample.name == "crdtstore_replication_lag_seconds_sum":
                total = sample.value
    return count, total


def test_commit_lag_is_observed_once_per_commit_when_a_peer_first_covers_it() -> None:
    from crdtstore.node.lag import CommitLag

    metrics = NodeMetrics()
    now = [100.0]
    lag = CommitLag(["b", "c"], metrics.replication_lag, lambda: now[0], commits_max=3)
    lag.committed("a#1", 1)
    now[0] = 101.0
    lag.committed("a#1", 3)
    now[0] = 102.5
    assert lag.oldest_unacked_s("b") == 2.5
    lag.acked("b", 1)  # covers the first commit: 2.5 s after it
    assert _lag_count(metrics, "b") == (1.0, 2.5)
    lag.acked("b", 1)  # nothing new
    lag.acked("b", 3)  # the second, 1.5 s after it
    assert _lag_count(metrics, "b") == (2.0, 4.0)
    assert lag.oldest_unacked_s("b") == 0.0
    assert lag.oldest_unacked_s("c") == 2.5  # c acknowledged nothing yet
    for counter in (4, 5, 6, 7):  # bounded: the oldest commits are forgotten
        lag.committed("a#1", counter)
    assert len(lag._counters) == 3
    lag.committed("a#2", 1)  # a new incarnation starts afresh
    assert lag.oldest_unacked_s("c") == 0.0


def test_convergence_checks_agree_differ_or_are_not_comparable(tmp_path: Path) -> None:
    from crdtstore.crdt import HybridLogicalClock, encode
    from crdtstore.node.convergence import ConvergenceChecks
    from crdtstore.operations import SetRegister
    from crdtstore.storage import LmdbStore, StorageConfig, WriteRequest
    from crdtstore.v1 import replication_pb2 as rpb

    store = LmdbStore(StorageConfig(tmp_path / "eu", "eu"))
    try:
        clock = HybridLogicalClock(lambda: 1_000, max_offset_ms=500)
        store.write_batch([WriteRequest([SetRegister("k", b"v")])], clock)
        metrics = NodeMetrics()
        checks = ConvergenceChecks(store, metrics, ["us"], interval_s=60)

        async def check(vector: bytes, digest: bytes) -> None:
            message = rpb.SyncMessage(ack=rpb.SyncAck(vector=vector, check_vector=vector, check_digest=digest))
            comparison = checks.received("us", message)
            assert comparison is not None
            await comparison

        async def run() -> None:
            vector, digest = await checks.read()
            await check(encode(vector), digest)
            await check(encode(vector), bytes(16))  # the same vector, another digest: different data
            older = VersionVector({origin: n - 1 for origin, n in vector.items()})
            await check(encode(older), digest)

        from crdtstore.crdt import VersionVector

        asyncio.run(run())
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect()
            for s in family.samples
            if s.name.startswith("crdtstore_convergence")
        }
        for result in ("agree", "differ", "not_comparable"):
            assert samples[("crdtstore_convergence_checks_total", (("peer", "us"), ("result", result)))] == 1
        assert samples[("crdtstore_convergence_agreed", (("peer", "us"),))] == 0  # the last comparable one differed
        assert samples[("crdtstore_convergence_last_agreed_timestamp_seconds", (("peer", "us"),))] > 0
        # An acknowledgement without a check, or a message of another kind, asks for nothing.
        assert checks.received("us", rpb.SyncMessage(ack=rpb.SyncAck())) is None
        assert checks.received("us", rpb.SyncMessage(want=rpb.SyncWant())) is None
    finally:
        store.close()


def test_a_pending_check_rides_on_the_next_acknowledgement_to_each_peer_once(tmp_path: Path) -> None:
    from crdtstore.node.convergence import ConvergenceChecks
    from crdtstore.storage import LmdbStore, StorageConfig
    from crdtstore.v1 import replication_pb2 as rpb

    store = LmdbStore(StorageConfig(tmp_path / "eu", "eu"))
    try:
        checks = ConvergenceChecks(store, NodeMetrics(), ["us", "ap"], interval_s=0.01)

        async def one_round() -> None:
            task = asyncio.ensure_future(checks.run())
            while checks._outgoing is None:
                await asyncio.sleep(0.01)
            task.cancel()

        asyncio.run(one_round())
        entries = rpb.SyncMessage(entries=rpb.SyncEntries())
        checks.stamp("us", entries)
        assert not entries.HasField("ack")  # only acknowledgements carry it
        first, second = rpb.SyncMessage(ack=rpb.SyncAck()), rpb.SyncMessage(ack=rpb.SyncAck())
        checks.stamp("us", first)
        checks.stamp("us", second)
        assert (
            len(first.ack.check_digest) == 16 and (first.ack.check_vector, first.ack.check_digest) == checks._outgoing
        )
        assert not second.ack.check_digest  # once per round
        other = rpb.SyncMessage(ack=rpb.SyncAck())
        checks.stamp("ap", other)
        assert other.ack.check_digest == first.ack.check_digest
    finally:
        store.close()


@pytest.mark.processes
def test_a_metrics_port_in_use_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "crdtstore",
                "serve",
                "--data-dir",
                str(tmp_path / "node"),
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr

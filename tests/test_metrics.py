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
    a, b = NodeMetrics(), NodeMetrics()
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

"""A node's Prometheus metrics: one registry per node, every metric declared in one place.

Why a registry of its own: several nodes run in one test process (and the
benchmarks run more), so node metrics never go to ``prometheus_client``'s
global registry; each ``NodeMetrics`` owns a ``CollectorRegistry``, and the
library's process, platform and garbage-collector collectors are registered
on it too, so one scrape of ``/metrics`` shows the whole node.

Where the numbers come from, so that metrics cost the write path nothing it
would notice:

* counters and histograms that only the event they count can know (a
  request's status and duration, a commit's batch size and fsync time, bytes
  on a replication stream, a repair) are updated where it happens, by the
  node's adapters (``service``, ``writer``, ``replication``), never by the
  pure core (``crdtstore.crdt``, ``crdtstore.replica.core``);
* everything that is a state (LMDB map size, used bytes and free pages, the
  delta log's bytes and entries, live keys, whether each peer is connected
  and how far behind it is, clock offsets, the fence, refusal counts the
  access control already keeps) is read when Prometheus scrapes, by
  ``NodeCollector``: nothing is paid per write for them.

With ``metrics_listen`` empty (the default) the node makes no ``NodeMetrics``
at all (``node.metrics is None``) and every hook is one ``is None`` test.

Declaring a metric (the change feed, the audit trail, ...): add one line in
``NodeMetrics.__init__`` under its heading, with ``registry=r``, a name with
the ``crdtstore_`` prefix, base units in the name (``_seconds``, ``_bytes``),
``_total`` for counters (``prometheus_client`` adds it to a Counter's
name), and labels of bounded cardinality only: an RPC name, a status code,
a peer region, a reason from a fixed list; never a key, a member, a token or
a principal. Then feed it where the event happens, guarded::

    if (metrics := node.metrics) is not None:
        metrics.audit_records.inc()

or, where the feature keeps a count of its own anyway (the change feed's
``WatchStreams``), export it at scrape time in ``NodeCollector`` instead.

and add it to the table in ``docs/observability.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crdtstore.node.config import parse_listen

__all__ = ["MetricsServer", "NodeCollector", "NodeMetrics", "NodeSnapshot", "PeerSnapshot", "serve_metrics"]

log = logging.getLogger("crdtstore.metrics")

# Request durations: from a cached read (~100 us) to a replicated write that waits out a deadline.
_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# fsync on a local disk: tens of microseconds (tmpfs) to hundreds of milliseconds (a saturated network disk).
_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Requests per group commit: powers of two up to the default batch_requests_max.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Replication lag, from the origin's commit to the apply here: a LAN round trip to a long partition.
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

# How long a scrape waits for the event loop to take a snapshot of replication; past it those series are left out.
_SNAPSHOT_TIMEOUT_S = 2.0


class NodeMetrics:
    """The metrics of one node, on a registry of its own (``self.registry``).

    The attributes are ``prometheus_client`` metrics; the scrape-time ones
    come from a ``NodeCollector`` that the node ``attach``es once it has its
    store and replicator.
    """

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # The library's defaults, on this registry instead of the global one.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        # -- requests (service: every unary RPC, by the handler wrapper) -------------------------
        self.requests = Counter(
            "crdtstore_requests", "RPCs answered, by method and gRPC status code", ["rpc", "code"], registry=r
        )
        self.request_duration = Histogram(
            "crdtstore_request_duration_seconds",
            "Time from a request's arrival to its answer, by method",
            ["rpc"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )

        # -- the writer (group commit) ------------------------------------------------------------
        self.write_batch_requests = Histogram(
            "crdtstore_write_batch_requests",
            "Client write requests committed together in one transaction and one fsync",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.write_commit_duration = Histogram(
            "crdtstore_write_commit_duration_seconds",
            "Time to apply one group commit's requests and commit them, fsync included",
            buckets=_FSYNC_BUCKETS,
            registry=r,
        )
        self.fsync_duration = Histogram(
            "crdtstore_fsync_duration_seconds",
            "Time to commit one group commit's LMDB transaction: write its pages and fsync them",
            buckets=_FSYNC_BUCKETS,
            registry=r,
        )
        self.writer_queue_depth = Gauge(
            "crdtstore_writer_queue_depth", "Write requests and jobs waiting for the writer thread", registry=r
        )
        self.idempotent_replays = Counter(
            "crdtstore_idempotent_replays",
            "Writes answered from the idempotency record of an earlier identical request, not applied again",
            registry=r,
        )
        self.write_failures = Counter(
            "crdtstore_write_failures",
            "Write requests the writer could not apply, by reason",
            ["reason"],
            registry=r,
        )
        self.audit_refusals_dropped = Counter(
            "crdtstore_audit_refusals_dropped",
            "Refused requests left without an audit record: the writer's queue was full or closed, or the store full",
            registry=r,
        )
        self.audit_head_mismatches = Counter(
            "crdtstore_audit_head_mismatches",
            "Times a peer's audit chain head differed from this node's copy of the same record",
            registry=r,
        )

        # -- replication (the host in node/replication.py) ----------------------------------------
        self.replication_lag = Histogram(
            "crdtstore_replication_lag_seconds",
            "From this node's commit of a batch to the peer's acknowledgement that it applied it durably (this "
            "node's clock at both ends), by peer",
            ["peer"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.replication_sent_bytes = Counter(
            "crdtstore_replication_sent_bytes", "Bytes of replication messages sent, by peer", ["peer"], registry=r
        )
        self.replication_received_bytes = Counter(
            "crdtstore_replication_received_bytes",
            "Bytes of replication messages received, by peer",
            ["peer"],
            registry=r,
        )
        self.replication_sent_messages = Counter(
            "crdtstore_replication_sent_messages",
            "Replication messages sent, by peer and kind",
            ["peer", "kind"],
            registry=r,
        )
        self.replication_received_messages = Counter(
            "crdtstore_replication_received_messages",
            "Replication messages received, by peer and kind",
            ["peer", "kind"],
            registry=r,
        )
        self.repairs = Counter(
            "crdtstore_replication_repairs",
            "State transfers (repairs) this node sent to a peer that lacked trimmed entries",
            ["peer"],
            registry=r,
        )
        self.keys_repaired = Counter(
            "crdtstore_replication_keys_repaired",
            "Keys sent to a peer in repairs (those of the digest buckets that differed)",
            ["peer"],
            registry=r,
        )
        self.clock_fenced_refusals = Counter(
            "crdtstore_clock_fenced_refusals",
            "Writes refused because this node's clock was fenced (out of bounds against most peers)",
            registry=r,
        )

        # -- convergence SLI (node/convergence.py) ------------------------------------------------
        self.convergence_agreed = Gauge(
            "crdtstore_convergence_agreed",
            "1 if the last check with the peer at a common causal point found equal bucket digests, 0 if not",
            ["peer"],
            registry=r,
        )
        self.convergence_last_agreed = Gauge(
            "crdtstore_convergence_last_agreed_timestamp_seconds",
            "Unix time of the last check that found this node and the peer in agreement",
            ["peer"],
            registry=r,
        )
        self.convergence_checks = Counter(
            "crdtstore_convergence_checks",
            "Convergence checks with a peer, by result: agree, differ, not_comparable (different vectors)",
            ["peer", "result"],
            registry=r,
        )

        # -- the change feed (KV.Watch): read at scrape time from its own counters (NodeCollector) ---------

        # -- the audit trail (a later issue): declare its metrics here ----------------------------

        self._collector: NodeCollector | None = None
        # The children of the request metrics, by (rpc, code): labels() takes a lock and checks its arguments
        # on every call; the per-request path looks them up here instead (bounded: RPCs times status codes).
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def count_request(self, rpc: str, code: str, seconds: float) -> None:
        """One answered request: counted by method and code, its duration observed by method."""
        children = self._request_children.get((rpc, code))
        if children is None:
            children = (self.requests.labels(rpc, code), self.request_duration.labels(rpc))
            self._request_children[(rpc, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def attach(self, snapshot: Callable[[], NodeSnapshot], loop: asyncio.AbstractEventLoop | None) -> None:
        """Read the node's state at scrape time: ``snapshot`` runs on ``loop`` (the node's event loop)."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = NodeCollector(snapshot, loop)
        self.registry.register(self._collector)


@dataclass(frozen=True)
class PeerSnapshot:
    connected: bool
    events_behind: int
    clock_offset_ms: int | None
    clock_error_ms: int
    oldest_unacked_s: float = 0.0


@dataclass(frozen=True)
class NodeSnapshot:
    """What a scrape reads of the node's state, taken on the event loop (one consistent view)."""

    peers: dict[str, PeerSnapshot] = field(default_factory=dict)
    clock_fenced: bool = False
    clock_skew_events: int = 0
    refused_unauthenticated: int = 0
    refused_permission_denied: int = 0
    auth_enabled: bool = False
    draining: bool = False
    # The change feed's counters (crdtstore.node.feed.WatchStreams).
    watch_streams: int = 0
    watch_events_sent: int = 0
    watch_streams_cut_stalled: int = 0
    region: str = ""
    version: str = ""
    # Read on the scraping thread, not the loop: storage reads take LMDB read transactions.
    storage: Callable[[], StorageSnapshot] | None = None


@dataclass(frozen=True)
class StorageSnapshot:
    map_size_bytes: int
    map_size_max_bytes: int
    used_bytes: int
    free_pages: int
    page_size_bytes: int
    delta_log_bytes: int
    delta_log_entries: int
    live_keys: int


class NodeCollector(Collector):
    """The scrape-time metrics: state read when Prometheus asks, not counted on every write."""

    def __init__(self, snapshot: Callable[[], NodeSnapshot], loop: asyncio.AbstractEventLoop | None) -> None:
        self._snapshot = snapshot
        self._loop = loop

    def describe(self) -> Iterable[Any]:
        return []  # the families depend on the node's state; nothing to check against at registration

    def _take(self) -> NodeSnapshot | None:
        loop = self._loop
        if loop is None:
            return self._snapshot()
        try:
            if asyncio.get_running_loop() is loop:
                return self._snapshot()  # scraped from the loop itself (tests do)
        except RuntimeError:
            pass
        if loop.is_closed():
            return None
        future: concurrent.futures.Future[NodeSnapshot] = concurrent.futures.Future()

        def take() -> None:
            try:
                future.set_result(self._snapshot())
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(take)
            return future.result(timeout=_SNAPSHOT_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            log.warning("the event loop did not answer a scrape within %.0f s", _SNAPSHOT_TIMEOUT_S)
            return None

    def collect(self) -> Iterator[Any]:
        snap = self._take()
        if snap is None:
            return
        connected = GaugeMetricFamily(
            "crdtstore_peer_connected", "1 while a replication stream with the peer is open", labels=["peer"]
        )
        behind = GaugeMetricFamily(
            "crdtstore_replication_events_behind",
            "Events this node has that the peer has not acknowledged",
            labels=["peer"],
        )
        offset = GaugeMetricFamily(
            "crdtstore_clock_offset_seconds",
            "The peer's clock minus this node's, as last measured over the replication stream",
            labels=["peer"],
        )
        error = GaugeMetricFamily(
            "crdtstore_clock_offset_error_seconds",
            "The bound on that measurement's error (half its round trip)",
            labels=["peer"],
        )
        for name, peer in sorted(snap.peers.items()):
            connected.add_metric([name], 1.0 if peer.connected else 0.0)
            behind.add_metric([name], float(peer.events_behind))
            if peer.clock_offset_ms is not None:
                offset.add_metric([name], peer.clock_offset_ms / 1000)
                error.add_metric([name], peer.clock_error_ms / 1000)
        oldest = GaugeMetricFamily(
            "crdtstore_replication_oldest_unacked_seconds",
            "How long the oldest local commit the peer has not acknowledged has waited (0: it has them all)",
            labels=["peer"],
        )
        for name, peer in sorted(snap.peers.items()):
            oldest.add_metric([name], peer.oldest_unacked_s)
        yield from (connected, behind, offset, error, oldest)
        yield GaugeMetricFamily(
            "crdtstore_clock_fenced",
            "1 while this node's clock is out of bounds against most of its peers (it refuses writes)",
            value=1.0 if snap.clock_fenced else 0.0,
        )
        yield CounterMetricFamily(
            "crdtstore_clock_skew_refusals",
            "Remote timestamps beyond max_clock_offset_ms that the clock refused to take (the delta was applied)",
            value=snap.clock_skew_events,
        )
        yield GaugeMetricFamily("crdtstore_watch_streams", "Watch streams open now", value=snap.watch_streams)
        yield CounterMetricFamily(
            "crdtstore_watch_events_sent", "Change events sent on watch streams", value=snap.watch_events_sent
        )
        cut = CounterMetricFamily(
            "crdtstore_watch_streams_cut",
            "Watch streams the node ended, by reason (stalled: the consumer read nothing for server.watch_stall_s)",
            labels=["reason"],
        )
        cut.add_metric(["stalled"], snap.watch_streams_cut_stalled)
        yield cut
        info = GaugeMetricFamily(
            "crdtstore_build_info", "Always 1: the node's region and crdtstore version", labels=["region", "version"]
        )
        info.add_metric([snap.region, snap.version], 1.0)
        yield info
        yield GaugeMetricFamily(
            "crdtstore_draining", "1 while the node drains before stopping", value=1.0 if snap.draining else 0.0
        )
        yield GaugeMetricFamily(
            "crdtstore_auth_enabled", "1 when access control is on", value=1.0 if snap.auth_enabled else 0.0
        )
        refusals = CounterMetricFamily(
            "crdtstore_auth_refusals",
            "Requests and streams refused by access control, by reason",
            labels=["reason"],
        )
        refusals.add_metric(["unauthenticated"], snap.refused_unauthenticated)
        refusals.add_metric(["permission_denied"], snap.refused_permission_denied)
        yield refusals
        if snap.storage is None:
            return
        try:
            storage = snap.storage()
        except Exception:  # a closed store while the node stops: leave those series out
            log.debug("storage statistics unavailable for this scrape", exc_info=True)
            return
        yield GaugeMetricFamily(
            "crdtstore_lmdb_map_size_bytes",
            "The LMDB map's current size (it grows, up to map_size_bytes_max)",
            value=storage.map_size_bytes,
        )
        yield GaugeMetricFamily(
            "crdtstore_lmdb_map_size_max_bytes",
            "The largest the map may grow (storage.map_size_bytes_max): past it writes are refused",
            value=storage.map_size_max_bytes,
        )
        yield GaugeMetricFamily(
            "crdtstore_lmdb_used_bytes",
            "Bytes of the map in use (pages up to the highest ever written)",
            value=storage.used_bytes,
        )
        yield GaugeMetricFamily(
            "crdtstore_lmdb_free_pages",
            "Pages of the map not yet used (room before the map must grow)",
            value=storage.free_pages,
        )
        yield GaugeMetricFamily("crdtstore_lmdb_page_size_bytes", "LMDB's page size", value=storage.page_size_bytes)
        yield GaugeMetricFamily(
            "crdtstore_delta_log_bytes",
            "Bytes held by the delta log (bounded by delta_log_bytes_max)",
            value=storage.delta_log_bytes,
        )
        yield GaugeMetricFamily(
            "crdtstore_delta_log_entries", "Entries in the delta log", value=storage.delta_log_entries
        )
        yield GaugeMetricFamily(
            "crdtstore_live_keys", "Keys stored (the node's own records left out)", value=storage.live_keys
        )


class MetricsServer:
    """The HTTP server of ``/metrics`` (``prometheus_client``'s, on a thread of its own)."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def serve_metrics(listen: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` as Prometheus text at ``http://listen/metrics``; ``OSError`` when it cannot bind."""
    host, port = parse_listen(listen)
    server, thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    return MetricsServer(server, thread)

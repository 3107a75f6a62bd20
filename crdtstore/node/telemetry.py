"""What a scrape reads of a running node, and the ``/metrics`` server's life with the node's.

``crdtstore.node.metrics`` declares the metrics; this module knows the node's
parts (the store, the replicator, access control) and reads their state for
``NodeCollector``: the replication and access figures on the event loop,
where they change, and the storage figures on the scraping thread, in LMDB
read transactions (which any thread may open).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import crdtstore
from crdtstore.node.metrics import (
    MetricsServer,
    NodeMetrics,
    NodeSnapshot,
    PeerSnapshot,
    StorageSnapshot,
    serve_metrics,
)
from crdtstore.storage import LmdbStore

if TYPE_CHECKING:
    from crdtstore.node.service import NodeState

__all__ = ["node_snapshot", "start_metrics", "storage_snapshot"]

log = logging.getLogger("crdtstore.metrics")


def storage_snapshot(store: LmdbStore, system_keys: int) -> StorageSnapshot:
    """The store's size figures; LMDB read transactions only (any thread)."""
    with store._gate.read():  # not while the map is being grown
        info = store.env.info()
        page = int(store.env.stat()["psize"])
        with store.env.begin() as txn:
            log_entries = int(txn.stat(store.log)["entries"])
            keys = int(txn.stat(store.data)["entries"])
    used_pages = int(info["last_pgno"]) + 1
    map_size = int(info["map_size"])
    return StorageSnapshot(
        map_size_bytes=map_size,
        map_size_max_bytes=store.config.options.map_size_bytes_max,
        used_bytes=used_pages * page,
        free_pages=max(0, map_size // page - used_pages),
        page_size_bytes=page,
        delta_log_bytes=store._log_bytes,
        delta_log_entries=log_entries,
        live_keys=max(0, keys - system_keys),
    )


def node_snapshot(node: NodeState) -> NodeSnapshot:
    """The node's state for one scrape; runs on the event loop."""
    replicator = node.replicator
    peers = {}
    for name, link in replicator.links.items():
        peers[name] = PeerSnapshot(
            connected=replicator.connected(name),
            events_behind=sum(replicator.core.behind(name).values()),
            clock_offset_ms=link.clock_offset_ms,
            clock_error_ms=link.clock_error_ms,
            oldest_unacked_s=replicator.lag.oldest_unacked_s(name) if replicator.lag is not None else 0.0,
        )
    access = node.access
    system_keys = access.system_keys()  # roles cached until the rules change; audit records from chain ends
    store = node.store

    def storage() -> StorageSnapshot:
        return storage_snapshot(store, system_keys)

    return NodeSnapshot(
        peers=peers,
        clock_fenced=replicator.clock_fenced(),
        clock_skew_events=replicator.skew_events,
        refused_unauthenticated=access.refused_unauthenticated,
        refused_permission_denied=access.refused_permission,
        auth_enabled=access.enabled,
        draining=node.draining,
        watch_streams=node.watches.open if node.watches is not None else 0,
        watch_events_sent=node.watches.events_sent if node.watches is not None else 0,
        watch_streams_cut_stalled=node.watches.cut_stalled if node.watches is not None else 0,
        region=store.region,
        version=crdtstore.__version__,
        storage=storage,
    )


def start_metrics(node: NodeState, metrics: NodeMetrics) -> MetricsServer:
    """Serve ``metrics`` at ``node.config.metrics_listen``; call on the node's event loop."""
    metrics.attach(lambda: node_snapshot(node), asyncio.get_running_loop())
    server = serve_metrics(node.config.metrics_listen, metrics.registry)
    log.info("metrics at http://%s/metrics", _address(node.config.metrics_listen, server.port))
    return server


def _address(listen: str, port: int) -> str:
    host, _, _ = listen.rpartition(":")
    return f"{host}:{port}"

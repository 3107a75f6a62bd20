"""The replication protocol's settings, with their defaults in this one place.

The node reads them from the ``[replication]`` table of its configuration
(``crdtstore.node.config``); the deterministic simulator and the
synchronisation-cost benchmark drive the replica core with the same values,
so what they prove is about the settings production runs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReplicationSettings"]


@dataclass(frozen=True)
class ReplicationSettings:
    # Local writes are pushed to peers at most this long after they commit.
    batch_window_ms: int = 10
    # Entries received from one region are pushed on to another only this long
    # after they arrived: meanwhile that region most likely got them from their
    # origin and said so. A catch-up after a hello does not wait.
    relay_delay_ms: int = 50
    # Everything a peer has not acknowledged is offered again this often.
    anti_entropy_ms: int = 1000
    # A lost peer connection is retried with backoff up to this long between attempts.
    reconnect_backoff_max_ms: int = 500
    # HTTP/2 keepalive pings on idle replication streams; no answer within the timeout means a dead peer.
    keepalive_ms: int = 2000
    keepalive_timeout_ms: int = 2000
    # One message of log entries carries about this many bytes (at least one entry, however large).
    message_bytes_max: int = 1024 * 1024
    # Messages queued per peer before the sender waits.
    outbound_messages_max: int = 64
    # With metrics on, the node compares a digest of its whole store with each peer's this often
    # (one scan of the store; see crdtstore.node.convergence). The simulator does not use it.
    convergence_check_ms: int = 60_000
    # How often a node tells each peer the heads of the audit chains it holds (on an
    # acknowledgement), for the peer to compare with its own copy (crdtstore.node.audit).
    audit_heads_ms: int = 10_000

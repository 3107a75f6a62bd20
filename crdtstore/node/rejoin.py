"""Rejoin mode: a region restored from a backup takes no writes until its peers have filled it in.

A restored data directory (``crdtstore restore``) is older than its region:
everything the region did after the backup, and everything it received
after it, is held only by its peers. Its new incarnation already keeps it
from minting an event id twice (``crdtstore.storage.lmdb_store``), so
taking writes at once would be safe for the ids; but a write taken on a
view hours old is a poor write (a delete removes only what the backup held,
and what the region added after the backup comes back with its peers' next
entries). So the restore marks the directory, and the node starts in rejoin
mode: it refuses writes (``UNAVAILABLE``, retryable) until every configured
peer has said in its hello what it holds and this node holds all of that
too. Then the mark is cleared, durably, and the node serves writes as any
other. A peer that never answers keeps the region in rejoin mode: that is
the point (it may hold the region's newest events); an operator who knows a
peer region is gone for good starts the node without it in its peer list.

Reads are served throughout (they show the state as it catches up), and so
is replication.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from crdtstore.crdt import VersionVector
from crdtstore.tokens import describe_behind, events_behind

__all__ = ["RejoinGate"]

log = logging.getLogger("crdtstore.node")


class RejoinGate:
    """Whether a restored node may take writes yet; ``heard`` on every peer's hello, ``waiting`` before a write."""

    def __init__(self, peers: Iterable[str], pending: bool, cleared: Callable[[], None]) -> None:
        self.peers = frozenset(peers)
        self.pending = pending
        self._cleared = cleared  # makes the end of rejoin mode durable (called once)
        self.peer_said: dict[str, VersionVector] = {}

    def heard(self, peer: str, vector: VersionVector) -> None:
        """``peer``'s hello said it holds ``vector``."""
        if self.pending:
            self.peer_said[peer] = self.peer_said.get(peer, VersionVector()).join(vector)

    def waiting(self, have: VersionVector) -> str | None:
        """Why writes are still refused, or None once they may be taken (which ends rejoin mode for good)."""
        if not self.pending:
            return None
        silent = sorted(self.peers - set(self.peer_said))
        if silent:
            return f"waiting to hear from {', '.join(silent)}"
        for peer in sorted(self.peer_said):
            behind = events_behind(have, self.peer_said[peer])
            if behind:
                return f"catching up with {peer}: {describe_behind(behind)}"
        self.pending = False
        log.info("rejoin mode over: every peer has said what it holds and this region holds it; taking writes")
        self._cleared()
        return None

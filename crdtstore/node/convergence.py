"""The convergence SLI: do this node and each peer hold the same data when they have seen the same events?

Strong eventual consistency promises that two regions that applied the same
events hold the same state. Repair already digests the store by key bucket
(``StateTransfer.bucket_digests``, 16 bytes per bucket); this check reuses
that digest, folded into one 16-byte hash of the whole store, and compares it
across regions, but only at a common causal point: the two digests must have
been read at the same version vector, or the comparison means nothing.

How, at the cost of one store scan per ``interval_s`` (60 s) on each node
and two optional fields on an existing message:

* Every ``interval_s`` the node reads its digest and vector in one read
  transaction (``digests_at``; a worker thread) and puts them on the next
  acknowledgement it sends each peer (``SyncAck.check_vector`` and
  ``check_digest``; acknowledgements flow at least every anti-entropy
  period as heartbeats). A peer that does not know the fields ignores them.
* A node that receives a check compares the peer's vector with its own.
  Different vectors (one has events the other lacks, normal under writes):
  ``not_comparable``. Equal: it reads its own digest and vector (again one
  transaction; the last one is reused while its vector has not moved), and if
  the vector is still the peer's, counts ``agree`` or ``differ``.

Exported per peer (the receiver's view of the sender):
``crdtstore_convergence_checks_total{peer,result}``,
``crdtstore_convergence_agreed{peer}`` (1 or 0, from the last comparable
check) and ``crdtstore_convergence_last_agreed_timestamp_seconds{peer}``.
A ``differ`` at an equal vector is a bug or corruption worth a page: run
``crdtstore verify``.

The check runs only with metrics on (it exists to be exported).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from crdtstore.crdt import CodecError, VersionVector, decode_as, encode
from crdtstore.node.metrics import NodeMetrics
from crdtstore.storage import LmdbStore
from crdtstore.v1 import replication_pb2 as rpb

__all__ = ["RESULTS", "ConvergenceChecks", "store_digest"]

RESULTS = ("agree", "differ", "not_comparable")

log = logging.getLogger("crdtstore.convergence")


def store_digest(bucket_digests: Iterable[int]) -> bytes:
    """The whole store's digest: a 16-byte BLAKE2b of its bucket digests in bucket order."""
    h = hashlib.blake2b(digest_size=16)
    for digest in bucket_digests:
        h.update(digest.to_bytes(16, "big"))
    return h.digest()


class ConvergenceChecks:
    def __init__(self, store: LmdbStore, metrics: NodeMetrics, peers: Iterable[str], interval_s: float) -> None:
        self._store = store
        self._metrics = metrics
        self.interval_s = interval_s
        self._mine: tuple[VersionVector, bytes] | None = None  # the last digest read here, and its vector
        self._outgoing: tuple[bytes, bytes] | None = None  # (vector, digest) as they travel
        self._to_send: set[str] = set()
        self._peers = frozenset(peers)
        self._comparing: set[str] = set()  # peers whose check is being compared now (one at a time each)
        for peer in self._peers:  # every series exists from the start, at 0 (Prometheus's advice for counters)
            for result in RESULTS:
                metrics.convergence_checks.labels(peer, result)

    async def read(self) -> tuple[VersionVector, bytes]:
        """This node's digest and the vector it was read at (reused while the vector has not moved)."""
        mine = self._mine
        if mine is not None and mine[0] == self._store.context.vv:
            return mine
        vector, buckets = await asyncio.to_thread(self._store.digests_at)
        self._mine = mine = (vector, store_digest(buckets))
        return mine

    async def run(self) -> None:
        """Every ``interval_s``: read the digest, and offer it to every peer on its next acknowledgement."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                vector, digest = await self.read()
            except Exception:  # the store is closing, or a read failed: the next round tries again
                log.debug("convergence digest not read", exc_info=True)
                continue
            self._outgoing = (encode(vector), digest)
            self._to_send = set(self._peers)

    def stamp(self, peer: str, message: rpb.SyncMessage) -> None:
        """Put the pending check on ``message`` if it is an acknowledgement to a peer still owed one."""
        if peer in self._to_send and self._outgoing is not None and message.WhichOneof("body") == "ack":
            message.ack.check_vector, message.ack.check_digest = self._outgoing
            self._to_send.discard(peer)

    def received(self, peer: str, message: rpb.SyncMessage) -> Coroutine[Any, Any, None] | None:
        """A message from ``peer``: the comparison to run off the stream's path if it carries a check, else None."""
        if message.WhichOneof("body") != "ack" or not message.ack.check_digest or peer in self._comparing:
            return None
        self._comparing.add(peer)
        return self._compare(peer, message.ack.check_vector, message.ack.check_digest)

    async def _compare(self, peer: str, raw_vector: bytes, digest: bytes) -> None:
        try:
            try:
                theirs = decode_as(raw_vector, VersionVector)
            except CodecError:
                log.warning("peer %s sent a convergence check with a vector that does not decode; ignored", peer)
                return
            result = "not_comparable"
            if theirs == self._store.context.vv:
                try:
                    vector, mine = await self.read()
                except Exception:
                    log.debug("convergence digest not read", exc_info=True)
                    return
                if vector == theirs:
                    result = "agree" if mine == digest else "differ"
            self.record(peer, result)
        finally:
            self._comparing.discard(peer)

    def record(self, peer: str, result: str) -> None:
        metrics = self._metrics
        metrics.convergence_checks.labels(peer, result).inc()
        if result == "not_comparable":
            return
        metrics.convergence_agreed.labels(peer).set(1.0 if result == "agree" else 0.0)
        if result == "agree":
            metrics.convergence_last_agreed.labels(peer).set(time.time())
        else:
            log.error(
                "region %s and this node hold different data at the same version vector: run crdtstore verify "
                "(docs/runbook.md#divergence-found-by-verify)",
                peer,
            )

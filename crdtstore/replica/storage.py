"""What replication needs of a store: the narrow protocol the driver works against.

``crdtstore.storage.replication.ReplicaStore`` implements it over LMDB; the
node, the simulator, the synchronisation-cost benchmark and the tests all
hand the driver that implementation, so what they run is production storage.

The driver calls the properties and ``peer_holds`` itself (they only read
memory). Everything else it calls only inside the ``Job``s it hands its host
(``crdtstore.replica.driver``): the host runs a job that ``writes`` where the
store's writes run (the node's writer thread, with its hybrid logical
clock), and any other job on any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from crdtstore.crdt import CausalContext, VersionVector
from crdtstore.replica.wire import RawLogEntry, TransferItem

__all__ = ["Applied", "LogRead", "ReplicaStorage", "Spool"]


class LogRead(NamedTuple):
    """What ``ReplicaStorage.read_log`` found for a peer."""

    entries: tuple[RawLogEntry, ...]
    reached: VersionVector  # per origin, how far the peer has everything once it has these
    # When the read stopped at a relayed entry too fresh to send: when that entry
    # arrived (the store's wall clock), and the store's wall clock at the read.
    held_since_ms: int | None = None
    wall_ms: int = 0


class Applied(NamedTuple):
    """What ``ReplicaStorage.apply`` did with entries from a peer."""

    gap: bool  # an entry arrived before one it depends on: the rest must be resent in causal order
    clock_skews: int  # register timestamps too far ahead for the clock to follow (applied all the same)


class Spool(Protocol):
    """One consistent read of the whole store, set aside for a state transfer at the peer's pace."""

    context: CausalContext  # what the read covers
    keys: int
    digests: tuple[int, ...]  # one per repair bucket (``wire.DIGEST_BUCKETS``)

    def page(self, buckets: frozenset[int], bytes_max: int) -> tuple[tuple[TransferItem, ...], bool]:
        """The next keys of ``buckets``, about ``bytes_max`` bytes of them; True with the last."""
        ...

    def close(self) -> None: ...


class ReplicaStorage(Protocol):
    @property
    def vector(self) -> VersionVector:
        """Everything applied here, per origin."""
        ...

    @property
    def origin(self) -> str:
        """The origin local writes mint under (it changes when the store takes a new incarnation)."""
        ...

    @property
    def log_horizon(self) -> VersionVector:
        """How far the log has been trimmed: a peer behind it needs a state transfer."""
        ...

    def peer_holds(self, peer: str, vector: VersionVector) -> bool:
        """``peer`` says it has ``vector``: True when that is more of this store's origin than it holds."""
        ...

    # -- reads (any thread) ----------------------------------------------------------

    def read_log(
        self, after: VersionVector, bytes_max: int, *, relay_delay_ms: int | None, held: VersionVector
    ) -> LogRead:
        """Log entries a peer that has ``after`` lacks, in causal order, about ``bytes_max`` bytes.

        With ``relay_delay_ms``, stop at the first entry that came from another
        region less than that long ago; stop at the first entry of ``held``.
        """
        ...

    def bucket_digests(self) -> tuple[int, ...]: ...

    def spool(self, peer: str) -> Spool:
        """Set aside a consistent read of every key for a state transfer to ``peer``."""
        ...

    # -- writes (where the store's writes run) ----------------------------------------

    def apply(self, peer: str, entries: Sequence[RawLogEntry]) -> Applied: ...

    def trim_log(self, upto: VersionVector) -> None:
        """Drop log entries every peer has acknowledged (up to ``upto``)."""
        ...

    def discard_transfer(self, peer: str) -> None:
        """Forget a state transfer from ``peer`` that did not finish."""
        ...

    def stage_transfer(self, peer: str, transfer: int, keys: Sequence[TransferItem]) -> None: ...

    def finish_transfer(
        self,
        peer: str,
        transfer: int,
        context: CausalContext,
        buckets: frozenset[int],
        expected: Sequence[int] | None,
    ) -> int | None:
        """Join the staged transfer in one transaction: how many keys changed, or None if it was stale.

        Stale: a bucket the peer skipped (its digest matched) changed here
        since; the transfer is discarded and the next comparison starts over.
        """
        ...

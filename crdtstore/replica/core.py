"""Replication as a state machine without I/O (the shape of etcd's raft package).

The core never touches the network, the disk or a clock. The driver feeds it
events (a peer connected, a message arrived, entries were persisted, local
writes committed, time passed) and carries out the actions it returns, in
order: persist first (``Apply``), then send (``Send``, ``SendLog``), then tell
the core what was done (``applied``, ``sent``). The deterministic simulator
drives exactly this code.

Protocol, per pair of regions over one long-lived stream each way:

* On connect each side sends ``Hello(region, vector)``: the version vector of
  everything it has applied.
* Each side then streams the log entries the other lacks (``SendLog``): for
  every origin, the entries above what the peer has, in per-origin order,
  from every origin (relay). Entries a peer sent are counted as entries it
  has, so nothing goes back where it came from, and nothing the peer's vector
  covers is sent again -- the BP and RR optimisations of Enes et al.,
  "Efficient Synchronization of State-based CRDTs" (ICDE 2019). A peer that
  says in its Hello that it lacks entries it once sent (it was restored from
  an old backup, or emptied) gets them back.
* The receiver persists them (``Apply``; storage applies an entry only if it
  continues its origin's run) and acknowledges with ``Ack(vector)``.
* Local writes are pushed after a short batching window; every
  ``anti_entropy_ms`` everything a peer has not acknowledged is offered again,
  which repairs any lost or refused message.
* The log may be trimmed up to the component-wise minimum of what every
  configured peer has acknowledged (``Trim``).

What the core keeps per peer: whether it is connected, what it acknowledged
(durably applied), and how far entries were sent (``sent``, which may run ahead
of ``acked`` while messages are in flight and falls back to ``acked`` at each
anti-entropy round).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from crdtstore.crdt import VersionVector

__all__ = [
    "Ack",
    "Action",
    "Apply",
    "Entries",
    "Hello",
    "Message",
    "NeedsRepair",
    "ReplicaCore",
    "Send",
    "SendLog",
    "Trim",
]


# -- messages between regions ----------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    region: str
    vector: VersionVector


@dataclass(frozen=True)
class Entries:
    """Log entries, in per-origin order, opaque to the core; ``vector``: how far they reach per origin."""

    entries: tuple[object, ...]
    vector: VersionVector = field(default_factory=VersionVector)


@dataclass(frozen=True)
class Ack:
    vector: VersionVector


Message = Hello | Entries | Ack


# -- actions for the driver ------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    peer: str
    message: Message


@dataclass(frozen=True)
class SendLog:
    """Send ``peer`` the log entries above ``after``, in the order this node applied them.

    ``hold_fresh_relays``: a push, not a catch-up. Entries this node relays
    (it received them from another region) wait a short while before they
    go, since the peer most likely receives them from their origin at the
    same moment and says so in an acknowledgement; the push stops at the
    first such entry, so the causal order holds.
    """

    peer: str
    after: VersionVector
    hold_fresh_relays: bool = False


@dataclass(frozen=True)
class Apply:
    """Persist entries received from ``peer``; then call ``applied(peer, vector)``."""

    peer: str
    entries: tuple[object, ...]


@dataclass(frozen=True)
class Trim:
    """Every configured peer has acknowledged everything up to ``vector``."""

    vector: VersionVector


@dataclass(frozen=True)
class NeedsRepair:
    """``peer`` lacks entries this node has trimmed: repair it by a state transfer.

    Until the peer acknowledges a vector at or above the trimmed horizon, no
    log is sent to it (it could not apply it).
    """

    peer: str
    vector: VersionVector


Action = Send | SendLog | Apply | Trim | NeedsRepair


@dataclass
class _Peer:
    connected: bool = False
    acked: VersionVector = field(default_factory=VersionVector)
    sent: VersionVector = field(default_factory=VersionVector)
    pushed_at_ms: int = 0
    # It lacks entries trimmed from the log: sending the log cannot help it.
    needs_repair: bool = False
    acked_last_round: VersionVector = field(default_factory=VersionVector)
    # This node applied entries from another peer since it last acknowledged to this one.
    ack_due: bool = False
    # What this node told the peer it has (hello and acks on this connection): an ack
    # carries only the origins that moved since, and the peer joins it into what it knew.
    told: VersionVector = field(default_factory=VersionVector)


class ReplicaCore:
    def __init__(
        self,
        region: str,
        peers: Iterable[str],
        vector: VersionVector,
        *,
        batch_window_ms: int = 10,
        anti_entropy_ms: int = 1000,
        trimmed: VersionVector | None = None,
    ) -> None:
        names = sorted(set(peers))
        if region in names:
            raise ValueError(f"region {region!r} cannot be its own peer")
        if batch_window_ms < 0 or anti_entropy_ms <= 0:
            raise ValueError("batch_window_ms must be >= 0 and anti_entropy_ms > 0")
        self.region = region
        self.vector = vector
        self.batch_window_ms = batch_window_ms
        self.anti_entropy_ms = anti_entropy_ms
        self.peers: dict[str, _Peer] = {name: _Peer() for name in names}
        self._trimmed = trimmed or VersionVector()
        self._last_anti_entropy_ms = 0

    def _peer(self, name: str) -> _Peer:
        peer = self.peers.get(name)
        if peer is None:
            raise KeyError(f"{name!r} is not a configured peer of {self.region!r}")
        return peer

    # -- events --------------------------------------------------------------------

    def connected(self, peer: str) -> list[Action]:
        state = self._peer(peer)
        state.connected = True
        state.told = self.vector
        return [Send(peer, Hello(self.region, self.vector))]

    def disconnected(self, peer: str) -> list[Action]:
        state = self._peer(peer)
        state.connected = False
        state.sent = state.acked  # whatever was in flight may be lost
        return []

    def received(self, peer: str, message: Message) -> list[Action]:
        state = self._peer(peer)
        if isinstance(message, Hello):
            if message.region != peer:
                raise ValueError(f"peer {peer!r} introduced itself as {message.region!r}")
            # The peer's word replaces what it acknowledged before: a region
            # restored from an old backup, or emptied, really is behind.
            state.acked = message.vector
            state.sent = message.vector
            state.needs_repair = not message.vector.dominates(self._trimmed)
            if state.needs_repair:
                # Part of what it lacks is no longer in the log.
                return [NeedsRepair(peer, message.vector)]
            return [SendLog(peer, state.sent), *self._trim()]
        if isinstance(message, Entries):
            # The peer sent them, so it has them: never offer them back.
            state.acked = state.acked.join(message.vector)
            state.sent = state.sent.join(state.acked)
            return [Apply(peer, message.entries)] if message.entries else []
        before = state.acked
        state.acked = state.acked.join(message.vector)
        state.sent = state.sent.join(state.acked)
        if state.needs_repair and state.acked.dominates(self._trimmed):
            state.needs_repair = False  # repaired (a state transfer): back to the log
        # Most acks repeat what the peer said before (every peer hears every ack): nothing to trim then.
        return self._trim() if state.acked != before else []

    def applied(self, peer: str, vector: VersionVector) -> list[Action]:
        """Entries from ``peer`` are durable here; this node now has ``vector``."""
        assert vector.dominates(self.vector), "a version vector never goes backwards"
        self.vector = vector  # the next tick relays what is new to the other peers
        # Every connected peer hears it, not only the sender: then a region
        # about to relay these entries to a peer learns that it has them.
        # The sender at once (its acknowledgements count towards replicated
        # writes), the others at the next tick, one ack however many entries
        # arrived meanwhile: relays wait longer than a tick anyway.
        for name, state in self.peers.items():
            if name != peer and state.connected:
                state.ack_due = True
        return [self._ack(peer)]

    def _ack(self, peer: str) -> Send:
        """An ack with only the origins that moved since the last one: acks are most of the bytes otherwise."""
        state = self.peers[peer]
        told = state.told
        moved = {r: n for r, n in self.vector.items() if n > told.get(r)}
        state.told = self.vector
        return Send(peer, Ack(VersionVector(moved)))

    def local_committed(self, vector: VersionVector) -> list[Action]:
        assert vector.dominates(self.vector), "a version vector never goes backwards"
        self.vector = vector  # pushed at the next tick after the batching window
        return []

    def log_trimmed(self, horizon: VersionVector) -> list[Action]:
        """Storage trimmed the log up to ``horizon`` (by acknowledgement, or to keep its byte bound)."""
        self._trimmed = self._trimmed.join(horizon)
        actions: list[Action] = []
        for name, state in self.peers.items():
            if state.connected and not state.needs_repair and not state.acked.dominates(self._trimmed):
                state.needs_repair = True
                actions.append(NeedsRepair(name, state.acked))
        return actions

    def sent(self, peer: str, vector: VersionVector) -> None:
        """The driver sent ``peer`` entries up to ``vector`` (per origin)."""
        state = self._peer(peer)
        state.sent = state.sent.join(vector)

    def tick(self, now_ms: int) -> list[Action]:
        """Time passed: push new entries after the batching window; anti-entropy on its period."""
        actions: list[Action] = []
        if now_ms < self._last_anti_entropy_ms:
            # Time went backwards (a driver should pass monotonic time): start the periods over
            # rather than wait for the clock to come back.
            self._last_anti_entropy_ms = now_ms - self.anti_entropy_ms
            for state in self.peers.values():
                state.pushed_at_ms = min(state.pushed_at_ms, now_ms)
        for name, state in self.peers.items():
            if state.ack_due:
                state.ack_due = False
                if state.connected:
                    actions.append(self._ack(name))
        if now_ms - self._last_anti_entropy_ms >= self.anti_entropy_ms:
            self._last_anti_entropy_ms = now_ms
            for name, state in self.peers.items():
                if not state.connected:
                    continue
                if state.told != self.vector:
                    # The whole vector once a period: a partial ack that never arrived is made good.
                    state.told = self.vector
                    actions.append(Send(name, Ack(self.vector)))
                if state.needs_repair:
                    # Ask again: a transfer may have failed, or the horizon
                    # moved past what the last one brought.
                    actions.append(NeedsRepair(name, state.acked))
                    continue
                if state.acked == state.acked_last_round and not state.acked.dominates(self.vector):
                    # No acknowledgement for a whole period while it lacks
                    # something: what was sent may be lost (or refused as a
                    # gap). Offer again everything not acknowledged.
                    state.sent = state.acked
                state.acked_last_round = state.acked
                state.pushed_at_ms = now_ms
                # Fresh relays wait here too: anti-entropy is for what got lost, not what is on its way.
                actions.append(SendLog(name, state.sent, hold_fresh_relays=True))
            return actions
        for name, state in self.peers.items():
            lacking = state.connected and not state.needs_repair and not state.sent.dominates(self.vector)
            if lacking and now_ms - state.pushed_at_ms >= self.batch_window_ms:
                state.pushed_at_ms = now_ms
                actions.append(SendLog(name, state.sent, hold_fresh_relays=True))
        return actions

    # -- queries -----------------------------------------------------------------------

    def behind(self, peer: str) -> dict[str, int]:
        """How many events of each origin this node has that ``peer`` has not acknowledged."""
        acked = self._peer(peer).acked
        return {r: c - acked.get(r) for r, c in self.vector.items() if c > acked.get(r)}

    def _trim(self) -> list[Action]:
        floor = _minimum([s.acked for s in self.peers.values()], self.vector)
        if floor == self._trimmed or self._trimmed.dominates(floor):
            return []
        self._trimmed = self._trimmed.join(floor)
        return [Trim(self._trimmed)]


def _minimum(vectors: Sequence[VersionVector], ceiling: VersionVector) -> VersionVector:
    """The component-wise minimum of ``vectors``, over the regions of ``ceiling``."""
    if not vectors:
        return ceiling
    out: dict[str, int] = {}
    for region, _ in ceiling.items():
        out[region] = min(v.get(region) for v in vectors)
    return VersionVector(out)

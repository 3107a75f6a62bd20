"""Replication as a state machine without I/O (the shape of etcd's raft package).

The core never touches the network, the disk or a clock. The driver feeds it
events (a peer connected, a message arrived, entries were persisted, local
writes committed, time passed) and carries out the actions it returns, in
order: persist first (``Apply``), then send (``Send``, ``SendLog``), then tell
the core what was done (``applied``, ``sent``). The deterministic simulator
drives exactly this code.

Protocol, per pair of regions over one long-lived stream each way:

* On connect each side sends ``Hello(region, vector, origin)``: the version
  vector of everything it has applied, and the origin it mints its own events
  under (its region and incarnation, ``crdtstore.crdt.origin``; a region's
  earlier incarnations are origins like any other region's).
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
* While a large message is being applied (a catch-up after a partition heals
  can take seconds), its acks to the other peers also say what is on its way
  (``Ack.incoming``), and they hold those entries back from their pushes to it
  until it acknowledges them or stops saying so for two ``anti_entropy_ms``
  (it says so again every half period; on a busy machine a refresh can come
  late, behind a megabyte message on the same stream).
  Otherwise every region that already applied the same backlog relays it too,
  and a region hears it once from the origin and once from each other region.
  The hint also names what a region expects from an origin it is connected
  to: the origin's own entries up to what its hello said it has, told to the
  other peers (never to the origin), while the origin's stream makes
  progress. When a partition heals, the origin's links come up at different
  moments; without this, a region that got the backlog first relays it to
  the others while the origin streams it to them too.
* Local writes are pushed after a short batching window; every
  ``anti_entropy_ms`` everything a peer has not acknowledged is offered again,
  which repairs any lost or refused message.
* The log may be trimmed up to the component-wise minimum of what every
  configured peer has acknowledged (``Trim``), at a tick, at most every
  tenth of ``anti_entropy_ms``: acks arrive for every push from every peer,
  and a trim is a write transaction of its own (an fsync in the node), so
  trimming on each would double the node's commits under replication.

What the core keeps per peer: whether it is connected, what it acknowledged
(durably applied), and how far entries were sent (``sent``, which may run ahead
of ``acked`` while messages are in flight and falls back to ``acked`` at each
anti-entropy round).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from crdtstore.crdt import VersionVector
from crdtstore.replica.wire import Ack, Entries, Hello, RawLogEntry

__all__ = [
    "Action",
    "Apply",
    "CoreMessage",
    "NeedsRepair",
    "ReplicaCore",
    "Send",
    "SendLog",
    "Trim",
]


# -- actions for the driver ------------------------------------------------------------------


# What the core exchanges with its peers (the driver handles the state-transfer messages).
CoreMessage = Hello | Entries | Ack


@dataclass(frozen=True)
class Send:
    peer: str
    message: CoreMessage


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
    # Entries the peer said it is receiving from elsewhere: the push stops at the first of them.
    held: VersionVector = field(default_factory=VersionVector)


@dataclass(frozen=True)
class Apply:
    """Persist entries received from ``peer``; then call ``applied(peer, vector)``."""

    peer: str
    entries: tuple[RawLogEntry, ...]


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
    # Its hello arrived on this connection: until then what it has is not known, and nothing is
    # pushed to it (what it acknowledged before may be far behind, and the hello resets ``sent``),
    # for an anti-entropy period at most (a driver whose connections can lose a hello goes on).
    greeted: bool = False
    connected_at_ms: int = 0
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
    # How far the entries this peer sent reach (joined over its messages); beyond this node's
    # vector, they are received and not yet applied.
    sending: VersionVector = field(default_factory=VersionVector)
    # What the peer last said it is receiving from elsewhere (Ack.incoming), and when.
    incoming: VersionVector = field(default_factory=VersionVector)
    incoming_at_ms: int = 0
    # What this node last said to the peer it is receiving, and when.
    incoming_told: VersionVector = field(default_factory=VersionVector)
    incoming_told_ms: int = 0
    # How many of its own entries the peer said it has in its hello: it streams them here, so the
    # other peers need not relay them; and when that stream last brought entries (or the hello came).
    expect: int = 0
    expect_at_ms: int = 0
    # The origin the peer mints under, from its hello (its own entries are that origin's).
    origin: str = ""
    # A push found only a relay too fresh to send: no push that holds fresh relays before this.
    relay_hold_until_ms: int = 0


class ReplicaCore:
    def __init__(
        self,
        region: str,
        peers: Iterable[str],
        vector: VersionVector,
        *,
        batch_window_ms: int = 10,
        anti_entropy_ms: int = 1000,
        relay_delay_ms: int = 50,
        trimmed: VersionVector | None = None,
        origin: str = "",
    ) -> None:
        names = sorted(set(peers))
        if region in names:
            raise ValueError(f"region {region!r} cannot be its own peer")
        if batch_window_ms < 0 or anti_entropy_ms <= 0:
            raise ValueError("batch_window_ms must be >= 0 and anti_entropy_ms > 0")
        self.region = region
        # What this node mints under; the host updates it when storage takes a new incarnation.
        self.origin = origin or region
        self.vector = vector
        self.batch_window_ms = batch_window_ms
        self.anti_entropy_ms = anti_entropy_ms
        self.relay_delay_ms = relay_delay_ms
        self.peers: dict[str, _Peer] = {name: _Peer() for name in names}
        self._trimmed = trimmed or VersionVector()
        self._last_anti_entropy_ms = 0
        # Acks moved what every peer has: trim at a tick, once per period.
        self._trim_due = False
        self._trim_every_ms = max(1, anti_entropy_ms // 10)
        self._last_trim_ms = 0

    def _peer(self, name: str) -> _Peer:
        peer = self.peers.get(name)
        if peer is None:
            raise KeyError(f"{name!r} is not a configured peer of {self.region!r}")
        return peer

    # -- events --------------------------------------------------------------------

    def connected(self, peer: str, now_ms: int) -> list[Action]:
        state = self._peer(peer)
        state.connected = True
        state.greeted = False
        state.connected_at_ms = state.incoming_told_ms = now_ms
        state.told = self.vector
        state.expect = 0
        state.incoming_told = incoming = self._incoming(peer, now_ms)
        return [Send(peer, Hello(self.region, self.vector, incoming, self.origin))]

    def disconnected(self, peer: str) -> list[Action]:
        state = self._peer(peer)
        state.connected = state.greeted = False
        state.sent = state.acked  # whatever was in flight may be lost
        state.sending = state.incoming = VersionVector()  # and so may what was on its way here
        state.expect = 0
        return []

    def received(self, peer: str, message: CoreMessage, now_ms: int) -> list[Action]:
        state = self._peer(peer)
        if isinstance(message, Hello):
            if message.region != peer:
                raise ValueError(f"peer {peer!r} introduced itself as {message.region!r}")
            # The peer's word replaces what it acknowledged before: a region
            # restored from an old backup, or emptied, really is behind.
            state.acked = message.vector
            state.sent = message.vector
            state.greeted = True
            state.sending = VersionVector()
            # What it is applying from others as it connects waits for them, as in a push.
            state.incoming, state.incoming_at_ms = message.incoming, now_ms
            # It streams its own entries from here on: the other peers hear that at the next tick.
            state.origin = message.origin or peer
            state.expect, state.expect_at_ms = message.vector.get(state.origin), now_ms
            state.needs_repair = not message.vector.dominates(self._trimmed)
            if state.needs_repair:
                # Part of what it lacks is no longer in the log.
                return [NeedsRepair(peer, message.vector)]
            return [SendLog(peer, state.sent, held=self._held(state, now_ms)), *self._trim()]
        if isinstance(message, Entries):
            # The peer sent them, so it has them: never offer them back.
            state.acked = state.acked.join(message.vector)
            state.sent = state.sent.join(state.acked)
            state.sending = state.sending.join(message.vector)
            if state.expect:
                state.expect_at_ms = now_ms
            return [Apply(peer, message.entries)] if message.entries else []
        state.incoming = message.incoming
        state.incoming_at_ms = now_ms
        before = state.acked
        state.acked = state.acked.join(message.vector)
        state.sent = state.sent.join(state.acked)
        if state.needs_repair and state.acked.dominates(self._trimmed):
            state.needs_repair = False  # repaired (a state transfer): back to the log
        # Most acks repeat what the peer said before (every peer hears every ack): nothing to trim then.
        if state.acked != before:
            self._trim_due = True
        return []

    def applied(self, peer: str, vector: VersionVector, now_ms: int) -> list[Action]:
        """Entries from ``peer`` are durable here; this node now has ``vector``."""
        assert vector.dominates(self.vector), "a version vector never goes backwards"
        self.vector = vector  # the next tick relays what is new to the other peers
        # Its message is done with: what did not apply (a gap) is not on its way any more.
        source = self._peer(peer)
        source.sending = VersionVector()
        if source.expect:
            source.expect_at_ms = now_ms  # its stream makes progress (the next message is read now)
        # Every connected peer hears it, not only the sender: then a region
        # about to relay these entries to a peer learns that it has them.
        # The sender at once (its acknowledgements count towards replicated
        # writes), the others at the next tick, one ack however many entries
        # arrived meanwhile: relays wait longer than a tick anyway.
        for name, state in self.peers.items():
            if name != peer and state.connected:
                state.ack_due = True
        return [self._ack(peer, now_ms)]

    def _ack(
        self, peer: str, now_ms: int, vector: VersionVector | None = None, incoming: VersionVector | None = None
    ) -> Send:
        """An ack with only the origins that moved since the last one (acks are most of the bytes otherwise).

        With ``vector``, that whole vector instead. Either way it carries what
        is on its way here from the peers (``incoming``, when the caller has it already).
        """
        state = self.peers[peer]
        if vector is None:
            told = state.told
            vector = VersionVector({r: n for r, n in self.vector.items() if n > told.get(r)})
        state.told = self.vector
        if incoming is None:
            incoming = self._incoming(peer, now_ms)
        state.incoming_told = incoming
        state.incoming_told_ms = now_ms
        return Send(peer, Ack(vector, incoming))

    def heartbeat(self, peer: str, now_ms: int) -> list[Action]:
        """The driver's periodic ack to ``peer``: the whole vector, and what is on its way here."""
        return [self._ack(peer, now_ms, self.vector)]

    def _incoming(self, peer: str, now_ms: int) -> VersionVector:
        """The hint for ``peer``: what is on its way here from the other peers (per origin, beyond the vector).

        What peers sent this node that it has not applied yet: every peer
        hears it, the senders too, so that a message that takes longer than
        an anti-entropy period to apply is not taken for a lost one and sent
        again. And what origins this node is connected to are streaming it
        of their own entries (``_expected``): every peer but that origin.
        """
        return _hint(self._receiving(), self._expected(now_ms), self.peers[peer].origin)

    def _receiving(self) -> dict[str, int]:
        """Per origin, how far the entries peers sent this node reach, where that is beyond its vector."""
        mine = self.vector
        out: dict[str, int] = {}
        for state in self.peers.values():
            if mine.dominates(state.sending):
                continue
            for region, counter in state.sending.items():
                if counter > mine.get(region) and counter > out.get(region, 0):
                    out[region] = counter
        return out

    def _expected(self, now_ms: int) -> dict[str, int]:
        """Origins streaming their own entries here: how far, while their streams make progress.

        A stream that brought nothing for an anti-entropy period, counted
        from its last message that arrived or finished applying (the origin
        is stuck, or repairing this node by a state transfer), is no longer
        counted on, so the other peers relay what it has not brought.
        """
        mine = self.vector
        period = self.anti_entropy_ms
        return {
            state.origin: state.expect
            for state in self.peers.values()
            if state.expect > mine.get(state.origin)  # set by its hello on this connection, so it greeted
            and (now_ms - state.expect_at_ms < period or not mine.dominates(state.sending))
        }

    def _arriving(self) -> bool:
        """Whether anything is on its way here (with nothing, the hint is empty for every peer).

        Disconnected peers' ``sending`` and ``expect`` are empty.
        """
        arriving = False
        mine = self.vector
        for state in self.peers.values():
            if state.expect and mine.get(state.origin) >= state.expect:
                state.expect = 0  # everything it said it would stream is here
            if state.connected and (state.expect or not mine.dominates(state.sending)):
                arriving = True
        return arriving

    def _may_push(self, state: _Peer, now_ms: int) -> bool:
        return state.connected and (state.greeted or now_ms - state.connected_at_ms >= self.anti_entropy_ms)

    def _held(self, state: _Peer, now_ms: int) -> VersionVector:
        """What ``state``'s peer is receiving from elsewhere, while it keeps saying so."""
        incoming = state.incoming
        if not incoming or now_ms - state.incoming_at_ms >= 2 * self.anti_entropy_ms:
            return VersionVector()
        return incoming

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

    def relay_held(self, peer: str, held_since_ms: int, wall_now_ms: int, now_ms: int) -> list[Action]:
        """A push to ``peer`` found nothing to send before a relay too fresh to go.

        That relay arrived at ``held_since_ms`` and ``wall_now_ms`` is now, both
        on the store's wall clock. It matures ``relay_delay_ms`` after it arrived:
        no push that holds fresh relays goes to the peer before then (reading
        the log again would find the same), counted on the core's own time in
        case the wall clock steps.
        """
        wait = min(self.relay_delay_ms, max(0, held_since_ms + self.relay_delay_ms - wall_now_ms))
        self._peer(peer).relay_hold_until_ms = now_ms + wait
        return []

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
            self._last_trim_ms = now_ms - self._trim_every_ms
            for state in self.peers.values():
                state.pushed_at_ms = min(state.pushed_at_ms, now_ms)
                state.incoming_at_ms = min(state.incoming_at_ms, now_ms)
                state.incoming_told_ms = min(state.incoming_told_ms, now_ms)
                state.expect_at_ms = min(state.expect_at_ms, now_ms)
        if self._trim_due and now_ms - self._last_trim_ms >= self._trim_every_ms:
            self._trim_due = False
            self._last_trim_ms = now_ms
            actions.extend(self._trim())
        arriving = self._arriving()
        receiving = self._receiving() if arriving else {}
        expected = self._expected(now_ms) if arriving else {}
        for name, state in self.peers.items():
            if not state.connected:
                state.ack_due = False
                continue
            incoming = _hint(receiving, expected, state.origin)
            if state.ack_due:
                state.ack_due = False
                actions.append(self._ack(name, now_ms, incoming=incoming))
            elif state.incoming_told or arriving:
                # The hint changed, or still holds and is due again before the peer lets it go stale.
                stale = now_ms - state.incoming_told_ms >= self.anti_entropy_ms // 2
                if incoming != state.incoming_told or (incoming and stale):
                    actions.append(self._ack(name, now_ms, incoming=incoming))
        if now_ms - self._last_anti_entropy_ms >= self.anti_entropy_ms:
            self._last_anti_entropy_ms = now_ms
            actions.extend(self._anti_entropy_round(now_ms, receiving, expected))
            return actions
        for name, state in self.peers.items():
            lacking = self._may_push(state, now_ms) and not state.needs_repair and not state.sent.dominates(self.vector)
            if lacking and now_ms - state.pushed_at_ms >= self.batch_window_ms:
                state.pushed_at_ms = now_ms
                actions.extend(self._push(name, state, now_ms))
        return actions

    def _anti_entropy_round(self, now_ms: int, receiving: dict[str, int], expected: dict[str, int]) -> list[Action]:
        actions: list[Action] = []
        for name, state in self.peers.items():
            if not state.connected:
                continue
            if state.told != self.vector:
                # The whole vector once a period: a partial ack that never arrived is made good.
                actions.append(self._ack(name, now_ms, self.vector, _hint(receiving, expected, state.origin)))
            if not self._may_push(state, now_ms):
                continue
            if state.needs_repair:
                # Ask again: a transfer may have failed, or the horizon
                # moved past what the last one brought.
                actions.append(NeedsRepair(name, state.acked))
                continue
            stalled = state.acked == state.acked_last_round and not state.acked.dominates(self.vector)
            if stalled and not self._held(state, now_ms):
                # No acknowledgement for a whole period while it lacks
                # something, and it does not say it is busy applying what
                # it received (then the rest waits on its stream, in order):
                # what was sent may be lost (or refused as a gap). Offer
                # again everything not acknowledged.
                state.sent = state.acked
            state.acked_last_round = state.acked
            state.pushed_at_ms = now_ms
            # Fresh relays wait here too: anti-entropy is for what got lost, not what is on its way.
            actions.extend(self._push(name, state, now_ms))
        return actions

    def _push(self, name: str, state: _Peer, now_ms: int) -> list[Action]:
        """A push of the log to ``name``, holding fresh relays; none while a relay it found is maturing."""
        if now_ms < state.relay_hold_until_ms:
            return []  # reading the log again would find the same relay, still too fresh
        return [SendLog(name, state.sent, True, self._held(state, now_ms))]

    # -- queries -----------------------------------------------------------------------

    def next_tick_ms(self) -> int:
        """When the next ``tick`` is due for the core's own timers (possibly already past).

        Pushes after their batching window (or a maturing relay, or a hello
        that has not come), acks owed to peers, a hint to refresh before the
        peers let it go stale, a trim, and the anti-entropy round. Between
        events, nothing else changes what a tick would do.
        """
        due = self._last_anti_entropy_ms + self.anti_entropy_ms
        if self._trim_due:
            due = min(due, self._last_trim_ms + self._trim_every_ms)
        for state in self.peers.values():
            if not state.connected:
                continue
            if state.ack_due:
                return 0
            if state.incoming_told:
                due = min(due, state.incoming_told_ms + self.anti_entropy_ms // 2)
            if not state.needs_repair and not state.sent.dominates(self.vector):
                push = max(state.pushed_at_ms + self.batch_window_ms, state.relay_hold_until_ms)
                if not state.greeted:
                    push = max(push, state.connected_at_ms + self.anti_entropy_ms)
                due = min(due, push)
        return due

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


def _hint(receiving: dict[str, int], expected: dict[str, int], peer_origin: str) -> VersionVector:
    """What to tell a peer is on its way here: ``receiving``, and ``expected`` from origins other than its own.

    An origin is never told that this node expects its own entries: it
    would hold them back, waiting for itself.
    """
    if not expected or (len(expected) == 1 and peer_origin in expected):
        return VersionVector(receiving) if receiving else VersionVector()
    out = dict(receiving)
    for origin, counter in expected.items():
        if origin != peer_origin and counter > out.get(origin, 0):
            out[origin] = counter
    return VersionVector(out)


def _minimum(vectors: Sequence[VersionVector], ceiling: VersionVector) -> VersionVector:
    """The component-wise minimum of ``vectors``, over the regions of ``ceiling``."""
    if not vectors:
        return ceiling
    out: dict[str, int] = {}
    for region, _ in ceiling.items():
        out[region] = min(v.get(region) for v in vectors)
    return VersionVector(out)

"""Explain: why a key reads as it does, from its state alone.

Pure: no I/O. Given a key's ``KeyState`` (what ``LmdbStore.get`` returns) it
lists the live versions that make the value and says how the value follows
from them, using the same rules reads use, so what it names is what every
replica that holds the same state reads:

* A register (``crdtstore.crdt.register``) keeps every write that no later
  write had seen. One live write means every earlier write was overwritten
  causally (reason ``only``), whatever the clocks said. Several live writes
  were concurrent; reads pick the highest ``(timestamp, origin, counter)``:
  the highest hybrid logical timestamp (``timestamp``), or, between equal
  timestamps, the origin (the region name, then its incarnation) and then the
  event counter (``tie-break``).
* A counter (``crdtstore.crdt.counter``) is the sum of one share per region:
  each region's increments minus its decrements since the key was created or
  last deleted. Each share is a version with its contribution.
* A set (``crdtstore.crdt.awset``) holds a member while an add of it
  survives: an add no remove or delete of the key had seen. Each surviving
  add is a version; concurrent adds of one member are several.

A key created concurrently as several types keeps a slot per type; reads show
the first of register, counter, set (``KeyState.visible_type``) and list the
others as conflicts, and so does this.

Each version names its dot (origin and counter). The node looks up the audit
record of the request that made it (``AuditTrail.audit_record_at``) and
attaches it; ``Explanation`` is what a client gets back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from crdtstore.audit.export import iso_time
from crdtstore.audit.record import AuditRecord, decode, sort_causally
from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.counter import Counter
from crdtstore.crdt.keyed import KeyState, ValueType
from crdtstore.crdt.origin import region_of
from crdtstore.crdt.register import Register

if TYPE_CHECKING:
    from crdtstore.client import Entry

__all__ = [
    "REASONS",
    "ExplainedVersion",
    "Explanation",
    "KeyExplanation",
    "Reason",
    "explain",
    "explanation_from_pb",
    "iso_time",
]

Reason = Literal["", "only", "timestamp", "tie-break"]
REASONS: tuple[Reason, ...] = ("only", "timestamp", "tie-break")


@dataclass(frozen=True, slots=True)
class ExplainedVersion:
    """One live register write, one region's share of a counter, or one surviving add of a set member.

    ``origin:counter`` is its dot. ``wall_ms``/``logical`` are a register
    write's hybrid logical timestamp (0 otherwise), ``value`` its bytes;
    ``amount`` a counter share's contribution; ``member`` the set member.
    ``record`` is the audit record of the request that made it, when the node
    holds it (none for writes made before auditing was on, or trimmed).
    """

    origin: str
    counter: int
    wall_ms: int = 0
    logical: int = 0
    value: bytes = b""
    amount: int = 0
    member: str = ""
    winner: bool = False
    record: AuditRecord | None = None

    @property
    def region(self) -> str:
        return region_of(self.origin)


@dataclass(frozen=True, slots=True)
class KeyExplanation:
    """What ``explain`` says of one key's state."""

    type: ValueType | None  # the type reads show; None for a key that does not exist
    versions: tuple[ExplainedVersion, ...]  # a register's winner first; a counter by origin; a set by member
    reason: Reason  # for a register: why the winner wins; "" otherwise
    explanation: str  # the same, for a person, in a sentence or two
    conflicts: tuple[ValueType, ...] = ()  # the other types the key was created as, concurrently

    @property
    def winner(self) -> ExplainedVersion | None:
        return next((v for v in self.versions if v.winner), None)


def _when(version: ExplainedVersion) -> str:
    return f"{iso_time(version.wall_ms)} (logical {version.logical})"


def explain(state: KeyState | None, *, members_total: int | None = None) -> KeyExplanation:
    """Explain ``state``; ``members_total``: a set's size when ``state`` holds only some of its members."""
    vtype = None if state is None else state.visible_type
    if state is None or vtype is None:
        return KeyExplanation(
            None,
            (),
            "",
            "The key does not exist: it was never written, or it was deleted and nothing was written since.",
        )
    slot = state.slots[vtype]
    if isinstance(slot, Register):
        out = _explain_register(slot)
    elif isinstance(slot, Counter):
        out = _explain_counter(slot)
    else:
        assert isinstance(slot, AWSet)
        out = _explain_set(slot, members_total)
    conflicts = tuple(t for t, s in sorted(state.slots.items()) if t != vtype and not s.is_bottom())
    if not conflicts:
        return out
    others = " and ".join(f"a {t.label}" for t in conflicts)
    note = (
        f" The key was also created concurrently as {others}: reads show the {vtype.label} "
        "(a register before a counter before a set) and list the others as conflicts until the key is deleted."
    )
    return replace(out, explanation=out.explanation + note, conflicts=conflicts)


def _explain_register(register: Register) -> KeyExplanation:
    # ``siblings`` orders by the rank reads use, winner first: the one rule, not a copy of it.
    siblings = register.siblings()
    versions = tuple(
        ExplainedVersion(
            s.dot.region, s.dot.counter, s.timestamp.wall_ms, s.timestamp.logical, value=s.value, winner=i == 0
        )
        for i, s in enumerate(siblings)
    )
    winner = versions[0]
    if len(versions) == 1:
        return KeyExplanation(
            ValueType.REGISTER,
            versions,
            "only",
            f"One write is live, from {winner.region} at {_when(winner)}: every earlier write of the key was "
            "overwritten by a later write that had seen it (a causal overwrite wins whatever the clocks said).",
        )
    runner_up = versions[1]
    concurrent = f"{len(versions)} writes are live, made concurrently (none had seen the others)"
    until = "; every region reads it until a write that has seen them all replaces them."
    if (runner_up.wall_ms, runner_up.logical) < (winner.wall_ms, winner.logical):
        return KeyExplanation(
            ValueType.REGISTER,
            versions,
            "timestamp",
            f"{concurrent}. The one from {winner.region} has the highest hybrid logical timestamp, "
            f"{_when(winner)}{until}",
        )
    tied = sum((v.wall_ms, v.logical) == (winner.wall_ms, winner.logical) for v in versions)
    if runner_up.region != winner.region:
        decides = f"the region name decides: {winner.region} sorts after {runner_up.region}"
    elif runner_up.origin != winner.origin:
        decides = (
            f"both are {winner.region}'s, under two incarnations, and the incarnation decides: "
            f"{winner.origin} sorts after {runner_up.origin}"
        )
    else:
        decides = (
            f"both are {winner.origin}'s, and the event counter decides: {winner.counter} after {runner_up.counter}"
        )
    return KeyExplanation(
        ValueType.REGISTER,
        versions,
        "tie-break",
        f"{concurrent}. {tied} of them share the highest hybrid logical timestamp, {_when(winner)}, so "
        f"{decides}; the one from {winner.region} wins{until}",
    )


def _explain_counter(counter: Counter) -> KeyExplanation:
    shares = sorted(counter.entries.items())
    versions = tuple(ExplainedVersion(dot.region, dot.counter, amount=s.positive - s.negative) for dot, s in shares)
    parts = ", ".join(f"{v.region} {v.amount:+d}" for v in versions)
    return KeyExplanation(
        ValueType.COUNTER,
        versions,
        "",
        f"The counter reads {counter.value()}: the sum of each region's contribution, its increments minus its "
        f"decrements since the key was created or last deleted ({parts}).",
    )


def _explain_set(aw: AWSet, members_total: int | None) -> KeyExplanation:
    versions: list[ExplainedVersion] = []
    several = 0
    for member, dots in sorted(aw.entries.items()):
        several += len(dots) > 1
        versions.extend(ExplainedVersion(dot.region, dot.counter, member=member) for dot in sorted(dots))
    shown = sum(1 for dots in aw.entries.values() if dots)
    total = shown if members_total is None else members_total
    size = f"{total:,} members" if total == shown else f"{total:,} members, of which the first {shown:,} are shown"
    concurrent = f"; {several:,} of them are held by concurrent adds from several writes" if several else ""
    return KeyExplanation(
        ValueType.SET,
        tuple(versions),
        "",
        f"An add-wins set of {size}: a member is present while an add of it survives, one that no remove of "
        f"the member or delete of the key had seen{concurrent}.",
    )


@dataclass(frozen=True, slots=True)
class Explanation:
    """What ``Client.explain`` returns: the key as ``get`` shows it, and why it reads that way.

    ``versions`` are the live writes (a register's, winner first), each
    region's share (a counter's) or each surviving add (a set's), each with
    the audit record of the request that made it when the node holds one.
    ``reason`` (a register's): "only", "timestamp" or "tie-break";
    ``explanation`` says it in a sentence. ``truncated``: a set with more
    members than one answer shows (the first ones are). ``token`` is the
    causal token of the read.
    """

    entry: Entry
    versions: tuple[ExplainedVersion, ...]
    reason: str
    explanation: str
    truncated: bool = False
    token: bytes = b""

    @property
    def winner(self) -> ExplainedVersion | None:
        return next((v for v in self.versions if v.winner), None)

    @property
    def records(self) -> list[AuditRecord]:
        """The audit records of the requests that made the value, each once, in causal order."""
        held: dict[tuple[str, int], AuditRecord] = {}
        for version in self.versions:
            if version.record is not None:
                held[(version.record.origin, version.record.seq)] = version.record
        return sort_causally(list(held.values()))


def explanation_from_pb(response: Any, entry: Entry) -> Explanation:
    """An ``ExplainResponse`` as an ``Explanation``; ``entry`` is its entry, converted as ``get`` converts it.

    Each record is taken from its ``encoded`` bytes, the record's one encoding
    (``AuditError`` if they are not one).
    """
    versions = tuple(_version_from_pb(v) for v in response.versions)
    return Explanation(
        entry=entry,
        versions=versions,
        reason=response.reason,
        explanation=response.explanation,
        truncated=response.truncated,
        token=bytes(response.token.vector),
    )


def _version_from_pb(v: Any) -> ExplainedVersion:
    record = decode(bytes(v.record.encoded)) if v.HasField("record") else None
    return ExplainedVersion(
        origin=v.origin,
        counter=v.counter,
        wall_ms=v.wall_ms,
        logical=v.logical,
        value=bytes(v.value),
        amount=v.amount,
        member=v.member,
        winner=v.winner,
        record=record,
    )

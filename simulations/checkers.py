"""Checkers over a history (``simulations.history``): what must hold after every run.

They judge only what clients were told and what regions read at the end,
so the simulator's histories and real-process chaos histories are checked
by the same code. What a client was told: ``ok`` with a causal token,
``fail`` (certainly not applied) or ``unknown`` (perhaps applied).

The causal tokens decide what each acknowledged operation had seen: an
operation ``b`` observed ``a`` when ``b``'s token covers the event ``a``
minted. That is exact for this store, because a token is the region's whole
context right after the request, and every event in a region's context is
in its state (or was removed from it by something the region saw).

What a runner can vouch for, in ``Meta.detail``: ``ground_truth`` (the
simulator sees every commit, so every operation that applied carries its
token even if its client never heard, and one without a token did not
apply), and ``linger_ms`` (an operation whose client gave up is applied, if
at all, within that long: the chaos runner's longest pause plus a margin).
Without them an unknown operation may have applied at any time.

Violations, by kind:

``diverged``
    Two regions read a key differently (or their state digests differ) after
    healing and quiescence.
``lost``
    An acknowledged register write or set add is missing, though nothing that
    could have removed it (an overwrite or delete that observed it, or one
    whose outcome is unknown) was issued: Jepsen's set checker's *lost*.
``unexpected``
    A value or member that no operation (other than a failed one) wrote.
``resurrected``
    A value or member is present although an acknowledged overwrite, remove
    or delete observed it.
``counter``
    A counter is not the sum of its acknowledged increments, give or take
    the ones whose outcome is unknown.
``winner``
    A register's read value is not the greatest of its live writes by
    hybrid logical timestamp (then region).
``clock``
    A region gave a later write an earlier or equal timestamp.
``type``
    A key reads as a type none of its operations wrote.
``missing-final``
    A region of the run has no final read.
``audit-chain``
    A region's copy of an origin's audit chain does not verify: a record
    that does not decode, a broken link, a missing seq, or a chain that ends
    before the events the region holds of that origin.
``audit-diverged``
    Two regions hold different chain heads, or different records.
``audit-missing``
    An applied operation's events are covered by no ``write`` record (or,
    when the runner saw every commit, a record its writer wrote is gone).
``audit-duplicate``
    An operation's events are covered by more than one record, or an
    applied request has more than one ``write`` record.
``audit-unexpected``
    A record that no request accounts for: its idempotency key names no
    operation, or (when the runner saw every commit) no writer wrote it.
``audit-mismatch``
    A record does not say what its request did: another kind, another
    idempotency key, or operations that do not name the key as the
    operation's function.
``audit-refusal``
    A request built to be refused (``bad``) was applied, or was refused
    without a ``refused`` record.
``error``
    The run itself failed: a region raised (an invariant of the stored
    data broke, say). The runners report it; nothing in a history is judged
    for it.

Counters that were deleted are not judged exactly: a delete concurrent with
an increment keeps the incrementing region's share (the CCounter semantics
documented in ``crdtstore/crdt/counter.py``); the runners do not delete
counters.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from simulations.history import AuditRead, FeedRead, FinalRead, KeyRead, Meta, Nemesis, Op, Record

__all__ = ["KINDS", "CheckResult", "Violation", "check"]

KINDS: tuple[str, ...] = (
    "diverged",
    "lost",
    "unexpected",
    "resurrected",
    "counter",
    "winner",
    "clock",
    "type",
    "missing-final",
    "audit-chain",
    "audit-diverged",
    "audit-missing",
    "audit-duplicate",
    "audit-unexpected",
    "audit-mismatch",
    "audit-refusal",
    "error",
)

_TYPE_OF = {"set": "register", "incr": "counter", "sadd": "set", "srem": "set"}


@dataclass(frozen=True)
class Violation:
    kind: str
    key: str
    detail: str


@dataclass
class CheckResult:
    violations: list[Violation] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for v in self.violations:
            out[v.kind] += 1
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "violations_by_kind": self.by_kind(),
            "violations": [asdict(v) for v in self.violations],
        }


def observed(later: Op, earlier: Op) -> bool:
    """Whether ``later`` (applied, with its token) had seen ``earlier``'s event when it applied."""
    dot = earlier.dot
    if later is earlier or later.token is None or dot is None:
        return False
    return later.token.get(dot[0], 0) >= dot[1]


@dataclass(frozen=True)
class _Rules:
    """What the history's runner vouches for (``Meta.detail``).

    ``ground_truth``: every operation that was applied carries its token,
    even when its client never heard (the simulator sees every commit). An
    operation without a token then certainly did not apply.
    ``linger_ms``: an operation whose outcome is unknown is applied, if at
    all, at most this long after its client gave up (None: any time).
    """

    ground_truth: bool = False
    linger_ms: int | None = None

    def applied(self, op: Op) -> bool:
        """Certainly applied: acknowledged, or seen applied by the runner."""
        return op.token is not None

    def never_applied(self, op: Op) -> bool:
        return op.outcome == "fail" or (self.ground_truth and op.token is None)

    def may_have_observed(self, later: Op, earlier: Op) -> bool:
        """Whether ``later`` could have seen ``earlier`` (and so replaced or removed it)."""
        if later is earlier:
            return False
        if later.token is not None:
            return observed(later, earlier)
        if self.never_applied(later):
            return False
        # Unknown and unseen: it may have applied any time after its invocation, until it stopped lingering.
        if self.linger_ms is None or later.complete_ms is None:
            return True
        return later.complete_ms + self.linger_ms >= earlier.invoke_ms


def check(records: Iterable[Record]) -> CheckResult:
    history = list(records)
    ops = [r for r in history if isinstance(r, Op)]
    finals = [r for r in history if isinstance(r, FinalRead)]
    metas = [r for r in history if isinstance(r, Meta)]
    result = CheckResult()
    outcomes: dict[str, int] = defaultdict(int)
    for op in ops:
        outcomes[op.outcome] += 1
    result.counts = {
        "ops": len(ops),
        "ok": outcomes["ok"],
        "fail": outcomes["fail"],
        "unknown": outcomes["unknown"],
        "regions": len(finals),
        "keys": 0,
        "recovered": 0,
    }
    regions = metas[0].regions if metas else []
    detail = metas[0].detail if metas else {}
    linger = detail.get("linger_ms")
    rules = _Rules(bool(detail.get("ground_truth", False)), int(linger) if linger is not None else None)
    for region in regions:
        if not any(f.region == region for f in finals):
            result.violations.append(Violation("missing-final", "", f"region {region} has no final read"))
    if not finals:
        if not regions:
            result.violations.append(Violation("missing-final", "", "the history has no final reads"))
        return result
    _check_convergence(finals, result)
    _check_clocks(ops, result)
    lost = [r for r in history if isinstance(r, Nemesis) and r.event == "disk" and "; 0 writes" not in r.detail]
    for feed in (r for r in history if isinstance(r, FeedRead)):
        _check_feed(feed, finals, lost_writes=bool(lost), result=result)
    audits = [r for r in history if isinstance(r, AuditRead)]
    if audits:
        _check_audit(ops, audits, rules=rules, result=result)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    # Judge every distinct final read once (all of them are equal when the regions converged).
    distinct: dict[str, FinalRead] = {}
    for final in finals:
        distinct.setdefault(_canonical(final.keys), final)
    for final in distinct.values():
        where = f" (as region {final.region} reads it)" if len(distinct) > 1 else ""
        keys = set(by_key) | set(final.keys)
        result.counts["keys"] = max(result.counts["keys"], len(keys))
        for key in sorted(keys):
            _check_key(key, by_key.get(key, []), final.keys.get(key), where=where, rules=rules, result=result)
    return result


def _check_feed(feed: FeedRead, finals: Sequence[FinalRead], *, lost_writes: bool, result: CheckResult) -> None:
    """A change-feed consumer got no event twice, and its projection equals the final state.

    Unless a region lost acknowledged writes with its disk: the consumer may
    have been sent them before they were gone everywhere, which the feed
    cannot take back (nor can anything else that read them).
    """
    for duplicate in feed.duplicates[:5]:
        result.violations.append(
            Violation("feed-duplicate", duplicate.split(" ", 1)[-1], f"delivered twice: {duplicate}")
        )
    if lost_writes:
        return
    final = next((f for f in finals if f.region == feed.region), finals[0])
    for key in sorted(set(feed.keys) | set(final.keys)):
        mine, theirs = feed.keys.get(key), final.keys.get(key)
        if mine != theirs:
            result.violations.append(
                Violation(
                    "feed-diverged",
                    key,
                    f"the change feed's projection holds {None if mine is None else asdict(mine)}, region "
                    f"{final.region} {None if theirs is None else asdict(theirs)}",
                )
            )


# What an audit record calls each function's operation.
_AUDIT_KIND = {"set": "set", "incr": "incr", "sadd": "add", "srem": "remove", "del": "delete"}


def _check_audit(ops: Sequence[Op], audits: Sequence[AuditRead], *, rules: _Rules, result: CheckResult) -> None:
    """Every region's trail verifies, all hold the same, and it accounts for every request and nothing else."""
    result.counts["audit_records"] = max(len(a.records) for a in audits)
    for audit in audits:
        for chain in audit.chains.values():
            for finding in chain["findings"]:
                result.violations.append(Violation("audit-chain", "", f"region {audit.region}: {finding}"))
    first = audits[0]
    heads = {origin: chain["head"][:2] for origin, chain in first.chains.items()}
    for other in audits[1:]:
        theirs = {origin: chain["head"][:2] for origin, chain in other.chains.items()}
        for origin in sorted(set(heads) | set(theirs)):
            if heads.get(origin) != theirs.get(origin):
                result.violations.append(
                    Violation(
                        "audit-diverged",
                        "",
                        f"{origin}'s chain ends at {heads.get(origin)} in {first.region}, "
                        f"at {theirs.get(origin)} in {other.region}",
                    )
                )
    # Judge every distinct set of records once (all are equal when the regions converged).
    distinct: dict[str, AuditRead] = {}
    for audit in audits:
        distinct.setdefault(json.dumps(audit.records), audit)
    if len(distinct) > 1:
        names = ", ".join(a.region for a in distinct.values())
        result.violations.append(Violation("audit-diverged", "", f"regions {names} hold different records"))
    for audit in distinct.values():
        _check_records(ops, audit, rules=rules, result=result)


def _check_records(ops: Sequence[Op], audit: AuditRead, *, rules: _Rules, result: CheckResult) -> None:
    where = f" in region {audit.region}"
    by_event = {(r[0], r[2]): r for r in audit.records}
    writes: dict[str, list[list[Any]]] = defaultdict(list)  # per origin, the write records in event order
    by_key: dict[str, list[list[Any]]] = defaultdict(list)  # per idempotency key
    for record in audit.records:
        if record[3] == "write":
            writes[record[0]].append(record)
        if record[4]:
            by_key[record[4]].append(record)
    requests = {op.idempotency_key: op for op in ops if op.idempotency_key}
    for op in ops:
        mine = by_key.get(op.idempotency_key, []) if op.idempotency_key else []
        if op.f == "bad":
            _check_refused(op, mine, where=where, rules=rules, result=result)
            continue
        if op.token is None:
            if rules.never_applied(op) and any(r[3] == "write" for r in mine):
                result.violations.append(
                    Violation(
                        "audit-unexpected",
                        op.key,
                        f"operation {op.id} was never applied, yet has a write record{where}",
                    )
                )
            continue
        written = _write_record(op, mine, writes, where=where, result=result)
        if written is not None:
            _check_names(op, written, where=where, result=result)
    if rules.ground_truth:
        _check_against_commits(ops, by_event, where=where, result=result)
        return
    for record in audit.records:
        if record[4] and record[4] not in requests:
            result.violations.append(
                Violation(
                    "audit-unexpected",
                    "",
                    f"record {record[0]}:{record[2]}{where} names request {record[4]!r}, which nobody made",
                )
            )


def _write_record(
    op: Op, mine: Sequence[list[Any]], writes: dict[str, list[list[Any]]], *, where: str, result: CheckResult
) -> list[Any] | None:
    """The one write record of applied ``op``: found by its idempotency key when it has one, else by its event.

    Its token (the context right after the request) ends, for the record's origin, at the record's own dot.
    """
    if op.idempotency_key:
        found = [r for r in mine if r[3] == "write"]
        covered = [r for r in found if op.token is not None and op.token.get(r[0]) == r[2]]
        detail = f"its token {op.token} ends at none of them" if found and not covered else ""
    else:
        origin, event = op.dot or ("", 0)
        found = covered = [r for r in writes.get(origin, []) if r[1] <= event <= r[2]]
        detail = f"its event is {origin}:{event}"
    if not covered:
        result.violations.append(
            Violation(
                "audit-missing", op.key, f"operation {op.id} has no write record{where}{'; ' if detail else ''}{detail}"
            )
        )
        return None
    if len(found) > 1:
        result.violations.append(
            Violation("audit-duplicate", op.key, f"operation {op.id} has {len(found)} write records{where}")
        )
    return covered[0]


def _check_names(op: Op, record: list[Any], *, where: str, result: CheckResult) -> None:
    """The write record covering ``op``'s event says what ``op`` did."""
    wanted = _AUDIT_KIND[op.f]
    problem = ""
    if op.idempotency_key and record[4] != op.idempotency_key:
        problem = f"carries idempotency key {record[4]!r}, not {op.idempotency_key!r}"
    elif not any(name == op.key and kind == wanted for name, kind, _ in record[5]):
        problem = f"names {record[5]}, not a {wanted} of {op.key!r}"
    elif op.f == "incr" and not any(name == op.key and amount == op.value for name, _, amount in record[5]):
        problem = f"names {record[5]}, not an increment by {op.value}"
    if problem:
        result.violations.append(
            Violation(
                "audit-mismatch", op.key, f"the record {record[0]}:{record[2]} of operation {op.id}{where} {problem}"
            )
        )


def _check_refused(op: Op, mine: Sequence[list[Any]], *, where: str, rules: _Rules, result: CheckResult) -> None:
    if op.token is not None:
        result.violations.append(
            Violation("audit-refusal", op.key, f"operation {op.id} ({op.value}) was built to be refused, but applied")
        )
        return
    # Exactly one per answer when the runner saw every commit (``_check_against_commits``); otherwise at least
    # one: a client that lost the answer and tried again was refused again.
    refused = [r for r in mine if r[3] == "refused"]
    if op.outcome == "fail" and not rules.ground_truth and not refused:
        result.violations.append(
            Violation(
                "audit-refusal", op.key, f"operation {op.id} ({op.value}) was refused, but has no refused record{where}"
            )
        )


def _check_against_commits(
    ops: Sequence[Op], by_event: dict[tuple[str, int], list[Any]], *, where: str, result: CheckResult
) -> None:
    """With every commit seen: the records are exactly those the writers wrote, each of its kind and request."""
    expected: dict[tuple[str, int], tuple[str, Op]] = {}
    for op in ops:
        for kind, origin, event in op.audit:
            expected[(origin, event)] = (kind, op)
    for event, (kind, op) in sorted(expected.items(), key=lambda item: (item[0], item[1][1].id)):
        record = by_event.get(event)
        if record is None:
            result.violations.append(
                Violation(
                    "audit-missing",
                    op.key,
                    f"the {kind} record {event[0]}:{event[1]} of operation {op.id} is gone{where}",
                )
            )
        elif record[3] != kind or (op.idempotency_key and record[4] != op.idempotency_key):
            result.violations.append(
                Violation(
                    "audit-mismatch",
                    op.key,
                    f"the record {event[0]}:{event[1]}{where} is a {record[3]} record of {record[4]!r}; its "
                    f"writer answered operation {op.id} ({op.idempotency_key!r}) with a {kind}",
                )
            )
    for event, record in sorted(by_event.items()):
        if event not in expected:
            result.violations.append(
                Violation(
                    "audit-unexpected",
                    "",
                    f"record {event[0]}:{event[1]} ({record[3]} of {record[4]!r}){where} was written by no writer "
                    "for any request",
                )
            )


def _canonical(keys: dict[str, KeyRead]) -> str:
    return json.dumps({k: asdict(v) for k, v in keys.items()}, sort_keys=True)


def _check_convergence(finals: Sequence[FinalRead], result: CheckResult) -> None:
    first = finals[0]
    for other in finals[1:]:
        for key in sorted(set(first.keys) | set(other.keys)):
            a, b = first.keys.get(key), other.keys.get(key)
            if a != b:
                result.violations.append(
                    Violation("diverged", key, f"{first.region} reads {_show(a)}, {other.region} reads {_show(b)}")
                )
        if first.digest and other.digest and first.digest != other.digest:
            result.violations.append(
                Violation("diverged", "", f"state digests differ: {first.region} and {other.region}")
            )


def _show(read: KeyRead | None) -> str:
    if read is None:
        return "nothing"
    if read.type == "register" and len(read.siblings) > 1:
        return f"register {read.value!r} with siblings {sorted(s.value for s in read.siblings)}"
    return f"{read.type} {read.value!r}"


def _check_clocks(ops: Sequence[Op], result: CheckResult) -> None:
    # Per origin (a region's incarnation): its counters order what it minted.
    stamped: dict[str, list[tuple[int, list[int], Op]]] = defaultdict(list)
    for op in ops:
        dot = op.dot
        if op.f == "set" and op.ts is not None and dot is not None:
            stamped[dot[0]].append((dot[1], op.ts, op))
    for origin, writes in stamped.items():
        writes.sort(key=lambda w: w[0])
        for (_, ts_a, a), (_, ts_b, b) in itertools.pairwise(writes):
            if tuple(ts_b) <= tuple(ts_a):
                result.violations.append(
                    Violation(
                        "clock",
                        b.key,
                        f"origin {origin}: operation {b.id} got timestamp {ts_b}, "
                        f"not after operation {a.id}'s {ts_a} which it minted earlier",
                    )
                )


def _check_key(
    key: str, ops: Sequence[Op], read: KeyRead | None, *, where: str, rules: _Rules, result: CheckResult
) -> None:
    types = {_TYPE_OF[op.f] for op in ops if op.f in _TYPE_OF}
    if read is not None and read.type not in types:
        result.violations.append(
            Violation("type", key, f"reads as a {read.type}{where}; its operations wrote {sorted(types) or 'nothing'}")
        )
        return
    if "register" in types:
        _check_register(key, ops, read, where=where, rules=rules, result=result)
    if "set" in types:
        _check_set(key, ops, read, where=where, rules=rules, result=result)
    if "counter" in types:
        _check_counter(key, ops, read, where=where, rules=rules, result=result)


def _check_register(
    key: str, ops: Sequence[Op], read: KeyRead | None, *, where: str, rules: _Rules, result: CheckResult
) -> None:
    writes = [op for op in ops if op.f == "set"]
    removers = [op for op in ops if op.f in ("set", "del")]
    by_value: dict[str, Op] = {}
    for op in writes:
        by_value[str(op.value)] = op
    present: set[str] = set()
    if read is not None and read.type == "register":
        present = {s.value for s in read.siblings} or {str(read.value)}
        if str(read.value) not in present:
            result.violations.append(
                Violation("winner", key, f"reads {read.value!r}{where}, which is not among its live writes")
            )
        # The rank is (timestamp, region, event counter); a read shows no counters, so judge only a clear maximum.
        ranks = sorted(((tuple(s.ts), s.region), s.value) for s in read.siblings if s.ts)
        clear = len(ranks) == len(read.siblings) > 1 and ranks[-1][0] != ranks[-2][0]
        if clear and ranks[-1][1] != read.value:
            result.violations.append(
                Violation("winner", key, f"reads {read.value!r}{where}; {ranks[-1][1]!r} has the later timestamp")
            )
    for value in sorted(present):
        writer = by_value.get(value)
        if writer is None or rules.never_applied(writer):
            result.violations.append(Violation("unexpected", key, f"value {value!r}{where} was never written"))
            continue
        if writer.outcome == "unknown":
            result.counts["recovered"] += 1
        overwrite = next((r for r in removers if rules.applied(r) and observed(r, writer)), None)
        if overwrite is not None:
            result.violations.append(
                Violation(
                    "resurrected",
                    key,
                    f"value {value!r} (operation {writer.id}){where} survives acknowledged operation "
                    f"{overwrite.id} ({overwrite.f}) that observed it",
                )
            )
    for writer in writes:
        if not rules.applied(writer) or str(writer.value) in present:
            continue
        if any(rules.may_have_observed(r, writer) for r in removers):
            continue  # overwritten or deleted (or perhaps, by an operation whose outcome is unknown)
        result.violations.append(
            Violation(
                "lost",
                key,
                f"acknowledged write {writer.id} of {writer.value!r} at {writer.region} is gone{where}, "
                f"and nothing that observed it overwrote or deleted it",
            )
        )


def _check_set(
    key: str, ops: Sequence[Op], read: KeyRead | None, *, where: str, rules: _Rules, result: CheckResult
) -> None:
    adds: dict[str, Op] = {}
    for op in ops:
        if op.f == "sadd" and isinstance(op.value, list):
            for member in op.value:
                adds[member] = op
    members: set[str] = set()
    if read is not None and read.type == "set" and isinstance(read.value, list):
        members = set(read.value)

    def removers(member: str) -> list[Op]:
        return [
            op for op in ops if op.f == "del" or (op.f == "srem" and isinstance(op.value, list) and member in op.value)
        ]

    for member in sorted(members):
        add = adds.get(member)
        if add is None or rules.never_applied(add):
            result.violations.append(Violation("unexpected", key, f"member {member!r}{where} was never added"))
            continue
        if add.outcome == "unknown":
            result.counts["recovered"] += 1
        remove = next((r for r in removers(member) if rules.applied(r) and observed(r, add)), None)
        if remove is not None:
            result.violations.append(
                Violation(
                    "resurrected",
                    key,
                    f"member {member!r} (added by operation {add.id}){where} survives acknowledged operation "
                    f"{remove.id} ({remove.f}) that observed the add",
                )
            )
    for member, add in sorted(adds.items()):
        if not rules.applied(add) or member in members:
            continue
        if any(rules.may_have_observed(r, add) for r in removers(member)):
            continue
        result.violations.append(
            Violation(
                "lost",
                key,
                f"member {member!r}, acknowledged by operation {add.id} at {add.region}, is missing{where}, "
                f"and no remove or delete observed it",
            )
        )


def _check_counter(
    key: str, ops: Sequence[Op], read: KeyRead | None, *, where: str, rules: _Rules, result: CheckResult
) -> None:
    if any(op.f == "del" for op in ops):
        result.counts["counters_not_judged"] = result.counts.get("counters_not_judged", 0) + 1
        return
    value = 0
    if read is not None and read.type == "counter" and isinstance(read.value, int):
        value = read.value
    increments = [op for op in ops if op.f == "incr" and isinstance(op.value, int)]
    acked = sum(int(op.value) for op in increments if rules.applied(op) and isinstance(op.value, int))
    maybe = [
        int(op.value)
        for op in increments
        if not rules.applied(op) and not rules.never_applied(op) and isinstance(op.value, int)
    ]
    low = acked + sum(n for n in maybe if n < 0)
    high = acked + sum(n for n in maybe if n > 0)
    if not low <= value <= high:
        expected = f"{acked}" if low == high else f"between {low} and {high} (acknowledged sum {acked})"
        result.violations.append(Violation("counter", key, f"reads {value}{where}; expected {expected}"))

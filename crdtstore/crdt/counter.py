"""Counter: a positive-negative counter made causal so that a key can be deleted.

State: a dot fun ``dot -> Share(positive, negative)`` holding, per region, one
dot whose payload is that region's running totals of increments and
decrements. The value is ``sum(positive - negative)`` over all shares. This is
the causal counter ("CCounter") of Almeida, Shoker, Baquero ("Delta State
Replicated Data Types", JPDC 2018), a PN-counter (Shapiro et al., 2011) whose
per-region entries carry dots.

An increment by region ``r`` mints a dot ``d`` and produces the delta

    store   = {d: (P + amount, N)}          (or (P, N - amount) for a decrement)
    context = {d} | r's current share dot

where ``(P, N)`` is ``r``'s current share. Each region's share replaces its
previous one, so the state holds one entry per region that has incremented
since the key was created or last deleted (under causal delivery, below):
O(regions), never O(operations).

Delivery: these semantics assume causal delivery of deltas, which is what
replication provides (a region applies a delta only after everything its
origin had seen when it made it: ``LmdbStore.apply_remote`` takes each
origin's entries in order and only once the events they name are there,
senders send their log in apply order, and a peer the log cannot bring up to
date is repaired by a full state join; ``tests/test_causal_delivery.py``).
Within that, deltas may arrive twice, late, or interleaved with concurrent
ones in any order. Causal delivery matters because a delete names only the
shares the deleting region *sees in the key*: a second delete that finds the
key already empty names nothing, so a replica that received it without the
first would keep the share the first removed, and its region's next
increment would carry that deleted amount back into the total (issue 14).
Likewise a replica that received a region's later share without an earlier
delta of another region that removed the region's previous share could hold
two shares of one region and count the deleted one until the missing delta
arrives. Full-state joins need no such care: a state's context is causally
closed.

Exactness: a share is identified by its dot and carries totals, not amounts,
so delivering a delta twice, or late, cannot count an operation twice; the
join takes the share the context says is newest. Amounts of any 64-bit size
are exact because Python integers do not overflow; the codec stores totals
beyond 64 bits without loss. ``increment`` sums every share its region holds,
so a state with several shares of one region (reachable only through
non-causal delivery, and decoded like any other) is replaced by one.

Deleting the key removes every share the deleting region had seen (an
observed remove, like every removal here). The semantics under a concurrent
increment follow the paper and are worth stating plainly: if region ``r``
increments concurrently with a delete that had seen ``r``'s earlier share, the
new share carries ``r``'s running total, so ``r``'s whole contribution
survives the delete, not only the concurrent increment. Without concurrency a
delete resets the counter to zero everywhere and nothing comes back. Keeping
the exact "only the concurrent amount survives" semantics would need a record
of what each delete removed, kept until every region has seen the delete
(causal stability); that is left to the replication layer, which is the part
that knows when a dot is stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from crdtstore.crdt.causal import CausalContext, Dot
from crdtstore.crdt.dotstore import Causal, DotFunStore

__all__ = ["INT64_MAX", "INT64_MIN", "Counter", "Share"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Share(NamedTuple):
    """One region's running totals of increments and decrements (both >= 0)."""

    positive: int
    negative: int


@dataclass(frozen=True, slots=True)
class Counter(DotFunStore[Share]):
    """A dot fun ``dot -> Share``, one share per region; see the module docstring."""

    # -- mutators ---------------------------------------------------------------

    def increment(self, amount: int, dot: Dot) -> Causal[Counter]:
        """Add ``amount`` (negative to decrement), a signed 64-bit integer."""
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"counter amounts are integers, got {type(amount).__name__}")
        if not INT64_MIN <= amount <= INT64_MAX:
            raise ValueError(f"counter amount {amount} is outside the signed 64-bit range")
        own = [d for d in self.entries if d.region == dot.region]
        positive = sum(self.entries[d].positive for d in own)
        negative = sum(self.entries[d].negative for d in own)
        if amount >= 0:
            positive += amount
        else:
            negative -= amount
        return Causal(
            Counter({dot: Share(positive, negative)}),
            CausalContext.from_dots([dot, *own]),
        )

    # -- reads --------------------------------------------------------------------

    def value(self) -> int:
        return sum(s.positive - s.negative for s in self.entries.values())

"""Client operations as plain values: validation against limits, and application to the store.

The gRPC layer turns protobuf messages into these, the storage layer applies
them, and the Python client builds them; none of the three needs the others'
types. Application is pure: it takes a window of the store (the touched keys
and the node's causal context) and returns the window after the batch and the
batch's combined delta.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgpack

from crdtstore.crdt import (
    INT64_MAX,
    INT64_MIN,
    CausalContext,
    Dot,
    HybridLogicalClock,
    KeyState,
    Register,
    StoreMap,
    ValueType,
)
from crdtstore.crdt.register import Version

__all__ = [
    "AddMembers",
    "DeleteKey",
    "Increment",
    "InvalidRequest",
    "Limits",
    "Operation",
    "RemoveMembers",
    "SetRegister",
    "apply_operations",
    "fingerprint",
    "validate",
]


@dataclass(frozen=True, slots=True)
class SetRegister:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Increment:
    key: str
    amount: int


@dataclass(frozen=True, slots=True)
class AddMembers:
    key: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveMembers:
    key: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeleteKey:
    key: str


Operation = SetRegister | Increment | AddMembers | RemoveMembers | DeleteKey


class InvalidRequest(ValueError):
    """A request that breaks a limit or is malformed; nothing of it is applied."""


@dataclass(frozen=True)
class Limits:
    key_bytes_max: int = 1024
    value_bytes_max: int = 1024 * 1024
    member_bytes_max: int = 1024
    operations_per_batch_max: int = 10_000
    members_per_operation_max: int = 10_000
    members_per_batch_max: int = 100_000
    idempotency_key_bytes_max: int = 128
    # The whole batch: keys, values and members added up.
    batch_bytes_max: int = 16 * 1024 * 1024


def validate(operations: Sequence[Operation], idempotency_key: bytes, limits: Limits) -> None:
    """Raise ``InvalidRequest`` naming the first problem, or return."""
    if not operations:
        raise InvalidRequest("a mutation needs at least one operation")
    if len(operations) > limits.operations_per_batch_max:
        raise InvalidRequest(
            f"{len(operations)} operations in one batch; the maximum is {limits.operations_per_batch_max}"
        )
    if len(idempotency_key) > limits.idempotency_key_bytes_max:
        raise InvalidRequest(
            f"idempotency key of {len(idempotency_key)} bytes; the maximum is {limits.idempotency_key_bytes_max}"
        )
    total = 0
    members = 0
    for i, op in enumerate(operations):
        where = f"operation {i}"
        total += _check_key(op.key, where, limits)
        if isinstance(op, SetRegister):
            if len(op.value) > limits.value_bytes_max:
                raise InvalidRequest(
                    f"{where}: value of {len(op.value)} bytes; the maximum is {limits.value_bytes_max}"
                )
            total += len(op.value)
        elif isinstance(op, Increment):
            if not INT64_MIN <= op.amount <= INT64_MAX:
                raise InvalidRequest(f"{where}: amount {op.amount} is outside the signed 64-bit range")
        elif isinstance(op, AddMembers | RemoveMembers):
            if not op.members:
                raise InvalidRequest(f"{where}: a set operation needs at least one member")
            if len(op.members) > limits.members_per_operation_max:
                raise InvalidRequest(
                    f"{where}: {len(op.members)} members; the maximum is {limits.members_per_operation_max}"
                )
            members += len(op.members)
            if members > limits.members_per_batch_max:
                raise InvalidRequest(f"more than {limits.members_per_batch_max} set members in one batch")
            for member in op.members:
                size = len(_utf8(member, f"{where}: member"))
                if size > limits.member_bytes_max:
                    raise InvalidRequest(f"{where}: member of {size} bytes; the maximum is {limits.member_bytes_max}")
                total += size
    if total > limits.batch_bytes_max:
        raise InvalidRequest(f"the batch carries {total} bytes; the maximum is {limits.batch_bytes_max}")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{what} is not valid Unicode text") from exc


def _check_key(key: str, where: str, limits: Limits) -> int:
    raw = _utf8(key, f"{where}: key")
    if not raw:
        raise InvalidRequest(f"{where}: the key is empty")
    if len(raw) > limits.key_bytes_max:
        raise InvalidRequest(f"{where}: key of {len(raw)} bytes; the maximum is {limits.key_bytes_max}")
    return len(raw)


def apply_operations(
    window: StoreMap, operations: Sequence[Operation], region: str, clock: HybridLogicalClock
) -> tuple[StoreMap, StoreMap]:
    """Apply a batch to a window of the store: (window after, the batch's delta).

    Raises ``TypeMismatch`` (or ``ValueError``) on the first operation that
    cannot apply; the caller then writes nothing, so a batch is atomic.

    Each operation works on a one-key window, and the batch's delta is built
    key by key with ``KeyState.combine``, so a batch costs time in proportion
    to its size (a batch of 10,000 operations on 10,000 keys is 10,000 small
    joins, not 10,000 joins of a growing map). The delta's context is built
    once at the end from the dots the batch minted and superseded.
    """
    entries = dict(window.entries)
    context = window.context
    delta_entries: dict[str, KeyState] = {}
    delta_dots: list[Dot] = []
    # Dots the fast path minted, added to ``context`` in one go (before the next general step, or at the end).
    minted: list[Dot] = []
    for op in operations:
        key = op.key
        current = entries.get(key)
        if type(op) is SetRegister and key not in delta_entries:
            # The common case, computed directly: what the general path below computes for it.
            dot = Dot(region, minted[-1].counter + 1) if minted else context.next_dot(region)
            written = _write_register_alone(current, op, dot, clock)
            if written is not None:
                named, superseded = written
                entries[key] = delta_entries[key] = named
                minted.append(dot)
                delta_dots.append(dot)
                delta_dots.extend(superseded)
                continue
        if minted:
            context = context.add_all(minted)
            minted = []
        one = StoreMap({key: current} if current is not None else {}, context)
        if isinstance(op, SetRegister):
            step = one.write_register(key, op.value, clock.now(), region)
        elif isinstance(op, Increment):
            step = one.increment(key, op.amount, region)
        elif isinstance(op, AddMembers):
            step = one.add_members(key, op.members, region)
        elif isinstance(op, RemoveMembers):
            step = one.remove_members(key, op.members, region)
        else:
            step = one.delete(key, region)
        named = step.entries[key]
        state = (current or _EMPTY_KEY).join_delta(named, context, step.context)
        if state.is_bottom():
            entries.pop(key, None)
        else:
            entries[key] = state
        earlier = delta_entries.get(key)
        # The earlier side's context may be left empty: a step's store holds
        # only dots it minted itself, which no earlier step can have seen, so
        # only the step's context (what it superseded) decides the combine.
        delta_entries[key] = named if earlier is None else earlier.combine(named, _NOTHING_SEEN, step.context)
        delta_dots.extend(step.context.dots())
        context = context.join(step.context)
    if minted:
        context = context.add_all(minted)
    return StoreMap(entries, context), StoreMap(delta_entries, CausalContext.from_dots(delta_dots))


_NOTHING_SEEN = CausalContext()
_EMPTY_KEY = KeyState()
_REGISTER_ONLY = frozenset({ValueType.REGISTER})


def _write_register_alone(
    current: KeyState | None, op: SetRegister, dot: Dot, clock: HybridLogicalClock
) -> tuple[KeyState, Iterable[Dot]] | None:
    """A register write, as ``dot``, to a key holding nothing or a register: its state and delta, what it supersedes.

    The write's context covers every version the register holds, so the
    key's state after it is the delta itself: the one new version. None
    when the key holds another type (the general path raises or merges) or
    the operation is malformed (the general path says why).
    """
    if current is None:
        old: Mapping[Dot, object] = {}
    elif current.slots.keys() == _REGISTER_ONLY:
        register = current.slots[ValueType.REGISTER]
        if type(register) is not Register:
            return None
        old = register.entries
    else:
        return None
    if type(op.key) is not str or type(op.value) is not bytes:
        return None
    named = KeyState({ValueType.REGISTER: Register({dot: Version(clock.now(), op.value)})})
    return named, old.keys()


def fingerprint(operations: Sequence[Operation]) -> bytes:
    """A digest of the request, to tell a retry from a different request with the same idempotency key."""
    rows: list[list[object]] = []
    for op in operations:
        if isinstance(op, SetRegister):
            rows.append([1, op.key, op.value])
        elif isinstance(op, Increment):
            rows.append([2, op.key, op.amount])
        elif isinstance(op, AddMembers):
            rows.append([3, op.key, list(op.members)])
        elif isinstance(op, RemoveMembers):
            rows.append([4, op.key, list(op.members)])
        else:
            rows.append([5, op.key])
    return hashlib.sha256(msgpack.packb(rows, use_bin_type=True)).digest()[:16]

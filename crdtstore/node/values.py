"""How the wire shows a key's value: ``KeyValue`` messages, shared by reads, scans and the change feed."""

from __future__ import annotations

from crdtstore.crdt import KeyState, ValueType
from crdtstore.crdt.keyed import Value
from crdtstore.crdt.origin import region_of
from crdtstore.v1 import kv_pb2 as pb

__all__ = ["key_value_pb"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _value_pb(vtype: ValueType, value: Value) -> pb.Value:
    out = pb.Value(type=int(vtype))  # type: ignore[arg-type]
    if vtype is ValueType.REGISTER:
        assert isinstance(value, bytes)
        out.register = value
    elif vtype is ValueType.COUNTER:
        assert isinstance(value, int)
        out.counter_decimal = str(value)
        if _INT64_MIN <= value <= _INT64_MAX:
            out.counter = value
            out.counter_fits = True
    else:
        assert isinstance(value, frozenset)
        out.members.extend(sorted(value))
        out.member_count = len(value)
    return out


def key_value_pb(key: str, state: KeyState | None, omitted_members: int = 0) -> pb.KeyValue:
    """The key as the wire shows it; ``omitted_members``: the count of a set left out of ``state`` for its size."""
    out = pb.KeyValue(key=key)
    read = None if state is None else state.read()
    omitted = None
    if omitted_members:
        omitted = pb.Value(type=pb.VALUE_TYPE_SET, member_count=omitted_members, members_omitted=True)
        if read is None:
            out.value.CopyFrom(omitted)
            return out
    if read is None:
        out.value.type = pb.VALUE_TYPE_UNSPECIFIED
        return out
    out.value.CopyFrom(_value_pb(read.type, read.value))
    for sibling in read.siblings:
        out.siblings.add(
            value=sibling.value,
            region=region_of(sibling.dot.region),
            wall_ms=sibling.timestamp.wall_ms,
            logical=sibling.timestamp.logical,
        )
    for vtype, value in read.conflicts:
        out.conflicts.append(_value_pb(vtype, value))
    if omitted is not None:
        # Beside a register or a counter a set is a conflict, never the visible type: its type sorts last.
        out.conflicts.append(omitted)
    return out

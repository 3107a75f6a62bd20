"""Add-wins sets: their layout as a slot.

    set   [[member, [ri, offset, ri, offset, ...]], ...]

Members are sorted and unique; a member's dots are flattened into one array
of ``[ri, offset]`` pairs against the value's region table (see ``regions``),
sorted by (region index, counter), each once. A member may hold several dots
of one region (issue 14). A delta may name a member with no dots (a remove);
a state never holds one. A member with one dot costs its name plus about five
bytes up to counter 65,535 and seven up to 2**32.
"""

from __future__ import annotations

from typing import Any

from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.causal import Dot
from crdtstore.crdt.codec.base import (
    U64,
    CodecError,
    Irregular,
    SlotLayout,
    array,
    new_dot,
    strictly_increasing,
    string,
)
from crdtstore.crdt.codec.regions import FastTable, Reader, Refs, lower_bases, read_dot_fast
from crdtstore.crdt.keyed import ValueType


def lower_set_bases(aw: AWSet, base: dict[str, int]) -> None:
    for dots in aw.entries.values():
        lower_bases(dots, base)


def write_set(aw: AWSet, refs: Refs) -> list[Any]:
    out: list[Any] = []
    for member, dots in sorted(aw.entries.items()):
        flat: list[int] = []
        for region, counter in sorted(dots) if len(dots) > 1 else dots:
            i, base = refs[region]
            flat.append(i)
            flat.append(counter - base)
        out.append([member, flat])
    return out


def read_set(body: Any, rd: Reader) -> AWSet:
    entries: dict[str, frozenset[Dot]] = {}
    members: list[str] = []
    for item in array(body, "set"):
        member_raw, flat_raw = array(item, "set entry", 2)
        member = string(member_raw, "set member")
        flat = array(flat_raw, "member dots")
        if len(flat) % 2:
            raise CodecError(f"member {member!r}: dots must be (region, counter) pairs")
        keys = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        dots = [rd.dot(ri, counter) for ri, counter in keys]
        strictly_increasing(keys, f"dots of member {member!r}")
        members.append(member)
        entries[member] = frozenset(dots)
    strictly_increasing(members, "set members")
    return AWSet(entries)


def read_set_fast(body: Any, t: FastTable) -> AWSet:
    if type(body) is not list:
        raise Irregular
    regions, bases, at_base, all_dots = t
    n = len(regions)
    entries: dict[str, frozenset[Dot]] = {}
    last_member: str | None = None
    for item in body:
        if type(item) is not list or len(item) != 2:
            raise Irregular
        member, flat = item
        if type(member) is not str or type(flat) is not list or len(flat) % 2:
            raise Irregular
        if last_member is not None and not last_member < member:
            raise Irregular
        last_member = member
        if len(flat) == 2:  # one dot, the common case: read_dot_fast, inlined
            ri, offset = flat
            if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
                raise Irregular
            if not offset:
                at_base.add(ri)
            counter = bases[ri] + offset
            if counter >= U64:
                raise Irregular
            dot = new_dot((regions[ri], counter))
            all_dots.append(dot)
            entries[member] = frozenset((dot,))
            continue
        member_dots: list[Dot] = []
        last = -1
        last_offset = -1
        for i in range(0, len(flat), 2):
            ri = flat[i]
            offset = flat[i + 1]
            member_dots.append(read_dot_fast(t, ri, offset))
            if ri < last or (ri == last and offset <= last_offset):  # sorted by (region, counter), each once
                raise Irregular
            last, last_offset = ri, offset
        all_dots.extend(member_dots)
        entries[member] = frozenset(member_dots)
    return AWSet(entries)


SET = SlotLayout(ValueType.SET, AWSet, lower_set_bases, write_set, read_set, read_set_fast)

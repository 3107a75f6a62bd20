"""Registers and counters, the two types that map each dot to a value: their layouts as slots.

    register   [[ri, offset, wall_ms, logical, value_bytes], ...]
    counter    [[ri, offset, positive, negative], ...]

A dot is ``[ri, offset]`` against the value's region table (see ``regions``).
Entries are sorted by (region index, counter), each dot once. A region may
hold several dots (sorted by counter): a join of deltas delivered without
their causal past produces that (issue 14). A counter's totals are integers
of any size (see ``base.write_big``).

Both are read carefully by one loop over entries (``read_entries``), each
type saying how many items an entry has and how to read the items after its
dot. Each type has its own writer and its own fast reader: those loops are
the hot path, and a call per entry to share one would cost more than the
lines it saves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from crdtstore.crdt.causal import Dot
from crdtstore.crdt.codec.base import (
    U64,
    CodecError,
    Irregular,
    SlotLayout,
    array,
    new_dot,
    new_timestamp,
    read_big,
    strictly_increasing,
    uint,
    write_big,
)
from crdtstore.crdt.codec.regions import FastTable, Reader, Refs, lower_bases
from crdtstore.crdt.counter import Counter, Share
from crdtstore.crdt.dotstore import DotFunStore
from crdtstore.crdt.hlc import Timestamp
from crdtstore.crdt.keyed import ValueType
from crdtstore.crdt.register import Register, Version

V = TypeVar("V")

_new_version: Callable[[tuple[Timestamp, bytes]], Version] = partial(tuple.__new__, Version)
_new_share: Callable[[tuple[int, int]], Share] = partial(tuple.__new__, Share)


def lower_entry_bases(store: DotFunStore[Any], base: dict[str, int]) -> None:
    lower_bases(store.entries, base)


def read_entries(body: Any, rd: Reader, what: str, width: int, read_value: Callable[[list[Any]], V]) -> dict[Dot, V]:
    """The careful reader of the entries of a register or a counter: ``width`` items each, a dot first."""
    entry_what = f"{what} entry"
    entries: dict[Dot, V] = {}
    keys: list[tuple[int, int]] = []
    for item in array(body, what):
        entry = array(item, entry_what, width)
        dot = rd.dot(entry[0], entry[1])
        keys.append((entry[0], dot.counter))
        entries[dot] = read_value(entry)
    strictly_increasing(keys, what)
    return entries


# -- register: [[ri, offset, wall_ms, logical, value_bytes], ...] ----------------------------


def write_register(reg: Register, refs: Refs) -> list[Any]:
    out: list[Any] = []
    for (region, counter), (timestamp, value) in sorted(reg.entries.items()):
        i, base = refs[region]
        out.append([i, counter - base, timestamp.wall_ms, timestamp.logical, value])
    return out


def _read_version(entry: list[Any]) -> Version:
    _, _, wall, logical, value = entry
    if type(value) is not bytes:
        raise CodecError(f"register value: expected bytes, got {type(value).__name__}")
    return Version(Timestamp(uint(wall, "wall_ms"), uint(logical, "logical")), value)


def read_register(body: Any, rd: Reader) -> Register:
    return Register(read_entries(body, rd, "register", 5, _read_version))


def read_register_fast(body: Any, t: FastTable) -> Register:
    if type(body) is not list:
        raise Irregular
    regions, bases, at_base, dots = t
    n = len(regions)
    entries: dict[Dot, Version] = {}
    last = -1
    last_offset = -1
    for item in body:
        if type(item) is not list or len(item) != 5:
            raise Irregular
        ri, offset, wall, logical, value = item
        # read_dot_fast, inlined, with "sorted by (region, counter), each once" folded in.
        if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
            raise Irregular
        if ri < last or (ri == last and offset <= last_offset):
            raise Irregular
        if type(wall) is not int or type(logical) is not int or wall < 0 or logical < 0 or type(value) is not bytes:
            raise Irregular
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        if counter >= U64:
            raise Irregular
        entries[new_dot((regions[ri], counter))] = _new_version((new_timestamp((wall, logical)), value))
        last, last_offset = ri, offset
    dots.extend(entries)
    return Register(entries)


REGISTER = SlotLayout(
    ValueType.REGISTER, Register, lower_entry_bases, write_register, read_register, read_register_fast
)


# -- counter: [[ri, offset, positive, negative], ...] --------------------------------------


def write_counter(counter: Counter, refs: Refs) -> list[Any]:
    out: list[Any] = []
    for (region, n), (positive, negative) in sorted(counter.entries.items()):
        i, base = refs[region]
        out.append([i, n - base, write_big(positive), write_big(negative)])
    return out


def _read_share(entry: list[Any]) -> Share:
    return Share(read_big(entry[2], "counter total"), read_big(entry[3], "counter total"))


def read_counter(body: Any, rd: Reader) -> Counter:
    return Counter(read_entries(body, rd, "counter", 4, _read_share))


def read_counter_fast(body: Any, t: FastTable) -> Counter:
    if type(body) is not list:
        raise Irregular
    regions, bases, at_base, dots = t
    n = len(regions)
    entries: dict[Dot, Share] = {}
    last = -1
    last_offset = -1
    for item in body:
        if type(item) is not list or len(item) != 4:
            raise Irregular
        ri, offset, positive, negative = item
        # read_dot_fast, inlined, with "sorted by (region, counter), each once" folded in.
        if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
            raise Irregular
        if ri < last or (ri == last and offset <= last_offset):
            raise Irregular
        if type(positive) is not int or positive < 0:
            positive = read_big(positive, "counter total")
        if type(negative) is not int or negative < 0:
            negative = read_big(negative, "counter total")
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        if counter >= U64:
            raise Irregular
        entries[new_dot((regions[ri], counter))] = _new_share((positive, negative))
        last, last_offset = ri, offset
    dots.extend(entries)
    return Counter(entries)


COUNTER = SlotLayout(ValueType.COUNTER, Counter, lower_entry_bases, write_counter, read_counter, read_counter_fast)

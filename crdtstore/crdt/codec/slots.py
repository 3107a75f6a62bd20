"""The three types as slots, and the values that hold one type: REGISTER, COUNTER, SET and CAUSAL.

    REGISTER | COUNTER | SET   [regions, store]
    CAUSAL                     [regions, slot_tag, store, ctx]    (one type with its context)

``store`` is the type's own layout (``dotfun`` for registers and counters,
``awset`` for sets) against the value's region table; ``slot_tag`` is its
``ValueType``, as in a key state; ``ctx`` is a causal context (``context``).
Every dot of a CAUSAL value's store is in its context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crdtstore.crdt.causal import Dot
from crdtstore.crdt.codec.awset import SET
from crdtstore.crdt.codec.base import CodecError, Irregular, Layout, SlotLayout, Tag
from crdtstore.crdt.codec.context import lower_context_bases, read_context, read_context_fast, write_context
from crdtstore.crdt.codec.dotfun import COUNTER, REGISTER
from crdtstore.crdt.codec.regions import (
    FastTable,
    Reader,
    check_in_context,
    finish_fast,
    read_table_fast,
    region_table,
    table_and_body,
    table_and_body_writer,
)
from crdtstore.crdt.dotstore import Causal
from crdtstore.crdt.keyed import Slot, ValueType

# The slots by their tag (``ValueType``), and by their class.
SLOTS: dict[int, SlotLayout] = {layout.vtype.value: layout for layout in (REGISTER, COUNTER, SET)}
SLOTS_BY_CLASS: dict[type, SlotLayout] = {layout.cls: layout for layout in SLOTS.values()}
# The fast readers by tag, with the slot each reads into: a key state reads one per slot.
SLOTS_FAST: dict[int, tuple[ValueType, Callable[[Any, FastTable], Slot]]] = {
    tag: (layout.vtype, layout.read_fast) for tag, layout in SLOTS.items()
}


def slot_layout(slot: object) -> SlotLayout | None:
    """The layout of ``slot``: that of the first of the three types it is an instance of, if any."""
    found = SLOTS_BY_CLASS.get(type(slot))
    if found is not None:
        return found
    for layout in SLOTS.values():
        if isinstance(slot, layout.cls):
            return layout
    return None


def read_slot(tag_raw: Any, body: Any, rd: Reader) -> tuple[ValueType, Slot]:
    """The careful reader of a slot given its tag."""
    layout = SLOTS.get(tag_raw) if type(tag_raw) is int else None
    if layout is None:
        raise CodecError(f"unknown slot type {tag_raw!r}")
    return layout.vtype, layout.read(body, rd)


def check_dots_once(slot: Slot, seen: set[Dot]) -> None:
    """The invariant every reachable state and delta keeps and joins rely on: each dot once.

    Every dot names one event, so it appears once in a whole value; without
    this check a crafted value could make two replicas join to different
    states. A register, a counter or one set member may hold several dots of
    one region: a join can produce that (a region's write, then its delete,
    then its next write, joined without the delete: the third does not name
    the first), and every type reads and overwrites such a state correctly
    (a write, an increment or an add replaces all of its region's dots; a
    counter sums all of its region's shares). Refusing it would make a key
    that a join produced unreadable (issue 14).

    The fast readers check the same with ``regions.finish_fast``.
    """
    for dot in slot.dots():
        if dot in seen:
            raise CodecError(f"dot {dot.region}:{dot.counter} appears twice")
        seen.add(dot)


# -- REGISTER, COUNTER, SET: [regions, store] ------------------------------------------------


def _one_type(tag: Tag, slot: SlotLayout) -> Layout:
    write = table_and_body_writer(slot.lower_bases, slot.write)
    return table_and_body(tag, slot.cls, write, slot.read, slot.read_fast, check_dots_once=check_dots_once)


# -- CAUSAL: [regions, slot_tag, store, ctx] ---------------------------------------------------


def write_causal(obj: Causal[Any]) -> list[Any]:
    store = obj.store
    slot = slot_layout(store)
    if slot is None:
        raise CodecError(f"cannot encode Causal[{type(store).__name__}]")
    base: dict[str, int] = {}
    lower_context_bases(obj.context, base)
    slot.lower_bases(store, base)
    header, refs = region_table(base)
    return [header, slot.vtype.value, slot.write(store, refs), write_context(obj.context, refs)]


def read_causal(body: Any) -> Causal[Any]:
    rd, (tag_raw, store_body, ctx_body) = Reader.of_body(body, 4)
    _, store = read_slot(tag_raw, store_body, rd)
    ctx = read_context(ctx_body, rd)
    rd.finish()
    dots: set[Dot] = set()
    check_dots_once(store, dots)
    check_in_context(dots, ctx)
    return Causal(store, ctx)


def read_causal_fast(body: Any) -> Causal[Any]:
    t = read_table_fast(body, 4)
    tag = body[1]
    if type(tag) is not int or tag not in SLOTS_FAST:
        raise Irregular
    store = SLOTS_FAST[tag][1](body[2], t)
    ctx = read_context_fast(body[3], t)
    finish_fast(t, ctx)
    return Causal(store, ctx)


LAYOUTS = [
    _one_type(Tag.REGISTER, REGISTER),
    _one_type(Tag.COUNTER, COUNTER),
    _one_type(Tag.SET, SET),
    Layout(Tag.CAUSAL, Causal, write_causal, read_causal, read_causal_fast),
]

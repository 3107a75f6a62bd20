"""Key states and the whole store: KEY_STATE and STORE_MAP, and the key_state a store map holds per key.

    key_state  [[slot_tag, store], ...]                  slots sorted by tag, one per type
    KEY_STATE  [regions, key_state]
    STORE_MAP  [regions, ctx, [[key, key_state], ...]]   keys sorted and unique

A store map's keys share one region table and one causal context (``ctx``,
see ``context``), and every dot of every key is in that context. A delta may
hold a key with no slots or a slot with no entries; a state never does.
"""

from __future__ import annotations

from typing import Any

from crdtstore.crdt.causal import Dot
from crdtstore.crdt.codec.base import (
    U64,
    CodecError,
    Irregular,
    Layout,
    SlotLayout,
    Tag,
    array,
    strictly_increasing,
    string,
)
from crdtstore.crdt.codec.context import lower_context_bases, read_context, read_context_fast, write_context
from crdtstore.crdt.codec.regions import (
    BASES_STRUCTS,
    FastTable,
    Reader,
    Refs,
    check_in_context,
    finish_fast,
    read_table_fast,
    region_table,
    table_and_body,
    table_and_body_writer,
)
from crdtstore.crdt.codec.slots import SLOTS_BY_CLASS, SLOTS_FAST, check_dots_once, read_slot, slot_layout
from crdtstore.crdt.keyed import KeyState, Slot, StoreMap, ValueType
from crdtstore.crdt.register import Register

# -- key_state: [[slot_tag, store], ...] ---------------------------------------------------------


def _slot(slot: object) -> SlotLayout:
    """The layout of a slot that is not one of the three types exactly (see ``slots.slot_layout``)."""
    found = slot_layout(slot)
    if found is None:
        raise CodecError(f"cannot encode a {type(slot).__name__} as a slot of a key state")
    return found


def lower_key_state_bases(state: KeyState, base: dict[str, int]) -> None:
    for slot in state.slots.values():
        (SLOTS_BY_CLASS.get(type(slot)) or _slot(slot)).lower_bases(slot, base)


def write_key_state(state: KeyState, refs: Refs) -> list[Any]:
    out: list[Any] = []
    for t, slot in sorted(state.slots.items()):
        layout = SLOTS_BY_CLASS.get(type(slot)) or _slot(slot)
        out.append([int(t), layout.write(slot, refs)])
    return out


def read_key_state(body: Any, rd: Reader) -> KeyState:
    slots: dict[ValueType, Slot] = {}
    tags: list[int] = []
    for item in array(body, "key state"):
        tag_raw, slot_body = array(item, "key slot", 2)
        vtype, slot = read_slot(tag_raw, slot_body, rd)
        tags.append(int(vtype))
        slots[vtype] = slot
    strictly_increasing(tags, "key slots")
    return KeyState(slots)


def read_key_state_fast(body: Any, t: FastTable) -> KeyState:
    if type(body) is not list:
        raise Irregular
    slots: dict[ValueType, Slot] = {}
    last = 0
    for item in body:
        if type(item) is not list or len(item) != 2:
            raise Irregular
        tag, slot_body = item
        if type(tag) is not int or tag <= last or tag not in SLOTS_FAST:
            raise Irregular
        vtype, read_fast = SLOTS_FAST[tag]
        slots[vtype] = read_fast(slot_body, t)
        last = tag
    return KeyState(slots)


def check_key_state_dots_once(state: KeyState, seen: set[Dot]) -> None:
    for slot in state.slots.values():
        check_dots_once(slot, seen)


# -- KEY_STATE: [regions, key_state] ---------------------------------------------------------------


_REGISTER_TAG = int(ValueType.REGISTER)


def write_key_state_value(obj: KeyState) -> list[Any]:
    one = _one_register_write(obj)
    if one is not None:
        # The state most keys hold, one register write: what the general path
        # writes, built directly (its region table has one region, whose base
        # is the write's own counter).
        (region, counter), (timestamp, value) = one
        return one_register_write(region, counter, timestamp, value)
    return write_key_state_value_general(obj)


def one_register_write(region: str, counter: int, timestamp: tuple[int, int], value: bytes) -> list[Any]:
    """The KEY_STATE body of a key state that is one register version: what the general writer writes for it
    (its region table has one region, whose base is the version's counter)."""
    return [[[region], BASES_STRUCTS[1].pack(counter)], [[_REGISTER_TAG, [[0, 0, *timestamp, value]]]]]


def _one_register_write(state: KeyState) -> tuple[Any, Any] | None:
    """The (dot, version) of a key state that is one register write and nothing else, if it is."""
    slots = state.slots
    if len(slots) != 1:
        return None
    register = slots.get(ValueType.REGISTER)
    if type(register) is not Register or len(register.entries) != 1:
        return None
    for item in register.entries.items():
        if 0 <= item[0][1] < U64:
            return item
    return None


write_key_state_value_general = table_and_body_writer(lower_key_state_bases, write_key_state)


# -- STORE_MAP: [regions, ctx, [[key, key_state], ...]] --------------------------------------------


def write_store_map(obj: StoreMap) -> list[Any]:
    base: dict[str, int] = {}
    lower_context_bases(obj.context, base)
    for state in obj.entries.values():  # lower_key_state_bases, inlined: a store map has many keys
        for slot in state.slots.values():
            (SLOTS_BY_CLASS.get(type(slot)) or _slot(slot)).lower_bases(slot, base)
    header, refs = region_table(base)
    entries = [[k, write_key_state(state, refs)] for k, state in sorted(obj.entries.items())]
    return [header, write_context(obj.context, refs), entries]


def read_store_map(body: Any) -> StoreMap:
    rd, (ctx_body, entries_body) = Reader.of_body(body, 3)
    ctx = read_context(ctx_body, rd)
    entries: dict[str, KeyState] = {}
    keys: list[str] = []
    for item in array(entries_body, "store entries"):
        key_raw, state_body = array(item, "store entry", 2)
        key = string(key_raw, "key")
        keys.append(key)
        entries[key] = read_key_state(state_body, rd)
    strictly_increasing(keys, "store keys")
    rd.finish()
    seen: set[Dot] = set()
    for state in entries.values():
        check_key_state_dots_once(state, seen)
    check_in_context(seen, ctx)
    return StoreMap(entries, ctx)


def read_store_map_fast(body: Any) -> StoreMap:
    t = read_table_fast(body, 3)
    ctx = read_context_fast(body[1], t)
    entries_raw = body[2]
    if type(entries_raw) is not list:
        raise Irregular
    entries: dict[str, KeyState] = {}
    last: str | None = None
    for item in entries_raw:
        if type(item) is not list or len(item) != 2:
            raise Irregular
        key, state_body = item
        if type(key) is not str or (last is not None and not last < key):
            raise Irregular
        entries[key] = read_key_state_fast(state_body, t)
        last = key
    finish_fast(t, ctx)
    return StoreMap(entries, ctx)


LAYOUTS = [
    table_and_body(
        Tag.KEY_STATE,
        KeyState,
        write_key_state_value,
        read_key_state,
        read_key_state_fast,
        check_dots_once=check_key_state_dots_once,
    ),
    Layout(Tag.STORE_MAP, StoreMap, write_store_map, read_store_map, read_store_map_fast),
]

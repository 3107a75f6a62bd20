"""The deterministic, versioned encoding of every core type (msgpack).

Every encoded value is a msgpack array ``[tag, version, body]``. The tag names
the type, the version its layout; a decoder that meets a tag or version it does
not know raises ``CodecError`` and never guesses.

Determinism: the same content always gives the same bytes, so a digest of the
bytes is a digest of the content (which is how regions will prove they agree).
To get there every collection is written in one order (sorted by key, dots by
``(region, counter)``), nothing is written as a msgpack map (whose order a
writer may choose), integers use msgpack's shortest form, and region names are
written once per value in a sorted *region table* that dots refer to by index.
The decoder enforces the same rules and refuses anything else (unsorted or
repeated entries, an unused region, a base that is not the smallest counter, a
context that is not compact). It does accept msgpack's longer forms of an
integer or a length (``0xcc 0x00`` for zero, say), which another msgpack
writer may produce; the value it returns re-encodes to the canonical bytes, so
digests are always taken over canonical bytes.

Deltas name what they touch, so a delta may hold a member with no dots, a
slot with no entries or a key with no slots (see ``dotstore.DotStore``); the
codec writes those as they are. States never hold them.

Size: a dot is ``[region_index, counter]``; in a set a member's dots are
flattened into one array, so a member with one dot costs its name plus about
five bytes up to counter 65,535 and seven up to 2**32. An add delta holds one
member, one or two dots and a one-entry region table: its size does not depend
on the size of the set.

Hostile input: ``decode`` accepts arbitrary bytes and either returns a value
that satisfies every invariant above, and the causal ones that joins rely on
(each dot appears once; every dot of a store with a context is in that
context), or raises ``CodecError``; any other exception from msgpack or from
validation is turned into ``CodecError``. What it accepts is exactly what
joins can reach, no less: a register, a counter or a set member may hold
several dots of one region (sorted by counter), because a join of deltas
delivered without their causal past produces that, and a key the decoder
refused would be unreadable (DATA_LOSS) on that node for good.

Layouts (version 1)::

    VERSION_VECTOR  [[region, counter], ...]
    CAUSAL_CONTEXT  [regions, ctx]
    TIMESTAMP       [wall_ms, logical]
    REGISTER        [regions, register]
    COUNTER         [regions, counter]
    SET             [regions, set]
    KEY_STATE       [regions, key_state]
    STORE_MAP       [regions, ctx, [[key, key_state], ...]]
    CAUSAL          [regions, slot_tag, store, ctx]    (one type with its context)

    ctx        [[ri, counter], ...] vector, [[ri, counter], ...] cloud
    register   [[ri, counter, wall_ms, logical, value_bytes], ...]
    counter    [[ri, counter, positive, negative], ...]
    set        [[member, [ri, counter, ri, counter, ...]], ...]
    key_state  [[slot_tag, register | counter | set], ...]

Counter totals of 2**64 and above are written as msgpack extension type 1
holding the big-endian magnitude, so no amount is ever truncated.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from enum import IntEnum
from functools import partial
from typing import Any, TypeVar, cast

import msgpack

from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.causal import CausalContext, Dot, VersionVector
from crdtstore.crdt.counter import Counter, Share
from crdtstore.crdt.dotstore import Causal
from crdtstore.crdt.hlc import Timestamp
from crdtstore.crdt.keyed import KeyState, Slot, StoreMap, ValueType
from crdtstore.crdt.register import Register, Version

__all__ = ["CodecError", "Tag", "decode", "decode_as", "encode"]

FORMAT_VERSION = 1
_U64 = 2**64
_BIGINT_EXT = 1


class CodecError(ValueError):
    """Bytes that are not a valid encoding of a crdtstore value."""


class Tag(IntEnum):
    VERSION_VECTOR = 1
    CAUSAL_CONTEXT = 2
    TIMESTAMP = 3
    REGISTER = 4
    COUNTER = 5
    SET = 6
    KEY_STATE = 7
    STORE_MAP = 8
    CAUSAL = 9


Encodable = (
    VersionVector
    | CausalContext
    | Timestamp
    | Register
    | Counter
    | AWSet
    | KeyState
    | StoreMap
    | Causal[Register]
    | Causal[Counter]
    | Causal[AWSet]
)


# ---------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------


_Refs = dict[str, tuple[int, int]]

# Region tables are short: the structs that read and write their bases are made once.
_BASES_STRUCTS = [struct.Struct(f">{n}Q") for n in range(33)]


def _bases_struct(n: int) -> struct.Struct:
    return _BASES_STRUCTS[n] if n < len(_BASES_STRUCTS) else struct.Struct(f">{n}Q")


def _region_table(base: dict[str, int]) -> tuple[list[Any], _Refs]:
    """The region table of a value, and how to refer to a region in it.

    ``base`` maps each region of the value to its smallest counter (see
    ``_lower_bases``). The table lists the regions sorted, with that counter
    as the region's base; counters are written as offsets from their region's
    base, and the bases as fixed eight-byte integers. A value with one dot per
    region (an add delta, say) therefore has the same size whether the region
    has made ten events or ten billion. The refs map a region to its (index in
    the table, base counter): one lookup per dot written.
    """
    names = sorted(base)
    counters = [base[name] for name in names]
    try:
        bases = _bases_struct(len(names)).pack(*counters)
    except struct.error:
        try:
            bases = b"".join(counter.to_bytes(8, "big") for counter in counters)
        except OverflowError as exc:
            raise CodecError("a dot counter is beyond 64 bits") from exc
    return [names, bases], dict(zip(names, enumerate(counters), strict=True))


def _lower_bases(dots: Iterable[tuple[str, int]], base: dict[str, int]) -> None:
    """Lower each region's entry in ``base`` to the smallest counter of ``dots``."""
    get = base.get
    for region, counter in dots:
        if counter < get(region, _U64):
            base[region] = counter


def _slot_bases(slot: Slot, base: dict[str, int]) -> None:
    if isinstance(slot, AWSet):
        for dots in slot.entries.values():
            _lower_bases(dots, base)
    else:
        _lower_bases(slot.entries, base)


def _context_bases(ctx: CausalContext, base: dict[str, int]) -> None:
    _lower_bases(ctx.vv.items(), base)
    if ctx.cloud:
        _lower_bases(ctx.cloud, base)


def _enc_context(ctx: CausalContext, refs: _Refs) -> list[Any]:
    vector: list[Any] = []
    for region, counter in sorted(ctx.vv.items()):
        i, base = refs[region]
        vector.append([i, counter - base])
    cloud: list[Any] = []
    for region, counter in sorted(ctx.cloud):
        i, base = refs[region]
        cloud.append([i, counter - base])
    return [vector, cloud]


def _enc_big(n: int) -> int | msgpack.ExtType:
    if n < _U64:
        return n
    return msgpack.ExtType(_BIGINT_EXT, n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _enc_register(reg: Register, refs: _Refs) -> list[Any]:
    out: list[Any] = []
    for (region, counter), (timestamp, value) in sorted(reg.entries.items()):
        i, base = refs[region]
        out.append([i, counter - base, timestamp.wall_ms, timestamp.logical, value])
    return out


def _enc_counter(counter: Counter, refs: _Refs) -> list[Any]:
    out: list[Any] = []
    for (region, n), (positive, negative) in sorted(counter.entries.items()):
        i, base = refs[region]
        out.append([i, n - base, _enc_big(positive), _enc_big(negative)])
    return out


def _enc_set(aw: AWSet, refs: _Refs) -> list[Any]:
    out: list[Any] = []
    for member, dots in sorted(aw.entries.items()):
        flat: list[int] = []
        for region, counter in sorted(dots) if len(dots) > 1 else dots:
            i, base = refs[region]
            flat.append(i)
            flat.append(counter - base)
        out.append([member, flat])
    return out


def _enc_slot(slot: Slot, refs: _Refs) -> list[Any]:
    if isinstance(slot, Register):
        return _enc_register(slot, refs)
    if isinstance(slot, Counter):
        return _enc_counter(slot, refs)
    return _enc_set(slot, refs)


def _slot_tag(slot: Slot) -> ValueType:
    if isinstance(slot, Register):
        return ValueType.REGISTER
    if isinstance(slot, Counter):
        return ValueType.COUNTER
    return ValueType.SET


def _enc_key_state(state: KeyState, refs: _Refs) -> list[Any]:
    return [[int(t), _enc_slot(slot, refs)] for t, slot in sorted(state.slots.items())]


def _version_vector_body(obj: VersionVector) -> list[Any]:
    return [[r, c] for r, c in sorted(obj.items())]


def _context_body(obj: CausalContext) -> list[Any]:
    if not obj.cloud:
        # The usual context, a vector alone: each counter is its region's
        # base, so every offset is zero.
        vector = sorted(obj.vv.items())
        names = [r for r, _ in vector]
        try:
            bases = _bases_struct(len(names)).pack(*[c for _, c in vector])
        except struct.error:
            pass  # the general path below says what is wrong
        else:
            return [[names, bases], [[[i, 0] for i in range(len(names))], []]]
    base: dict[str, int] = {}
    _context_bases(obj, base)
    header, refs = _region_table(base)
    return [header, _enc_context(obj, refs)]


def _timestamp_body(obj: Timestamp) -> list[Any]:
    return [obj.wall_ms, obj.logical]


def _slot_body(obj: Slot) -> list[Any]:
    base: dict[str, int] = {}
    _slot_bases(obj, base)
    header, refs = _region_table(base)
    return [header, _enc_slot(obj, refs)]


def _key_state_body(obj: KeyState) -> list[Any]:
    one = _one_register_write(obj)
    if one is not None:
        # The state most keys hold, one register write: what the general path
        # writes, built directly (its region table has one region, whose base
        # is the write's own counter).
        (region, counter), (timestamp, value) = one
        return [[[region], _BASES_STRUCTS[1].pack(counter)], [[_REGISTER_TAG, [[0, 0, *timestamp, value]]]]]
    return _key_state_body_general(obj)


_REGISTER_TAG = int(ValueType.REGISTER)


def _one_register_write(state: KeyState) -> tuple[Any, Any] | None:
    """The (dot, version) of a key state that is one register write and nothing else, if it is."""
    slots = state.slots
    if len(slots) != 1:
        return None
    register = slots.get(ValueType.REGISTER)
    if type(register) is not Register or len(register.entries) != 1:
        return None
    for item in register.entries.items():
        if 0 <= item[0][1] < _U64:
            return item
    return None


def _key_state_body_general(obj: KeyState) -> list[Any]:
    base: dict[str, int] = {}
    for slot in obj.slots.values():
        _slot_bases(slot, base)
    header, refs = _region_table(base)
    return [header, _enc_key_state(obj, refs)]


def _store_map_body(obj: StoreMap) -> list[Any]:
    base: dict[str, int] = {}
    _context_bases(obj.context, base)
    for state in obj.entries.values():
        for slot in state.slots.values():
            _slot_bases(slot, base)
    header, refs = _region_table(base)
    entries = [[k, _enc_key_state(state, refs)] for k, state in sorted(obj.entries.items())]
    return [header, _enc_context(obj.context, refs), entries]


def _causal_body(obj: Causal[Any]) -> list[Any]:
    store = cast(Slot, obj.store)
    if not isinstance(store, Register | Counter | AWSet):
        raise CodecError(f"cannot encode Causal[{type(store).__name__}]")
    base: dict[str, int] = {}
    _context_bases(obj.context, base)
    _slot_bases(store, base)
    header, refs = _region_table(base)
    return [header, int(_slot_tag(store)), _enc_slot(store, refs), _enc_context(obj.context, refs)]


# Each encodable class with its tag and the function that writes its body. A
# subclass is written as the first class here it is an instance of.
_ENCODERS: dict[type, tuple[int, Callable[[Any], list[Any]]]] = {
    VersionVector: (Tag.VERSION_VECTOR.value, _version_vector_body),
    CausalContext: (Tag.CAUSAL_CONTEXT.value, _context_body),
    Timestamp: (Tag.TIMESTAMP.value, _timestamp_body),
    Register: (Tag.REGISTER.value, _slot_body),
    Counter: (Tag.COUNTER.value, _slot_body),
    AWSet: (Tag.SET.value, _slot_body),
    KeyState: (Tag.KEY_STATE.value, _key_state_body),
    StoreMap: (Tag.STORE_MAP.value, _store_map_body),
    Causal: (Tag.CAUSAL.value, _causal_body),
}


def _encoder(obj: object) -> tuple[int, Callable[[Any], list[Any]]]:
    found = _ENCODERS.get(type(obj))
    if found is not None:
        return found
    for cls, entry in _ENCODERS.items():
        if isinstance(obj, cls):
            return entry
    raise CodecError(f"cannot encode a {type(obj).__name__}")


# ``msgpack.packb`` makes a Packer, and its buffer, per call: for the small
# values written most (a vector, a context, one key) that is a third of the
# cost of encoding. Packers are reused instead. One is not safe to share
# between threads, so a call takes one from the pool for its own use
# (``list.pop`` and ``list.append`` are atomic) and puts it back afterwards,
# unless the value was big enough to have grown its buffer.
_PACKERS: list[msgpack.Packer] = []
_PACKERS_MAX = 8
_PACKER_REUSE_BYTES_MAX = 64 * 1024


def _pack(obj: list[Any]) -> bytes:
    try:
        packer = _PACKERS.pop()
    except IndexError:
        packer = msgpack.Packer(use_bin_type=True)
    out: bytes = packer.pack(obj)
    if len(out) <= _PACKER_REUSE_BYTES_MAX and len(_PACKERS) < _PACKERS_MAX:
        _PACKERS.append(packer)
    return out


def encode(obj: Encodable) -> bytes:
    """The canonical bytes of ``obj``."""
    tag, write_body = _encoder(obj)
    body = write_body(obj)
    try:
        return _pack([tag, FORMAT_VERSION, body])
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a string with a lone surrogate
        raise CodecError(f"cannot encode {type(obj).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------


class _Reader:
    """Validation helpers bound to the region table of the value being read."""

    __slots__ = ("at_base", "bases", "regions")

    def __init__(self, header: Any) -> None:
        names_raw, bases_raw = _list(header, "region table", 2)
        names = _list(names_raw, "region names")
        for name in names:
            _str(name, "region name")
            if not name:
                raise CodecError("empty region name")
        if any(a >= b for a, b in itertools.pairwise(names)):
            raise CodecError("region table is not sorted and unique")
        if type(bases_raw) is not bytes or len(bases_raw) != 8 * len(names):
            raise CodecError("region table: expected eight bytes of base counter per region")
        self.regions: list[str] = names
        self.bases = [
            _positive(int.from_bytes(bases_raw[i : i + 8], "big"), "base counter") for i in range(0, len(bases_raw), 8)
        ]
        self.at_base: set[int] = set()

    def dot(self, ri: Any, offset: Any) -> Dot:
        if type(ri) is not int or not 0 <= ri < len(self.regions):
            raise CodecError(f"region index {ri!r} is outside the region table")
        if _uint(offset, "counter offset") == 0:
            self.at_base.add(ri)
        counter = self.bases[ri] + offset
        if counter >= _U64:
            raise CodecError("a dot counter is beyond 64 bits")
        return Dot(self.regions[ri], counter)

    def finish(self) -> None:
        # Each base must be the smallest counter of its region, and so be used
        # at offset zero; otherwise one content would have many encodings.
        if len(self.at_base) != len(self.regions):
            raise CodecError("region table: a base counter is not the smallest counter of its region")


def _list(x: Any, what: str, length: int | None = None) -> list[Any]:
    if type(x) is not list:
        raise CodecError(f"{what}: expected an array, got {type(x).__name__}")
    if length is not None and len(x) != length:
        raise CodecError(f"{what}: expected {length} items, got {len(x)}")
    return x


def _str(x: Any, what: str) -> str:
    if type(x) is not str:
        raise CodecError(f"{what}: expected a string, got {type(x).__name__}")
    return x


def _uint(x: Any, what: str) -> int:
    if type(x) is not int or x < 0:
        raise CodecError(f"{what}: expected a non-negative integer, got {x!r}")
    return x


def _positive(x: Any, what: str) -> int:
    if type(x) is not int or x < 1:
        raise CodecError(f"{what}: expected a positive integer, got {x!r}")
    return x


def _big(x: Any, what: str) -> int:
    if type(x) is int:
        return _uint(x, what)
    if isinstance(x, msgpack.ExtType) and x.code == _BIGINT_EXT:
        data = x.data
        if not data or data[0] == 0:
            raise CodecError(f"{what}: big integer is not in its shortest form")
        n = int.from_bytes(data, "big")
        if n < _U64:
            raise CodecError(f"{what}: big integer below 2**64 must be a plain integer")
        return n
    raise CodecError(f"{what}: expected an integer, got {type(x).__name__}")


def _strictly_increasing(items: list[Any], what: str) -> None:
    for a, b in itertools.pairwise(items):
        if not a < b:
            raise CodecError(f"{what}: entries are not sorted and unique")


def _dec_context(body: Any, rd: _Reader) -> CausalContext:
    vector_raw, cloud_raw = _list(body, "causal context", 2)
    vector: dict[str, int] = {}
    order: list[int] = []
    for pair in _list(vector_raw, "version vector"):
        ri, counter = _list(pair, "version vector entry", 2)
        dot = rd.dot(ri, counter)
        order.append(ri)
        vector[dot.region] = dot.counter
    _strictly_increasing(order, "version vector")
    vv = VersionVector(vector)
    cloud: list[Dot] = []
    keys: list[tuple[int, int]] = []
    for pair in _list(cloud_raw, "dot cloud"):
        ri, counter = _list(pair, "cloud dot", 2)
        dot = rd.dot(ri, counter)
        keys.append((ri, dot.counter))
        if dot.counter <= vv.get(dot.region) + 1:
            raise CodecError(f"dot cloud is not compact: {dot} continues or is covered by the vector")
        cloud.append(dot)
    _strictly_increasing(keys, "dot cloud")
    ctx = CausalContext(vv, cloud)
    if len(ctx.cloud) != len(cloud):
        raise CodecError("dot cloud is not compact")
    return ctx


def _dec_register(body: Any, rd: _Reader) -> Register:
    entries: dict[Dot, Version] = {}
    keys: list[tuple[int, int]] = []
    for item in _list(body, "register"):
        ri, counter, wall, logical, value = _list(item, "register entry", 5)
        dot = rd.dot(ri, counter)
        if type(value) is not bytes:
            raise CodecError(f"register value: expected bytes, got {type(value).__name__}")
        keys.append((ri, dot.counter))
        entries[dot] = Version(Timestamp(_uint(wall, "wall_ms"), _uint(logical, "logical")), value)
    _strictly_increasing(keys, "register")
    return Register(entries)


def _dec_counter(body: Any, rd: _Reader) -> Counter:
    entries: dict[Dot, Share] = {}
    keys: list[tuple[int, int]] = []
    for item in _list(body, "counter"):
        ri, counter, positive, negative = _list(item, "counter entry", 4)
        dot = rd.dot(ri, counter)
        keys.append((ri, dot.counter))
        entries[dot] = Share(_big(positive, "counter total"), _big(negative, "counter total"))
    _strictly_increasing(keys, "counter")
    return Counter(entries)


def _dec_set(body: Any, rd: _Reader) -> AWSet:
    entries: dict[str, frozenset[Dot]] = {}
    members: list[str] = []
    for item in _list(body, "set"):
        member_raw, flat_raw = _list(item, "set entry", 2)
        member = _str(member_raw, "set member")
        flat = _list(flat_raw, "member dots")
        if len(flat) % 2:
            raise CodecError(f"member {member!r}: dots must be (region, counter) pairs")
        keys = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        dots = [rd.dot(ri, counter) for ri, counter in keys]
        _strictly_increasing(keys, f"dots of member {member!r}")
        members.append(member)
        entries[member] = frozenset(dots)
    _strictly_increasing(members, "set members")
    return AWSet(entries)


_SLOT_DECODERS: dict[ValueType, Callable[[Any, _Reader], Slot]] = {
    ValueType.REGISTER: _dec_register,
    ValueType.COUNTER: _dec_counter,
    ValueType.SET: _dec_set,
}


def _dec_slot(tag_raw: Any, body: Any, rd: _Reader) -> tuple[ValueType, Slot]:
    if type(tag_raw) is not int or tag_raw not in ValueType._value2member_map_:
        raise CodecError(f"unknown slot type {tag_raw!r}")
    vtype = ValueType(tag_raw)
    return vtype, _SLOT_DECODERS[vtype](body, rd)


def _dec_key_state(body: Any, rd: _Reader) -> KeyState:
    slots: dict[ValueType, Slot] = {}
    tags: list[int] = []
    for item in _list(body, "key state"):
        tag_raw, slot_body = _list(item, "key slot", 2)
        vtype, slot = _dec_slot(tag_raw, slot_body, rd)
        tags.append(int(vtype))
        slots[vtype] = slot
    _strictly_increasing(tags, "key slots")
    return KeyState(slots)


def _check_slot(slot: Slot, seen: set[Dot]) -> None:
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
    """
    groups = [list(dots) for dots in slot.entries.values()] if isinstance(slot, AWSet) else [list(slot.dots())]
    for group in groups:
        for dot in group:
            if dot in seen:
                raise CodecError(f"dot {dot.region}:{dot.counter} appears twice")
            seen.add(dot)


def _check_key_state(state: KeyState, seen: set[Dot]) -> None:
    for slot in state.slots.values():
        _check_slot(slot, seen)


def _check_in_context(dots: set[Dot], ctx: CausalContext) -> None:
    for dot in dots:
        if not ctx.contains(dot):
            raise CodecError(f"dot {dot.region}:{dot.counter} is in the store but not in its causal context")


def _with_table(body: Any, length: int) -> tuple[_Reader, list[Any]]:
    parts = _list(body, "body", length)
    return _Reader(parts[0]), parts[1:]


def _dec_body(tag: Tag, body: Any) -> object:
    if tag is Tag.VERSION_VECTOR:
        pairs = _list(body, "version vector")
        names: list[str] = []
        counters: dict[str, int] = {}
        for pair in pairs:
            region, counter = _list(pair, "version vector entry", 2)
            names.append(_str(region, "region name"))
            counters[region] = _positive(counter, "version vector counter")
        _strictly_increasing(names, "version vector")
        return VersionVector(counters)
    if tag is Tag.TIMESTAMP:
        wall, logical = _list(body, "timestamp", 2)
        return Timestamp(_uint(wall, "wall_ms"), _uint(logical, "logical"))
    if tag is Tag.CAUSAL_CONTEXT:
        rd, (ctx_body,) = _with_table(body, 2)
        ctx = _dec_context(ctx_body, rd)
        rd.finish()
        return ctx
    if tag in (Tag.REGISTER, Tag.COUNTER, Tag.SET):
        rd, (slot_body,) = _with_table(body, 2)
        vtype = {Tag.REGISTER: ValueType.REGISTER, Tag.COUNTER: ValueType.COUNTER, Tag.SET: ValueType.SET}[tag]
        slot = _SLOT_DECODERS[vtype](slot_body, rd)
        rd.finish()
        _check_slot(slot, set())
        return slot
    if tag is Tag.KEY_STATE:
        rd, (state_body,) = _with_table(body, 2)
        state = _dec_key_state(state_body, rd)
        rd.finish()
        _check_key_state(state, set())
        return state
    if tag is Tag.STORE_MAP:
        rd, (ctx_body, entries_body) = _with_table(body, 3)
        ctx = _dec_context(ctx_body, rd)
        entries: dict[str, KeyState] = {}
        keys: list[str] = []
        for item in _list(entries_body, "store entries"):
            key_raw, state_body = _list(item, "store entry", 2)
            key = _str(key_raw, "key")
            keys.append(key)
            entries[key] = _dec_key_state(state_body, rd)
        _strictly_increasing(keys, "store keys")
        rd.finish()
        seen: set[Dot] = set()
        for state in entries.values():
            _check_key_state(state, seen)
        _check_in_context(seen, ctx)
        return StoreMap(entries, ctx)
    if tag is Tag.CAUSAL:
        rd, (tag_raw, store_body, ctx_body) = _with_table(body, 4)
        _, store = _dec_slot(tag_raw, store_body, rd)
        ctx = _dec_context(ctx_body, rd)
        rd.finish()
        dots: set[Dot] = set()
        _check_slot(store, dots)
        _check_in_context(dots, ctx)
        return Causal(store, ctx)
    raise AssertionError(f"unhandled tag {tag}")  # pragma: no cover


# ---------------------------------------------------------------------------
# decoding, the fast path
# ---------------------------------------------------------------------------
#
# The readers above check one rule at a time and name the first one a value
# breaks. Decoding is most of the work of applying a remote delta, so
# ``decode`` first tries the readers below, which check the same rules folded
# together, build the values without re-validating them (a compact context,
# Dot and Version tuples made directly) and raise ``_Irregular`` at the first
# thing they do not accept. Then the careful readers above run on the same
# input and decide: they raise the ``CodecError`` that names the problem (or,
# should the fast path ever be stricter than they are, return the value). So
# what decodes, and every error message, is exactly what the careful readers
# say; tests/test_codec.py holds the fast path to giving the same values.
#
# Rules folded together: dots of one register, one counter or one set member
# sorted with no region twice is "region indexes strictly increasing"; a
# region table sorted, unique and without an empty name is "each name greater
# than the one before, starting from the empty string".


class _Irregular(Exception):
    """The fast path does not accept this input; the careful readers decide."""


_new_dot: Callable[[tuple[str, int]], Dot] = partial(tuple.__new__, Dot)
_new_version: Callable[[tuple[Timestamp, bytes]], Version] = partial(tuple.__new__, Version)
_new_timestamp: Callable[[tuple[int, int]], Timestamp] = partial(tuple.__new__, Timestamp)
_new_share: Callable[[tuple[int, int]], Share] = partial(tuple.__new__, Share)


def _fast_table(body: Any, length: int) -> tuple[list[str], tuple[int, ...]]:
    if type(body) is not list or len(body) != length:
        raise _Irregular
    header = body[0]
    if type(header) is not list or len(header) != 2:
        raise _Irregular
    names, bases_raw = header
    if type(names) is not list or type(bases_raw) is not bytes or len(bases_raw) != 8 * len(names):
        raise _Irregular
    last = ""
    for name in names:
        if type(name) is not str or not last < name:
            raise _Irregular
        last = name
    bases: tuple[int, ...] = _bases_struct(len(names)).unpack(bases_raw)
    if 0 in bases:
        raise _Irregular
    return names, bases


def _fast_context(body: Any, names: list[str], bases: tuple[int, ...], at_base: set[int]) -> CausalContext:
    if type(body) is not list or len(body) != 2:
        raise _Irregular
    vector_raw, cloud_raw = body
    if type(vector_raw) is not list or type(cloud_raw) is not list:
        raise _Irregular
    n = len(names)
    vector: dict[str, int] = {}
    last = -1
    for pair in vector_raw:
        if type(pair) is not list or len(pair) != 2:
            raise _Irregular
        ri, offset = pair
        if type(ri) is not int or type(offset) is not int or not last < ri < n or offset < 0:
            raise _Irregular
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        if counter >= _U64:
            raise _Irregular
        vector[names[ri]] = counter
        last = ri
    cloud: list[Dot] = []
    last, last_offset = 0, -1
    for pair in cloud_raw:
        if type(pair) is not list or len(pair) != 2:
            raise _Irregular
        ri, offset = pair
        if type(ri) is not int or type(offset) is not int or not last <= ri < n or offset < 0:
            raise _Irregular
        if ri == last and offset <= last_offset:
            raise _Irregular
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        region = names[ri]
        if counter >= _U64 or counter <= vector.get(region, 0) + 1:
            raise _Irregular
        cloud.append(_new_dot((region, counter)))
        last, last_offset = ri, offset
    # Compact as read: every cloud dot is beyond the vector and does not continue it.
    return CausalContext._trusted(VersionVector._trusted(vector), frozenset(cloud))


def _fast_register(body: Any, names: list[str], bases: tuple[int, ...], at_base: set[int], dots: list[Dot]) -> Register:
    if type(body) is not list:
        raise _Irregular
    n = len(names)
    entries: dict[Dot, Version] = {}
    last = -1
    last_offset = -1
    for item in body:
        if type(item) is not list or len(item) != 5:
            raise _Irregular
        ri, offset, wall, logical, value = item
        if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
            raise _Irregular
        if ri < last or (ri == last and offset <= last_offset):  # sorted by (region, counter), each once
            raise _Irregular
        if type(wall) is not int or type(logical) is not int or wall < 0 or logical < 0 or type(value) is not bytes:
            raise _Irregular
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        if counter >= _U64:
            raise _Irregular
        entries[_new_dot((names[ri], counter))] = _new_version((_new_timestamp((wall, logical)), value))
        last, last_offset = ri, offset
    dots.extend(entries)
    return Register(entries)


def _fast_counter(body: Any, names: list[str], bases: tuple[int, ...], at_base: set[int], dots: list[Dot]) -> Counter:
    if type(body) is not list:
        raise _Irregular
    n = len(names)
    entries: dict[Dot, Share] = {}
    last = -1
    last_offset = -1
    for item in body:
        if type(item) is not list or len(item) != 4:
            raise _Irregular
        ri, offset, positive, negative = item
        if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
            raise _Irregular
        if ri < last or (ri == last and offset <= last_offset):  # sorted by (region, counter), each once
            raise _Irregular
        if type(positive) is not int or positive < 0:
            positive = _big(positive, "counter total")
        if type(negative) is not int or negative < 0:
            negative = _big(negative, "counter total")
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        if counter >= _U64:
            raise _Irregular
        entries[_new_dot((names[ri], counter))] = _new_share((positive, negative))
        last, last_offset = ri, offset
    dots.extend(entries)
    return Counter(entries)


def _fast_set(body: Any, names: list[str], bases: tuple[int, ...], at_base: set[int], dots: list[Dot]) -> AWSet:
    if type(body) is not list:
        raise _Irregular
    n = len(names)
    entries: dict[str, frozenset[Dot]] = {}
    last_member: str | None = None
    for item in body:
        if type(item) is not list or len(item) != 2:
            raise _Irregular
        member, flat = item
        if type(member) is not str or type(flat) is not list or len(flat) % 2:
            raise _Irregular
        if last_member is not None and not last_member < member:
            raise _Irregular
        if len(flat) == 2:  # one dot: the common case
            ri, offset = flat
            if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
                raise _Irregular
            if not offset:
                at_base.add(ri)
            counter = bases[ri] + offset
            if counter >= _U64:
                raise _Irregular
            dot = _new_dot((names[ri], counter))
            dots.append(dot)
            entries[member] = frozenset((dot,))
            last_member = member
            continue
        member_dots: list[Dot] = []
        last = -1
        last_offset = -1
        for i in range(0, len(flat), 2):
            ri = flat[i]
            offset = flat[i + 1]
            if type(ri) is not int or type(offset) is not int or not 0 <= ri < n or offset < 0:
                raise _Irregular
            if ri < last or (ri == last and offset <= last_offset):  # sorted by (region, counter), each once
                raise _Irregular
            if not offset:
                at_base.add(ri)
            counter = bases[ri] + offset
            if counter >= _U64:
                raise _Irregular
            member_dots.append(_new_dot((names[ri], counter)))
            last, last_offset = ri, offset
        dots.extend(member_dots)
        entries[member] = frozenset(member_dots)
        last_member = member
    return AWSet(entries)


_FastSlotReader = Callable[[Any, list[str], tuple[int, ...], set[int], list[Dot]], Slot]
_FAST_SLOTS: dict[int, tuple[ValueType, _FastSlotReader]] = {
    ValueType.REGISTER.value: (ValueType.REGISTER, _fast_register),
    ValueType.COUNTER.value: (ValueType.COUNTER, _fast_counter),
    ValueType.SET.value: (ValueType.SET, _fast_set),
}


def _fast_key_state(
    body: Any, names: list[str], bases: tuple[int, ...], at_base: set[int], dots: list[Dot]
) -> KeyState:
    if type(body) is not list:
        raise _Irregular
    slots: dict[ValueType, Slot] = {}
    last = 0
    for item in body:
        if type(item) is not list or len(item) != 2:
            raise _Irregular
        tag, slot_body = item
        if type(tag) is not int or tag <= last or tag not in _FAST_SLOTS:
            raise _Irregular
        vtype, read = _FAST_SLOTS[tag]
        slots[vtype] = read(slot_body, names, bases, at_base, dots)
        last = tag
    return KeyState(slots)


def _fast_check_dots(dots: list[Dot], ctx: CausalContext | None) -> None:
    """Each dot once in the whole value, and (when it has one) in the value's context."""
    if len(set(dots)) != len(dots):
        raise _Irregular
    if ctx is not None:
        contains = ctx.contains
        for dot in dots:
            if not contains(dot):
                raise _Irregular


def _fast_causal_context(body: Any) -> CausalContext:
    names, bases = _fast_table(body, 2)
    at_base: set[int] = set()
    ctx = _fast_context(body[1], names, bases, at_base)
    if len(at_base) != len(names):
        raise _Irregular
    return ctx


def _fast_slot_reader(vtype: ValueType) -> Callable[[Any], object]:
    read = _FAST_SLOTS[vtype][1]

    def read_slot(body: Any) -> object:
        names, bases = _fast_table(body, 2)
        at_base: set[int] = set()
        dots: list[Dot] = []
        slot = read(body[1], names, bases, at_base, dots)
        if len(at_base) != len(names):
            raise _Irregular
        _fast_check_dots(dots, None)
        return slot

    return read_slot


def _fast_key_state_value(body: Any) -> KeyState:
    names, bases = _fast_table(body, 2)
    at_base: set[int] = set()
    dots: list[Dot] = []
    state = _fast_key_state(body[1], names, bases, at_base, dots)
    if len(at_base) != len(names):
        raise _Irregular
    _fast_check_dots(dots, None)
    return state


def _fast_store_map(body: Any) -> StoreMap:
    names, bases = _fast_table(body, 3)
    at_base: set[int] = set()
    dots: list[Dot] = []
    ctx = _fast_context(body[1], names, bases, at_base)
    entries_raw = body[2]
    if type(entries_raw) is not list:
        raise _Irregular
    entries: dict[str, KeyState] = {}
    last: str | None = None
    for item in entries_raw:
        if type(item) is not list or len(item) != 2:
            raise _Irregular
        key, state_body = item
        if type(key) is not str or (last is not None and not last < key):
            raise _Irregular
        entries[key] = _fast_key_state(state_body, names, bases, at_base, dots)
        last = key
    if len(at_base) != len(names):
        raise _Irregular
    _fast_check_dots(dots, ctx)
    return StoreMap(entries, ctx)


def _fast_causal(body: Any) -> Causal[Any]:
    names, bases = _fast_table(body, 4)
    tag = body[1]
    if type(tag) is not int or tag not in _FAST_SLOTS:
        raise _Irregular
    at_base: set[int] = set()
    dots: list[Dot] = []
    store = _FAST_SLOTS[tag][1](body[2], names, bases, at_base, dots)
    ctx = _fast_context(body[3], names, bases, at_base)
    if len(at_base) != len(names):
        raise _Irregular
    _fast_check_dots(dots, ctx)
    return Causal(store, ctx)


_FAST_DECODERS: dict[int, Callable[[Any], object]] = {
    Tag.CAUSAL_CONTEXT.value: _fast_causal_context,
    Tag.REGISTER.value: _fast_slot_reader(ValueType.REGISTER),
    Tag.COUNTER.value: _fast_slot_reader(ValueType.COUNTER),
    Tag.SET.value: _fast_slot_reader(ValueType.SET),
    Tag.KEY_STATE.value: _fast_key_state_value,
    Tag.STORE_MAP.value: _fast_store_map,
    Tag.CAUSAL.value: _fast_causal,
}


def _decode_fast(raw: Any) -> object:
    """The value of an unpacked envelope, or ``_Irregular`` (or another exception) if the fast path gives up."""
    if type(raw) is not list or len(raw) != 3:
        raise _Irregular
    tag, version, body = raw
    if type(tag) is not int or type(version) is not int or version != FORMAT_VERSION or tag not in _FAST_DECODERS:
        raise _Irregular
    return _FAST_DECODERS[tag](body)


def _decode_careful(raw: Any) -> object:
    """The value of an unpacked envelope, or the ``CodecError`` that names what is wrong with it."""
    envelope = _list(raw, "envelope", 3)
    tag_raw, version, body = envelope
    if type(tag_raw) is not int or tag_raw not in Tag._value2member_map_:
        raise CodecError(f"unknown type tag {tag_raw!r}")
    tag = Tag(tag_raw)
    if type(version) is not int or version != FORMAT_VERSION:
        raise CodecError(f"unknown version {version!r} of {tag.name} (this build reads {FORMAT_VERSION})")
    return _dec_body(tag, body)


def decode(data: bytes) -> object:
    """The value ``data`` encodes, or ``CodecError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"decode takes bytes, got {type(data).__name__}")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
        try:
            return _decode_fast(raw)
        except Exception:
            pass  # the careful readers decide, and name what is wrong
        return _decode_careful(raw)
    except CodecError:
        raise
    except Exception as exc:
        # msgpack raises several exception types for malformed input (ExtraData,
        # FormatError, StackError, ValueError, UnicodeDecodeError ...); and
        # unpacking a hostile array into the tuple assignments above raises
        # ValueError. None of them may escape as anything but a CodecError.
        raise CodecError(f"malformed encoding: {type(exc).__name__}: {exc}") from exc


T = TypeVar("T")


def decode_as(data: bytes, cls: type[T]) -> T:
    """Decode and check that the value is a ``cls``."""
    value = decode(data)
    if not isinstance(value, cls):
        raise CodecError(f"expected an encoded {cls.__name__}, found a {type(value).__name__}")
    return value

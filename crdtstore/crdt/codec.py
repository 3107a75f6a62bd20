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
(each dot appears once; a register, a counter or a set member holds at most
one dot per region; every dot of a store with a context is in that context),
or raises ``CodecError``; any other exception from msgpack or from validation
is turned into ``CodecError``.

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
from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
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


class _RegionTable:
    """Sorted region names with a base counter each, built from every dot of a value.

    Counters are written as offsets from their region's base (the smallest
    counter of that region in the value), and the bases as fixed eight-byte
    integers. A value with one dot per region (an add delta, say) therefore has
    the same size whether the region has made ten events or ten billion.
    """

    __slots__ = ("base", "index", "names")

    def __init__(self, dots: Iterable[tuple[str, int]]) -> None:
        base: dict[str, int] = {}
        for region, counter in dots:
            if counter < base.get(region, _U64):
                base[region] = counter
        self.names = sorted(base)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.base = base

    def header(self) -> list[Any]:
        try:
            bases = b"".join(self.base[name].to_bytes(8, "big") for name in self.names)
        except OverflowError as exc:
            raise CodecError("a dot counter is beyond 64 bits") from exc
        return [self.names, bases]

    def ref(self, region: str, counter: int) -> tuple[int, int]:
        return self.index[region], counter - self.base[region]


def _context_dots(ctx: CausalContext) -> Iterator[tuple[str, int]]:
    yield from ctx.vv.items()
    yield from ctx.cloud


def _enc_context(ctx: CausalContext, table: _RegionTable) -> list[Any]:
    vector = [list(table.ref(r, c)) for r, c in sorted(ctx.vv.items())]
    cloud = [list(table.ref(*d)) for d in sorted(ctx.cloud)]
    return [vector, cloud]


def _enc_big(n: int) -> int | msgpack.ExtType:
    if n < _U64:
        return n
    return msgpack.ExtType(_BIGINT_EXT, n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _enc_register(reg: Register, table: _RegionTable) -> list[Any]:
    return [[*table.ref(*d), v.timestamp.wall_ms, v.timestamp.logical, v.value] for d, v in sorted(reg.entries.items())]


def _enc_counter(counter: Counter, table: _RegionTable) -> list[Any]:
    return [[*table.ref(*d), _enc_big(s.positive), _enc_big(s.negative)] for d, s in sorted(counter.entries.items())]


def _enc_set(aw: AWSet, table: _RegionTable) -> list[Any]:
    out: list[Any] = []
    for member in sorted(aw.entries):
        flat: list[int] = []
        for d in sorted(aw.entries[member]):
            flat.extend(table.ref(*d))
        out.append([member, flat])
    return out


def _enc_slot(slot: Slot, table: _RegionTable) -> list[Any]:
    if isinstance(slot, Register):
        return _enc_register(slot, table)
    if isinstance(slot, Counter):
        return _enc_counter(slot, table)
    return _enc_set(slot, table)


def _slot_tag(slot: Slot) -> ValueType:
    if isinstance(slot, Register):
        return ValueType.REGISTER
    if isinstance(slot, Counter):
        return ValueType.COUNTER
    return ValueType.SET


def _enc_key_state(state: KeyState, table: _RegionTable) -> list[Any]:
    return [[int(t), _enc_slot(state.slots[t], table)] for t in sorted(state.slots)]


def _body(obj: object) -> tuple[Tag, Any]:
    if isinstance(obj, VersionVector):
        return Tag.VERSION_VECTOR, [[r, c] for r, c in sorted(obj.items())]
    if isinstance(obj, CausalContext):
        table = _RegionTable(_context_dots(obj))
        return Tag.CAUSAL_CONTEXT, [table.header(), _enc_context(obj, table)]
    if isinstance(obj, Timestamp):
        return Tag.TIMESTAMP, [obj.wall_ms, obj.logical]
    if isinstance(obj, Register | Counter | AWSet):
        table = _RegionTable(obj.dots())
        tag = {ValueType.REGISTER: Tag.REGISTER, ValueType.COUNTER: Tag.COUNTER, ValueType.SET: Tag.SET}
        return tag[_slot_tag(obj)], [table.header(), _enc_slot(obj, table)]
    if isinstance(obj, KeyState):
        table = _RegionTable(obj.dots())
        return Tag.KEY_STATE, [table.header(), _enc_key_state(obj, table)]
    if isinstance(obj, StoreMap):
        dots = [d for state in obj.entries.values() for d in state.dots()]
        table = _RegionTable([*dots, *_context_dots(obj.context)])
        entries = [[k, _enc_key_state(obj.entries[k], table)] for k in sorted(obj.entries)]
        return Tag.STORE_MAP, [table.header(), _enc_context(obj.context, table), entries]
    if isinstance(obj, Causal):
        store = cast(Slot, obj.store)
        if not isinstance(store, Register | Counter | AWSet):
            raise CodecError(f"cannot encode Causal[{type(store).__name__}]")
        table = _RegionTable([*store.dots(), *_context_dots(obj.context)])
        return Tag.CAUSAL, [
            table.header(),
            int(_slot_tag(store)),
            _enc_slot(store, table),
            _enc_context(obj.context, table),
        ]
    raise CodecError(f"cannot encode a {type(obj).__name__}")


def encode(obj: Encodable) -> bytes:
    """The canonical bytes of ``obj``."""
    tag, body = _body(obj)
    try:
        return msgpack.packb([int(tag), FORMAT_VERSION, body], use_bin_type=True)
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


def _check_slot(vtype: ValueType, slot: Slot, seen: set[Dot]) -> None:
    """Invariants every reachable state and delta keeps; a decoded value must keep them too.

    Every dot names one event, so it appears once in a whole value; and a
    region's later write, share or add of a member replaces its earlier ones,
    so a register, a counter, or one member holds at most one dot per region.
    Without these checks a crafted value could make two replicas join to
    different states.
    """
    groups = [list(dots) for dots in slot.entries.values()] if isinstance(slot, AWSet) else [list(slot.dots())]
    for group in groups:
        regions = [d.region for d in group]
        if len(set(regions)) != len(regions):
            raise CodecError(f"a {vtype.label} holds two dots of one region where one replaces the other")
        for dot in group:
            if dot in seen:
                raise CodecError(f"dot {dot.region}:{dot.counter} appears twice")
            seen.add(dot)


def _check_key_state(state: KeyState, seen: set[Dot]) -> None:
    for vtype, slot in state.slots.items():
        _check_slot(vtype, slot, seen)


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
        _check_slot(vtype, slot, set())
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
        vtype, store = _dec_slot(tag_raw, store_body, rd)
        ctx = _dec_context(ctx_body, rd)
        rd.finish()
        dots: set[Dot] = set()
        _check_slot(vtype, store, dots)
        _check_in_context(dots, ctx)
        return Causal(store, ctx)
    raise AssertionError(f"unhandled tag {tag}")  # pragma: no cover


def decode(data: bytes) -> object:
    """The value ``data`` encodes, or ``CodecError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"decode takes bytes, got {type(data).__name__}")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
        envelope = _list(raw, "envelope", 3)
        tag_raw, version, body = envelope
        if type(tag_raw) is not int or tag_raw not in Tag._value2member_map_:
            raise CodecError(f"unknown type tag {tag_raw!r}")
        tag = Tag(tag_raw)
        if type(version) is not int or version != FORMAT_VERSION:
            raise CodecError(f"unknown version {version!r} of {tag.name} (this build reads {FORMAT_VERSION})")
        return _dec_body(tag, body)
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

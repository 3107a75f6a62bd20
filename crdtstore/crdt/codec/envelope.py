"""The envelope ``[tag, version, body]`` around every value, and the entry points: encode, decode, decode_as.

The layouts of the bodies are gathered here from their modules into one
table by tag; ``encode`` finds a value's layout by its class, ``decode`` by
the tag, trying the fast reader first and the careful one whenever the fast
one gives up (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgpack

from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.causal import CausalContext, Dot, VersionVector
from crdtstore.crdt.codec import context, keyed, slots, timestamp
from crdtstore.crdt.codec.base import FORMAT_VERSION, U64, CodecError, Irregular, Layout, Tag, array
from crdtstore.crdt.codec.context import lower_context_bases, write_context
from crdtstore.crdt.codec.regions import lower_bases, region_table
from crdtstore.crdt.counter import Counter
from crdtstore.crdt.dotstore import Causal
from crdtstore.crdt.hlc import Timestamp
from crdtstore.crdt.keyed import KeyState, StoreMap, ValueType
from crdtstore.crdt.register import Register

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

# Every layout, in tag order.
LAYOUTS: dict[Tag, Layout] = {
    layout.tag: layout
    for layout in sorted(
        [*context.LAYOUTS, *timestamp.LAYOUTS, *slots.LAYOUTS, *keyed.LAYOUTS], key=lambda layout: layout.tag
    )
}
if list(LAYOUTS) != list(Tag):  # pragma: no cover
    raise AssertionError("every tag has one layout")

# Each encodable class with its tag and the function that writes its body. A
# subclass is written as the first class here it is an instance of.
ENCODERS: dict[type, tuple[int, Callable[[Any], list[Any]]]] = {
    layout.cls: (layout.tag.value, layout.write) for layout in LAYOUTS.values()
}
FAST_DECODERS: dict[int, Callable[[Any], object]] = {
    layout.tag.value: layout.read_fast for layout in LAYOUTS.values() if layout.read_fast is not None
}


def _encoder(obj: object) -> tuple[int, Callable[[Any], list[Any]]]:
    found = ENCODERS.get(type(obj))
    if found is not None:
        return found
    for cls, entry in ENCODERS.items():
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


# -- register writes, written directly ------------------------------------------------------
#
# A batch of register writes is most of what a store writes. Its key states
# and its delta are written here straight from the writes, without building
# the KeyState and StoreMap objects first: the bytes are exactly those
# ``encode`` gives for the objects (tests/test_write_path.py holds them to it), so
# every reader, digest and peer sees no difference.

_REGISTER_TAG = int(ValueType.REGISTER)

RegisterWrite = tuple[str, Dot, Timestamp, bytes]  # key, the write's dot, its timestamp, the value


def encode_register_write(dot: Dot, timestamp: Timestamp, value: bytes) -> bytes:
    """``encode`` of the KeyState that holds one register version and nothing else."""
    region, counter = dot
    if not 0 < counter < U64:
        raise CodecError(f"dot counter {counter} is outside 1..2**64-1")
    try:
        return _pack([_KEY_STATE, FORMAT_VERSION, keyed.one_register_write(region, counter, timestamp, value)])
    except (ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"cannot encode a register write: {exc}") from exc


def encode_register_writes(writes: Sequence[RegisterWrite], ctx: CausalContext) -> bytes:
    """``encode`` of the StoreMap delta of register writes to distinct keys, one version each, with context ``ctx``.

    ``ctx`` must hold every write's dot (a delta's context does).
    """
    base: dict[str, int] = {}
    lower_context_bases(ctx, base)
    lower_bases([dot for _, dot, _, _ in writes], base)
    header, refs = region_table(base)
    entries: list[Any] = []
    for key, (region, counter), (wall, logical), value in sorted(writes):
        i, first = refs[region]
        entries.append([key, [[_REGISTER_TAG, [[i, counter - first, wall, logical, value]]]]])
    try:
        return _pack([_STORE_MAP, FORMAT_VERSION, [header, write_context(ctx, refs), entries]])
    except (ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"cannot encode register writes: {exc}") from exc


_KEY_STATE = Tag.KEY_STATE.value
_STORE_MAP = Tag.STORE_MAP.value


def decode_fast(raw: Any) -> object:
    """The value of an unpacked envelope, or ``Irregular`` (or another exception) if the fast path gives up."""
    if type(raw) is not list or len(raw) != 3:
        raise Irregular
    tag, version, body = raw
    if type(tag) is not int or type(version) is not int or version != FORMAT_VERSION or tag not in FAST_DECODERS:
        raise Irregular
    return FAST_DECODERS[tag](body)


def decode_careful(raw: Any) -> object:
    """The value of an unpacked envelope, or the ``CodecError`` that names what is wrong with it."""
    tag_raw, version, body = array(raw, "envelope", 3)
    if type(tag_raw) is not int or tag_raw not in Tag._value2member_map_:
        raise CodecError(f"unknown type tag {tag_raw!r}")
    tag = Tag(tag_raw)
    if type(version) is not int or version != FORMAT_VERSION:
        raise CodecError(f"unknown version {version!r} of {tag.name} (this build reads {FORMAT_VERSION})")
    return LAYOUTS[tag].read(body)


def decode(data: bytes) -> object:
    """The value ``data`` encodes, or ``CodecError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"decode takes bytes, got {type(data).__name__}")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
        try:
            return decode_fast(raw)
        except Exception:
            pass  # the careful readers decide, and name what is wrong
        return decode_careful(raw)
    except CodecError:
        raise
    except Exception as exc:
        # msgpack raises several exception types for malformed input (ExtraData,
        # FormatError, StackError, ValueError, UnicodeDecodeError ...); and
        # unpacking a hostile array into the tuple assignments of the readers
        # raises ValueError. None of them may escape as anything but a CodecError.
        raise CodecError(f"malformed encoding: {type(exc).__name__}: {exc}") from exc


T = TypeVar("T")


def decode_as(data: bytes, cls: type[T]) -> T:
    """Decode and check that the value is a ``cls``."""
    value = decode(data)
    if not isinstance(value, cls):
        raise CodecError(f"expected an encoded {cls.__name__}, found a {type(value).__name__}")
    return value

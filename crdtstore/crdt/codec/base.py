"""What every layout shares: the error, the type tags, the shape of a layout, and the checks both readers use.

The careful readers name what is wrong with ``CodecError``; the fast readers
raise ``Irregular`` and let the careful ones decide (see the package
docstring). The checks here are the careful readers' vocabulary: each takes
the name of what it checks, for the message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from enum import IntEnum
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack

from crdtstore.crdt.causal import Dot
from crdtstore.crdt.hlc import Timestamp
from crdtstore.crdt.keyed import Slot, ValueType

if TYPE_CHECKING:
    from crdtstore.crdt.codec.regions import FastTable, Reader, Refs

FORMAT_VERSION = 1
U64 = 2**64
BIGINT_EXT = 1


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


class Irregular(Exception):
    """The fast path does not accept this input; the careful readers decide."""


class Layout(NamedTuple):
    """One encodable class: its tag, how its body is written, and the two readers of that body."""

    tag: Tag
    cls: type
    write: Callable[[Any], list[Any]]
    # The careful reader: the value, or the ``CodecError`` that names what is wrong.
    read: Callable[[Any], object]
    # The fast reader, where there is one: the same value, or ``Irregular``.
    read_fast: Callable[[Any], object] | None


class SlotLayout(NamedTuple):
    """One of the three types as a slot: a layout written against a region table shared with the rest of a value."""

    vtype: ValueType
    cls: type
    # Lowers the region bases (see ``regions.lower_bases``) to the slot's dots.
    lower_bases: Callable[[Any, dict[str, int]], None]
    write: Callable[[Any, Refs], list[Any]]
    read: Callable[[Any, Reader], Slot]
    read_fast: Callable[[Any, FastTable], Slot]


# Named tuples made without their ``__new__``'s argument handling: the fast readers build many.
new_dot: Callable[[tuple[str, int]], Dot] = partial(tuple.__new__, Dot)
new_timestamp: Callable[[tuple[int, int]], Timestamp] = partial(tuple.__new__, Timestamp)


# -- the careful readers' checks ----------------------------------------------------------


def array(x: Any, what: str, length: int | None = None) -> list[Any]:
    if type(x) is not list:
        raise CodecError(f"{what}: expected an array, got {type(x).__name__}")
    if length is not None and len(x) != length:
        raise CodecError(f"{what}: expected {length} items, got {len(x)}")
    return x


def string(x: Any, what: str) -> str:
    if type(x) is not str:
        raise CodecError(f"{what}: expected a string, got {type(x).__name__}")
    return x


def uint(x: Any, what: str) -> int:
    if type(x) is not int or x < 0:
        raise CodecError(f"{what}: expected a non-negative integer, got {x!r}")
    return x


def positive(x: Any, what: str) -> int:
    if type(x) is not int or x < 1:
        raise CodecError(f"{what}: expected a positive integer, got {x!r}")
    return x


def strictly_increasing(items: list[Any], what: str) -> None:
    for a, b in itertools.pairwise(items):
        if not a < b:
            raise CodecError(f"{what}: entries are not sorted and unique")


# -- integers of any size (counter totals) --------------------------------------------------
#
# An integer below 2**64 is a msgpack integer; one of 2**64 and above is msgpack
# extension type 1 holding its big-endian magnitude, in its shortest form.


def write_big(n: int) -> int | msgpack.ExtType:
    if n < U64:
        return n
    return msgpack.ExtType(BIGINT_EXT, n.to_bytes((n.bit_length() + 7) // 8, "big"))


def read_big(x: Any, what: str) -> int:
    """Careful, and used by the fast readers as well: big integers are rare."""
    if type(x) is int:
        return uint(x, what)
    if isinstance(x, msgpack.ExtType) and x.code == BIGINT_EXT:
        data = x.data
        if not data or data[0] == 0:
            raise CodecError(f"{what}: big integer is not in its shortest form")
        n = int.from_bytes(data, "big")
        if n < U64:
            raise CodecError(f"{what}: big integer below 2**64 must be a plain integer")
        return n
    raise CodecError(f"{what}: expected an integer, got {type(x).__name__}")

"""The region table, and dots written against it: how every layout that holds dots names them.

    regions    [[name, ...], bases]    names sorted and unique, none empty;
                                       bases: eight big-endian bytes a region
    dot        [ri, offset]            the dot (names[ri], bases[ri] + offset)

Each region's base is the smallest counter of that region in the value, so
some dot of each region is written at offset zero, and one content has one
encoding. A value with one dot per region (an add delta, say) therefore has
the same size whether the region has made ten events or ten billion.

The writer builds a table and the refs to it. The careful ``Reader``, and the
fast ``read_table_fast``, ``read_dot_fast`` and ``finish_fast``, read a table
and the dots that refer to it, and check at the end that every base was used
at offset zero (and, for the fast ones, that each dot appears once and in the
value's context; see ``slots.check_dots_once`` for the careful check).

Most values are a table and one body written against it, ``[regions, body]``
(CAUSAL_CONTEXT, REGISTER, COUNTER, SET, KEY_STATE): ``table_and_body`` makes
the layout of such a value from the writer and the two readers of its body.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from typing import Any

from crdtstore.crdt.causal import CausalContext, Dot
from crdtstore.crdt.codec.base import U64, CodecError, Irregular, Layout, Tag, array, new_dot, positive, string, uint

# Where each region of a value is in its table: region -> (index, base counter).
Refs = dict[str, tuple[int, int]]

# Region tables are short: the structs that read and write their bases are made once.
BASES_STRUCTS = [struct.Struct(f">{n}Q") for n in range(33)]


def bases_struct(n: int) -> struct.Struct:
    return BASES_STRUCTS[n] if n < len(BASES_STRUCTS) else struct.Struct(f">{n}Q")


# -- writing ----------------------------------------------------------------------------


def lower_bases(dots: Iterable[tuple[str, int]], base: dict[str, int]) -> None:
    """Lower each region's entry in ``base`` to the smallest counter of ``dots``."""
    get = base.get
    for region, counter in dots:
        if counter < get(region, U64):
            base[region] = counter


def region_table(base: dict[str, int]) -> tuple[list[Any], Refs]:
    """The region table of a value whose regions have the smallest counters ``base``, and the refs to it.

    A dot is then written as ``[i, counter - base]`` where ``i, base = refs[region]``:
    one lookup per dot.
    """
    names = sorted(base)
    counters = [base[name] for name in names]
    try:
        bases = bases_struct(len(names)).pack(*counters)
    except struct.error:
        try:
            bases = b"".join(counter.to_bytes(8, "big") for counter in counters)
        except OverflowError as exc:
            raise CodecError("a dot counter is beyond 64 bits") from exc
    return [names, bases], dict(zip(names, enumerate(counters), strict=True))


# -- reading, carefully -----------------------------------------------------------------


class Reader:
    """The careful reader of a region table and of the dots that refer to it."""

    __slots__ = ("at_base", "bases", "regions")

    def __init__(self, header: Any) -> None:
        names_raw, bases_raw = array(header, "region table", 2)
        names = array(names_raw, "region names")
        for name in names:
            string(name, "region name")
            if not name:
                raise CodecError("empty region name")
        if any(a >= b for a, b in itertools.pairwise(names)):
            raise CodecError("region table is not sorted and unique")
        if type(bases_raw) is not bytes or len(bases_raw) != 8 * len(names):
            raise CodecError("region table: expected eight bytes of base counter per region")
        self.regions: list[str] = names
        self.bases = [
            positive(int.from_bytes(bases_raw[i : i + 8], "big"), "base counter") for i in range(0, len(bases_raw), 8)
        ]
        self.at_base: set[int] = set()

    @classmethod
    def of_body(cls, body: Any, length: int) -> tuple[Reader, list[Any]]:
        """The reader of a body ``[regions, ...]`` of ``length`` items, and the items after the table."""
        parts = array(body, "body", length)
        return cls(parts[0]), parts[1:]

    def dot(self, ri: Any, offset: Any) -> Dot:
        if type(ri) is not int or not 0 <= ri < len(self.regions):
            raise CodecError(f"region index {ri!r} is outside the region table")
        if uint(offset, "counter offset") == 0:
            self.at_base.add(ri)
        counter = self.bases[ri] + offset
        if counter >= U64:
            raise CodecError("a dot counter is beyond 64 bits")
        return Dot(self.regions[ri], counter)

    def finish(self) -> None:
        # Each base must be the smallest counter of its region, and so be used
        # at offset zero; otherwise one content would have many encodings.
        if len(self.at_base) != len(self.regions):
            raise CodecError("region table: a base counter is not the smallest counter of its region")


def check_in_context(dots: Iterable[Dot], ctx: CausalContext) -> None:
    for dot in dots:
        if not ctx.contains(dot):
            raise CodecError(f"dot {dot.region}:{dot.counter} is in the store but not in its causal context")


# -- reading, fast ----------------------------------------------------------------------


# What the fast readers of one value share: the region names, their bases,
# the indexes of the regions seen at offset zero, and the dots read so far.
# A plain tuple (one is made per value decoded; a named one costs more to
# make), unpacked by each reader: ``regions, bases, at_base, dots = t``.
FastTable = tuple[list[str], tuple[int, ...], set[int], list[Dot]]


def read_table_fast(body: Any, length: int) -> FastTable:
    """The fast reader's table of a body ``[regions, ...]`` of ``length`` items, or ``Irregular``.

    It accepts what ``Reader`` accepts, with the checks folded together (a
    table sorted, unique and without an empty name is "each name greater
    than the one before, starting from the empty string").
    """
    if type(body) is not list or len(body) != length:
        raise Irregular
    header = body[0]
    if type(header) is not list or len(header) != 2:
        raise Irregular
    names, bases_raw = header
    if type(names) is not list or type(bases_raw) is not bytes or len(bases_raw) != 8 * len(names):
        raise Irregular
    last = ""
    for name in names:
        if type(name) is not str or not last < name:
            raise Irregular
        last = name
    bases: tuple[int, ...] = bases_struct(len(names)).unpack(bases_raw)
    if 0 in bases:
        raise Irregular
    return names, bases, set(), []


def read_dot_fast(t: FastTable, ri: Any, offset: Any) -> Dot:
    """``Reader.dot``, fast.

    The hottest loops (register and counter entries, a set member's one dot,
    a context's dots) do this inline.
    """
    regions, bases, at_base, _ = t
    if type(ri) is not int or type(offset) is not int or not 0 <= ri < len(regions) or offset < 0:
        raise Irregular
    if not offset:
        at_base.add(ri)
    counter = bases[ri] + offset
    if counter >= U64:
        raise Irregular
    return new_dot((regions[ri], counter))


def finish_fast(t: FastTable, ctx: CausalContext | None = None) -> None:
    """Every base used at offset zero; each dot once in the whole value, and (when it has one) in its context."""
    regions, _, at_base, dots = t
    if len(at_base) != len(regions):
        raise Irregular
    if len(set(dots)) != len(dots):
        raise Irregular
    if ctx is not None:
        contains = ctx.contains
        for dot in dots:
            if not contains(dot):
                raise Irregular


# -- [regions, body] ----------------------------------------------------------------------


def table_and_body_writer(
    lower: Callable[[Any, dict[str, int]], None], write: Callable[[Any, Refs], Any]
) -> Callable[[Any], list[Any]]:
    """The writer of ``[regions, body]``: ``lower`` gives the bases of the value's dots, ``write`` the body."""

    def write_value(obj: Any) -> list[Any]:
        base: dict[str, int] = {}
        lower(obj, base)
        header, refs = region_table(base)
        return [header, write(obj, refs)]

    return write_value


def table_and_body(
    tag: Tag,
    cls: type,
    write: Callable[[Any], list[Any]],
    read: Callable[[Any, Reader], Any],
    read_fast: Callable[[Any, FastTable], Any],
    *,
    check_dots_once: Callable[[Any, set[Dot]], None] | None = None,
) -> Layout:
    """The layout of a value ``[regions, body]``: its writer (see ``table_and_body_writer``), its body's readers.

    ``check_dots_once`` is the careful check that each dot of the value appears
    once (``finish_fast`` makes it on the fast path); a value without dots has none.
    """

    def read_value(body: Any) -> object:
        rd, (inner,) = Reader.of_body(body, 2)
        value = read(inner, rd)
        rd.finish()
        if check_dots_once is not None:
            check_dots_once(value, set())
        return value

    def read_value_fast(body: Any) -> object:
        t = read_table_fast(body, 2)
        value = read_fast(body[1], t)
        finish_fast(t)
        return value

    return Layout(tag, cls, write, read_value, read_value_fast)

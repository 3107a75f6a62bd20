"""Version vectors and causal contexts: the VERSION_VECTOR and CAUSAL_CONTEXT values, and the ctx other values hold.

    VERSION_VECTOR  [[region, counter], ...]    sorted by region, counters positive
    CAUSAL_CONTEXT  [regions, ctx]

    ctx             [vector, cloud]
      vector        [[ri, offset], ...]         a region's counter: sorted by ri, one each
      cloud         [[ri, offset], ...]         dots seen beyond the vector: sorted by (ri, counter)

A context is compact: no cloud dot is covered by its region's vector entry or
continues it (counter at most the entry + 1). A VERSION_VECTOR names its
regions in full (it has no dots to share a table with).
"""

from __future__ import annotations

import struct
from typing import Any

from crdtstore.crdt.causal import CausalContext, Dot, VersionVector
from crdtstore.crdt.codec.base import (
    U64,
    CodecError,
    Irregular,
    Layout,
    Tag,
    array,
    new_dot,
    positive,
    strictly_increasing,
    string,
)
from crdtstore.crdt.codec.regions import (
    FastTable,
    Reader,
    Refs,
    bases_struct,
    lower_bases,
    table_and_body,
    table_and_body_writer,
)

# -- VERSION_VECTOR ---------------------------------------------------------------------


def write_version_vector(obj: VersionVector) -> list[Any]:
    return [[r, c] for r, c in sorted(obj.items())]


def read_version_vector(body: Any) -> VersionVector:
    names: list[str] = []
    counters: dict[str, int] = {}
    for pair in array(body, "version vector"):
        region, counter = array(pair, "version vector entry", 2)
        names.append(string(region, "region name"))
        counters[region] = positive(counter, "version vector counter")
    strictly_increasing(names, "version vector")
    return VersionVector(counters)


# -- ctx ----------------------------------------------------------------------------------


def lower_context_bases(ctx: CausalContext, base: dict[str, int]) -> None:
    lower_bases(ctx.vv.items(), base)
    if ctx.cloud:
        lower_bases(ctx.cloud, base)


def write_context(ctx: CausalContext, refs: Refs) -> list[Any]:
    vector: list[Any] = []
    for region, counter in sorted(ctx.vv.items()):
        i, base = refs[region]
        vector.append([i, counter - base])
    cloud: list[Any] = []
    for region, counter in sorted(ctx.cloud):
        i, base = refs[region]
        cloud.append([i, counter - base])
    return [vector, cloud]


def read_context(body: Any, rd: Reader) -> CausalContext:
    vector_raw, cloud_raw = array(body, "causal context", 2)
    vector: dict[str, int] = {}
    order: list[int] = []
    for pair in array(vector_raw, "version vector"):
        ri, counter = array(pair, "version vector entry", 2)
        dot = rd.dot(ri, counter)
        order.append(ri)
        vector[dot.region] = dot.counter
    strictly_increasing(order, "version vector")
    vv = VersionVector(vector)
    cloud: list[Dot] = []
    keys: list[tuple[int, int]] = []
    for pair in array(cloud_raw, "dot cloud"):
        ri, counter = array(pair, "cloud dot", 2)
        dot = rd.dot(ri, counter)
        keys.append((ri, dot.counter))
        if dot.counter <= vv.get(dot.region) + 1:
            raise CodecError(f"dot cloud is not compact: {dot} continues or is covered by the vector")
        cloud.append(dot)
    strictly_increasing(keys, "dot cloud")
    ctx = CausalContext(vv, cloud)
    if len(ctx.cloud) != len(cloud):
        raise CodecError("dot cloud is not compact")
    return ctx


def read_context_fast(body: Any, t: FastTable) -> CausalContext:
    if type(body) is not list or len(body) != 2:
        raise Irregular
    vector_raw, cloud_raw = body
    if type(vector_raw) is not list or type(cloud_raw) is not list:
        raise Irregular
    regions, bases, at_base, _ = t
    n = len(regions)
    vector: dict[str, int] = {}
    last = -1
    for pair in vector_raw:
        if type(pair) is not list or len(pair) != 2:
            raise Irregular
        ri, offset = pair
        # read_dot_fast, inlined, with "sorted by region, each once" folded in.
        if type(ri) is not int or type(offset) is not int or not last < ri < n or offset < 0:
            raise Irregular
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        if counter >= U64:
            raise Irregular
        vector[regions[ri]] = counter
        last = ri
    cloud: list[Dot] = []
    last, last_offset = 0, -1
    for pair in cloud_raw:
        if type(pair) is not list or len(pair) != 2:
            raise Irregular
        ri, offset = pair
        # read_dot_fast, inlined, with "sorted by (region, counter), each once" folded in.
        if type(ri) is not int or type(offset) is not int or not last <= ri < n or offset < 0:
            raise Irregular
        if ri == last and offset <= last_offset:
            raise Irregular
        if not offset:
            at_base.add(ri)
        counter = bases[ri] + offset
        region = regions[ri]
        if counter >= U64 or counter <= vector.get(region, 0) + 1:  # compact
            raise Irregular
        cloud.append(new_dot((region, counter)))
        last, last_offset = ri, offset
    # Compact as read: every cloud dot is beyond the vector and does not continue it.
    return CausalContext._trusted(VersionVector._trusted(vector), frozenset(cloud))


# -- CAUSAL_CONTEXT -----------------------------------------------------------------------


def write_causal_context(obj: CausalContext) -> list[Any]:
    if not obj.cloud:
        # The usual context, a vector alone: each counter is its region's
        # base, so every offset is zero.
        vector = sorted(obj.vv.items())
        names = [r for r, _ in vector]
        try:
            bases = bases_struct(len(names)).pack(*[c for _, c in vector])
        except struct.error:
            pass  # the general path below says what is wrong
        else:
            return [[names, bases], [[[i, 0] for i in range(len(names))], []]]
    return _write_causal_context_general(obj)


_write_causal_context_general = table_and_body_writer(lower_context_bases, write_context)

LAYOUTS = [
    Layout(Tag.VERSION_VECTOR, VersionVector, write_version_vector, read_version_vector, None),
    table_and_body(Tag.CAUSAL_CONTEXT, CausalContext, write_causal_context, read_context, read_context_fast),
]

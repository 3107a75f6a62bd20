"""The deterministic, versioned encoding of every core type (msgpack).

FORMAT
======

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

Layouts (version 1), each written and read in the module named on the right::

    VERSION_VECTOR  [[region, counter], ...]                  context
    CAUSAL_CONTEXT  [regions, ctx]                            context
    TIMESTAMP       [wall_ms, logical]                        timestamp
    REGISTER        [regions, register]                       slots
    COUNTER         [regions, counter]                        slots
    SET             [regions, set]                            slots
    KEY_STATE       [regions, key_state]                      keyed
    STORE_MAP       [regions, ctx, [[key, key_state], ...]]   keyed
    CAUSAL          [regions, slot_tag, store, ctx]           slots  (one type with its context)

    regions    [[name, ...], bases]                                          regions
    ctx        [[ri, counter], ...] vector, [[ri, counter], ...] cloud        context
    register   [[ri, counter, wall_ms, logical, value_bytes], ...]           dotfun
    counter    [[ri, counter, positive, negative], ...]                      dotfun
    set        [[member, [ri, counter, ri, counter, ...]], ...]              awset
    key_state  [[slot_tag, register | counter | set], ...]                   keyed

The region table lists the regions of a value sorted, each with its *base*,
the smallest counter of that region in the value, as a fixed eight-byte
big-endian integer; a dot's counter is written as its offset from its
region's base (the ``counter`` of the layouts above), so some dot of each
region is at offset zero, and a value with one dot per region has the same
size whether the region has made ten events or ten billion. The slot tag of a
type is its ``ValueType`` (register 1, counter 2, set 3).

Counter totals of 2**64 and above are written as msgpack extension type 1
holding the big-endian magnitude, so no amount is ever truncated.

THE PACKAGE
===========

One module per family of layouts; in each, a layout's writer, its careful
reader and its fast reader stand together under the layout's description:

    base       the error, the tags, the shape of a layout, the careful readers' checks, big integers
    regions    the region table and the dots that refer to it; the value [regions, body]
    context    VERSION_VECTOR, CAUSAL_CONTEXT and ctx
    timestamp  TIMESTAMP
    dotfun     register and counter entries (the types that map dots to values)
    awset      set entries
    slots      the three types as slots; REGISTER, COUNTER, SET and CAUSAL
    keyed      key_state, KEY_STATE and STORE_MAP
    envelope   [tag, version, body]; encode, decode and decode_as

Two readers. The careful readers check one rule at a time and name the first
one a value breaks. Decoding is most of the work of applying a remote delta,
so ``decode`` first tries the fast readers, which check the same rules folded
together, build the values without re-validating them (a compact context,
Dot and Version tuples made directly) and raise ``Irregular`` at the first
thing they do not accept. Then the careful readers run on the same input and
decide: they raise the ``CodecError`` that names the problem (or, should the
fast path ever be stricter than they are, return the value). So what decodes,
and every error message, is exactly what the careful readers say;
tests/test_codec.py holds the fast readers to giving the same values.
"""

from __future__ import annotations

from crdtstore.crdt.codec import envelope, keyed
from crdtstore.crdt.codec.base import FORMAT_VERSION as FORMAT_VERSION
from crdtstore.crdt.codec.base import CodecError, Irregular, Tag
from crdtstore.crdt.codec.envelope import Encodable as Encodable
from crdtstore.crdt.codec.envelope import RegisterWrite as RegisterWrite
from crdtstore.crdt.codec.envelope import decode, decode_as, encode, encode_register_write, encode_register_writes

__all__ = [
    "CodecError",
    "RegisterWrite",
    "Tag",
    "decode",
    "decode_as",
    "encode",
    "encode_register_write",
    "encode_register_writes",
]

# The private names of the single-module codec that tests/test_codec.py
# imports, kept importable from here.
_FAST_DECODERS = envelope.FAST_DECODERS
_decode_fast = envelope.decode_fast
_decode_careful = envelope.decode_careful
_key_state_body = keyed.write_key_state_value
_key_state_body_general = keyed.write_key_state_value_general
_Irregular = Irregular

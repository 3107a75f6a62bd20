"""The codec: round trips, one encoding per content, and hostile bytes."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import (
    AWSet,
    Causal,
    CausalContext,
    CodecError,
    Counter,
    Dot,
    KeyState,
    Register,
    StoreMap,
    Timestamp,
    ValueType,
    VersionVector,
    decode,
    decode_as,
    encode,
)
from crdtstore.crdt.codec import (
    _FAST_DECODERS,
    Tag,
    _decode_careful,
    _decode_fast,
    _Irregular,
    _key_state_body,
    _key_state_body_general,
)
from crdtstore.crdt.counter import Share
from crdtstore.crdt.register import Version
from crdtstore.testing.strategies import TYPES, map_executions, type_executions


@st.composite
def encodables(draw: st.DrawFn) -> Any:
    """Any value the codec writes, taken from reachable states and deltas."""
    which = draw(st.sampled_from(["map", "map-delta", "key", "type", "type-delta", "store", "ctx", "vv", "ts"]))
    if which in ("map", "map-delta", "key", "ctx", "vv"):
        ex = draw(map_executions())
        if which == "map-delta" and ex.deltas:
            return draw(st.sampled_from(ex.deltas))
        state: StoreMap = draw(st.sampled_from(ex.snapshots))
        if which == "key" and state.entries:
            return draw(st.sampled_from(list(state.entries.values())))
        if which == "ctx":
            return state.context
        if which == "vv":
            return state.context.vv
        return state
    if which == "ts":
        return Timestamp(draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1)))
    kind = TYPES[draw(st.sampled_from(sorted(TYPES)))]
    tex = draw(type_executions(kind))
    if which == "type-delta" and tex.deltas:
        return draw(st.sampled_from(tex.deltas))
    snap = draw(st.sampled_from(tex.snapshots))
    if which == "store" and not snap.store.is_bottom():
        return snap.store
    return snap


@given(encodables())
def test_round_trip(value: Any) -> None:
    assert decode(encode(value)) == value


@given(encodables())
def test_decode_then_encode_gives_back_the_same_bytes(value: Any) -> None:
    data = encode(value)
    assert encode(decode(data)) == data  # type: ignore[arg-type]


@given(st.data())
def test_same_content_gives_the_same_bytes_whatever_the_history(data: st.DataObject) -> None:
    """Two replicas that reached the same state by different routes encode alike."""
    ex = data.draw(map_executions())
    everything = StoreMap()
    for snap in ex.snapshots:
        everything = everything.join(snap)
    other_route = StoreMap()
    for delta in data.draw(st.permutations(ex.deltas)):
        other_route = other_route.join_delta(delta)
    assert encode(other_route) == encode(everything)


def _assert_canonical_value(value: Any) -> None:
    """What a successful decode of any bytes must give: a valid value whose encoding is its only one."""
    canonical = encode(value)
    assert decode(canonical) == value
    assert encode(decode(canonical)) == canonical  # type: ignore[arg-type]
    _assert_causally_valid(value)


def _assert_causally_valid(value: Any) -> None:
    """The invariants joins rely on, checked independently of the codec's own checks."""
    if isinstance(value, StoreMap):
        stores: list[Any] = [slot for ks in value.entries.values() for slot in ks.slots.values()]
        context: CausalContext | None = value.context
    elif isinstance(value, Causal):
        stores, context = [value.store], value.context
    elif isinstance(value, KeyState):
        stores, context = list(value.slots.values()), None
    elif isinstance(value, Register | Counter | AWSet):
        stores, context = [value], None
    else:
        return
    all_dots: list[Dot] = []
    for store in stores:
        groups = list(store.entries.values()) if isinstance(store, AWSet) else [list(store.dots())]
        for group in groups:
            all_dots.extend(group)
    assert len(all_dots) == len(set(all_dots)), "each dot once"
    if context is not None:
        assert all(context.contains(d) for d in all_dots), "every dot is in the context"


def test_a_store_whose_dots_are_not_in_its_context_is_refused() -> None:
    """Regression (review): such a state joined to different values depending on order."""
    bogus = StoreMap({"k": KeyState({ValueType.REGISTER: Register({Dot("a", 1): _v(b"bogus")})})}, CausalContext())
    raw = msgpack.packb(
        [int(Tag.STORE_MAP), 1, [[["a"], (1).to_bytes(8, "big")], [[], []], [["k", [[1, [[0, 0, 5, 0, b"bogus"]]]]]]]],
        use_bin_type=True,
    )
    with pytest.raises(CodecError, match="not in its causal context"):
        decode(raw)
    with pytest.raises(CodecError, match="not in its causal context"):
        decode(encode(bogus))


def test_a_dot_used_twice_is_refused() -> None:
    twice = AWSet({"x": frozenset({Dot("a", 1)}), "y": frozenset({Dot("a", 1)})})
    with pytest.raises(CodecError, match="appears twice"):
        decode(encode(twice))
    in_two_slots = KeyState(
        {
            ValueType.REGISTER: Register({Dot("a", 1): _v(b"x")}),
            ValueType.COUNTER: Counter({Dot("a", 1): Share(1, 0)}),
        }
    )
    with pytest.raises(CodecError, match="appears twice"):
        decode(encode(in_two_slots))


def _gap_joined(kind: str) -> Causal[Any]:
    """A state a join of deltas really produces, with two dots of region ``ap`` in one register, counter or member.

    ``ap`` acts; ``eu`` overwrites or removes that; ``ap``, having seen it,
    acts again, and its delta does not name its first dot (gone there). A
    replica that joins ``ap``'s two deltas without ``eu``'s holds both. The
    protocol never delivers that way (``eu``'s delta is in the causal past of
    ``ap``'s second), but the types' joins allow it, and so must the decoder.
    """
    ap: Causal[Any]
    eu: Causal[Any]
    first: Causal[Any]
    second: Causal[Any]
    if kind == "register":
        ap = Causal(Register(), CausalContext())
        first = ap.store.write(b"1", Timestamp(1, 0), ap.next_dot("ap"))
        ap = ap.join_delta(first)
        eu = Causal(Register(), CausalContext()).join_delta(first)
        second = eu.store.write(b"2", Timestamp(2, 0), eu.next_dot("eu"))
        ap = ap.join_delta(second)
        third = ap.store.write(b"3", Timestamp(3, 0), ap.next_dot("ap"))
    elif kind == "counter":
        ap = Causal(Counter(), CausalContext())
        first = ap.store.increment(5, ap.next_dot("ap"))
        ap = ap.join_delta(first)
        # eu removes ap's share the only way a bare counter can: a state whose context saw it, holding nothing.
        second = Causal(Counter(), CausalContext.from_dots([Dot("eu", 1), *first.context.dots()]))
        ap = ap.join_delta(second)
        third = ap.store.increment(2, ap.next_dot("ap"))
    else:
        ap = Causal(AWSet(), CausalContext())
        first = ap.store.add("x", ap.next_dot("ap"))
        ap = ap.join_delta(first)
        eu = Causal(AWSet(), CausalContext()).join_delta(first)
        second = eu.store.remove("x", eu.next_dot("eu"))
        ap = ap.join_delta(second)
        third = ap.store.add("x", ap.next_dot("ap"))
    replica = Causal(type(first.store)(), CausalContext()).join_delta(first).join_delta(third)
    assert {d for d in replica.store.dots() if d.region == "ap"} == {Dot("ap", 1), Dot("ap", 2)}
    return replica


@pytest.mark.parametrize("kind", ["register", "counter", "set"])
def test_several_dots_of_one_region_that_a_join_produces_decode_and_re_encode_alike(kind: str) -> None:
    """The decoder takes every state a join can reach: refusing one would make its key unreadable."""
    state = _gap_joined(kind)
    for value in (state, state.store):
        data = encode(value)
        assert decode(data) == value
        assert encode(decode(data)) == data  # type: ignore[arg-type]
        tree = msgpack.unpackb(data, raw=False)
        assert repr(_decode_fast(tree)) == repr(_decode_careful(tree)), "both readers take it"


def test_regression_a_counter_with_two_shares_of_one_region_decodes() -> None:
    """Found by a fresh run of test_decode_then_encode_gives_back_the_same_bytes (issue 14).

    ``@reproduce_failure('6.170.27', b'AXicc2R2ZGB0ZHJkAFEMMAYjCsUAgUh8Jtx8ZgZHLgCfVgmN')``: the
    counter state below (reachable: replicas joined ap:1's and ap:3's deltas
    without ap:2's) encoded, but decoding refused it ("a counter holds two
    dots of one region where one replaces the other"). On a node, a key
    holding it would be DATA_LOSS for every later read, write and delta;
    ``tests/test_causal_delivery.py`` checks such a key stays readable and
    writable in a store.
    """
    state = Causal(
        Counter({Dot("ap", 1): Share(0, 0), Dot("eu", 1): Share(0, 0), Dot("ap", 3): Share(0, 0)}),
        CausalContext(VersionVector({"ap": 3, "eu": 1})),
    )
    data = encode(state)
    assert decode(data) == state
    assert encode(decode(data)) == data  # type: ignore[arg-type]
    tree = msgpack.unpackb(data, raw=False)
    assert repr(_decode_fast(tree)) == repr(_decode_careful(tree))


@given(st.binary(max_size=256))
def test_hostile_bytes_raise_only_codec_error(data: bytes) -> None:
    try:
        value = decode(data)
    except CodecError:
        return
    _assert_canonical_value(value)


def test_longer_msgpack_forms_decode_to_the_same_value_and_re_encode_canonically() -> None:
    """Regression (found by test_corrupted_encodings): 0xcc 0x00 is a valid, longer msgpack zero."""
    longer = b"\x93\x03\x01\x92\xcc\x80\xcc\x00"  # TIMESTAMP [128, 0] with uint8 forms
    assert decode(longer) == Timestamp(128, 0)
    assert encode(Timestamp(128, 0)) == b"\x93\x03\x01\x92\xcc\x80\x00"


@st.composite
def corrupted_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes overwritten, and perhaps cut short and followed by garbage."""
    raw = bytearray(encode(draw(encodables())))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + bytearray(draw(st.binary(max_size=8)))
    return bytes(raw)


@given(corrupted_encodings())
def test_corrupted_encodings_raise_codec_error_or_decode_canonically(raw: bytes) -> None:
    try:
        decoded = decode(raw)
    except CodecError:
        return
    _assert_canonical_value(decoded)


@st.composite
def msgpack_trees(draw: st.DrawFn) -> Any:
    """Well-formed msgpack of roughly the right shape: reaches the validators."""
    leaves = st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.text(max_size=3),
        st.binary(max_size=9),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=False),
    )
    tree = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=20)
    return [draw(st.sampled_from([t.value for t in Tag] + [0, 99])), draw(st.sampled_from([1, 1, 1, 2])), draw(tree)]


@given(msgpack_trees())
def test_well_formed_but_wrong_msgpack_raises_only_codec_error(tree: Any) -> None:
    data = msgpack.packb(tree, use_bin_type=True)
    try:
        value = decode(data)
    except CodecError:
        return
    _assert_canonical_value(value)


def test_unknown_tag_and_version_are_refused_with_a_clear_message() -> None:
    with pytest.raises(CodecError, match="unknown type tag 200"):
        decode(msgpack.packb([200, 1, []]))
    with pytest.raises(CodecError, match="unknown version 2 of TIMESTAMP"):
        decode(msgpack.packb([int(Tag.TIMESTAMP), 2, [1, 2]]))
    with pytest.raises(CodecError):
        decode(b"")
    with pytest.raises(CodecError):
        decode(b"\x91" * 100_000)  # deep nesting
    with pytest.raises(CodecError):
        decode("text")  # type: ignore[arg-type]


def test_decode_as_checks_the_type() -> None:
    data = encode(Timestamp(1, 2))
    assert decode_as(data, Timestamp) == Timestamp(1, 2)
    with pytest.raises(CodecError, match="expected an encoded StoreMap"):
        decode_as(data, StoreMap)


def test_non_canonical_encodings_are_refused() -> None:
    # A set whose members are not sorted.
    ok = encode(AWSet({"a": frozenset({Dot("eu", 1)}), "b": frozenset({Dot("eu", 2)})}))
    tag, version, (header, body) = msgpack.unpackb(ok)
    swapped = msgpack.packb([tag, version, [header, list(reversed(body))]], use_bin_type=True)
    with pytest.raises(CodecError, match="not sorted"):
        decode(swapped)
    # A base counter that is not the smallest counter of its region.
    names, bases = header
    shifted = (int.from_bytes(bases, "big") - 1).to_bytes(8, "big")
    with pytest.raises(CodecError, match="base counter"):
        decode(msgpack.packb([tag, version, [[names, shifted], body]], use_bin_type=True))
    # A context that is not compact.
    with pytest.raises(CodecError, match="compact"):
        decode(msgpack.packb([int(Tag.CAUSAL_CONTEXT), 1, [[["eu"], (1).to_bytes(8, "big")], [[[0, 0]], [[0, 1]]]]]))


def test_counter_totals_beyond_64_bits_are_exact() -> None:
    big = Counter({Dot("eu", 3): Share(2**64 + 5, 2**70), Dot("us", 1): Share(2**64 - 1, 0)})
    assert decode(encode(big)) == big
    assert big.value() == 2**64 + 5 - 2**70 + 2**64 - 1
    # A big integer written in a longer form than it needs is refused.
    padded = msgpack.ExtType(1, b"\x00" + (2**64).to_bytes(9, "big"))
    small = msgpack.ExtType(1, (5).to_bytes(1, "big"))
    for bad in (padded, small):
        raw = msgpack.packb([int(Tag.COUNTER), 1, [[["eu"], (1).to_bytes(8, "big")], [[0, 0, bad, 0]]]])
        with pytest.raises(CodecError, match="big integer"):
            decode(raw)


@pytest.mark.parametrize("n", [10, 1_000, 100_000])
def test_one_add_delta_has_the_same_size_for_any_set_size(n: int) -> None:
    # Build a set of n members held by one region, as if n adds had happened.
    aw = AWSet({f"m{i:06d}": frozenset({Dot("eu", i + 1)}) for i in range(n)})
    state = Causal(aw, CausalContext(VersionVector({"eu": n})))
    delta = aw.add("new-member", state.next_dot("eu"))
    assert len(encode(delta)) == len(encode(AWSet().add("new-member", Dot("eu", 1))))
    store_delta = StoreMap({"s": KeyState({})}, state.context).add_members("s", ["new-member"], "eu")
    assert len(encode(store_delta)) == len(encode(StoreMap().add_members("s", ["new-member"], "eu")))


def test_metadata_per_set_element_is_at_most_16_bytes() -> None:
    n = 100_000
    members = [f"m{i:06d}" for i in range(n)]
    # Adds from three regions, interleaved, with large counters.
    aw = AWSet({m: frozenset({Dot(("eu", "us", "ap")[i % 3], 10**9 + i)}) for i, m in enumerate(members)})
    total = len(encode(aw))
    payload = sum(len(msgpack.packb(m)) for m in members)
    assert (total - payload) / n <= 16


def test_registers_with_equal_content_encode_alike() -> None:
    a = Register({Dot("eu", 1): _v(b"x"), Dot("us", 4): _v(b"y")})
    b = Register({Dot("us", 4): _v(b"y"), Dot("eu", 1): _v(b"x")})
    assert encode(a) == encode(b)


def _v(value: bytes) -> Any:
    from crdtstore.crdt import Version

    return Version(Timestamp(5, 0), value)


# -- the fast path -------------------------------------------------------------------
#
# ``decode`` tries a fast reader first and lets the careful readers decide whenever
# it gives up. These hold the fast reader to the careful ones: it reads every valid
# encoding itself, to the same value (same named-tuple types, same order), and it
# never accepts what the careful readers refuse.


@st.composite
def edited_trees(draw: st.DrawFn) -> Any:
    """A valid encoding, unpacked and then edited: entries swapped, repeated or dropped, leaves replaced."""
    tree = msgpack.unpackb(encode(draw(encodables())), raw=False)
    odd_leaves = st.one_of(st.integers(-2, 2**64 + 2), st.sampled_from([0, 1, 2, 3, -1, True, None, "", "a", b"", 1.0]))

    def edit(x: Any) -> Any:
        if isinstance(x, list):
            x = [edit(y) for y in x]
            how = draw(st.integers(0, 12))
            if how == 1 and len(x) >= 2:
                i, j = draw(st.integers(0, len(x) - 1)), draw(st.integers(0, len(x) - 1))
                x[i], x[j] = x[j], x[i]
            elif how == 2 and x:
                x.append(x[draw(st.integers(0, len(x) - 1))])
            elif how == 3 and x:
                del x[draw(st.integers(0, len(x) - 1))]
            return x
        if draw(st.integers(0, 8)) == 0:
            return draw(odd_leaves)
        if type(x) is int and draw(st.integers(0, 5)) == 0:
            return x + draw(st.integers(-2, 2))
        return x

    return edit(tree)


def _assert_fast_agrees_with_careful(tree: Any) -> None:
    try:
        fast = _decode_fast(tree)
    except Exception:
        return  # gave up: the careful readers decide alone
    assert repr(_decode_careful(tree)) == repr(fast)


@given(encodables())
def test_the_fast_path_reads_every_valid_encoding_as_the_careful_readers_do(value: Any) -> None:
    """Fast decode == careful decode == the value, for every encodable value (the same named-tuple types too)."""
    tree = msgpack.unpackb(encode(value), raw=False)
    careful = _decode_careful(tree)
    assert careful == value
    if tree[0] in _FAST_DECODERS:
        fast = _decode_fast(tree)
        assert fast == value
        assert repr(fast) == repr(careful)
    else:  # a type with no fast reader (a version vector, a timestamp): the fast path gives way at once
        with pytest.raises(_Irregular):
            _decode_fast(tree)


def test_every_tag_but_the_version_vector_and_the_timestamp_has_a_fast_reader() -> None:
    assert set(_FAST_DECODERS) == {int(tag) for tag in Tag} - {Tag.VERSION_VECTOR, Tag.TIMESTAMP}


@given(edited_trees())
def test_the_fast_path_accepts_no_edited_encoding_the_careful_readers_refuse(tree: Any) -> None:
    _assert_fast_agrees_with_careful(tree)


@given(msgpack_trees())
def test_the_fast_path_accepts_no_wrong_msgpack_the_careful_readers_refuse(tree: Any) -> None:
    _assert_fast_agrees_with_careful(msgpack.unpackb(msgpack.packb(tree, use_bin_type=True), raw=False))


@given(corrupted_encodings())
def test_the_fast_path_accepts_no_corrupted_bytes_the_careful_readers_refuse(raw: bytes) -> None:
    try:
        tree = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except Exception:
        return  # not msgpack: neither reader sees it
    _assert_fast_agrees_with_careful(tree)


@st.composite
def register_writes(draw: st.DrawFn) -> KeyState:
    """A key state that is one register write, at any counter and timestamp the codec takes."""
    dot = Dot(draw(st.sampled_from(["a", "b", "region-é"])), draw(st.integers(1, 2**64 - 1)))
    stamp = Timestamp(draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1)))
    return KeyState({ValueType.REGISTER: Register({dot: Version(stamp, draw(st.binary(max_size=40)))})})


@given(st.one_of(register_writes(), encodables().filter(lambda value: isinstance(value, KeyState))))
def test_the_one_register_write_fast_path_writes_what_the_general_path_writes(state: KeyState) -> None:
    assert _key_state_body(state) == _key_state_body_general(state)
    assert decode(encode(state)) == state


# -- the bytes themselves --------------------------------------------------------------
#
# The encoding is a persisted format (LMDB, the replication stream, digests):
# these are the bytes the codec wrote for each layout when the golden values
# were recorded, and it must write them still. A change of layout is a new
# FORMAT_VERSION, never a change to these.


def _golden_values() -> dict[str, Any]:
    def version(value: bytes, wall: int = 5, logical: int = 0) -> Version:
        return Version(Timestamp(wall, logical), value)

    register = Register({Dot("eu", 1): version(b"x"), Dot("us", 4): version(b"yy", 7, 1)})
    counter = Counter(
        {Dot("eu", 3): Share(2**64 + 5, 2**70), Dot("us", 1): Share(2**64 - 1, 0), Dot("eu", 5): Share(7, 2)}
    )
    aw = AWSet(
        {
            "apple": frozenset({Dot("eu", 1)}),
            "pear": frozenset({Dot("us", 4), Dot("eu", 2), Dot("eu", 5)}),
            "gone": frozenset(),
        }
    )
    cloudy = CausalContext(VersionVector({"eu": 2, "us": 4}), [Dot("eu", 5), Dot("us", 9)])
    return {
        "version vector": VersionVector({"eu": 3, "us": 1}),
        "context, vector alone": CausalContext(VersionVector({"eu": 3, "us": 2**63})),
        "context with a cloud": cloudy,
        "timestamp": Timestamp(1_760_000_000_000, 3),
        "register": register,
        "counter, totals beyond 64 bits": counter,
        "set, a member with no dots": aw,
        "key state, one register write": KeyState(
            {ValueType.REGISTER: Register({Dot("eu", 10**12): version(b"value", 1_760_000_000_000, 2)})}
        ),
        "key state, three slots": KeyState(
            {
                ValueType.REGISTER: Register({Dot("ap", 2): version(b"r")}),
                ValueType.COUNTER: Counter({Dot("ap", 3): Share(1, 0)}),
                ValueType.SET: AWSet({"m": frozenset({Dot("eu", 7)})}),
            }
        ),
        "store map": StoreMap(
            {
                "a": KeyState({ValueType.REGISTER: register}),
                "b": KeyState({ValueType.SET: AWSet({"apple": frozenset({Dot("us", 9)})})}),
            },
            cloudy,
        ),
        "empty store map": StoreMap(),
        "causal register": Causal(register, CausalContext(VersionVector({"eu": 1, "us": 4}))),
        "causal counter": Causal(counter, CausalContext(VersionVector({"eu": 5, "us": 1}))),
        "causal set": Causal(aw, CausalContext(VersionVector({"eu": 5, "us": 4}))),
    }


GOLDEN = [
    ("version vector", "9301019292a265750392a2757301"),
    ("context, vector alone", "930201929292a26575a27573c41000000000000000038000000000000000929292000092010090"),
    (
        "context with a cloud",
        "930201929292a26575a27573c41000000000000000020000000000000004929292000092010092920003920105",
    ),
    ("timestamp", "93030192cf00000199c82cc00003"),
    ("register", "930401929292a26575a27573c41000000000000000010000000000000004929500000500c401789501000701c4027979"),
    (
        "counter, totals beyond 64 bits",
        "930501929292a26575a27573c4100000000000000003000000000000000193940000c70901010000000000000005c7090140000000"
        "00000000009400020702940100cfffffffffffffffff00",
    ),
    (
        "set, a member with no dots",
        "930601929292a26575a27573c410000000000000000100000000000000049392a56170706c6592000092a4676f6e659092a4706561"
        "7296000100040100",
    ),
    (
        "key state, one register write",
        "930701929291a26575c408000000e8d4a5100091920191950000cf00000199c82cc00002c40576616c7565",
    ),
    (
        "key state, three slots",
        "930701929292a26170a26575c41000000000000000020000000000000007939201919500000500c40172920291940001010092039192"
        "a16d920100",
    ),
    (
        "store map",
        "930801939292a26575a27573c410000000000000000100000000000000049292920001920100929200049201059292a16191920192"
        "9500000500c401789501000701c402797992a1629192039192a56170706c65920105",
    ),
    ("empty store map", "930801939290c40092909090"),
    (
        "causal register",
        "930901949292a26575a27573c4100000000000000001000000000000000401929500000500c401789501000701c402797992929200"
        "0092010090",
    ),
    (
        "causal counter",
        "930901949292a26575a27573c410000000000000000300000000000000010293940000c70901010000000000000005c70901400000"
        "0000000000009400020702940100cfffffffffffffffff00929292000292010090",
    ),
    (
        "causal set",
        "930901949292a26575a27573c41000000000000000010000000000000004039392a56170706c6592000092a4676f6e659092a47065"
        "617296000100040100929292000492010090",
    ),
]


@pytest.mark.parametrize(("name", "hex_bytes"), GOLDEN, ids=[name for name, _ in GOLDEN])
def test_golden_bytes(name: str, hex_bytes: str) -> None:
    value = _golden_values()[name]
    data = bytes.fromhex(hex_bytes)
    assert encode(value) == data
    assert decode(data) == value
    tree = msgpack.unpackb(data, raw=False)
    if tree[0] in _FAST_DECODERS:
        assert repr(_decode_fast(tree)) == repr(_decode_careful(tree))


def test_the_golden_values_cover_every_tag() -> None:
    assert {bytes.fromhex(hex_bytes)[1] for _, hex_bytes in GOLDEN} == {int(tag) for tag in Tag}

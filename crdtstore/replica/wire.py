"""Every message between regions: what it says, how it is encoded, and how many bytes it takes.

``proto/crdtstore/v1/replication.proto`` is the contract; this module is the
only translation between it and the messages the replication driver
(``crdtstore.replica.driver``) and its core exchange. Version vectors, deltas,
key states and causal contexts travel as opaque bytes in crdtstore's own
deterministic encoding (``crdtstore.crdt.codec``). A message that breaks the
protocol raises ``ProtocolError``, and its connection is closed.

The messages:

* ``Hello``: the first message each way on a connection (region, vector,
  origin, and what is on its way to the sender).
* ``Entries``: log entries, in per-origin order.
* ``Ack``: what the sender has applied durably, and what is on its way to it.
* ``Offer``, ``Want``, ``Page``: the state transfer that repairs a peer which
  lacks entries the sender has trimmed from its log. The sender offers a
  digest of each of ``DIGEST_BUCKETS`` key buckets, the peer answers which
  buckets differ, and the keys of those buckets follow in pages, the last
  with the causal context they were read at.

``size_of`` is what every byte figure counts (the simulator's and the
synchronisation-cost benchmark's): the encoded size of the protobuf, without
the clock fields the node adds as a message leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from crdtstore.crdt import CausalContext, VersionVector, decode_as, encode
from crdtstore.crdt.origin import region_of
from crdtstore.v1 import replication_pb2 as rpb

__all__ = [
    "DIGEST_BUCKETS",
    "PROTOCOL_VERSION",
    "SYNC_METHOD",
    "Ack",
    "Entries",
    "Hello",
    "Message",
    "Offer",
    "Page",
    "ProtocolError",
    "RawLogEntry",
    "TransferItem",
    "Want",
    "entry_size",
    "from_pb",
    "parse",
    "size_of",
    "to_pb",
]

# 2: a large set travels in parts (SnapshotKey.part). Nodes of different versions refuse each other's streams.
PROTOCOL_VERSION = 2
SYNC_METHOD = "/crdtstore.v1.Replication/Sync"
# Keys fall into this many repair buckets (a stable hash of the key, the same in every region).
DIGEST_BUCKETS = 1024


class ProtocolError(Exception):
    """A peer sent something the protocol does not allow; the connection is closed."""


class RawLogEntry(NamedTuple):
    """A log entry as it travels: the dots ``origin:first..last`` and their delta, still encoded."""

    origin: str
    first: int
    last: int
    delta: bytes


@dataclass(frozen=True)
class Hello:
    region: str
    vector: VersionVector
    # As Ack.incoming: what the sender is applying from other peers as it connects.
    incoming: VersionVector = field(default_factory=VersionVector)
    # The origin the sender mints its own events under; "" for its region name.
    origin: str = ""


@dataclass(frozen=True)
class Entries:
    """Log entries, in per-origin order; ``vector``: how far they reach per origin."""

    entries: tuple[RawLogEntry, ...]
    vector: VersionVector = field(default_factory=VersionVector)

    @classmethod
    def of(cls, entries: tuple[RawLogEntry, ...]) -> Entries:
        top: dict[str, int] = {}
        for e in entries:
            top[e.origin] = max(top.get(e.origin, 0), e.last)
        return cls(entries, VersionVector(top))


@dataclass(frozen=True)
class Ack:
    vector: VersionVector
    # Entries the sender has received from other peers and is applying, beyond ``vector``: a hint,
    # since they may yet fail to apply. Every ack carries the whole current hint (often empty).
    incoming: VersionVector = field(default_factory=VersionVector)


@dataclass(frozen=True)
class Offer:
    """A state transfer begins: the sender's digest of each key bucket, from one consistent read."""

    digests: tuple[int, ...]


@dataclass(frozen=True)
class Want:
    """The answer to an ``Offer``: the buckets whose digests differ here."""

    buckets: frozenset[int]


# A key of a state transfer: (key, encoded state, part). Part 0 is the key's whole state; a key whose set
# is large travels in parts 1, 2, ..., each with the key's other slots and the next run of its members in
# member record order (see crdtstore/storage/transfer.py), next to each other in the transfer.
TransferItem = tuple[str, bytes, int]


@dataclass(frozen=True)
class Page:
    """Keys of a state transfer; page 0 starts a transfer, the one marked ``done`` ends it."""

    number: int
    keys: tuple[TransferItem, ...]
    done: bool = False
    # On the last page: the context the keys were read at, and the buckets the transfer covers.
    context: CausalContext | None = None
    buckets: frozenset[int] = frozenset()


Message = Hello | Entries | Ack | Offer | Want | Page


def to_pb(message: Message) -> rpb.SyncMessage:
    out = rpb.SyncMessage()
    if isinstance(message, Hello):
        out.hello.region = message.region
        out.hello.vector = encode(message.vector)
        if message.incoming:
            out.hello.incoming = encode(message.incoming)
        out.hello.protocol = PROTOCOL_VERSION
        out.hello.origin = message.origin
    elif isinstance(message, Ack):
        out.ack.vector = encode(message.vector)
        if message.incoming:
            out.ack.incoming = encode(message.incoming)
    elif isinstance(message, Entries):
        add = out.entries.entries.add
        for e in message.entries:
            add(origin=e.origin, first=e.first, last=e.last, delta=e.delta)
    elif isinstance(message, Offer):
        out.digests.digests = b"".join(d.to_bytes(16, "big") for d in message.digests)
    elif isinstance(message, Want):
        out.want.buckets = _bitmap_of(message.buckets)
    else:
        out.snapshot.page = message.number
        for key, state, part in message.keys:
            out.snapshot.keys.add(key=key, state=state, part=part)
        if message.done:
            out.snapshot.done = True
            out.snapshot.context = encode(message.context or CausalContext())
            out.snapshot.buckets = _bitmap_of(message.buckets)
    return out


def from_pb(message: rpb.SyncMessage, peer: str) -> Message:
    """The message ``peer`` sent; ``ProtocolError`` if it breaks the protocol."""
    body = message.WhichOneof("body")
    try:
        if body == "hello":
            return _hello(message.hello, peer)
        if body == "entries":
            return _entries(message.entries)
        if body == "ack":
            return Ack(decode_as(message.ack.vector, VersionVector), _vector_or_empty(message.ack.incoming))
        if body == "digests":
            raw = message.digests.digests
            if len(raw) != 16 * DIGEST_BUCKETS:
                raise ProtocolError(f"an offer of {len(raw)} bytes of digests, not {16 * DIGEST_BUCKETS}")
            return Offer(tuple(int.from_bytes(raw[16 * i : 16 * (i + 1)], "big") for i in range(DIGEST_BUCKETS)))
        if body == "want":
            return Want(_buckets_of(message.want.buckets))
        if body == "snapshot":
            s = message.snapshot
            keys = tuple((k.key, k.state, k.part) for k in s.keys)
            if not s.done:
                return Page(s.page, keys)
            return Page(s.page, keys, True, decode_as(s.context, CausalContext), _buckets_of(s.buckets))
    except ValueError as exc:  # a vector or context that does not decode (CodecError is a ValueError)
        raise ProtocolError(f"a {body} message that does not decode: {exc}") from None
    raise ProtocolError("a message with no body")


def parse(raw: bytes, peer: str) -> tuple[rpb.SyncMessage, Message]:
    """The protobuf as it arrived (for its clock fields) and the message it carries."""
    try:
        pb = rpb.SyncMessage.FromString(raw)
    except Exception as exc:
        raise ProtocolError(f"a replication message that does not parse: {exc}") from None
    return pb, from_pb(pb, peer)


def size_of(message: Message) -> int:
    """The bytes ``message`` takes on the wire (without the clock fields a node adds as it leaves)."""
    return to_pb(message).ByteSize()


def entry_size(entry: RawLogEntry) -> int:
    """The bytes one log entry adds to an ``Entries`` message."""
    pb = rpb.SyncEntries()
    pb.entries.add(origin=entry.origin, first=entry.first, last=entry.last, delta=entry.delta)
    return pb.ByteSize()


def _hello(hello: rpb.SyncHello, peer: str) -> Hello:
    """The hello of the connection with ``peer``: it must name that region, this protocol and an origin of its own."""
    if hello.region != peer:
        raise ProtocolError(f"peer {peer!r} introduced itself as {hello.region!r}")
    if hello.protocol != PROTOCOL_VERSION:
        raise ProtocolError(f"peer {peer!r} speaks protocol {hello.protocol}, this node {PROTOCOL_VERSION}")
    if hello.origin and region_of(hello.origin) != peer:
        raise ProtocolError(f"peer {peer!r} says it mints under {hello.origin!r}, another region's name")
    return Hello(hello.region, decode_as(hello.vector, VersionVector), _vector_or_empty(hello.incoming), hello.origin)


def _entries(entries: rpb.SyncEntries) -> Entries:
    out: list[RawLogEntry] = []
    for e in entries.entries:
        if not e.origin or e.first < 1 or e.last < e.first:
            raise ProtocolError(f"a log entry {e.origin!r}:{e.first}..{e.last} is malformed")
        out.append(RawLogEntry(e.origin, e.first, e.last, e.delta))
    return Entries.of(tuple(out))


def _bitmap_of(buckets: frozenset[int]) -> bytes:
    """A set of repair buckets as a bitmap: bucket i is bit i % 8 of byte i // 8."""
    out = bytearray(DIGEST_BUCKETS // 8)
    for i in buckets:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _buckets_of(bitmap: bytes) -> frozenset[int]:
    if len(bitmap) != DIGEST_BUCKETS // 8:
        raise ProtocolError(f"a bucket bitmap of {len(bitmap)} bytes; {DIGEST_BUCKETS // 8} were expected")
    return frozenset(i for i in range(DIGEST_BUCKETS) if bitmap[i // 8] >> (i % 8) & 1)


def _vector_or_empty(raw: bytes) -> VersionVector:
    """A hello's or an ack's ``incoming`` (empty when the field is)."""
    return decode_as(raw, VersionVector) if raw else VersionVector()

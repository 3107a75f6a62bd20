"""The replication stream's messages: protobuf <-> the replica core's messages.

``proto/crdtstore/v1/replication.proto`` is the contract; this module is the
node's only translation of it. Version vectors and deltas travel as opaque
bytes in crdtstore's own deterministic encoding (``crdtstore.crdt.codec``).
A message that breaks the protocol raises ``ProtocolError``, and the node
closes the stream that carried it.
"""

from __future__ import annotations

from crdtstore.crdt import VersionVector, decode_as, encode
from crdtstore.crdt.origin import region_of
from crdtstore.replica.core import Ack, Entries, Hello, Message
from crdtstore.storage import DIGEST_BUCKETS, RawLogEntry
from crdtstore.v1 import replication_pb2 as rpb

__all__ = [
    "PROTOCOL_VERSION",
    "SYNC_METHOD",
    "ProtocolError",
    "ack_from_pb",
    "bitmap_of",
    "buckets_of",
    "delta_bytes",
    "entries_from_pb",
    "hello_from_pb",
    "message_pb",
    "parse",
]

PROTOCOL_VERSION = 1
SYNC_METHOD = "/crdtstore.v1.Replication/Sync"


class ProtocolError(Exception):
    """A peer sent something the protocol does not allow; the stream is closed."""


def parse(raw: bytes) -> rpb.SyncMessage:
    try:
        return rpb.SyncMessage.FromString(raw)
    except Exception as exc:
        raise ProtocolError(f"a replication message that does not parse: {exc}") from None


def hello_from_pb(hello: rpb.SyncHello, peer: str) -> Hello:
    """The hello of the stream with ``peer``: it must name that region, this protocol and an origin of its own."""
    if hello.region != peer:
        raise ProtocolError(f"peer {peer!r} introduced itself as {hello.region!r}")
    if hello.protocol != PROTOCOL_VERSION:
        raise ProtocolError(f"peer {peer!r} speaks protocol {hello.protocol}, this node {PROTOCOL_VERSION}")
    if hello.origin and region_of(hello.origin) != peer:
        raise ProtocolError(f"peer {peer!r} says it mints under {hello.origin!r}, another region's name")
    return Hello(hello.region, decode_as(hello.vector, VersionVector), _vector_or_empty(hello.incoming), hello.origin)


def entries_from_pb(entries: rpb.SyncEntries) -> Entries:
    raw_entries: list[RawLogEntry] = []
    top: dict[str, int] = {}
    for e in entries.entries:
        if not e.origin or e.first < 1 or e.last < e.first:
            raise ProtocolError(f"a log entry {e.origin!r}:{e.first}..{e.last} is malformed")
        raw_entries.append(RawLogEntry(e.origin, e.first, e.last, e.delta))
        top[e.origin] = max(top.get(e.origin, 0), e.last)
    return Entries(tuple(raw_entries), VersionVector(top))


def ack_from_pb(ack: rpb.SyncAck) -> Ack:
    return Ack(decode_as(ack.vector, VersionVector), _vector_or_empty(ack.incoming))


def message_pb(message: Message) -> rpb.SyncMessage:
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
    else:
        for e in message.entries:
            assert isinstance(e, RawLogEntry)
            out.entries.entries.add(origin=e.origin, first=e.first, last=e.last, delta=e.delta)
    return out


def delta_bytes(entries: tuple[object, ...]) -> int:
    """The bytes of the deltas among a message's entries."""
    return sum(len(e.delta) for e in entries if isinstance(e, RawLogEntry))


def bitmap_of(buckets: frozenset[int]) -> bytes:
    """A set of repair buckets as the bitmap a Want or Snapshot message carries."""
    out = bytearray(DIGEST_BUCKETS // 8)
    for i in buckets:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def buckets_of(bitmap: bytes) -> frozenset[int]:
    if len(bitmap) != DIGEST_BUCKETS // 8:
        raise ProtocolError(f"a bucket bitmap of {len(bitmap)} bytes; {DIGEST_BUCKETS // 8} were expected")
    return frozenset(i for i in range(DIGEST_BUCKETS) if bitmap[i // 8] >> (i % 8) & 1)


def _vector_or_empty(raw: bytes) -> VersionVector:
    """A hello's or an ack's ``incoming`` (empty when the field is)."""
    return decode_as(raw, VersionVector) if raw else VersionVector()

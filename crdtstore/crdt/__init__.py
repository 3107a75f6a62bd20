"""The pure CRDT core: causal primitives, the hybrid logical clock, the types and their codec.

Nothing in this package does I/O or imports asyncio, grpc, lmdb, os or pathlib;
``tests/test_purity.py`` holds it to that. It is the part of crdtstore that the
node, the replication protocol and the deterministic simulator all share.
"""

from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.causal import CausalContext, Dot, VersionVector
from crdtstore.crdt.codec import (
    CodecError,
    RegisterWrite,
    decode,
    decode_as,
    encode,
    encode_register_write,
    encode_register_writes,
)
from crdtstore.crdt.counter import INT64_MAX, INT64_MIN, Counter, Share
from crdtstore.crdt.dotstore import Causal, DotStore
from crdtstore.crdt.hlc import ClockSkew, HybridLogicalClock, Timestamp
from crdtstore.crdt.keyed import KeyState, KeyValue, StoreMap, TypeMismatch, ValueType
from crdtstore.crdt.register import Register, Sibling, Version

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "AWSet",
    "Causal",
    "CausalContext",
    "ClockSkew",
    "CodecError",
    "Counter",
    "Dot",
    "DotStore",
    "HybridLogicalClock",
    "KeyState",
    "KeyValue",
    "Register",
    "RegisterWrite",
    "Share",
    "Sibling",
    "StoreMap",
    "Timestamp",
    "TypeMismatch",
    "ValueType",
    "Version",
    "VersionVector",
    "decode",
    "decode_as",
    "encode",
    "encode_register_write",
    "encode_register_writes",
]

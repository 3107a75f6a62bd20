"""How a key becomes an LMDB key, and which repair bucket a key falls in (its records: ``records``).

Keys: LMDB keys are at most 511 bytes, the store's keys up to 1 KiB. A key of
at most 480 UTF-8 bytes is its own LMDB key, so scans come out in byte order.
A longer key is stored under its first 448 bytes, a 0xFF byte (never part of
UTF-8, so no short key can collide) and its SHA-256; the value carries the
full key. Keys longer than 448 bytes that share those first 448 bytes sort by
hash among themselves: the only place where scan order is not byte order.

Repair buckets: every key falls in one of ``DIGEST_BUCKETS`` buckets by a
stable hash, and a bucket's digest is the XOR of the digests of its keys, so
two regions compare their states bucket by bucket. A key's digest is a hash of
the key and the encoding of its slots other than its set, XORed with a hash of
each set member with its dots: equal states give equal digests (the encoding
is canonical, and XOR does not depend on order), and a set of any size is
digested member by member in bounded memory. A key without set members
digests to the hash of the key and its whole encoded state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgpack

from crdtstore.replica.wire import DIGEST_BUCKETS

_SHORT_KEY_BYTES_MAX = 480
_LONG_KEY_PREFIX_BYTES = 448
_LONG_KEY_MARK = b"\xff"


def lmdb_key(key: str) -> bytes:
    raw = key.encode("utf-8")
    if len(raw) <= _SHORT_KEY_BYTES_MAX:
        return raw
    return raw[:_LONG_KEY_PREFIX_BYTES] + _LONG_KEY_MARK + hashlib.sha256(raw).digest()


def bucket_of(key: str) -> int:
    """The repair bucket of a key: a stable hash, the same in every region."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % DIGEST_BUCKETS


def _pair_digest(key: str, body: bytes) -> int:
    h = hashlib.blake2b(digest_size=16)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key.encode("utf-8"))
    h.update(body)
    return int.from_bytes(h.digest(), "big")


def _member_digest(key: str, member: str, dots: Iterable[tuple[str, int]]) -> int:
    flat: list[object] = [key, member]
    for region, counter in sorted(dots):
        flat += (region, counter)
    return int.from_bytes(
        hashlib.blake2b(msgpack.packb(flat, use_bin_type=True), digest_size=16, person=b"crdtstore-member").digest(),
        "big",
    )


def _digests(keys: Iterable[tuple[str, int]]) -> list[int]:
    """Per repair bucket, the XOR of the digests of its keys, from (key, the key's digest) pairs."""
    digests = [0] * DIGEST_BUCKETS
    for key, digest in keys:
        digests[bucket_of(key)] ^= digest
    return digests

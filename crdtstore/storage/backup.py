"""Backups of a store, and the facts that let a backup and a region be checked: the storage side.

A backup is LMDB's compacting copy (``mdb_env_copyfd2`` with
``MDB_CP_COMPACT``) of one read transaction: every named database as it
stood at that instant, so the causal context, the delta log, the
idempotency records and the node's own records (roles, revocations) come
along with the data. A backup is a region's state, not a dump of values: a
restore is a data directory like any other.

``copy_chunks`` makes the copy into a spool directory inside the data
directory, reading in the same transaction the vector, the clock's
high-water mark, the key count and the digest of every repair bucket
(``keys``), so the manifest describes exactly the copied bytes; then it hands
out fixed-size chunks of the spooled file, so the node's memory stays bounded
whatever the store's size and however slowly the receiver reads. Writes go
on meanwhile (LMDB readers never block the writer); while the transaction is
open (a local disk copy, not the receiver's pace) the map cannot grow
(``environment``: growth waits for this process's readers). The spool takes
as much disk as the compacted store until the backup ends.

``snapshot_facts`` reads the same facts from any transaction, so a backup's
own data file, opened read-only (``open_copy``), is checked against its
manifest without a node (``crdtstore.backup``). ``bucket_keys`` lists the
keys of some buckets with their digests and dot summaries, for
``crdtstore verify`` to name the keys on which regions differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from crdtstore.crdt import CausalContext, CodecError, Dot, KeyState, Timestamp, decode_as, encode
from crdtstore.crdt.hlc import ZERO
from crdtstore.replica.wire import DIGEST_BUCKETS
from crdtstore.storage.environment import _META_CONTEXT, _META_HLC, _META_ORIGIN, _META_REGION, _META_SCHEMA
from crdtstore.storage.errors import StorageError
from crdtstore.storage.keys import _digests, bucket_of
from crdtstore.storage.lmdb_store import LmdbStore
from crdtstore.storage.records import KeyRecord, SetRecords, decode_record

__all__ = [
    "DIGEST_BYTES",
    "BackupFacts",
    "BucketKey",
    "DotSummary",
    "bucket_keys",
    "check_buckets",
    "clear_rejoin",
    "copy_chunks",
    "mark_rejoin",
    "open_copy",
    "rejoin_pending",
    "snapshot_facts",
    "store_facts",
]

# A bucket's digest is an XOR of 128-bit hashes (``keys``): 16 bytes on the wire and in manifests.
DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class BackupFacts:
    """What one read transaction of a store says of itself: a manifest's facts, or a Digest's answer."""

    region: str
    origin: str
    storage_format: int
    context: CausalContext
    hlc: Timestamp
    keys: int
    bucket_digests: tuple[int, ...]


def snapshot_facts(
    txn: lmdb.Transaction, data: lmdb._Database, members: lmdb._Database, meta: lmdb._Database
) -> BackupFacts:
    """The facts of the state ``txn`` reads; ``StorageError`` when its metadata cannot be read."""
    try:
        schema = int(bytes(txn.get(_META_SCHEMA, db=meta) or b"0"))
        region = bytes(txn.get(_META_REGION, db=meta) or b"").decode("utf-8")
        origin = bytes(txn.get(_META_ORIGIN, db=meta) or b"").decode("utf-8")
        context = decode_as(bytes(txn.get(_META_CONTEXT, db=meta) or b""), CausalContext)
        raw_hlc = txn.get(_META_HLC, db=meta)
        hlc = decode_as(bytes(raw_hlc), Timestamp) if raw_hlc is not None else ZERO
    except (ValueError, UnicodeDecodeError, CodecError) as exc:
        raise StorageError(f"the store's metadata cannot be read: {exc}") from exc
    keys = int(txn.stat(data)["entries"])
    records = SetRecords(txn, data, members)
    digests = _digests((record.key, records.digest(record)) for record in records.records())
    return BackupFacts(region, origin, schema, context, hlc, keys, tuple(digests))


def store_facts(store: LmdbStore) -> BackupFacts:
    """``snapshot_facts`` of a live store, from one read transaction."""
    with store._gate.read(), store.env.begin() as txn:
        return snapshot_facts(txn, store.data, store.members, store.meta)


@contextlib.contextmanager
def open_copy(path: Path) -> Iterator[tuple[lmdb.Transaction, lmdb._Database, lmdb._Database, lmdb._Database]]:
    """A read transaction of the LMDB file ``path/data.mdb``, opened read-only and without a lock file.

    Nothing is written to ``path``. ``StorageError`` if it is not a store.
    """
    try:
        env = lmdb.open(
            str(path), readonly=True, lock=False, subdir=True, max_dbs=16, readahead=False, map_size=1 << 20
        )
    except lmdb.Error as exc:
        raise StorageError(f"{path / 'data.mdb'} is not an LMDB file crdtstore can read: {exc}") from exc
    try:
        with env.begin() as txn:
            try:
                dbs = [env.open_db(name, txn=txn, create=False) for name in (b"data", b"members", b"meta")]
            except lmdb.Error as exc:
                raise StorageError(f"{path / 'data.mdb'} is not a crdtstore data file: {exc}") from exc
            yield txn, dbs[0], dbs[1], dbs[2]
    finally:
        env.close()


def copy_chunks(store: LmdbStore, chunk_bytes: int) -> Generator[bytes | tuple[BackupFacts, bytes, int]]:
    """The compacting copy of one read transaction of ``store``, in chunks of ``chunk_bytes``; then its facts.

    The copy is first made into a spool directory inside the data directory
    (a local disk copy: the read transaction is open only that long), then
    streamed from there at the receiver's pace. Yields ``bytes`` chunks (each
    ``chunk_bytes`` long but the last), then one ``(facts, sha256 of every
    byte yielded, byte count)``. Closing the generator early (the receiver
    went away) removes the spool. At most one chunk is held in memory.

    Why a spool and not a pipe to the receiver: with py-lmdb, aborting a write
    transaction waits while ``copyfd`` is copying on another thread, and the
    waiting thread holds the write lock: a slow receiver could stall every
    write of the node (a refused repair, or a full map, aborts one). Found in
    review; ``tests/test_backup.py`` has the regression test.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    data_dir = Path(store.config.path)
    for stale in data_dir.glob(f"{_SPOOL_PREFIX}*"):  # left by a node killed during a backup
        shutil.rmtree(stale, ignore_errors=True)
    spool = Path(tempfile.mkdtemp(prefix=_SPOOL_PREFIX, dir=data_dir))
    try:
        try:
            with store._gate.read(), store.env.begin() as txn:
                store.env.copy(str(spool), compact=True, txn=txn)
                facts = snapshot_facts(txn, store.data, store.members, store.meta)
        except Exception as exc:  # whatever went wrong, the caller hears it (and the spool goes)
            raise StorageError(f"the backup copy failed: {exc}") from exc
        digest = hashlib.sha256()
        total = 0
        with (spool / "data.mdb").open("rb") as copy:
            while chunk := copy.read(chunk_bytes):
                digest.update(chunk)
                total += len(chunk)
                yield chunk
        yield facts, digest.digest(), total
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# The spool directories of backups in progress, inside the data directory.
_SPOOL_PREFIX = "backup-spool-"


@dataclass(frozen=True, slots=True)
class DotSummary:
    origin: str
    count: int
    max_counter: int


@dataclass(frozen=True, slots=True)
class BucketKey:
    """One key of a bucket as ``crdtstore verify`` shows it."""

    key: str
    bucket: int
    digest: int
    state: KeyState  # without its set when ``omitted_members`` is set
    omitted_members: int  # a set too large to list: its member count
    dots: tuple[DotSummary, ...]


def bucket_keys(
    store: LmdbStore, buckets: frozenset[int], after: bytes, limit: int, members_max: int, *, bytes_max: int
) -> tuple[list[BucketKey], bytes, CausalContext]:
    """Up to ``limit`` keys of ``buckets`` whose LMDB key is above ``after``, in key order, from one read.

    Returns them, the LMDB key to continue after (``b""`` when no more
    follow), and the context of the read. A set of more than
    ``members_max`` members is listed without its members; its dots are
    still summarised, reading its members a run at a time. A page also ends
    once its keys' states pass ``bytes_max`` encoded (it holds at least one
    key): a page of large values must fit in one response.
    """
    out: list[BucketKey] = []
    size = 0
    with store._gate.read(), store.env.begin() as txn:
        context = store._context_in(txn)
        records = SetRecords(txn, store.data, store.members)
        cursor = txn.cursor(db=store.data)
        found = cursor.set_range(after) if after else cursor.first()
        last = b""
        while found:
            db_key = bytes(cursor.key())
            if db_key != after:
                record = decode_record(db_key, bytes(cursor.value()))
                bucket = bucket_of(record.key)
                if bucket in buckets:
                    if len(out) == limit or (out and size >= bytes_max):
                        return out, last, context
                    item = _bucket_key(records, record, bucket, members_max)
                    out.append(item)
                    size += len(db_key) + len(encode(item.state))
                    last = db_key
            found = cursor.next()
    return out, b"", context


def _bucket_key(records: SetRecords, record: KeyRecord, bucket: int, members_max: int) -> BucketKey:
    others = decode_as(record.body, KeyState)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def note(dot: Dot) -> None:
        seen = counts[dot.region]
        seen[0] += 1
        seen[1] = max(seen[1], dot.counter)

    for dot in others.dots():
        note(dot)
    for _, _, dots in records.member_stream(record.set_id) if record.members else ():
        for dot in dots:
            note(dot)
    omitted = record.members if record.members > members_max else 0
    state = others if omitted else records.assemble(record)
    summary = tuple(DotSummary(origin, n, top) for origin, (n, top) in sorted(counts.items()))
    return BucketKey(record.key, bucket, records.digest(record), state, omitted, summary)


# Set in a directory ``crdtstore restore`` laid down; cleared by the node once its peers have filled it in
# (``crdtstore.node.rejoin``).
_META_REJOIN = b"rejoin_pending"


def mark_rejoin(store: LmdbStore) -> None:
    """Mark the store as restored: the node starts in rejoin mode on it."""
    _put_meta(store, _META_REJOIN, b"1")


def clear_rejoin(store: LmdbStore) -> None:
    """The node's peers have filled it in: rejoin mode is over for this directory."""
    _put_meta(store, _META_REJOIN, None)


def rejoin_pending(store: LmdbStore) -> bool:
    with store._gate.read(), store.env.begin(db=store.meta) as txn:
        return txn.get(_META_REJOIN) is not None


def _put_meta(store: LmdbStore, key: bytes, value: bytes | None) -> None:
    # Under the remap gate as a reader is: the map must not be remapped while this transaction is open.
    with store._gate.read(), store.env.begin(write=True, db=store.meta) as txn:
        if value is None:
            txn.delete(key)
        else:
            txn.put(key, value)


def check_buckets(buckets: list[int]) -> frozenset[int]:
    """The bucket numbers asked for; ``ValueError`` naming the first out of range."""
    for bucket in buckets:
        if not 0 <= bucket < DIGEST_BUCKETS:
            raise ValueError(
                f"bucket {bucket} is out of range: there are {DIGEST_BUCKETS} buckets, 0 to {DIGEST_BUCKETS - 1}"
            )
    return frozenset(buckets)

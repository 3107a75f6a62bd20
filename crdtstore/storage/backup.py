"""Backups of a store, and the facts that let a backup and a region be checked: the storage side.

A backup is LMDB's compacting copy (``mdb_env_copyfd2`` with
``MDB_CP_COMPACT``) of one read transaction: every named database as it
stood at that instant, so the causal context, the delta log, the
idempotency records and the node's own records (roles, revocations) come
along with the data. A backup is a region's state, not a dump of values: a
restore is a data directory like any other.

``copy_chunks`` runs the copy on a thread that writes into a pipe, and hands
out fixed-size chunks read from the other end, so the node's memory stays
bounded whatever the store's size and however slowly the receiver reads.
In the same transaction, before the copy, it reads the vector, the clock's
high-water mark and the key count, and after the copy the digest of every
repair bucket (``keys``), so the manifest describes exactly the copied bytes.
Writes go on meanwhile (LMDB readers never block the writer), but while the
transaction is open the map cannot grow (``environment``: growth waits for
this process's readers), so a map that fills during a backup holds writes
until the copy is read to its end. The copy is streamed, so a slow receiver
keeps the transaction open longer: back up over a link that can take it.

``snapshot_facts`` reads the same facts from any transaction, so a backup's
own data file, opened read-only (``open_copy``), is checked against its
manifest without a node (``crdtstore.backup``). ``bucket_keys`` lists the
keys of some buckets with their digests and dot summaries, for
``crdtstore verify`` to name the keys on which regions differ.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections import defaultdict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from crdtstore.crdt import CausalContext, CodecError, Dot, KeyState, Timestamp, decode_as
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
# The pipe between the copying thread and the reader: as large as Linux allows an unprivileged process by
# default, so the copy is not woken for every 64 KiB.
_PIPE_BYTES = 1024 * 1024


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


class _PipedCopy:
    """LMDB's compacting copy of one read transaction, written by a thread into a pipe, and the facts of that read.

    ``read_end`` is the reader's; ``finish`` waits for the thread and says
    what it read, or raises what went wrong.
    """

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.read_end, self._write_end = os.pipe()
        set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)
        if set_pipe_size is not None:
            with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
                fcntl.fcntl(self._write_end, set_pipe_size, _PIPE_BYTES)
        self._write_open = True
        self._facts: BackupFacts | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._copy, name="crdtstore-backup", daemon=True)
        self._thread.start()

    def _end_of_copy(self) -> None:
        # The reader sees the end of the copy; on every path, or it would wait for bytes forever.
        if self._write_open:
            self._write_open = False
            os.close(self._write_end)

    def _copy(self) -> None:
        store = self.store
        try:
            with store._gate.read(), store.env.begin() as txn:
                try:
                    store.env.copyfd(self._write_end, compact=True, txn=txn)
                finally:
                    self._end_of_copy()
                # The digests come from the same transaction, after the copy so its bytes start flowing at once.
                self._facts = snapshot_facts(txn, store.data, store.members, store.meta)
        except BaseException as exc:  # handed to the reader, who raises it
            self._error = exc
        finally:
            self._end_of_copy()

    def finish(self) -> BackupFacts:
        """Close the reader's end (a copy still writing then fails at once, EPIPE) and wait for the thread."""
        os.close(self.read_end)
        self._thread.join()
        if self._error is not None:
            raise StorageError(f"the backup copy failed: {self._error}") from self._error
        assert self._facts is not None
        return self._facts


def copy_chunks(store: LmdbStore, chunk_bytes: int) -> Generator[bytes | tuple[BackupFacts, bytes, int]]:
    """The compacting copy of one read transaction of ``store``, in chunks of ``chunk_bytes``; then its facts.

    Yields ``bytes`` chunks (each ``chunk_bytes`` long but the last), then
    one ``(facts, sha256 of every byte yielded, byte count)``. Closing the
    generator early (the receiver went away) ends the copy and its
    transaction. At most ``chunk_bytes`` plus the pipe's buffer is held.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    copy = _PipedCopy(store)
    digest = hashlib.sha256()
    total = 0
    finished = False
    try:
        pending = bytearray()
        while piece := os.read(copy.read_end, chunk_bytes - len(pending)):
            pending += piece
            if len(pending) == chunk_bytes:
                digest.update(pending)
                total += len(pending)
                yield bytes(pending)
                pending.clear()
        if pending:
            digest.update(pending)
            total += len(pending)
            yield bytes(pending)
        finished = True
        facts = copy.finish()
    finally:
        if not finished:
            with contextlib.suppress(StorageError):  # the copy was abandoned: its own failure says nothing more
                copy.finish()
    yield facts, digest.digest(), total


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
    store: LmdbStore, buckets: frozenset[int], after: bytes, limit: int, members_max: int
) -> tuple[list[BucketKey], bytes, CausalContext]:
    """Up to ``limit`` keys of ``buckets`` whose LMDB key is above ``after``, in key order, from one read.

    Returns them, the LMDB key to continue after (``b""`` when no more
    follow), and the context of the read. A set of more than
    ``members_max`` members is listed without its members; its dots are
    still summarised, reading its members a run at a time.
    """
    out: list[BucketKey] = []
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
                    if len(out) == limit:
                        return out, last, context
                    out.append(_bucket_key(records, record, bucket, members_max))
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

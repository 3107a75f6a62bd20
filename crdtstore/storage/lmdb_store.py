"""The node's durable state in one LMDB environment.

Named databases:

* ``data``       key -> the key's ``KeyState`` (only live keys; a deleted key is gone)
* ``log``        local sequence number -> (origin, first, last, source, delta): every
                 change in the order this node applied it, which respects causality,
                 so replication sends it in that order
* ``log_index``  (origin region, last dot counter) -> sequence number
* ``incoming``   (peer, key) -> a key's state received in a state transfer, staged
                 until the transfer's last message joins them all at once
* ``meta``       schema version, region, the origin this directory mints under and the
                 identity of the file it was taken in, causal context, HLC high-water
                 mark, log size, log horizon (per origin, the last counter trimmed from the log)
* ``idem``       idempotency key -> (time, request fingerprint, causal token)
* ``idem_time``  (time, idempotency key) -> nothing: the expiry index of ``idem``

Everything a write changes (the keys, the log entry, the context, the clock's
mark, the idempotency record) is written in one write transaction, so a crash
leaves all of it or none. ``write_batch`` takes many client requests and
commits them in that one transaction, with one fsync (LMDB's default
``sync=True``; acknowledged means fsynced; only the simulator's throwaway
stores turn sync off, ``StorageOptions.sync``). Each request inside the batch is still all-or-nothing on its own: it is
computed in memory first and written only if every operation in it is valid.

Keys: LMDB keys are at most 511 bytes, the store's keys up to 1 KiB. A key of
at most 480 UTF-8 bytes is its own LMDB key, so scans come out in byte order.
A longer key is stored under its first 448 bytes, a 0xFF byte (never part of
UTF-8, so no short key can collide) and its SHA-256; the value carries the
full key. Keys longer than 448 bytes that share those first 448 bytes sort by
hash among themselves: the only place where scan order is not byte order.

Origins: local writes mint dots under ``origin``, the region's name and an
incarnation (``crdtstore.crdt.origin``). A directory takes a fresh
incarnation before its first write whenever it cannot prove it is the one
that minted its origin's newest events: when it is new, when the operator says
so (``StorageConfig.new_incarnation``, ``crdtstore serve --rejoin``, which a
restore must use), when a peer turns out to hold events of the origin that
this directory lacks (``retire_origin``), and when its data file is evidently
not the file the origin was taken in (its inode number differs: copied,
restored or moved). That last check is a safety net, not a proof: a file
system may give a copy the inode number of a file deleted just before. A
fresh incarnation is always safe; reusing one that another region holds
newer events of loses writes.

Resources: the map grows by doubling when it fills, up to
``map_size_bytes_max``; past that, or when the disk is full, the batch is
aborted (nothing half-written) and its requests fail with ``StoreFull``. The
delta log is bounded by ``delta_log_bytes_max`` (oldest entries go first; a
peer behind the trimmed horizon is repaired by state transfer) and idempotency
records by age and count.

This module is synchronous and does not know about asyncio or gRPC; the node's
group-commit writer calls ``write_batch`` from its one writer thread.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import lmdb
import msgpack

from crdtstore.crdt import (
    CausalContext,
    CodecError,
    Dot,
    HybridLogicalClock,
    KeyState,
    StoreMap,
    Timestamp,
    TypeMismatch,
    VersionVector,
    decode_as,
    encode,
)
from crdtstore.crdt.hlc import ZERO
from crdtstore.crdt.origin import INCARNATION_HEX_DIGITS, origin_of
from crdtstore.operations import Operation, apply_operations, fingerprint

__all__ = [
    "DIGEST_BUCKETS",
    "Applied",
    "DataCorruption",
    "Failed",
    "IdempotencyConflict",
    "KeyTooLarge",
    "LmdbStore",
    "LogEntry",
    "LogSlice",
    "RawLogEntry",
    "RemoteOutcome",
    "StaleTransfer",
    "StorageConfig",
    "StorageError",
    "StorageOptions",
    "StoreFull",
    "WriteRequest",
    "WrongRegion",
    "bucket_of",
]

SCHEMA_VERSION = 2
_SHORT_KEY_BYTES_MAX = 480
_LONG_KEY_PREFIX_BYTES = 448
_LONG_KEY_MARK = b"\xff"

_META_SCHEMA = b"schema_version"
_META_REGION = b"region"
_META_ORIGIN = b"origin"
_META_ORIGIN_FILE = b"origin_file"
_META_CONTEXT = b"context"
_META_HLC = b"hlc_high_water"
_META_LOG_BYTES = b"delta_log_bytes"
_META_HORIZON = b"log_horizon"

_FLAG_SHORT = b"\x00"
_FLAG_LONG = b"\x01"


log = logging.getLogger("crdtstore.storage")


class StorageError(Exception):
    """A problem with the data directory that a person must look at."""


class WrongRegion(StorageError):
    pass


class StoreFull(StorageError):
    """The map reached its maximum size or the disk is full; nothing was written."""


@dataclass(frozen=True)
class StorageOptions:
    """The store's tunables; ``crdtstore serve`` reads them from the ``[storage]`` table."""

    map_size_bytes: int = 64 * 1024 * 1024
    map_size_bytes_max: int = 64 * 1024 * 1024 * 1024
    delta_log_bytes_max: int = 256 * 1024 * 1024
    # A retry is recognised for this long, as long as fewer than
    # idempotency_records_max other keyed requests arrived in between (past
    # that the oldest records go early, and a very late retry applies again).
    idempotency_ttl_s: int = 3600
    idempotency_records_max: int = 10_000_000
    # One key's stored state (a big set, say) may not grow past this, so every
    # key stays readable in one response.
    key_state_bytes_max: int = 8 * 1024 * 1024
    # One request's change, as one delta log entry, must fit in one replication
    # message; a larger request is refused rather than left unable to replicate.
    log_entry_bytes_max: int = 16 * 1024 * 1024 + 512 * 1024
    # At most this many expired idempotency records or log entries are removed
    # per batch, so housekeeping never makes one commit slow.
    housekeeping_per_batch_max: int = 256
    # fsync every commit. Only the deterministic simulator turns this off: its
    # stores live in a throwaway directory, and a simulated crash loses what
    # was not committed (the group-commit queue), which is what a real crash
    # loses with sync on.
    sync: bool = True


@dataclass(frozen=True)
class StorageConfig:
    path: Path
    region: str
    options: StorageOptions = field(default_factory=StorageOptions)
    # Mint under a fresh incarnation from this open on, whatever the directory holds: the
    # operator knows it may not be the copy that minted this region's newest events.
    new_incarnation: bool = False


class RemoteOutcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # the node already had it
    GAP = "gap"  # an earlier entry of its origin is missing; resend from the acknowledged vector


class LogEntry(NamedTuple):
    """One batch in the delta log: the dots ``origin:first..last`` and their combined delta."""

    origin: str
    first: int
    last: int
    source: str  # "" when written here; otherwise the peer it came from
    delta: StoreMap
    # The delta as it arrived, when it did: the codec is canonical (decoding
    # refuses any other form), so these are exactly ``encode(delta)``, and
    # logging them saves encoding the delta again.
    encoded: bytes = b""


class LogSlice(NamedTuple):
    """What ``log_since`` found for a peer."""

    entries: list[RawLogEntry]
    reached: VersionVector  # per origin, how far the peer has everything once it has these
    # When the slice stopped at a relayed entry too fresh to send: when that entry
    # arrived here (this node's clock). Nothing more can go before it matures.
    held_since_ms: int | None = None

    def tops(self) -> VersionVector:
        """The last event of each origin among the entries: what a message of them says the sender has."""
        top: dict[str, int] = {}
        for e in self.entries:
            top[e.origin] = max(top.get(e.origin, 0), e.last)
        return VersionVector(top)


class RawLogEntry(NamedTuple):
    """A log entry as it travels: the delta still in its encoded bytes."""

    origin: str
    first: int
    last: int
    delta: bytes


@dataclass(frozen=True)
class WriteRequest:
    operations: Sequence[Operation]
    idempotency_key: bytes = b""


@dataclass(frozen=True)
class Applied:
    token: CausalContext  # the context right after this request: its causal token
    replayed: bool = False


@dataclass(frozen=True)
class Failed:
    error: Exception  # TypeMismatch, IdempotencyConflict, StoreFull, ValueError


class IdempotencyConflict(Exception):
    """An idempotency key reused for a different request."""


class KeyTooLarge(Exception):
    """The request would make one key's stored state larger than ``key_state_bytes_max``."""


class StaleTransfer(StorageError):
    """A state transfer that can no longer be joined correctly; nothing of it was applied."""


class DataCorruption(StorageError):
    """Stored bytes that cannot be decoded: the disk or a bug damaged them."""


Result = Applied | Failed


@dataclass
class _Batch:
    """What one write transaction has done so far, so requests in it see each other."""

    origin: str  # what its writes mint under
    context: CausalContext
    log_bytes: int
    next_seq: int
    trimmed: dict[str, int] = field(default_factory=dict)
    replies: dict[bytes, tuple[bytes, Applied]] = field(default_factory=dict)


class _RemapGate:
    """Readers share it; growing the map takes it alone.

    ``set_mapsize`` remaps the file, so no read transaction of this process may
    be open while it runs (a reader would be left holding pointers into the
    old mapping). Reads are short, so growth waits for them to finish and
    holds new ones back for the few microseconds the remap takes.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._remapping = False

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._remapping:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def remap(self) -> Iterator[None]:
        with self._cond:
            self._remapping = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._remapping = False
                self._cond.notify_all()


def lmdb_key(key: str) -> bytes:
    raw = key.encode("utf-8")
    if len(raw) <= _SHORT_KEY_BYTES_MAX:
        return raw
    return raw[:_LONG_KEY_PREFIX_BYTES] + _LONG_KEY_MARK + hashlib.sha256(raw).digest()


def _encode_value(key: str, state: KeyState) -> bytes:
    body = encode(state)
    raw = key.encode("utf-8")
    if len(raw) <= _SHORT_KEY_BYTES_MAX:
        return _FLAG_SHORT + body
    return _FLAG_LONG + len(raw).to_bytes(2, "big") + raw + body


DIGEST_BUCKETS = 1024


def bucket_of(key: str) -> int:
    """The repair bucket of a key: a stable hash, the same in every region."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % DIGEST_BUCKETS


def _pair_digest(key: str, body: bytes) -> int:
    h = hashlib.blake2b(digest_size=16)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key.encode("utf-8"))
    h.update(body)
    return int.from_bytes(h.digest(), "big")


def _check_buckets_unchanged(
    own: Iterable[tuple[bytes, str, bytes]], covered: frozenset[int], expected: Sequence[int] | None
) -> None:
    """The buckets a transfer skips must still equal the sender's, or joining its context would be wrong.

    They were skipped because this node's state in them equalled the
    sender's when compared. If this node has changed them since (an entry
    arrived), it may now hold events the sender's context says were
    removed, and the join would keep them while claiming the removal:
    the transfer is refused, and the next round compares again.
    """
    if expected is None or len(expected) != DIGEST_BUCKETS:
        raise StaleTransfer("a transfer that covers only some buckets needs the sender's digests")
    digests = _digests(own)
    changed = [i for i in range(DIGEST_BUCKETS) if i not in covered and digests[i] != expected[i]]
    if changed:
        raise StaleTransfer(f"{len(changed)} bucket(s) changed here since they were compared")


def _transfer_prefix(source: str, transfer: int) -> bytes:
    return source.encode("utf-8") + b"\x00" + transfer.to_bytes(8, "big")


def _split_value(db_key: bytes, value: bytes) -> tuple[str, bytes]:
    """The key and its encoded state, without decoding the state."""
    if value[:1] == _FLAG_SHORT:
        return db_key.decode("utf-8"), value[1:]
    if value[:1] == _FLAG_LONG:
        n = int.from_bytes(value[1:3], "big")
        key = value[3 : 3 + n].decode("utf-8")
        if lmdb_key(key) != db_key:
            raise StorageError(f"stored key does not match its index entry: {key[:40]!r}...")
        return key, value[3 + n :]
    raise StorageError(f"unknown value framing {value[:1]!r}")


def _decode_value(db_key: bytes, value: bytes) -> tuple[str, KeyState]:
    key, body = _split_value(db_key, value)
    return key, decode_as(body, KeyState)


def _stored_pairs(txn: lmdb.Transaction, data: lmdb._Database) -> Iterator[tuple[bytes, str, bytes]]:
    """Every stored key as (LMDB key, key, encoded state), in key order."""
    for db_key, value in txn.cursor(db=data):
        raw = bytes(db_key)
        yield (raw, *_split_value(raw, bytes(value)))


def _digests(pairs: Iterable[tuple[bytes, str, bytes]]) -> list[int]:
    """Per repair bucket, the XOR of a 128-bit hash of each (key, encoded state) in it."""
    digests = [0] * DIGEST_BUCKETS
    for _, key, body in pairs:
        digests[bucket_of(key)] ^= _pair_digest(key, body)
    return digests


class LmdbStore:
    def __init__(
        self,
        config: StorageConfig,
        *,
        wall_ms: Callable[[], int] | None = None,
        incarnations: Callable[[], str] | None = None,
    ) -> None:
        """Open (or create) the store; ``incarnations`` makes fresh incarnation ids (random unless a test seeds it)."""
        self.config = config
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._incarnations = incarnations or (lambda: secrets.token_hex(INCARNATION_HEX_DIGITS // 2))
        path = Path(config.path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the data directory {path}: {exc.strerror}") from exc
        try:
            self._lock_file = (path / "crdtstore.lock").open("a+b")
        except OSError as exc:
            raise StorageError(f"the data directory {path} is not writable: {exc.strerror}") from exc
        try:
            # LMDB lets several processes share an environment; crdtstore must
            # not: two nodes on one directory would mint the same dots. The
            # lock dies with the process, so kill -9 leaves nothing to clean up.
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise StorageError(
                f"another crdtstore process is using the data directory {path}; stop it first "
                f"(or wait for it to finish draining)"
            ) from None
        try:
            self.env = lmdb.open(
                str(path),
                map_size=config.options.map_size_bytes,
                max_dbs=8,
                subdir=True,
                sync=config.options.sync,
                metasync=config.options.sync,
                readahead=False,
                max_readers=512,
            )
        except lmdb.Error as exc:
            self._lock_file.close()
            raise StorageError(f"cannot open the store in {path}: {exc}") from exc
        self._gate = _RemapGate()
        # The origin local writes mint under (set by _load_or_initialise_meta); a reason set by
        # retire_origin makes the next batch take a new one.
        self.origin = ""
        self._retire_reason: str | None = None
        # Entries from peers that carry event ids this node holds for different events (see apply_raw).
        self.conflicting_events = 0
        self._context_memo: tuple[bytes, CausalContext] = (b"", CausalContext())
        try:
            # Reader slots left behind by a process that was killed would pin
            # old pages forever; clear them before anything else.
            self.env.reader_check()
            self._grow_to_file_size()
            self.data = self.env.open_db(b"data")
            self.log = self.env.open_db(b"log")
            self.log_index = self.env.open_db(b"log_index")
            self.incoming = self.env.open_db(b"incoming")
            self.meta = self.env.open_db(b"meta")
            self.idem = self.env.open_db(b"idem")
            self.idem_time = self.env.open_db(b"idem_time")
            self._context, self._hlc_mark, self._log_bytes = self._load_or_initialise_meta()
            with self.env.begin(db=self.meta) as txn:
                self._horizon = decode_as(bytes(txn.get(_META_HORIZON) or encode(VersionVector())), VersionVector)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------

    def _grow_to_file_size(self) -> None:
        info = self.env.info()
        size = (Path(self.config.path) / "data.mdb").stat().st_size
        if size > info["map_size"]:
            self.env.set_mapsize(size)

    def _load_or_initialise_meta(self) -> tuple[CausalContext, Timestamp, int]:
        region = self.config.region
        with self.env.begin(write=True, db=self.meta) as txn:
            stored_schema = txn.get(_META_SCHEMA)
            if stored_schema is None:
                if txn.stat(self.data)["entries"]:
                    raise StorageError("the data directory has data but no schema version; refusing to guess")
                txn.put(_META_SCHEMA, str(SCHEMA_VERSION).encode())
                txn.put(_META_REGION, region.encode())
                txn.put(_META_CONTEXT, encode(CausalContext()))
                txn.put(_META_HLC, encode(ZERO))
                txn.put(_META_LOG_BYTES, b"0")
                # A new directory may stand in for a region that lost its disk: never reuse an origin.
                self._take_incarnation(txn, "the data directory is new")
                return CausalContext(), ZERO, 0
            if stored_schema != str(SCHEMA_VERSION).encode():
                raise StorageError(
                    f"the data directory {self.config.path} has schema version {stored_schema.decode()!r}; "
                    f"this build reads version {SCHEMA_VERSION}"
                )
            stored_region = (txn.get(_META_REGION) or b"").decode()
            if stored_region != region:
                raise WrongRegion(
                    f"the data directory {self.config.path} belongs to region {stored_region!r}, "
                    f"not {region!r}: start with --region {stored_region} or use another --data-dir"
                )
            try:
                context = decode_as(txn.get(_META_CONTEXT) or b"", CausalContext)
                mark = decode_as(txn.get(_META_HLC) or b"", Timestamp)
            except CodecError as exc:
                raise StorageError(f"the store's metadata is damaged: {exc}") from exc
            stored_origin = txn.get(_META_ORIGIN)
            stored_file = txn.get(_META_ORIGIN_FILE)
            if stored_origin is None:
                # A directory from before incarnations: it minted under the bare region name. Keep
                # it (its events are this directory's own) and record the file it lives in.
                self.origin = region
                txn.put(_META_ORIGIN, region.encode())
                txn.put(_META_ORIGIN_FILE, self._file_identity())
            else:
                self.origin = stored_origin.decode()
            if self.config.new_incarnation:
                self._take_incarnation(txn, "the node was started with --rejoin (new_incarnation)")
            elif stored_origin is not None and stored_file != self._file_identity():
                self._take_incarnation(txn, "the data file is evidently not the one its origin was taken in (a copy)")
            return context, mark, int(txn.get(_META_LOG_BYTES) or b"0")

    def _file_identity(self) -> bytes:
        """The identity of the data file: its inode number, which every copy or restore changes."""
        return str(os.stat(Path(self.config.path) / "data.mdb").st_ino).encode()

    def _take_incarnation(self, txn: lmdb.Transaction, reason: str) -> None:
        """Mint under a fresh origin from this open on (see the module docstring)."""
        previous = self.origin
        self.origin = self._new_origin(txn)
        self._took_incarnation(previous, reason)

    def _new_origin(self, txn: lmdb.Transaction) -> str:
        """A fresh origin, recorded in ``txn``: it is this directory's once ``txn`` commits."""
        origin = origin_of(self.config.region, self._incarnations())
        txn.put(_META_ORIGIN, origin.encode(), db=self.meta)
        txn.put(_META_ORIGIN_FILE, self._file_identity(), db=self.meta)
        return origin

    def _took_incarnation(self, previous: str, reason: str) -> None:
        if not previous:
            # The node's start-up line names the origin; a new directory is nothing to warn about.
            log.debug("region %s mints under the new origin %s: %s", self.config.region, self.origin, reason)
        else:
            log.warning(
                "region %s mints under %s instead of %s from now on: %s",
                self.config.region,
                self.origin,
                previous,
                reason,
            )

    def peer_holds(self, peer: str, vector: VersionVector) -> bool:
        """``peer`` says it holds ``vector``; True when that is more of this node's origin than this directory holds.

        The directory is then older than events it minted (restored in place):
        minting on would reuse the ids of events the peer holds. The peer sends
        those events back as any other origin's, and this node mints under a
        new incarnation from its next write on (``retire_origin``).
        """
        origin = self.origin
        theirs, mine = vector.get(origin), self._context.vv.get(origin)
        if theirs <= mine:
            return False
        log.error(
            "peer %s holds %d events of this node's origin %s, this directory only %d: it is older than the "
            "events it minted; taking a new incarnation before the next write",
            peer,
            theirs,
            origin,
            mine,
        )
        self.retire_origin(f"peer {peer} holds {theirs} events of {origin}, this directory {mine}")
        return True

    def retire_origin(self, reason: str) -> None:
        """Mint under a fresh origin from the next write on: a peer holds events of this one that this node lacks.

        Thread-safe: the writer takes the new incarnation in the transaction
        of its next batch, before that batch mints anything. A batch already
        committing when this is called still minted under the old origin.
        """
        self._retire_reason = reason

    def close(self) -> None:
        self.env.close()
        self._lock_file.close()  # releases the directory lock

    # -- reads -------------------------------------------------------------------------

    @property
    def region(self) -> str:
        return self.config.region

    @property
    def context(self) -> CausalContext:
        """Every event this node has applied; updated only after a commit is durable."""
        return self._context

    @property
    def hlc_mark(self) -> Timestamp:
        return self._hlc_mark

    @property
    def log_horizon(self) -> VersionVector:
        """Per origin, the last counter trimmed from the delta log: a peer below it needs a repair."""
        return self._horizon

    def get(self, key: str) -> KeyState | None:
        db_key = lmdb_key(key)
        with self._gate.read(), self.env.begin(db=self.data) as txn:
            raw = txn.get(db_key)
        if raw is None:
            return None
        return _decode_value(db_key, raw)[1]

    def scan(
        self, prefix: str = "", after: bytes = b"", limit: int = 100, bytes_max: int = 4 * 1024 * 1024
    ) -> tuple[list[tuple[str, KeyState]], bytes]:
        """Up to ``limit`` keys starting with ``prefix`` whose LMDB key is above ``after``.

        A page also stops once it holds ``bytes_max`` bytes of stored values,
        so one page of large values cannot make an unbounded response. Returns
        the entries and the LMDB key of the last one (the next page's
        ``after``), or ``b""`` when the range is exhausted.
        """
        raw_prefix = prefix.encode("utf-8")
        seek_prefix = raw_prefix[:_LONG_KEY_PREFIX_BYTES]
        out: list[tuple[str, KeyState]] = []
        last = b""
        size = 0
        with self._gate.read(), self.env.begin(db=self.data) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(max(seek_prefix, after)):
                return out, b""
            for db_key, value in cursor:
                if not db_key.startswith(seek_prefix):
                    return out, b""
                if db_key == after:
                    continue
                if len(out) == limit or (out and size >= bytes_max):
                    return out, last
                key, state = _decode_value(db_key, bytes(value))
                if not key.startswith(prefix):
                    continue
                out.append((key, state))
                size += len(value)
                last = db_key
        return out, b""

    def count_keys(self) -> int:
        with self._gate.read(), self.env.begin() as txn:
            return int(txn.stat(self.data)["entries"])

    def data_bytes(self) -> int:
        return (Path(self.config.path) / "data.mdb").stat().st_size

    def log_entries(self) -> Iterator[LogEntry]:
        """Every delta log entry, in the order this node applied them."""
        with self._gate.read(), self.env.begin(db=self.log) as txn:
            raw = [bytes(value) for value in txn.cursor().iternext(keys=False, values=True)]
        for value in raw:
            origin, first, last, source, delta, _arrived = msgpack.unpackb(value)
            yield LogEntry(origin, first, last, source, decode_as(delta, StoreMap))

    def log_since(
        self,
        after: VersionVector,
        bytes_max: int,
        *,
        relayed_before_ms: int | None = None,
        held: VersionVector | None = None,
    ) -> LogSlice:
        """The log entries a peer that has ``after`` lacks, in the order this node applied them.

        That order respects causality: every entry comes after the entries it
        depends on, which is what a receiver needs to apply each on arrival.
        Stops after about ``bytes_max`` bytes (at least one entry when there is
        one); with ``relayed_before_ms``, at the first entry that came from
        another region after that time; with ``held``, at the first entry the
        peer is receiving from elsewhere (its ``first`` at most ``held`` of its
        origin; a held entry counts as arrived when it did). Returns the entries, how far, per
        origin, the peer will have everything once it has them (entries it
        already had included), and, when a fresh relay stopped the slice, when
        that entry arrived.
        """
        out: list[RawLogEntry] = []
        reached: dict[str, int] = {}
        size = 0
        held_since: int | None = None
        with self._gate.read(), self.env.begin() as txn:
            start = self._first_needed(txn, after)
            if start is None:
                return LogSlice(out, VersionVector())
            cursor = txn.cursor(db=self.log)
            found = cursor.set_range(start)
            while found:
                origin, first, last, source, delta, arrived_ms = msgpack.unpackb(cursor.value())
                if last > after.get(origin):
                    if out and size + len(delta) > bytes_max:
                        break
                    fresh = source and relayed_before_ms is not None and arrived_ms > relayed_before_ms
                    if fresh or (held and first <= held.get(origin)):
                        held_since = arrived_ms
                        break
                    out.append(RawLogEntry(origin, first, last, delta))
                    size += len(delta)
                reached[origin] = max(reached.get(origin, 0), last)
                found = cursor.next()
        return LogSlice(out, VersionVector(reached), held_since)

    def _first_needed(self, txn: lmdb.Transaction, after: VersionVector) -> bytes | None:
        """The sequence key of the oldest entry, of any origin, above ``after``."""
        best: bytes | None = None
        cursor = txn.cursor(db=self.log_index)
        found = cursor.first()
        while found:
            origin, _ = _split_log_key(bytes(cursor.key()))
            prefix = origin.encode("utf-8") + b"\x00"
            found = cursor.set_range(_log_key(origin, after.get(origin) + 1))
            if found and bytes(cursor.key()).startswith(prefix):
                seq = bytes(cursor.value())
                best = seq if best is None or seq < best else best
                found = cursor.set_range(origin.encode("utf-8") + b"\x01")
            # else: the cursor already stands on the next origin (or the end)
        return best

    def trim_log(self, upto: VersionVector, budget: int = 10_000) -> int:
        """Remove log entries every peer has (``last`` at most ``upto`` of their origin); returns how many.

        At most ``budget`` go per call, so a trim never makes one commit slow;
        call again to go on.
        """
        removed: dict[str, int] = {}
        log_bytes = self._log_bytes
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.log_index)
            count = 0
            for origin, top in upto.items():
                prefix = origin.encode("utf-8") + b"\x00"
                found = cursor.set_range(prefix)
                while found and count < budget and bytes(cursor.key()).startswith(prefix):
                    _, last = _split_log_key(bytes(cursor.key()))
                    if last > top:
                        break
                    seq = bytes(cursor.value())
                    value = txn.get(seq, db=self.log)
                    if value is not None:
                        log_bytes -= len(value)
                        txn.delete(seq, db=self.log)
                    removed[origin] = last
                    found = cursor.delete()
                    count += 1
            if not removed:
                return 0
            horizon = self._horizon.join(VersionVector(removed))
            txn.put(_META_HORIZON, encode(horizon), db=self.meta)
            txn.put(_META_LOG_BYTES, str(log_bytes).encode(), db=self.meta)
        self._horizon = horizon
        self._log_bytes = log_bytes
        return count

    # -- state transfer --------------------------------------------------------------

    def spool_snapshot(self, path: Path) -> tuple[CausalContext, int, list[int]]:
        """Write every key's state, from one consistent read, to the file ``path``.

        Returns the context of the read, the number of keys, and the digest
        of each of ``DIGEST_BUCKETS`` key buckets (see ``bucket_digests``),
        computed from the same read. The file is a stream of msgpack
        ``[key, state]`` pairs, for a repair to send at the peer's pace.
        Reading into a local file keeps the read transaction (which pins LMDB
        pages and holds off map growth) as short as a sequential copy.
        """
        packer = msgpack.Packer(use_bin_type=True)
        count = 0
        with self._gate.read(), self.env.begin() as txn, Path(path).open("wb") as out:
            context = self._context_in(txn)

            def spooled() -> Iterator[tuple[bytes, str, bytes]]:
                nonlocal count
                for pair in _stored_pairs(txn, self.data):
                    out.write(packer.pack([pair[1], pair[2]]))
                    count += 1
                    yield pair

            digests = _digests(spooled())
            out.flush()
        return context, count, digests

    def bucket_digests(self) -> list[int]:
        """Per bucket of keys, the XOR of a 128-bit hash of each (key, encoded state) in it.

        Two stores have equal digests for a bucket exactly when (but for a
        hash collision) they hold the same keys with the same states in it: the
        encoding is canonical, so equal states are equal bytes.
        """
        with self._gate.read(), self.env.begin() as txn:
            return _digests(_stored_pairs(txn, self.data))

    def stage_snapshot(self, source: str, transfer: int, keys: Sequence[tuple[str, bytes]]) -> None:
        """Keep one page of state transfer number ``transfer`` from ``source`` until it is complete.

        Pages of different transfers never mix, even if a late page of an
        abandoned transfer arrives after a new one began.
        """
        prefix = _transfer_prefix(source, transfer)
        while True:
            try:
                with self.env.begin(write=True, db=self.incoming) as txn:
                    for key, body in keys:
                        txn.put(prefix + lmdb_key(key), msgpack.packb([key, body], use_bin_type=True))
                return
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def discard_snapshot(self, source: str) -> None:
        """Forget every state transfer from ``source`` that will not be completed."""
        prefix = source.encode("utf-8") + b"\x00"
        with self.env.begin(write=True, db=self.incoming) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                found = cursor.delete()

    def finish_snapshot(
        self,
        source: str,
        transfer: int,
        context: CausalContext,
        buckets: frozenset[int] | None = None,
        expected: Sequence[int] | None = None,
    ) -> int:
        """Join the staged state transfer ``transfer`` from ``source``, read at ``context``, in one transaction.

        Every key of the transfer is joined into this node's state, and every
        key of this node that the transfer lacks is joined with nothing, so
        what the sender had removed (its context covers it) goes here too,
        while what the sender never saw stays. That is the full state join,
        key by key. With ``buckets``, the transfer covers only those key
        buckets (the others were equal on both sides when compared), and only
        this node's keys in them are visited; ``expected`` (the sender's
        digests) must still match this node's in every other bucket, or the
        transfer is refused with ``StaleTransfer``. This node's context becomes the join of both; the events
        it now has without their log entries move the log horizon, so a peer
        that needs them from here is repaired in turn. Returns the keys changed.
        """
        prefix = _transfer_prefix(source, transfer)
        while True:
            try:
                return self._finish_snapshot(prefix, context, buckets, expected)
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def _finish_snapshot(
        self, prefix: bytes, remote: CausalContext, buckets: frozenset[int] | None, expected: Sequence[int] | None
    ) -> int:
        changed = 0
        with self.env.begin(write=True) as txn:
            local = self._context_in(txn)
            # Read before anything is joined: the skipped buckets' check and the own keys to visit.
            own = list(_stored_pairs(txn, self.data))
            if buckets is not None and len(buckets) < DIGEST_BUCKETS:
                _check_buckets_unchanged(own, buckets, expected)
            staged: set[bytes] = set()
            cursor = txn.cursor(db=self.incoming)
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                key, body = msgpack.unpackb(bytes(cursor.value()))
                if buckets is not None and bucket_of(key) not in buckets:
                    raise CodecError(f"a transferred key {key[:40]!r} is outside the buckets of the transfer")
                theirs = decode_as(body, KeyState)
                if not all(remote.contains(dot) for dot in theirs.dots()):
                    raise CodecError(f"a transferred key {key[:40]!r} holds an event outside the transfer's context")
                db_key = lmdb_key(key)
                staged.add(db_key)
                changed += self._join_key(txn, db_key, key, theirs, local=local, remote=remote)
                found = cursor.delete()
            for db_key, key, _ in own:
                if db_key in staged or (buckets is not None and bucket_of(key) not in buckets):
                    continue
                changed += self._join_key(txn, db_key, key, KeyState(), local=local, remote=remote)
            context = local.join(remote)
            # Events this node now has without their log entries: a peer
            # below them must be repaired from here too.
            gained = {r: n for r, n in remote.vv.items() if n > local.vv.get(r)}
            horizon = self._horizon.join(VersionVector(gained))
            self._put_context(txn, context)
            txn.put(_META_HORIZON, encode(horizon), db=self.meta)
        self._context = context
        self._horizon = horizon
        return changed

    def _join_key(
        self,
        txn: lmdb.Transaction,
        db_key: bytes,
        key: str,
        theirs: KeyState,
        *,
        local: CausalContext,
        remote: CausalContext,
    ) -> int:
        raw = txn.get(db_key, db=self.data)
        current = KeyState() if raw is None else _decode_value(db_key, bytes(raw))[1]
        joined = current.join(theirs, local, remote)
        if joined == current:
            return 0
        if joined.is_bottom():
            txn.delete(db_key, db=self.data)
        else:
            txn.put(db_key, _encode_value(key, joined), db=self.data)
        return 1

    # -- writes ------------------------------------------------------------------------

    def write_batch(self, requests: Sequence[WriteRequest], clock: HybridLogicalClock) -> list[Result]:
        """Apply every request in one transaction and one fsync; one result per request.

        On a full map the map grows and the batch is retried; when it cannot
        grow, each request is retried alone so that the ones that fit still
        land, and the rest fail with ``StoreFull``.
        """
        while True:
            try:
                return self._commit(requests, clock)
            except lmdb.MapFullError:
                if self._grow():
                    continue
                if len(requests) == 1:
                    return [Failed(StoreFull(self._full_message()))]
                return [self.write_batch([r], clock)[0] for r in requests]
            except lmdb.DiskError as exc:
                return [Failed(StoreFull(f"the disk is full or failing: {exc}"))] * len(requests)

    def _full_message(self) -> str:
        return (
            f"the store reached its maximum size of {self.config.options.map_size_bytes_max} bytes "
            f"(map_size_bytes_max); nothing of this request was written"
        )

    def _grow(self) -> bool:
        current = self.env.info()["map_size"]
        if current >= self.config.options.map_size_bytes_max:
            return False
        with self._gate.remap():
            self.env.set_mapsize(min(current * 2, self.config.options.map_size_bytes_max))
        return True

    def _commit(self, requests: Sequence[WriteRequest], clock: HybridLogicalClock) -> list[Result]:
        results: list[Result] = []
        now_ms = self._wall_ms()
        retire = self._retire_reason
        with self.env.begin(write=True) as txn:
            # A new incarnation is recorded in the transaction of the first batch that mints under it,
            # and is this store's only once that commits (a batch retried after a full map takes another).
            origin = self.origin if retire is None else self._new_origin(txn)
            batch = _Batch(origin, self._context_in(txn), self._log_bytes, self._next_seq(txn))
            for request in requests:
                results.append(self._apply_one(txn, batch, request, clock, now_ms))
            if any(isinstance(r, Applied) and not r.replayed for r in results):
                # Remove at least twice what this batch could add, so the
                # bounds hold however large batches get.
                budget = max(self.config.options.housekeeping_per_batch_max, 2 * len(requests))
                self._housekeeping(txn, batch, now_ms, budget)
                self._put_context(txn, batch.context)
                txn.put(_META_HLC, encode(clock.high_water), db=self.meta)
                txn.put(_META_LOG_BYTES, str(batch.log_bytes).encode(), db=self.meta)
                if batch.trimmed:
                    horizon = self._horizon.join(VersionVector(batch.trimmed))
                    txn.put(_META_HORIZON, encode(horizon), db=self.meta)
        # The transaction committed (and fsynced) when the with-block closed.
        if retire is not None:
            if self._retire_reason is retire:
                self._retire_reason = None
            previous, self.origin = self.origin, batch.origin
            self._took_incarnation(previous, retire)
        if batch.trimmed:
            self._horizon = horizon
        self._context = batch.context
        self._hlc_mark = clock.high_water
        self._log_bytes = batch.log_bytes
        return results

    def _apply_one(
        self,
        txn: lmdb.Transaction,
        batch: _Batch,
        request: WriteRequest,
        clock: HybridLogicalClock,
        now_ms: int,
    ) -> Result:
        idem_key = request.idempotency_key
        print_ = fingerprint(request.operations) if idem_key else b""
        if idem_key:
            previous = batch.replies.get(idem_key) or self._stored_reply(txn, idem_key)
            if previous is not None:
                stored_print, applied = previous
                if stored_print != print_:
                    return Failed(IdempotencyConflict("this idempotency key was used for a different request"))
                return Applied(applied.token, replayed=True)
        keys = sorted({op.key for op in request.operations})
        try:
            window = StoreMap({k: s for k in keys if (s := self._get_in(txn, k)) is not None}, batch.context)
        except (CodecError, StorageError) as exc:
            return Failed(DataCorruption(f"a stored key of this request cannot be read: {exc}"))
        try:
            after, delta = apply_operations(window, request.operations, batch.origin, clock)
        except (TypeMismatch, ValueError, TypeError) as exc:
            return Failed(exc)
        encoded: dict[str, bytes] = {}
        for key in keys:
            state = after.entries.get(key)
            if state is not None and not state.is_bottom():
                encoded[key] = value = _encode_value(key, state)
                if len(value) > self.config.options.key_state_bytes_max:
                    return Failed(
                        KeyTooLarge(
                            f"key {key[:60]!r} would hold {len(value)} bytes; a key holds at most "
                            f"{self.config.options.key_state_bytes_max} (key_state_bytes_max): "
                            f"remove members or spread the data over more keys"
                        )
                    )
        # The batch's own dots are the contiguous run first..last of this
        # node's origin (every operation mints at least one); replication sends
        # entries per origin in that order, and a peer has an entry once its
        # version vector reaches ``last``. The source is "" for local writes
        # and the sending peer for relayed ones (provenance).
        origin = batch.origin
        first = batch.context.vv.get(origin) + 1
        last = after.context.max_counter(origin)
        assert last >= first, "a batch mints at least one dot"
        log_value = _log_value(origin, first, last, delta, source="", arrived_ms=now_ms)
        if len(log_value) > self.config.options.log_entry_bytes_max:
            return Failed(
                KeyTooLarge(
                    f"the request's change is {len(log_value)} bytes, more than one replication message carries "
                    f"({self.config.options.log_entry_bytes_max}, log_entry_bytes_max): split it into smaller batches"
                )
            )
        # Checked above, written now: a refused request writes nothing.
        for key in keys:
            if key in encoded:
                txn.put(lmdb_key(key), encoded[key], db=self.data)
            else:
                txn.delete(lmdb_key(key), db=self.data)
        self._append_log(txn, batch.next_seq, origin, last, log_value)
        batch.next_seq += 1
        batch.log_bytes += len(log_value)
        batch.context = after.context
        applied = Applied(after.context)
        if idem_key:
            record = msgpack.packb([now_ms, print_, encode(after.context)])
            txn.put(idem_key, record, db=self.idem)
            txn.put(now_ms.to_bytes(8, "big") + idem_key, b"", db=self.idem_time)
            batch.replies[idem_key] = (print_, applied)
        return applied

    # -- deltas from other regions ---------------------------------------------------

    def lacking(self, entries: Iterable[RawLogEntry]) -> list[RawLogEntry]:
        """The entries not already here (``apply_remote`` would skip the others as duplicates).

        Relays make duplicates common (a region hears most entries from more
        than one peer); filtering them first saves decoding their deltas.
        """
        vv = self._context.vv
        return [e for e in entries if e.last > vv.get(e.origin)]

    def apply_raw(
        self, entries: Iterable[RawLogEntry], source: str, clock: HybridLogicalClock
    ) -> tuple[list[RemoteOutcome], int]:
        """Decode and apply entries as they arrived from peer ``source``; fold their timestamps into ``clock``.

        Entries already here are skipped before their deltas are decoded
        (``lacking``); decoding checks every invariant of a delta. Returns the
        outcome of each entry that was not already here, and how many applied
        register timestamps were too far ahead for the clock to follow
        (applied all the same: convergence comes first).
        """
        arrived = list(entries)
        fresh = self.lacking(arrived)
        if len(fresh) < len(arrived):
            self._check_duplicates([e for e in arrived if e.last <= self._context.vv.get(e.origin)], source)
        decoded = [LogEntry(e.origin, e.first, e.last, source, decode_as(e.delta, StoreMap), e.delta) for e in fresh]
        outcomes = self.apply_remote(decoded, source=source)
        skews = 0
        for entry, outcome in zip(decoded, outcomes, strict=True):
            if outcome is RemoteOutcome.APPLIED:
                latest = entry.delta.latest_timestamp()
                if latest is not None and clock.receive(latest) is not None:
                    skews += 1
        return outcomes, skews

    def _check_duplicates(self, duplicates: Sequence[RawLogEntry], source: str) -> None:
        """Count and log entries whose event ids this node holds for different events.

        An entry travels whole and unchanged from its origin through every
        relay, so an entry this node has must arrive with the same events and
        the same bytes. Anything else means two events were minted under one
        id (a region reused an origin after losing its data), and each side
        would keep its own forever: the loudest error this node can report.
        Only entries still in this node's log can be compared.
        """
        with self._gate.read(), self.env.begin() as txn:
            for e in duplicates:
                seq = txn.get(_log_key(e.origin, e.last), db=self.log_index)
                raw = None if seq is None else txn.get(seq, db=self.log)
                if raw is None:
                    continue  # trimmed, or this node's entry for those events ends elsewhere
                _origin, first, _last, _source, delta, _arrived = msgpack.unpackb(raw)
                if first != e.first or bytes(delta) != e.delta:
                    self.conflicting_events += e.last - e.first + 1
                    log.error(
                        "peer %s sent events %s:%d..%d that differ from the ones this node holds under the "
                        "same ids: two events were minted under one id, and the regions cannot converge on "
                        "them (see 'A region that lost its data' in the README)",
                        source,
                        e.origin,
                        e.first,
                        e.last,
                    )

    def apply_remote(self, entries: Sequence[LogEntry], source: str) -> list[RemoteOutcome]:
        """Apply log entries received from peer ``source`` in one transaction and one fsync.

        An entry is applied only when this node has everything it depends on
        (the causal-delivery condition of delta-state CRDTs, Almeida et al.
        2018): it continues what this node has of its origin (``first`` is one
        past the vector), and every other event its delta's context names is
        already here. Without that a delta's context could cover events this
        node never received, and they would be skipped as duplicates forever.
        An entry the vector already covers is a duplicate and skipped. At the
        first entry that cannot be applied yet (a gap) the rest are refused
        too, since they may depend on it; the sender resends in causal order
        from what this node acknowledges. A remote delta is never refused for
        its content: convergence comes first.

        Each applied entry is logged (with its source, for provenance) in
        apply order, so it is relayed onwards in causal order too.
        """
        outcomes: list[RemoteOutcome] = []
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    context = self._context_in(txn)
                    log_bytes = self._log_bytes
                    seq = self._next_seq(txn)
                    outcomes = []
                    applied: list[LogEntry] = []
                    for i, entry in enumerate(entries):
                        have = context.vv.get(entry.origin)
                        if entry.last <= have:
                            outcomes.append(RemoteOutcome.DUPLICATE)
                            continue
                        if entry.first != have + 1 or not _dependencies_met(entry, context):
                            outcomes += [RemoteOutcome.GAP] * (len(entries) - i)
                            break
                        self._apply_entry(txn, entry, context)
                        applied.append(entry)
                        context = context.join(entry.delta.context)
                        outcomes.append(RemoteOutcome.APPLIED)
                    # Stamped when applied, not when the message arrived: a large message takes
                    # a while, and a relay is held back relay_delay_ms from when it could go.
                    now_ms = self._wall_ms()
                    for entry in applied:
                        delta = entry.encoded or entry.delta
                        value = _log_value(
                            entry.origin, entry.first, entry.last, delta, source=source, arrived_ms=now_ms
                        )
                        self._append_log(txn, seq, entry.origin, entry.last, value)
                        seq += 1
                        log_bytes += len(value)
                    # Relayed entries count against the log's bound like local ones.
                    trimmed: dict[str, int] = {}
                    budget = max(self.config.options.housekeeping_per_batch_max, 2 * len(entries))
                    log_bytes = self._bound_log(txn, log_bytes, trimmed, budget)
                    horizon = self._horizon.join(VersionVector(trimmed)) if trimmed else self._horizon
                    self._put_context(txn, context)
                    txn.put(_META_LOG_BYTES, str(log_bytes).encode(), db=self.meta)
                    if trimmed:
                        txn.put(_META_HORIZON, encode(horizon), db=self.meta)
                self._context = context
                self._log_bytes = log_bytes
                self._horizon = horizon
                return outcomes
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def _apply_entry(self, txn: lmdb.Transaction, entry: LogEntry, context: CausalContext) -> None:
        delta = entry.delta
        for key, named in delta.entries.items():
            current = self._get_in(txn, key) or KeyState()
            state = current.join_delta(named, context, delta.context)
            if state.is_bottom():
                txn.delete(lmdb_key(key), db=self.data)
            else:
                txn.put(lmdb_key(key), _encode_value(key, state), db=self.data)

    def _next_seq(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self.log)
        return int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1

    def _append_log(self, txn: lmdb.Transaction, seq: int, origin: str, last: int, value: bytes) -> None:
        seq_key = seq.to_bytes(8, "big")
        txn.put(seq_key, value, db=self.log)
        txn.put(_log_key(origin, last), seq_key, db=self.log_index)

    def _context_in(self, txn: lmdb.Transaction) -> CausalContext:
        # The context on disk, not the cached one, is where new dots come
        # from: if a commit's outcome was ever in doubt, the disk decides.
        # Decoding is skipped when the bytes are the ones last written or read.
        raw = bytes(txn.get(_META_CONTEXT, db=self.meta) or b"")
        known, context = self._context_memo
        if raw != known:
            context = decode_as(raw, CausalContext)
            self._context_memo = (raw, context)
        return context

    def _put_context(self, txn: lmdb.Transaction, context: CausalContext) -> None:
        raw = encode(context)
        txn.put(_META_CONTEXT, raw, db=self.meta)
        # Keyed by the bytes: if this transaction aborts, the disk's bytes differ and are decoded.
        self._context_memo = (raw, context)

    def _get_in(self, txn: lmdb.Transaction, key: str) -> KeyState | None:
        db_key = lmdb_key(key)
        raw = txn.get(db_key, db=self.data)
        return None if raw is None else _decode_value(db_key, bytes(raw))[1]

    def _stored_reply(self, txn: lmdb.Transaction, idem_key: bytes) -> tuple[bytes, Applied] | None:
        raw = txn.get(idem_key, db=self.idem)
        if raw is None:
            return None
        _, print_, token = msgpack.unpackb(raw)
        return print_, Applied(decode_as(token, CausalContext))

    def _housekeeping(self, txn: lmdb.Transaction, batch: _Batch, now_ms: int, budget: int) -> None:
        # Expired or excess idempotency records, oldest first.
        expire_before = now_ms - self.config.options.idempotency_ttl_s * 1000
        excess = txn.stat(self.idem)["entries"] - self.config.options.idempotency_records_max
        cursor = txn.cursor(db=self.idem_time)
        while budget and cursor.first():
            stamp = int.from_bytes(cursor.key()[:8], "big")
            if stamp >= expire_before and excess <= 0:
                break
            txn.delete(cursor.key()[8:], db=self.idem)
            cursor.delete()
            excess -= 1
            budget -= 1
        batch.log_bytes = self._bound_log(txn, batch.log_bytes, batch.trimmed, budget)

    def _bound_log(self, txn: lmdb.Transaction, log_bytes: int, trimmed: dict[str, int], budget: int) -> int:
        """Trim the delta log down to its byte bound; returns its new size, and records what went in ``trimmed``.

        Replication trims by acknowledgement (``trim_log``); this bound is the
        backstop for a peer that stays away. The oldest entries go first; the
        horizon records what went, so a peer that needed it is repaired by a
        state transfer instead of waiting for entries that will never come.
        """
        cursor = txn.cursor(db=self.log)
        while budget and log_bytes > self.config.options.delta_log_bytes_max and cursor.first():
            value = bytes(cursor.value())
            origin, _first, last, _source, _delta, _arrived = msgpack.unpackb(value)
            trimmed[origin] = max(trimmed.get(origin, 0), last)
            log_bytes -= len(value)
            txn.delete(_log_key(origin, last), db=self.log_index)
            cursor.delete()
            budget -= 1
        return log_bytes


def _log_key(origin: str, counter: int) -> bytes:
    return origin.encode("utf-8") + b"\x00" + counter.to_bytes(8, "big")


def _log_value(origin: str, first: int, last: int, delta: StoreMap | bytes, *, source: str, arrived_ms: int) -> bytes:
    """A log entry: the events origin:first..last, where it came from ("" for here), its delta, when it was applied."""
    body = delta if isinstance(delta, bytes) else encode(delta)
    return msgpack.packb([origin, first, last, source, body, arrived_ms], use_bin_type=True)


def _dependencies_met(entry: LogEntry, context: CausalContext) -> bool:
    """Whether ``context`` holds every event of other regions that ``entry``'s delta names.

    Events of the entry's own origin need no look: contiguity (``first`` is
    one past what this node has of it) already covers those before the entry.
    """
    delta_context = entry.delta.context
    for region, top in delta_context.vv.items():
        if region == entry.origin:
            continue
        have = context.vv.get(region)
        if have < top and not all(context.contains(Dot(region, n)) for n in range(have + 1, top + 1)):
            return False
    return all(context.contains(dot) for dot in delta_context.cloud if dot.region != entry.origin)


def _split_log_key(db_key: bytes) -> tuple[str, int]:
    return db_key[:-9].decode("utf-8"), int.from_bytes(db_key[-8:], "big")

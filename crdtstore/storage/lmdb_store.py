"""The node's durable state in one LMDB environment: ``LmdbStore``.

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
* ``feed``, ``feed_marks``  the change feed's index of applied changes (``feed``)

``LmdbStore`` is put together from parts over that one environment, a module
each:

* ``environment``  opening the environment, the remap gate, growing the map
* ``keys``         how a key and its state are stored; the repair buckets
* ``delta_log``    the delta log: reading it for peers, trimming and bounding it
* ``writes``       local writes: batches of client requests, idempotency records
* ``remote``       log entries from peers, applied in causal order
* ``transfer``     repair digests and state transfers
* ``feed``         the change feed's index: written with every change, read by watch streams
* ``config``, ``errors``  the store's configuration and exceptions

This module opens the store (its metadata), keeps the origin it mints under,
and serves reads.

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

The store is synchronous and does not know about asyncio or gRPC; the node's
group-commit writer calls ``write_batch`` from its one writer thread.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lmdb

from crdtstore.crdt import (
    AWSet,
    CausalContext,
    CodecError,
    KeyState,
    Timestamp,
    TypeMismatch,
    ValueType,
    VersionVector,
    decode_as,
    encode,
)
from crdtstore.crdt.hlc import ZERO
from crdtstore.crdt.origin import INCARNATION_HEX_DIGITS, origin_of
from crdtstore.replica.wire import DIGEST_BUCKETS, RawLogEntry
from crdtstore.storage.config import StorageConfig, StorageOptions
from crdtstore.storage.delta_log import LogEntry, LogSlice
from crdtstore.storage.environment import (
    _META_CONTEXT,
    _META_HLC,
    _META_HORIZON,
    _META_LOG_BYTES,
    _META_ORIGIN,
    _META_ORIGIN_FILE,
    _META_REGION,
    _META_SCHEMA,
)
from crdtstore.storage.errors import (
    DataCorruption,
    IdempotencyConflict,
    KeyTooLarge,
    StaleTransfer,
    StorageError,
    StoreFull,
    WrongRegion,
)
from crdtstore.storage.keys import _LONG_KEY_PREFIX_BYTES, bucket_of, lmdb_key
from crdtstore.storage.records import KeyRecord, SetRecords, decode_record
from crdtstore.storage.remote import RemoteApply, RemoteOutcome
from crdtstore.storage.transfer import StateTransfer
from crdtstore.storage.writes import Applied, Failed, LocalWrites, WriteRequest
from crdtstore.storage.writes import Result as Result  # noqa: PLC0414 (re-exported: the writer imports it from here)

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

SCHEMA_VERSION = 3
# Version 2 kept a set's members inside its key's record; opening such a directory moves them out (``_migrate``).
_MIGRATES_FROM = {b"2"}

log = logging.getLogger("crdtstore.storage")


class LmdbStore(LocalWrites, RemoteApply, StateTransfer):
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
        self._open_environment()
        # The origin local writes mint under (set by _load_or_initialise_meta); a reason set by
        # retire_origin makes the next batch take a new one.
        self.origin = ""
        self._retire_reason = None
        # Entries from peers that carry event ids this node holds for different events (see apply_raw).
        self.conflicting_events = 0
        self._context_memo = (b"", CausalContext())
        try:
            self._open_databases()
            self._context, self._hlc_mark, self._log_bytes = self._load_or_initialise_meta()
            with self.env.begin(db=self.meta) as txn:
                self._horizon = decode_as(bytes(txn.get(_META_HORIZON) or encode(VersionVector())), VersionVector)
            self._open_feed()
            self._open_audit()
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------

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
            if stored_schema in _MIGRATES_FROM:
                moved = self._migrate(txn)
                txn.put(_META_SCHEMA, str(SCHEMA_VERSION).encode())
                log.info("moved the members of %d sets to records of their own (schema version %d)", moved, 3)
            elif stored_schema != str(SCHEMA_VERSION).encode():
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

    def _migrate(self, txn: lmdb.Transaction) -> int:
        """Schema 2 to 3: every set's members to records of their own, in the opening transaction."""
        records = self._records(txn)
        legacy = []
        for db_key, value in txn.cursor(db=self.data):
            record = decode_record(bytes(db_key), bytes(value))
            if not record.set_id and ValueType.SET in decode_as(record.body, KeyState).slots:
                legacy.append(record)
        allocate = self._set_ids(txn)
        for record in legacy:
            records.store(record.key, decode_as(record.body, KeyState), record, allocate=allocate)
        return len(legacy)

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
        # ``origin_of`` is looked up in this module: a test makes every incarnation the same by patching it here.
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

    # -- reads -------------------------------------------------------------------------

    @property
    def region(self) -> str:
        return self.config.region

    @property
    def context(self) -> CausalContext:
        """Every event this node has applied; updated only after a commit is durable."""
        return self._context

    def wall_ms(self) -> int:
        """The store's wall clock: what a relayed entry's arrival is stamped with, and idempotency records' age."""
        return self._wall_ms()

    @property
    def hlc_mark(self) -> Timestamp:
        return self._hlc_mark

    @property
    def log_horizon(self) -> VersionVector:
        """Per origin, the last counter trimmed from the delta log: a peer below it needs a repair."""
        return self._horizon

    def get(self, key: str) -> KeyState | None:
        with self._gate.read(), self.env.begin() as txn:
            return self._get_in(txn, key)

    def get_bounded(self, key: str, members_max: int) -> tuple[KeyState | None, int]:
        """The key's state and 0, or without its set and the set's member count if it has over ``members_max``.

        A whole read of a set of millions would be unbounded; its members are
        read a page at a time instead (``set_members``).
        """
        with self._gate.read(), self.env.begin() as txn:
            return _bounded(self._records(txn), key, members_max)

    def get_with_some_members(self, key: str, members_max: int) -> tuple[KeyState | None, KeyState | None, int | None]:
        """(the state Get would show, the state with at most ``members_max`` members, the set's size when over it).

        From one read transaction. Under ``members_max`` members both states
        are the whole key and the size is None. Over it, the first is the key
        without its set (Get shows only the set's size) and the second holds
        the set's first ``members_max`` live members with their dots
        (``crdtstore explain``): a set of millions is never read whole.
        """
        with self._gate.read(), self.env.begin() as txn:
            records = self._records(txn)
            record = records.record(lmdb_key(key))
            if record is None:
                return None, None, None
            if record.members <= members_max:
                state = records.assemble(record)
                return state, state, None
            others = decode_as(record.body, KeyState)
            live = ((member, dots) for _, member, dots in records.member_stream(record.set_id) if dots)
            first = dict(itertools.islice(live, members_max))
        slots = dict(others.slots)
        slots[ValueType.SET] = AWSet(first)
        return others, KeyState(slots), record.members

    def get_many_bounded(self, keys: Sequence[str], members_max: int) -> list[tuple[KeyState | None, int]]:
        """``get_bounded`` of each key, from one read transaction."""
        with self._gate.read(), self.env.begin() as txn:
            records = self._records(txn)
            return [_bounded(records, key, members_max) for key in keys]

    def contains(self, key: str, members: Sequence[str]) -> list[bool]:
        """Whether the set at ``key`` holds each of ``members`` (all False for a missing key): O(log n) each.

        ``TypeMismatch`` if the key holds another type and no set.
        """
        with self._gate.read(), self.env.begin() as txn:
            records = self._records(txn)
            record = self._set_record(records, key)
            return [record is not None and records.contains(record, m) for m in members]

    def set_members(self, key: str, after: str = "", limit: int = 1000) -> tuple[list[str], bool]:
        """The set's members after ``after`` in order, at most ``limit``; and whether more follow.

        The order is code point order, but for members longer than 440 UTF-8
        bytes, which sort by hash among those sharing their first 440 bytes.
        Reads ``limit`` member records, whatever the set's size.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._gate.read(), self.env.begin() as txn:
            records = self._records(txn)
            record = self._set_record(records, key)
            return ([], False) if record is None else records.member_page(record, after, limit)

    def _set_record(self, records: SetRecords, key: str) -> KeyRecord | None:
        """The key's record if it holds a set (None if it holds nothing); ``TypeMismatch`` if another type."""
        record = records.record(lmdb_key(key))
        if record is None or record.members:
            return record
        held = decode_as(record.body, KeyState).visible_type
        if held is None:
            return None
        raise TypeMismatch(key, held, ValueType.SET)

    def scan(
        self, prefix: str = "", after: bytes = b"", limit: int = 100, bytes_max: int = 4 * 1024 * 1024
    ) -> tuple[list[tuple[str, KeyState]], bytes]:
        """Up to ``limit`` keys starting with ``prefix`` whose LMDB key is above ``after``.

        A page also stops once it holds ``bytes_max`` bytes of stored values,
        so one page of large values cannot make an unbounded response. Returns
        the entries and the LMDB key of the last one (the next page's
        ``after``), or ``b""`` when the range is exhausted.
        """
        entries, last = self.scan_bounded(prefix, after, limit, bytes_max)
        return [(key, state) for key, state, _ in entries], last

    def scan_bounded(
        self,
        prefix: str = "",
        after: bytes = b"",
        limit: int = 100,
        bytes_max: int = 4 * 1024 * 1024,
        members_max: int | None = None,
    ) -> tuple[list[tuple[str, KeyState, int]], bytes]:
        """As ``scan``, with ``get_bounded``'s rule per key: (key, state, 0), or (key, state without its set,
        the set's member count) for a set of more than ``members_max`` members."""
        raw_prefix = prefix.encode("utf-8")
        seek_prefix = raw_prefix[:_LONG_KEY_PREFIX_BYTES]
        out: list[tuple[str, KeyState, int]] = []
        last = b""
        size = 0
        with self._gate.read(), self.env.begin() as txn:
            records = self._records(txn)
            cursor = txn.cursor(db=self.data)
            if not cursor.set_range(max(seek_prefix, after)):
                return out, b""
            for db_key, value in cursor:
                if not db_key.startswith(seek_prefix):
                    return out, b""
                if db_key == after:
                    continue
                if len(out) == limit or (out and size >= bytes_max):
                    return out, last
                record = decode_record(db_key, bytes(value))
                if not record.key.startswith(prefix):
                    continue
                if members_max is not None and record.members > members_max:
                    out.append((record.key, decode_as(record.body, KeyState), record.members))
                    size += len(value)
                else:
                    state = records.assemble(record)
                    out.append((record.key, state, 0))
                    # A set's members count towards the page as the response will carry them.
                    size += len(value) if not record.members else len(value) + len(encode(state))
                last = db_key
        return out, b""

    def count_keys(self) -> int:
        with self._gate.read(), self.env.begin() as txn:
            return int(txn.stat(self.data)["entries"])

    def data_bytes(self) -> int:
        return (Path(self.config.path) / "data.mdb").stat().st_size


def _bounded(records: SetRecords, key: str, members_max: int) -> tuple[KeyState | None, int]:
    record = records.record(lmdb_key(key))
    if record is None:
        return None, 0
    if record.members > members_max:
        return decode_as(record.body, KeyState), record.members
    return records.assemble(record), 0

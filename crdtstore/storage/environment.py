"""The one LMDB environment the parts of the store share: opening it, and growing its map.

Resources: the map grows by doubling when it fills, up to
``map_size_bytes_max``; past that, or when the disk is full, the batch is
aborted (nothing half-written) and its requests fail with ``StoreFull``.
(The delta log's bound is in ``delta_log``, the idempotency records' in
``writes``.)

``StoreEnvironment`` is the base of those parts: ``delta_log``, ``writes``,
``remote`` and ``transfer`` each add their methods to it as a mixin, and
``LmdbStore`` (``lmdb_store``) puts them together over one environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb

from crdtstore.crdt import CausalContext, KeyState, Timestamp, VersionVector, decode_as, encode
from crdtstore.storage.config import StorageConfig
from crdtstore.storage.errors import StorageError
from crdtstore.storage.records import SetRecords

# The keys of the ``meta`` database.
_META_SCHEMA = b"schema_version"
_META_REGION = b"region"
_META_ORIGIN = b"origin"
_META_ORIGIN_FILE = b"origin_file"
_META_CONTEXT = b"context"
_META_HLC = b"hlc_high_water"
_META_LOG_BYTES = b"delta_log_bytes"
_META_HORIZON = b"log_horizon"
_META_NEXT_SET_ID = b"next_set_id"


class _RemapGate:
    """Readers share it; growing the map and closing the store take it alone.

    ``set_mapsize`` remaps the file, and ``close`` unmaps it, so no read
    transaction of this process may be open while either runs (a reader would
    be left holding pointers into the old mapping). Both wait for the reads
    under way to finish and hold new ones back meanwhile. A backup's copy is
    one long read: that is why the map opens at its maximum by default and
    does not grow (``StorageOptions.map_size_bytes``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
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
    def exclusive(self) -> Iterator[None]:
        """Alone: waits for every read under way, and holds new ones back (growing the map; closing the store)."""
        with self._cond:
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class StoreEnvironment:
    """The environment, its named databases, and the committed state every part of the store reads.

    ``LmdbStore.__init__`` opens the environment and sets the state; the parts
    update the state only after the transaction that wrote it committed.
    """

    config: StorageConfig
    _wall_ms: Callable[[], int]
    # The origin local writes mint under, and why the next batch must take a new one (see ``LmdbStore``).
    origin: str
    _retire_reason: str | None
    # The causal context, the clock's high-water mark, the delta log's size and its horizon.
    _context: CausalContext
    _hlc_mark: Timestamp
    _log_bytes: int
    _horizon: VersionVector
    # The context's bytes on disk as last written or read, and the context they encode (``_context_in``).
    _context_memo: tuple[bytes, CausalContext]

    # -- opening -----------------------------------------------------------------------

    def _open_environment(self) -> None:
        """Lock the data directory and open its environment; ``StorageError`` (with nothing left open) if it fails."""
        config = self.config
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
                map_size=config.options.map_size_bytes or config.options.map_size_bytes_max,
                max_dbs=16,
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

    def _open_databases(self) -> None:
        """Make the environment ready and open its named databases (see ``lmdb_store``)."""
        # Reader slots left behind by a process that was killed would pin
        # old pages forever; clear them before anything else.
        self.env.reader_check()
        self._grow_to_file_size()
        self.data = self.env.open_db(b"data")
        self.members = self.env.open_db(b"members")
        self.log = self.env.open_db(b"log")
        self.log_index = self.env.open_db(b"log_index")
        self.incoming = self.env.open_db(b"incoming")
        self.meta = self.env.open_db(b"meta")
        self.idem = self.env.open_db(b"idem")
        self.idem_time = self.env.open_db(b"idem_time")

    def _grow_to_file_size(self) -> None:
        info = self.env.info()
        size = (Path(self.config.path) / "data.mdb").stat().st_size
        if size > info["map_size"]:
            self.env.set_mapsize(size)

    def close(self) -> None:
        """Close the store once the reads under way have finished (a backup's copy, a page being read on a
        thread whose request was cancelled): closing the environment under a read is a use after close."""
        with self._gate.exclusive():
            self.env.close()
        self._lock_file.close()  # releases the directory lock

    # -- growth ------------------------------------------------------------------------

    def _full_message(self) -> str:
        return (
            f"the store reached its maximum size of {self.config.options.map_size_bytes_max} bytes "
            f"(map_size_bytes_max); nothing of this request was written"
        )

    def _grow(self) -> bool:
        current = self.env.info()["map_size"]
        if current >= self.config.options.map_size_bytes_max:
            return False
        with self._gate.exclusive():
            self.env.set_mapsize(min(current * 2, self.config.options.map_size_bytes_max))
        return True

    # -- reads inside a transaction ----------------------------------------------------

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

    def _records(self, txn: lmdb.Transaction) -> SetRecords:
        return SetRecords(txn, self.data, self.members)

    def _set_ids(self, txn: lmdb.Transaction) -> Callable[[], int]:
        """What gives a new set its id in ``txn`` (ids are never reused)."""

        def allocate() -> int:
            n = int(txn.get(_META_NEXT_SET_ID, db=self.meta) or b"1")
            txn.put(_META_NEXT_SET_ID, str(n + 1).encode(), db=self.meta)
            return n

        return allocate

    def _get_in(self, txn: lmdb.Transaction, key: str) -> KeyState | None:
        return self._records(txn).load(key)[0]

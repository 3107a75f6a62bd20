"""``crdtstore restore DIR --data-dir NEW_DIR``: lay a checked backup down as a new data directory.

The backup is checked first (``verify_backup``) and refused if anything is
wrong. Its data file is copied into the new directory (hashed on the way,
fsynced, renamed into place), and then the store is opened once with
``new_incarnation``, the path every region that may be older than its own
newest events takes (``crdtstore.storage.lmdb_store``): the directory
records a fresh origin before it has minted anything, so the restored
region never mints an event id that its lost incarnation already used and
that a peer may hold. The backup's own origin becomes an ordinary origin:
the restored node's vector claims exactly the events of it the backup held,
so its peers send the rest (from their logs, or by repair). The directory is
marked so that the node starts in rejoin mode: it takes no writes until its
peers have filled it in (``crdtstore.node.rejoin``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from crdtstore.backup.manifest import DATA_FILE, manifest_vector, verify_backup
from crdtstore.backup.take import BackupError, fsync_directory, prepare_empty_directory
from crdtstore.crdt import VersionVector
from crdtstore.storage import LmdbStore, StorageConfig, StorageError, StorageOptions
from crdtstore.storage.backup import mark_rejoin

__all__ = ["RestoreResult", "restore_backup"]

_COPY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RestoreResult:
    data_dir: Path
    region: str
    backup_origin: str  # what the backed-up region minted under
    origin: str  # the fresh origin the restored directory mints under
    vector: VersionVector  # what the restored directory holds, before catching up


def restore_backup(backup: Path, data_dir: Path, *, options: StorageOptions | None = None) -> RestoreResult:
    """Check ``backup`` and lay it down in the new directory ``data_dir``; ``BackupError`` if refused."""
    report = verify_backup(backup)
    if not report.ok:
        raise BackupError(f"refusing to restore {backup}: " + "; ".join(report.problems))
    assert report.manifest is not None
    manifest = report.manifest
    prepare_empty_directory(data_dir, "the data directory")
    partial = data_dir / (DATA_FILE + ".partial")
    digest = hashlib.sha256()
    with (backup / DATA_FILE).open("rb") as src, partial.open("wb") as dst:
        while chunk := src.read(_COPY_BYTES):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != manifest["files"][DATA_FILE]["sha256"]:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise BackupError(f"{backup / DATA_FILE} changed while it was being restored; nothing was restored")
    partial.replace(data_dir / DATA_FILE)
    fsync_directory(data_dir)
    region = manifest["region"]
    # The store logs why it takes a new incarnation as if a node had been started with --rejoin; here the
    # restore's own result says so.
    storage_log = logging.getLogger("crdtstore.storage")
    level = storage_log.level
    storage_log.setLevel(logging.ERROR)
    try:
        store = LmdbStore(StorageConfig(data_dir, region, options or StorageOptions(), new_incarnation=True))
    except StorageError as exc:
        raise BackupError(f"the restored directory {data_dir} does not open: {exc}") from exc
    finally:
        storage_log.setLevel(level)
    try:
        origin, vector = store.origin, store.context.vv
        mark_rejoin(store)  # the node starts in rejoin mode on it (crdtstore.node.rejoin)
    finally:
        store.close()
    return RestoreResult(data_dir, region, manifest["origin"], origin, vector)


def expected_vector(backup: Path) -> VersionVector:
    """The vector a backup's manifest records (what a restore from it starts with)."""
    report = verify_backup(backup)
    if report.manifest is None:
        raise BackupError("; ".join(report.problems))
    return manifest_vector(report.manifest)

"""``crdtstore backup --out DIR``: stream a node's backup into a directory, then check it.

The node sends its compacting copy in chunks (the Admin RPC ``Backup``);
they are written to ``data.mdb.partial`` as they come, hashed on the way, so
neither side holds the copy in memory. The last message carries what the
node read in the copy's transaction. Only when the bytes' SHA-256 matches the
node's is the file renamed to ``data.mdb`` and the manifest written (through
a temporary file and a rename, each fsynced), and then the backup is checked
from its own bytes (``verify_backup``): a backup that says "done" has
already passed ``crdtstore backup verify``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crdtstore.backup.manifest import (
    DATA_FILE,
    MANIFEST_FILE,
    build_manifest,
    manifest_bytes,
    verify_backup,
)
from crdtstore.client import Client
from crdtstore.crdt import CausalContext, Timestamp, VersionVector, decode_as
from crdtstore.storage.backup import BackupFacts
from crdtstore.v1 import kv_pb2

__all__ = ["BackupError", "BackupResult", "take_backup", "write_backup"]


class BackupError(Exception):
    """The backup could not be taken or did not check out; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    directory: Path
    manifest: dict[str, Any]
    data_bytes: int
    seconds: float


def prepare_empty_directory(path: Path, what: str) -> None:
    """Create ``path`` (and its parents) or accept it empty; ``BackupError`` if it holds anything."""
    if path.exists():
        if not path.is_dir():
            raise BackupError(f"{what} {path} exists and is not a directory")
        if any(path.iterdir()):
            raise BackupError(f"{what} {path} is not empty: name a new directory (nothing is overwritten)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {what} {path}: {exc.strerror}") from exc


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file, fsynced and renamed into place."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)
    fsync_directory(path.parent)


def take_backup(client: Client, out: Path, *, chunk_bytes: int = 0, timeout_s: float = 3600.0) -> BackupResult:
    """Back up the node ``client`` speaks to into the new directory ``out`` (see the module docstring)."""
    return write_backup(client.backup_chunks(chunk_bytes=chunk_bytes, timeout_s=timeout_s), out, source=client.addr)


def write_backup(messages: Iterable[kv_pb2.BackupChunk], out: Path, *, source: str) -> BackupResult:
    """Write the messages of a backup stream into the new directory ``out``, then check the backup."""
    prepare_empty_directory(out, "the backup directory")
    started = time.monotonic()
    partial = out / (DATA_FILE + ".partial")
    digest = hashlib.sha256()
    size = 0
    summary = None
    try:
        with partial.open("wb") as f:
            for message in messages:
                if message.HasField("summary"):
                    summary = message.summary
                    break
                f.write(message.data)
                digest.update(message.data)
                size += len(message.data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)  # the directory is left as it was found: empty
        raise
    if summary is None:
        partial.unlink(missing_ok=True)
        raise BackupError("the node ended the backup stream without its summary: the copy is incomplete; run it again")
    if summary.data_sha256 != digest.digest() or summary.data_bytes != size:
        partial.unlink(missing_ok=True)
        raise BackupError(
            f"the {size} bytes received do not match what the node sent ({summary.data_bytes} bytes): "
            f"the copy was damaged on the way; run it again"
        )
    partial.replace(out / DATA_FILE)
    fsync_directory(out)
    try:
        vector = decode_as(summary.token.vector, VersionVector)
    except Exception as exc:  # a node of another version: say so rather than write a wrong manifest
        raise BackupError(f"the node's summary carries a vector this build cannot read: {exc}") from exc
    facts = BackupFacts(
        region=summary.region,
        origin=summary.origin,
        storage_format=summary.storage_format,
        context=CausalContext(vector),
        hlc=Timestamp(summary.hlc_wall_ms, summary.hlc_logical),
        keys=summary.keys,
        bucket_digests=tuple(int.from_bytes(d, "big") for d in summary.bucket_digests),
    )
    manifest = build_manifest(
        facts,
        {DATA_FILE: (size, digest.hexdigest())},
        version=summary.version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        source=source,
    )
    write_durably(out / MANIFEST_FILE, manifest_bytes(manifest))
    report = verify_backup(out)
    if not report.ok:
        raise BackupError(
            f"the backup in {out} does not agree with what the node read in the copy's transaction: "
            + "; ".join(report.problems)
        )
    return BackupResult(out, manifest, size, time.monotonic() - started)

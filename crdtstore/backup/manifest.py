"""A backup directory: ``data.mdb`` (a compacting LMDB copy) and ``manifest.json``, and how one is checked.

The manifest records what the node read in the copy's transaction (region,
origin, storage format, version vector, the clock's high-water mark, key
count, the digest of every repair bucket), the SHA-256 and size of every
file, the crdtstore version that made it and when. It is written in one
canonical form (sorted keys, two-space indent, a final newline) and carries
the SHA-256 of its own content without that field, so a flipped byte
anywhere in it is found: either the JSON no longer parses, or its content
no longer matches its checksum, or its bytes are no longer the canonical
form of their content.

``verify_backup`` recomputes everything from the backup's own bytes: the
files' checksums, then, from the data file opened read-only, the vector,
the clock mark, the key count and every bucket digest, each compared with
the manifest. It needs no node.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtstore.crdt import VersionVector, encode
from crdtstore.replica.wire import DIGEST_BUCKETS
from crdtstore.storage.backup import DIGEST_BYTES, BackupFacts, open_copy, snapshot_facts

__all__ = [
    "DATA_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "ManifestError",
    "VerifyReport",
    "build_manifest",
    "file_sha256",
    "load_manifest",
    "manifest_bytes",
    "verify_backup",
]

FORMAT = "crdtstore-backup"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.mdb"
_READ_BYTES = 1024 * 1024


class ManifestError(Exception):
    """The manifest is missing, unreadable, or not one this build writes."""


def _hex_digests(digests: tuple[int, ...] | list[int]) -> list[str]:
    return [d.to_bytes(DIGEST_BYTES, "big").hex() for d in digests]


def build_manifest(
    facts: BackupFacts, files: Mapping[str, tuple[int, str]], *, version: str, created_at: str, source: str
) -> dict[str, Any]:
    """The manifest of a backup whose copy ``facts`` describe; ``files``: name -> (bytes, sha256 hex)."""
    vector = facts.context.vv
    body: dict[str, Any] = {
        "format": FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "region": facts.region,
        "origin": facts.origin,
        "crdtstore_version": version,
        "storage_format": facts.storage_format,
        "vector": dict(sorted(vector.items())),
        # The same vector as a causal token (as `--json` writes print it), for `get --after`.
        "token": base64.b64encode(encode(vector)).decode("ascii"),
        "hlc_high_water": {"wall_ms": facts.hlc.wall_ms, "logical": facts.hlc.logical},
        "keys": facts.keys,
        "bucket_count": DIGEST_BUCKETS,
        "bucket_digests": _hex_digests(facts.bucket_digests),
        "files": {name: {"bytes": size, "sha256": sha} for name, (size, sha) in sorted(files.items())},
        "created_at": created_at,
        "source": source,
    }
    body["manifest_sha256"] = _content_sha256(body)
    return body


def _canonical(body: Mapping[str, Any]) -> bytes:
    return (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _content_sha256(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in body.items() if k != "manifest_sha256"})).hexdigest()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The one form a manifest is written in."""
    return _canonical(manifest)


def load_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the backup in ``directory``, checked whole; ``ManifestError`` saying what is wrong."""
    path = directory / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist: {directory} is not a crdtstore backup") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        body = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path} is not valid JSON (damaged?): {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a crdtstore backup manifest")
    if body.get("manifest_version") != MANIFEST_VERSION:
        raise ManifestError(
            f"{path} has manifest version {body.get('manifest_version')!r}; this build reads {MANIFEST_VERSION}"
        )
    if body.get("manifest_sha256") != _content_sha256(body):
        raise ManifestError(f"{path} does not match its own checksum (manifest_sha256): it was changed or damaged")
    if raw != _canonical(body):
        raise ManifestError(f"{path} is not byte for byte as it was written: it was changed or damaged")
    _check_shape(body, path)
    return body


def _check_shape(body: dict[str, Any], path: Path) -> None:
    expected: dict[str, type | tuple[type, ...]] = {
        "region": str,
        "origin": str,
        "storage_format": int,
        "vector": dict,
        "hlc_high_water": dict,
        "keys": int,
        "bucket_count": int,
        "bucket_digests": list,
        "files": dict,
    }
    for name, kind in expected.items():
        if not isinstance(body.get(name), kind):
            raise ManifestError(f"{path}: field {name!r} is missing or not of the right type")
    if DATA_FILE not in body["files"]:
        raise ManifestError(f"{path} lists no {DATA_FILE}")
    if body["bucket_count"] != DIGEST_BUCKETS or len(body["bucket_digests"]) != DIGEST_BUCKETS:
        raise ManifestError(
            f"{path} has {len(body['bucket_digests'])} bucket digests; this build uses {DIGEST_BUCKETS}"
        )


def file_sha256(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file, read a chunk at a time."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass
class VerifyReport:
    """What ``verify_backup`` found: no problems means the backup is whole and agrees with itself."""

    directory: str
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    differing_buckets: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        manifest = self.manifest or {}
        return {
            "backup": self.directory,
            "ok": self.ok,
            "problems": self.problems,
            "region": manifest.get("region"),
            "keys": manifest.get("keys"),
            "vector": manifest.get("vector"),
            "created_at": manifest.get("created_at"),
            "differing_buckets": self.differing_buckets,
        }


def verify_backup(directory: Path) -> VerifyReport:
    """Check the backup in ``directory`` from its own bytes (see the module docstring)."""
    report = VerifyReport(str(directory))
    try:
        manifest = load_manifest(directory)
    except ManifestError as exc:
        report.problems.append(str(exc))
        return report
    report.manifest = manifest
    for name, expected in sorted(manifest["files"].items()):
        path = directory / name
        if not isinstance(expected, dict) or Path(name).name != name:
            report.problems.append(f"the manifest's entry for {name!r} is malformed")
            continue
        try:
            size, sha = file_sha256(path)
        except OSError as exc:
            report.problems.append(f"cannot read {path}: {exc.strerror}")
            continue
        if size != expected.get("bytes"):
            report.problems.append(f"{name} has {size} bytes, the manifest says {expected.get('bytes')}")
        if sha != expected.get("sha256"):
            report.problems.append(f"{name} does not match its SHA-256 in the manifest: it was changed or damaged")
    if report.problems:
        # The data no longer is what was copied: reading it as LMDB could only add noise (or crash on garbage).
        return report
    try:
        with open_copy(directory) as (txn, data, members, meta):
            facts = snapshot_facts(txn, data, members, meta)
    except Exception as exc:  # a damaged B-tree can fail in any way: each is a finding, not a crash
        report.problems.append(f"the data file cannot be read as a store: {exc}")
        return report
    _compare(facts, manifest, report)
    return report


def _compare(facts: BackupFacts, manifest: dict[str, Any], report: VerifyReport) -> None:
    problems = report.problems
    for name, found in (
        ("region", facts.region),
        ("origin", facts.origin),
        ("storage_format", facts.storage_format),
        ("keys", facts.keys),
    ):
        if manifest[name] != found:
            problems.append(f"the data file's {name} is {found!r}, the manifest says {manifest[name]!r}")
    vector = dict(sorted(facts.context.vv.items()))
    if manifest["vector"] != vector:
        problems.append(f"the data file's version vector is {vector}, the manifest says {manifest['vector']}")
    hlc = {"wall_ms": facts.hlc.wall_ms, "logical": facts.hlc.logical}
    if manifest["hlc_high_water"] != hlc:
        problems.append(f"the data file's clock mark is {hlc}, the manifest says {manifest['hlc_high_water']}")
    computed = _hex_digests(facts.bucket_digests)
    report.differing_buckets = [
        i for i, (a, b) in enumerate(zip(computed, manifest["bucket_digests"], strict=True)) if a != b
    ]
    if report.differing_buckets:
        problems.append(
            f"{len(report.differing_buckets)} bucket digest(s) recomputed from the data differ from the manifest "
            f"(first: bucket {report.differing_buckets[0]})"
        )


def manifest_vector(manifest: Mapping[str, Any]) -> VersionVector:
    return VersionVector({str(k): int(v) for k, v in manifest["vector"].items()})

"""The store's configuration: its directory, its region and its tunables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StorageOptions:
    """The store's tunables; ``crdtstore serve`` reads them from the ``[storage]`` table."""

    # The LMDB map is opened at map_size_bytes_max at once (0, the default): it is address space,
    # not disk (the file grows as pages are written), and a map that never grows never has to
    # wait for every reader, a backup's copy included, to remap. A smaller map_size_bytes makes
    # it start there and double when full (the simulator does, to exercise growth).
    map_size_bytes: int = 0
    map_size_bytes_max: int = 64 * 1024 * 1024 * 1024
    delta_log_bytes_max: int = 256 * 1024 * 1024
    # A retry is recognised for this long, as long as fewer than
    # idempotency_records_max other keyed requests arrived in between (past
    # that the oldest records go early, and a very late retry applies again).
    idempotency_ttl_s: int = 3600
    idempotency_records_max: int = 10_000_000
    # One key's stored state may not grow past this, so every key stays readable
    # in one response. A set's members are records of their own and do not count.
    key_state_bytes_max: int = 8 * 1024 * 1024
    # One request's change, as one delta log entry, must fit in one replication
    # message; a larger request is refused rather than left unable to replicate.
    log_entry_bytes_max: int = 16 * 1024 * 1024 + 512 * 1024
    # At most this many expired idempotency records or log entries are removed
    # per batch, so housekeeping never makes one commit slow.
    housekeeping_per_batch_max: int = 256
    # A set with more members than this travels in a state transfer in parts
    # of this many (one state each, with the key's other slots), and a
    # transfer joins a set with more members than this, on either side,
    # member by member this many at a time: a repair's memory does not grow
    # with the size of a set.
    set_part_members: int = 4096
    # The change feed's index of applied changes (apart from the delta log, which is trimmed
    # once every peer has an entry): kept this long and within this many bytes. A watch that
    # resumes from before it starts again from a snapshot (or OUT_OF_RANGE, if it asks).
    watch_retention_s: int = 24 * 3600
    watch_retention_bytes_max: int = 1024 * 1024 * 1024
    # Every request this store's writer sees leaves an audit record, written with its change
    # (``crdtstore.storage.audit``). The node turns it on (``[audit] enabled``, the default); off
    # here so that tests and benchmarks of the storage layer alone count only their own dots.
    audit: bool = False
    # Audit records older than this, or past this many bytes, may go once they have been
    # exported (``crdtstore audit export``); until then nothing is dropped, and status says so.
    audit_retention_days: int = 90
    audit_bytes_max: int = 16 * 1024 * 1024 * 1024
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

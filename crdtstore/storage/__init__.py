"""Storage adapters: the node's durable state in LMDB."""

from crdtstore.storage.lmdb_store import (
    Applied,
    DataCorruption,
    Failed,
    IdempotencyConflict,
    KeyTooLarge,
    LmdbStore,
    LogEntry,
    RawLogEntry,
    RemoteOutcome,
    StorageConfig,
    StorageError,
    StorageOptions,
    StoreFull,
    WriteRequest,
    WrongRegion,
)

__all__ = [
    "Applied",
    "DataCorruption",
    "Failed",
    "IdempotencyConflict",
    "KeyTooLarge",
    "LmdbStore",
    "LogEntry",
    "RawLogEntry",
    "RemoteOutcome",
    "StorageConfig",
    "StorageError",
    "StorageOptions",
    "StoreFull",
    "WriteRequest",
    "WrongRegion",
]

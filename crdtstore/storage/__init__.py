"""Storage adapters: the node's durable state in LMDB."""

from crdtstore.storage.lmdb_store import (
    Applied,
    Failed,
    IdempotencyConflict,
    LmdbStore,
    StorageConfig,
    StorageError,
    StoreFull,
    WriteRequest,
    WrongRegion,
)

__all__ = [
    "Applied",
    "Failed",
    "IdempotencyConflict",
    "LmdbStore",
    "StorageConfig",
    "StorageError",
    "StoreFull",
    "WriteRequest",
    "WrongRegion",
]

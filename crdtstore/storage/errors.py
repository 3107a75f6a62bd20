"""What the store raises or refuses with: problems a person must look at, and requests it cannot take."""


class StorageError(Exception):
    """A problem with the data directory that a person must look at."""


class WrongRegion(StorageError):
    pass


class StoreFull(StorageError):
    """The map reached its maximum size or the disk is full; nothing was written."""


class CommitFailed(StorageError):
    """A batch's transaction failed in a way nobody planned for; nothing of it was written (its cause chained)."""


class IdempotencyConflict(Exception):
    """An idempotency key reused for a different request."""


class KeyTooLarge(Exception):
    """The request would make one key's stored state larger than ``key_state_bytes_max``."""


class StaleTransfer(StorageError):
    """A state transfer that can no longer be joined correctly; nothing of it was applied."""


class DataCorruption(StorageError):
    """Stored bytes that cannot be decoded: the disk or a bug damaged them."""

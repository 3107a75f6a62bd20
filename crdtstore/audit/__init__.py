"""The audit trail: a record of every request a region's writer saw, hash-chained per origin.

``record`` is the pure part (what a record holds, its one encoding, chain
checks); ``crdtstore.storage.audit`` writes records in the transaction of the
change they describe and reads them back; ``docs/audit.md`` is the guide.
"""

from crdtstore.audit.record import (
    AUDIT_PREFIX,
    ZERO_HASH,
    AuditError,
    AuditRecord,
    ChainFinding,
    ChainReport,
    Floor,
    OpSummary,
    check_chain,
    decode,
    is_audit_key,
    parse_record_key,
    record_key,
    sort_causally,
    summarize,
)

__all__ = [
    "AUDIT_PREFIX",
    "ZERO_HASH",
    "AuditError",
    "AuditRecord",
    "ChainFinding",
    "ChainReport",
    "Floor",
    "OpSummary",
    "check_chain",
    "decode",
    "is_audit_key",
    "parse_record_key",
    "record_key",
    "sort_causally",
    "summarize",
]

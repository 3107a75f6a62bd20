from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncHello(_message.Message):
    __slots__ = ("region", "vector", "protocol", "incoming", "origin", "to")
    REGION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    region: str
    vector: bytes
    protocol: int
    incoming: bytes
    origin: str
    to: str
    def __init__(self, region: _Optional[str] = ..., vector: _Optional[bytes] = ..., protocol: _Optional[int] = ..., incoming: _Optional[bytes] = ..., origin: _Optional[str] = ..., to: _Optional[str] = ...) -> None: ...

class SyncEntry(_message.Message):
    __slots__ = ("origin", "first", "last", "delta")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    origin: str
    first: int
    last: int
    delta: bytes
    def __init__(self, origin: _Optional[str] = ..., first: _Optional[int] = ..., last: _Optional[int] = ..., delta: _Optional[bytes] = ...) -> None: ...

class SyncEntries(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[SyncEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[SyncEntry, _Mapping]]] = ...) -> None: ...

class SyncAck(_message.Message):
    __slots__ = ("vector", "incoming", "check_vector", "check_digest", "audit_heads")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    CHECK_VECTOR_FIELD_NUMBER: _ClassVar[int]
    CHECK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEADS_FIELD_NUMBER: _ClassVar[int]
    vector: bytes
    incoming: bytes
    check_vector: bytes
    check_digest: bytes
    audit_heads: bytes
    def __init__(self, vector: _Optional[bytes] = ..., incoming: _Optional[bytes] = ..., check_vector: _Optional[bytes] = ..., check_digest: _Optional[bytes] = ..., audit_heads: _Optional[bytes] = ...) -> None: ...

class SnapshotKey(_message.Message):
    __slots__ = ("key", "state", "part")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    key: str
    state: bytes
    part: int
    def __init__(self, key: _Optional[str] = ..., state: _Optional[bytes] = ..., part: _Optional[int] = ...) -> None: ...

class SyncSnapshot(_message.Message):
    __slots__ = ("keys", "done", "context", "page", "buckets")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SnapshotKey]
    done: bool
    context: bytes
    page: int
    buckets: bytes
    def __init__(self, keys: _Optional[_Iterable[_Union[SnapshotKey, _Mapping]]] = ..., done: _Optional[bool] = ..., context: _Optional[bytes] = ..., page: _Optional[int] = ..., buckets: _Optional[bytes] = ...) -> None: ...

class SyncDigests(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: bytes
    def __init__(self, digests: _Optional[bytes] = ...) -> None: ...

class SyncWant(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: bytes
    def __init__(self, buckets: _Optional[bytes] = ...) -> None: ...

class SyncMessage(_message.Message):
    __slots__ = ("sent_wall_ms", "echo_wall_ms", "echo_held_ms", "hello", "entries", "ack", "snapshot", "digests", "want")
    SENT_WALL_MS_FIELD_NUMBER: _ClassVar[int]
    ECHO_WALL_MS_FIELD_NUMBER: _ClassVar[int]
    ECHO_HELD_MS_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    WANT_FIELD_NUMBER: _ClassVar[int]
    sent_wall_ms: int
    echo_wall_ms: int
    echo_held_ms: int
    hello: SyncHello
    entries: SyncEntries
    ack: SyncAck
    snapshot: SyncSnapshot
    digests: SyncDigests
    want: SyncWant
    def __init__(self, sent_wall_ms: _Optional[int] = ..., echo_wall_ms: _Optional[int] = ..., echo_held_ms: _Optional[int] = ..., hello: _Optional[_Union[SyncHello, _Mapping]] = ..., entries: _Optional[_Union[SyncEntries, _Mapping]] = ..., ack: _Optional[_Union[SyncAck, _Mapping]] = ..., snapshot: _Optional[_Union[SyncSnapshot, _Mapping]] = ..., digests: _Optional[_Union[SyncDigests, _Mapping]] = ..., want: _Optional[_Union[SyncWant, _Mapping]] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    VALUE_TYPE_REGISTER: _ClassVar[ValueType]
    VALUE_TYPE_COUNTER: _ClassVar[ValueType]
    VALUE_TYPE_SET: _ClassVar[ValueType]

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_LOCAL: _ClassVar[Durability]
    DURABILITY_REPLICATED: _ClassVar[Durability]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_SET: _ClassVar[ChangeKind]
    CHANGE_KIND_INCR: _ClassVar[ChangeKind]
    CHANGE_KIND_ADD: _ClassVar[ChangeKind]
    CHANGE_KIND_REMOVE: _ClassVar[ChangeKind]
    CHANGE_KIND_DELETE: _ClassVar[ChangeKind]
    CHANGE_KIND_STATE: _ClassVar[ChangeKind]
    CHANGE_KIND_SNAPSHOT: _ClassVar[ChangeKind]
VALUE_TYPE_UNSPECIFIED: ValueType
VALUE_TYPE_REGISTER: ValueType
VALUE_TYPE_COUNTER: ValueType
VALUE_TYPE_SET: ValueType
DURABILITY_UNSPECIFIED: Durability
DURABILITY_LOCAL: Durability
DURABILITY_REPLICATED: Durability
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_SET: ChangeKind
CHANGE_KIND_INCR: ChangeKind
CHANGE_KIND_ADD: ChangeKind
CHANGE_KIND_REMOVE: ChangeKind
CHANGE_KIND_DELETE: ChangeKind
CHANGE_KIND_STATE: ChangeKind
CHANGE_KIND_SNAPSHOT: ChangeKind

class CausalToken(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: bytes
    def __init__(self, vector: _Optional[bytes] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "after")
    KEY_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    key: str
    after: CausalToken
    def __init__(self, key: _Optional[str] = ..., after: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class Sibling(_message.Message):
    __slots__ = ("value", "region", "wall_ms", "logical")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    region: str
    wall_ms: int
    logical: int
    def __init__(self, value: _Optional[bytes] = ..., region: _Optional[str] = ..., wall_ms: _Optional[int] = ..., logical: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("type", "register", "counter", "counter_fits", "counter_decimal", "members", "member_count", "members_omitted")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FITS_FIELD_NUMBER: _ClassVar[int]
    COUNTER_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    type: ValueType
    register: bytes
    counter: int
    counter_fits: bool
    counter_decimal: str
    members: _containers.RepeatedScalarFieldContainer[str]
    member_count: int
    members_omitted: bool
    def __init__(self, type: _Optional[_Union[ValueType, str]] = ..., register: _Optional[bytes] = ..., counter: _Optional[int] = ..., counter_fits: _Optional[bool] = ..., counter_decimal: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., member_count: _Optional[int] = ..., members_omitted: _Optional[bool] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "siblings", "conflicts")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SIBLINGS_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: Value
    siblings: _containers.RepeatedCompositeFieldContainer[Sibling]
    conflicts: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ..., siblings: _Optional[_Iterable[_Union[Sibling, _Mapping]]] = ..., conflicts: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("entry", "token")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    entry: KeyValue
    token: CausalToken
    def __init__(self, entry: _Optional[_Union[KeyValue, _Mapping]] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class SetRegister(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class Increment(_message.Message):
    __slots__ = ("amount",)
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    amount: int
    def __init__(self, amount: _Optional[int] = ...) -> None: ...

class AddMembers(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, members: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveMembers(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, members: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteKey(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Operation(_message.Message):
    __slots__ = ("key", "set", "increment", "add", "remove", "delete")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    INCREMENT_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    key: str
    set: SetRegister
    increment: Increment
    add: AddMembers
    remove: RemoveMembers
    delete: DeleteKey
    def __init__(self, key: _Optional[str] = ..., set: _Optional[_Union[SetRegister, _Mapping]] = ..., increment: _Optional[_Union[Increment, _Mapping]] = ..., add: _Optional[_Union[AddMembers, _Mapping]] = ..., remove: _Optional[_Union[RemoveMembers, _Mapping]] = ..., delete: _Optional[_Union[DeleteKey, _Mapping]] = ...) -> None: ...

class MutateRequest(_message.Message):
    __slots__ = ("operations", "idempotency_key", "durability", "replicas")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    idempotency_key: bytes
    durability: Durability
    replicas: int
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., idempotency_key: _Optional[bytes] = ..., durability: _Optional[_Union[Durability, str]] = ..., replicas: _Optional[int] = ...) -> None: ...

class MutateResponse(_message.Message):
    __slots__ = ("token", "replayed")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    token: CausalToken
    replayed: bool
    def __init__(self, token: _Optional[_Union[CausalToken, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("prefix", "limit", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    limit: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[KeyValue]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ContainsRequest(_message.Message):
    __slots__ = ("key", "members", "after")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    key: str
    members: _containers.RepeatedScalarFieldContainer[str]
    after: CausalToken
    def __init__(self, key: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., after: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class ContainsResponse(_message.Message):
    __slots__ = ("present", "token")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    token: CausalToken
    def __init__(self, present: _Optional[_Iterable[bool]] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ("key", "limit", "page_token", "after")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    key: str
    limit: int
    page_token: str
    after: CausalToken
    def __init__(self, key: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., after: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token", "token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    token: CausalToken
    def __init__(self, members: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("region", "version", "keys", "token", "draining", "data_bytes", "commits", "requests_committed", "peers", "clock_skew_events", "clock_fenced", "origin", "conflicting_events", "auth_enabled", "refused_unauthenticated", "refused_permission_denied", "watch_streams", "watch_events_sent", "watch_streams_cut", "feed_records", "feed_bytes", "audit_enabled", "audit_records", "audit_refusals_dropped", "audit_head_mismatches", "audit_retention_blocked", "rejoin_waiting")
    REGION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SKEW_EVENTS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FENCED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_EVENTS_FIELD_NUMBER: _ClassVar[int]
    AUTH_ENABLED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_UNAUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_PERMISSION_DENIED_FIELD_NUMBER: _ClassVar[int]
    WATCH_STREAMS_FIELD_NUMBER: _ClassVar[int]
    WATCH_EVENTS_SENT_FIELD_NUMBER: _ClassVar[int]
    WATCH_STREAMS_CUT_FIELD_NUMBER: _ClassVar[int]
    FEED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    FEED_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_REFUSALS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RETENTION_BLOCKED_FIELD_NUMBER: _ClassVar[int]
    REJOIN_WAITING_FIELD_NUMBER: _ClassVar[int]
    region: str
    version: str
    keys: int
    token: CausalToken
    draining: bool
    data_bytes: int
    commits: int
    requests_committed: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    clock_skew_events: int
    clock_fenced: bool
    origin: str
    conflicting_events: int
    auth_enabled: bool
    refused_unauthenticated: int
    refused_permission_denied: int
    watch_streams: int
    watch_events_sent: int
    watch_streams_cut: int
    feed_records: int
    feed_bytes: int
    audit_enabled: bool
    audit_records: int
    audit_refusals_dropped: int
    audit_head_mismatches: int
    audit_retention_blocked: str
    rejoin_waiting: str
    def __init__(self, region: _Optional[str] = ..., version: _Optional[str] = ..., keys: _Optional[int] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ..., draining: _Optional[bool] = ..., data_bytes: _Optional[int] = ..., commits: _Optional[int] = ..., requests_committed: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., clock_skew_events: _Optional[int] = ..., clock_fenced: _Optional[bool] = ..., origin: _Optional[str] = ..., conflicting_events: _Optional[int] = ..., auth_enabled: _Optional[bool] = ..., refused_unauthenticated: _Optional[int] = ..., refused_permission_denied: _Optional[int] = ..., watch_streams: _Optional[int] = ..., watch_events_sent: _Optional[int] = ..., watch_streams_cut: _Optional[int] = ..., feed_records: _Optional[int] = ..., feed_bytes: _Optional[int] = ..., audit_enabled: _Optional[bool] = ..., audit_records: _Optional[int] = ..., audit_refusals_dropped: _Optional[int] = ..., audit_head_mismatches: _Optional[int] = ..., audit_retention_blocked: _Optional[str] = ..., rejoin_waiting: _Optional[str] = ...) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("region", "address", "connected", "acked", "behind", "clock_offset_ms", "clock_error_ms")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_ERROR_MS_FIELD_NUMBER: _ClassVar[int]
    region: str
    address: str
    connected: bool
    acked: CausalToken
    behind: int
    clock_offset_ms: int
    clock_error_ms: int
    def __init__(self, region: _Optional[str] = ..., address: _Optional[str] = ..., connected: _Optional[bool] = ..., acked: _Optional[_Union[CausalToken, _Mapping]] = ..., behind: _Optional[int] = ..., clock_offset_ms: _Optional[int] = ..., clock_error_ms: _Optional[int] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("prefix", "rights")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    RIGHTS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    rights: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prefix: _Optional[str] = ..., rights: _Optional[_Iterable[str]] = ...) -> None: ...

class Role(_message.Message):
    __slots__ = ("name", "grants", "changed_by", "changed_in", "changed_at_ms", "built_in")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_IN_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    BUILT_IN_FIELD_NUMBER: _ClassVar[int]
    name: str
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    changed_by: str
    changed_in: str
    changed_at_ms: int
    built_in: bool
    def __init__(self, name: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., changed_by: _Optional[str] = ..., changed_in: _Optional[str] = ..., changed_at_ms: _Optional[int] = ..., built_in: _Optional[bool] = ...) -> None: ...

class PutRoleRequest(_message.Message):
    __slots__ = ("name", "grants")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, name: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class PutRoleResponse(_message.Message):
    __slots__ = ("role", "token")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    role: Role
    token: CausalToken
    def __init__(self, role: _Optional[_Union[Role, _Mapping]] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class GetRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRoleResponse(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: Role
    def __init__(self, role: _Optional[_Union[Role, _Mapping]] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    def __init__(self, roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ...) -> None: ...

class DeleteRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRoleResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: CausalToken
    def __init__(self, token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("jti",)
    JTI_FIELD_NUMBER: _ClassVar[int]
    jti: str
    def __init__(self, jti: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: CausalToken
    def __init__(self, token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("prefix", "after", "start", "on_expired", "progress_interval_ms")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ON_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    after: CausalToken
    start: str
    on_expired: str
    progress_interval_ms: int
    def __init__(self, prefix: _Optional[str] = ..., after: _Optional[_Union[CausalToken, _Mapping]] = ..., start: _Optional[str] = ..., on_expired: _Optional[str] = ..., progress_interval_ms: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("key", "changes", "entry", "origin", "region", "counter", "wall_ms", "logical", "applied_ms", "principal", "group_end", "token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_FIELD_NUMBER: _ClassVar[int]
    APPLIED_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GROUP_END_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: str
    changes: _containers.RepeatedScalarFieldContainer[ChangeKind]
    entry: KeyValue
    origin: str
    region: str
    counter: int
    wall_ms: int
    logical: int
    applied_ms: int
    principal: str
    group_end: bool
    token: CausalToken
    def __init__(self, key: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[ChangeKind, str]]] = ..., entry: _Optional[_Union[KeyValue, _Mapping]] = ..., origin: _Optional[str] = ..., region: _Optional[str] = ..., counter: _Optional[int] = ..., wall_ms: _Optional[int] = ..., logical: _Optional[int] = ..., applied_ms: _Optional[int] = ..., principal: _Optional[str] = ..., group_end: _Optional[bool] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("events", "token", "reset", "reset_done", "progress", "partial")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    RESET_DONE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    token: CausalToken
    reset: bool
    reset_done: bool
    progress: bool
    partial: bool
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ..., reset: _Optional[bool] = ..., reset_done: _Optional[bool] = ..., progress: _Optional[bool] = ..., partial: _Optional[bool] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("chunk_bytes",)
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk_bytes: int
    def __init__(self, chunk_bytes: _Optional[int] = ...) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data", "summary")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    summary: BackupSummary
    def __init__(self, data: _Optional[bytes] = ..., summary: _Optional[_Union[BackupSummary, _Mapping]] = ...) -> None: ...

class BackupSummary(_message.Message):
    __slots__ = ("region", "origin", "version", "storage_format", "token", "hlc_wall_ms", "hlc_logical", "keys", "bucket_digests", "data_sha256", "data_bytes")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HLC_WALL_MS_FIELD_NUMBER: _ClassVar[int]
    HLC_LOGICAL_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    DATA_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    region: str
    origin: str
    version: str
    storage_format: int
    token: CausalToken
    hlc_wall_ms: int
    hlc_logical: int
    keys: int
    bucket_digests: _containers.RepeatedScalarFieldContainer[bytes]
    data_sha256: bytes
    data_bytes: int
    def __init__(self, region: _Optional[str] = ..., origin: _Optional[str] = ..., version: _Optional[str] = ..., storage_format: _Optional[int] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ..., hlc_wall_ms: _Optional[int] = ..., hlc_logical: _Optional[int] = ..., keys: _Optional[int] = ..., bucket_digests: _Optional[_Iterable[bytes]] = ..., data_sha256: _Optional[bytes] = ..., data_bytes: _Optional[int] = ...) -> None: ...

class DigestRequest(_message.Message):
    __slots__ = ("after",)
    AFTER_FIELD_NUMBER: _ClassVar[int]
    after: CausalToken
    def __init__(self, after: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("region", "token", "bucket_digests", "keys")
    REGION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BUCKET_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    region: str
    token: CausalToken
    bucket_digests: _containers.RepeatedScalarFieldContainer[bytes]
    keys: int
    def __init__(self, region: _Optional[str] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ..., bucket_digests: _Optional[_Iterable[bytes]] = ..., keys: _Optional[int] = ...) -> None: ...

class BucketKeysRequest(_message.Message):
    __slots__ = ("buckets", "page_size", "page_token")
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedScalarFieldContainer[int]
    page_size: int
    page_token: str
    def __init__(self, buckets: _Optional[_Iterable[int]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class DotSummary(_message.Message):
    __slots__ = ("origin", "count", "max_counter")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNTER_FIELD_NUMBER: _ClassVar[int]
    origin: str
    count: int
    max_counter: int
    def __init__(self, origin: _Optional[str] = ..., count: _Optional[int] = ..., max_counter: _Optional[int] = ...) -> None: ...

class BucketKey(_message.Message):
    __slots__ = ("entry", "digest", "bucket", "dots")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    DOTS_FIELD_NUMBER: _ClassVar[int]
    entry: KeyValue
    digest: bytes
    bucket: int
    dots: _containers.RepeatedCompositeFieldContainer[DotSummary]
    def __init__(self, entry: _Optional[_Union[KeyValue, _Mapping]] = ..., digest: _Optional[bytes] = ..., bucket: _Optional[int] = ..., dots: _Optional[_Iterable[_Union[DotSummary, _Mapping]]] = ...) -> None: ...

class BucketKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token", "token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[BucketKey]
    next_page_token: str
    token: CausalToken
    def __init__(self, keys: _Optional[_Iterable[_Union[BucketKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

class AuditOperation(_message.Message):
    __slots__ = ("key", "kind", "amount", "value_sha256")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_SHA256_FIELD_NUMBER: _ClassVar[int]
    key: str
    kind: str
    amount: int
    value_sha256: bytes
    def __init__(self, key: _Optional[str] = ..., kind: _Optional[str] = ..., amount: _Optional[int] = ..., value_sha256: _Optional[bytes] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("origin", "region", "seq", "prev", "hash", "first", "last", "hlc_wall_ms", "hlc_logical", "wall_ms", "kind", "principal", "request_id", "method", "peer", "idempotency_key", "operations", "durability", "token", "code", "reason", "encoded")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    HLC_WALL_MS_FIELD_NUMBER: _ClassVar[int]
    HLC_LOGICAL_FIELD_NUMBER: _ClassVar[int]
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    origin: str
    region: str
    seq: int
    prev: bytes
    hash: bytes
    first: int
    last: int
    hlc_wall_ms: int
    hlc_logical: int
    wall_ms: int
    kind: str
    principal: str
    request_id: str
    method: str
    peer: str
    idempotency_key: bytes
    operations: _containers.RepeatedCompositeFieldContainer[AuditOperation]
    durability: str
    token: bytes
    code: str
    reason: str
    encoded: bytes
    def __init__(self, origin: _Optional[str] = ..., region: _Optional[str] = ..., seq: _Optional[int] = ..., prev: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., first: _Optional[int] = ..., last: _Optional[int] = ..., hlc_wall_ms: _Optional[int] = ..., hlc_logical: _Optional[int] = ..., wall_ms: _Optional[int] = ..., kind: _Optional[str] = ..., principal: _Optional[str] = ..., request_id: _Optional[str] = ..., method: _Optional[str] = ..., peer: _Optional[str] = ..., idempotency_key: _Optional[bytes] = ..., operations: _Optional[_Iterable[_Union[AuditOperation, _Mapping]]] = ..., durability: _Optional[str] = ..., token: _Optional[bytes] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ..., encoded: _Optional[bytes] = ...) -> None: ...

class AuditLogRequest(_message.Message):
    __slots__ = ("key", "principal", "region", "since_ms", "until_ms", "limit", "page_token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: str
    principal: str
    region: str
    since_ms: int
    until_ms: int
    limit: int
    page_token: str
    def __init__(self, key: _Optional[str] = ..., principal: _Optional[str] = ..., region: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditLogResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AuditVerifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditFinding(_message.Message):
    __slots__ = ("origin", "at", "seq", "problem")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    origin: str
    at: int
    seq: int
    problem: str
    def __init__(self, origin: _Optional[str] = ..., at: _Optional[int] = ..., seq: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class AuditChain(_message.Message):
    __slots__ = ("origin", "records", "head_seq", "head_hash", "findings")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    records: int
    head_seq: int
    head_hash: bytes
    findings: _containers.RepeatedCompositeFieldContainer[AuditFinding]
    def __init__(self, origin: _Optional[str] = ..., records: _Optional[int] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., findings: _Optional[_Iterable[_Union[AuditFinding, _Mapping]]] = ...) -> None: ...

class AuditPeerHead(_message.Message):
    __slots__ = ("peer", "origin", "seq", "hash", "agrees", "problem", "reported_ms", "not_compared")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    AGREES_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REPORTED_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_COMPARED_FIELD_NUMBER: _ClassVar[int]
    peer: str
    origin: str
    seq: int
    hash: bytes
    agrees: bool
    problem: str
    reported_ms: int
    not_compared: bool
    def __init__(self, peer: _Optional[str] = ..., origin: _Optional[str] = ..., seq: _Optional[int] = ..., hash: _Optional[bytes] = ..., agrees: _Optional[bool] = ..., problem: _Optional[str] = ..., reported_ms: _Optional[int] = ..., not_compared: _Optional[bool] = ...) -> None: ...

class AuditVerifyResponse(_message.Message):
    __slots__ = ("ok", "chains", "peers")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    chains: _containers.RepeatedCompositeFieldContainer[AuditChain]
    peers: _containers.RepeatedCompositeFieldContainer[AuditPeerHead]
    def __init__(self, ok: _Optional[bool] = ..., chains: _Optional[_Iterable[_Union[AuditChain, _Mapping]]] = ..., peers: _Optional[_Iterable[_Union[AuditPeerHead, _Mapping]]] = ...) -> None: ...

class AuditExportRequest(_message.Message):
    __slots__ = ("since_ms", "until_ms")
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    since_ms: int
    until_ms: int
    def __init__(self, since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ...) -> None: ...

class AuditChainHead(_message.Message):
    __slots__ = ("origin", "seq", "hash", "last")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    origin: str
    seq: int
    hash: bytes
    last: int
    def __init__(self, origin: _Optional[str] = ..., seq: _Optional[int] = ..., hash: _Optional[bytes] = ..., last: _Optional[int] = ...) -> None: ...

class AuditExportChunk(_message.Message):
    __slots__ = ("records", "heads", "done", "through_ms")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    THROUGH_MS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    heads: _containers.RepeatedCompositeFieldContainer[AuditChainHead]
    done: bool
    through_ms: int
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., heads: _Optional[_Iterable[_Union[AuditChainHead, _Mapping]]] = ..., done: _Optional[bool] = ..., through_ms: _Optional[int] = ...) -> None: ...

class AuditExportedRequest(_message.Message):
    __slots__ = ("since_ms", "through_ms", "heads")
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGH_MS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    since_ms: int
    through_ms: int
    heads: _containers.RepeatedCompositeFieldContainer[AuditChainHead]
    def __init__(self, since_ms: _Optional[int] = ..., through_ms: _Optional[int] = ..., heads: _Optional[_Iterable[_Union[AuditChainHead, _Mapping]]] = ...) -> None: ...

class AuditExportedResponse(_message.Message):
    __slots__ = ("exported_through_ms",)
    EXPORTED_THROUGH_MS_FIELD_NUMBER: _ClassVar[int]
    exported_through_ms: int
    def __init__(self, exported_through_ms: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ExplainVersion(_message.Message):
    __slots__ = ("origin", "region", "counter", "wall_ms", "logical", "value", "amount", "member", "winner", "record")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    WALL_MS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    origin: str
    region: str
    counter: int
    wall_ms: int
    logical: int
    value: bytes
    amount: int
    member: str
    winner: bool
    record: AuditRecord
    def __init__(self, origin: _Optional[str] = ..., region: _Optional[str] = ..., counter: _Optional[int] = ..., wall_ms: _Optional[int] = ..., logical: _Optional[int] = ..., value: _Optional[bytes] = ..., amount: _Optional[int] = ..., member: _Optional[str] = ..., winner: _Optional[bool] = ..., record: _Optional[_Union[AuditRecord, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("entry", "versions", "reason", "explanation", "truncated", "token")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    entry: KeyValue
    versions: _containers.RepeatedCompositeFieldContainer[ExplainVersion]
    reason: str
    explanation: str
    truncated: bool
    token: CausalToken
    def __init__(self, entry: _Optional[_Union[KeyValue, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[ExplainVersion, _Mapping]]] = ..., reason: _Optional[str] = ..., explanation: _Optional[str] = ..., truncated: _Optional[bool] = ..., token: _Optional[_Union[CausalToken, _Mapping]] = ...) -> None: ...

"""The node's access control: who is calling, what the request needs, and the rules kept in the store.

Roles and revocations live in the store itself, under keys that start with a
NUL character (``SYSTEM_PREFIX``), a keyspace no client request can name: the
services refuse such keys with INVALID_ARGUMENT and leave them out of scans.
Only this module writes them (through the Admin RPCs), so they replicate,
repair and back up like any data, and every region enforces the same rules.

- A role is a register at ``ROLE_PREFIX + name`` holding the role's grants, and
  who wrote it from which origin: a put replaces it whole, and concurrent puts
  resolve like any register (the later timestamp wins). Deleting a role writes a
  tombstone record to the same register, so a deletion too names its principal.
- A revocation adds the token's ``jti`` to the add-wins set ``REVOKED_SET``
  (never removed from, so a revocation is permanent and wins over everything),
  with a register at ``REVOCATION_PREFIX + jti`` recording who revoked it where.

Lookups are cached; a write of this node's own, and every write a peer's
replication applied, clears the caches (``changed``), and wakes the
long-lived streams so that they check their caller again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import msgpack

from crdtstore.audit.record import AUDIT_PREFIX
from crdtstore.auth.policy import (
    ADMIN_ROLE,
    BUILT_IN_ADMIN,
    Allowed,
    Grant,
    Need,
    PolicyError,
    Role,
    decide,
    parse_rights,
)
from crdtstore.auth.tokens import InvalidToken, KeyFileError, Principal, TokenVerifier, load_public_key
from crdtstore.crdt import ValueType
from crdtstore.node.config import AuthSettings, ConfigError
from crdtstore.operations import AddMembers, Operation, SetRegister
from crdtstore.storage import LmdbStore
from crdtstore.storage.audit import FLOOR_PREFIX
from crdtstore.storage.keys import lmdb_key

__all__ = [
    "ANONYMOUS",
    "NOBODY",
    "REVOKED_SET",
    "ROLE_PREFIX",
    "SYSTEM_PREFIX",
    "AccessControl",
    "Refusal",
    "RoleRecord",
    "bearer_token",
    "is_reserved",
    "revocation_operations",
    "role_operations",
]

SYSTEM_PREFIX = "\x00"
ROLE_PREFIX = "\x00auth/role/"
REVOKED_SET = "\x00auth/revoked"
REVOCATION_PREFIX = "\x00auth/revocation/"
_RECORD_VERSION = 1
# Lookups remembered between changes of the rules; past this many the cache starts afresh.
_LOOKUPS_CACHED_MAX = 100_000

# Who a request speaks for when access control is off: anyone may do anything.
ANONYMOUS = Principal("anonymous", (ADMIN_ROLE,), "", math.inf)
# Who a request speaks for before a handler has said (review: a handler registered some other way must not run as
# ANONYMOUS): no role, no right.
NOBODY = Principal("nobody", (), "", 0.0)


def is_reserved(key: str) -> bool:
    """Whether ``key`` lies in the system keyspace that no client request may name."""
    return key.startswith(SYSTEM_PREFIX)


class Refusal(Exception):
    """A request refused: the status code and a message that names no token."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RoleRecord:
    """A role as stored: its grants (None once deleted), and who changed it last, from which origin, when."""

    name: str
    grants: tuple[Grant, ...] | None
    changed_by: str
    changed_in: str
    changed_at_ms: int

    @property
    def role(self) -> Role | None:
        return None if self.grants is None else Role(self.name, self.grants)


def _encode_record(fields: Mapping[str, Any]) -> bytes:
    return msgpack.packb({"v": _RECORD_VERSION, **fields})


def role_operations(
    name: str, grants: Sequence[Grant] | None, principal: str, origin: str, now_ms: int
) -> list[Operation]:
    """The write that puts role ``name`` (or deletes it, for ``grants`` None), recording who did it where."""
    body: dict[str, Any] = {"by": principal, "origin": origin, "at_ms": now_ms}
    if grants is None:
        body["deleted"] = True
    else:
        body["grants"] = [[g.prefix, sorted(g.rights)] for g in grants]
    return [SetRegister(ROLE_PREFIX + name, _encode_record(body))]


def revocation_operations(token_id: str, principal: str, origin: str, now_ms: int) -> list[Operation]:
    """The write that revokes ``token_id`` for good, recording who did it where (one batch, applied whole)."""
    record = _encode_record({"by": principal, "origin": origin, "at_ms": now_ms})
    return [AddMembers(REVOKED_SET, (token_id,)), SetRegister(REVOCATION_PREFIX + token_id, record)]


def decode_role(name: str, raw: bytes) -> RoleRecord:
    """A stored role record; ``ValueError`` for bytes no version of this code wrote."""
    try:
        body = msgpack.unpackb(raw)
    except (ValueError, msgpack.ExtraData) as exc:
        raise ValueError(f"role {name!r}: the stored record does not decode: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != _RECORD_VERSION:
        raise ValueError(f"role {name!r}: a stored record of an unknown version")
    grants: tuple[Grant, ...] | None = None
    if not body.get("deleted"):
        try:
            grants = tuple(Grant(str(prefix), parse_rights(rights)) for prefix, rights in body["grants"])
        except (KeyError, TypeError, ValueError, PolicyError) as exc:
            raise ValueError(f"role {name!r}: the stored grants do not decode: {exc}") from None
    return RoleRecord(name, grants, str(body.get("by", "")), str(body.get("origin", "")), int(body.get("at_ms", 0)))


def _register_value(store: LmdbStore, key: str) -> bytes | None:
    state = store.get(key)
    shown = None if state is None else state.read()
    if shown is None or shown.type is not ValueType.REGISTER:
        return None
    assert isinstance(shown.value, bytes)
    return shown.value


class AccessControl:
    """Authenticates callers and authorizes what they ask, against the roles and revocations in ``store``."""

    def __init__(self, settings: AuthSettings, store: LmdbStore) -> None:
        self.settings = settings
        self.store = store
        self.enabled = settings.enabled
        self.verifier: TokenVerifier | None = None
        if self.enabled:
            try:
                keys = [load_public_key(path) for path in settings.token_public_keys]
                self.verifier = TokenVerifier(
                    keys,
                    algorithms=settings.algorithms,
                    issuer=settings.issuer,
                    leeway_s=settings.leeway_s,
                    cache_entries_max=settings.token_cache_entries_max,
                )
            except KeyFileError as exc:
                raise ConfigError(f"auth.token_public_keys: {exc}") from None
        self.refused_unauthenticated = 0
        self.refused_permission = 0
        self._roles: dict[str, Role | None] = {}
        self._revoked: dict[str, bool] = {}
        self._system_keys: int | None = None
        self._changed: asyncio.Event | None = None

    # -- the rules changed -------------------------------------------------------------

    def changed(self) -> None:
        """Roles or revocations may have changed (a local admin write, or anything a peer sent)."""
        self._roles.clear()
        self._revoked.clear()
        self._system_keys = None
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_changed(self, timeout_s: float) -> None:
        """Return at the next ``changed``, or after ``timeout_s`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    # -- who is calling -----------------------------------------------------------------

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None, now: float | None = None) -> Principal:
        """The caller named by the ``authorization: Bearer`` metadata; ``Refusal`` UNAUTHENTICATED otherwise."""
        if self.verifier is None:
            return ANONYMOUS
        token = bearer_token(metadata)
        if token is None:
            raise self._unauthenticated(
                "no token: send the metadata 'authorization: Bearer <token>' (crdtstore --token or "
                "CRDTSTORE_TOKEN; Client(addr, token=...))"
            )
        try:
            principal = self.verifier.verify(token, now)
        except InvalidToken as exc:
            raise self._unauthenticated(str(exc)) from None
        self.check_revoked(principal)
        return principal

    def check_revoked(self, principal: Principal) -> None:
        if principal.token_id and self.is_revoked(principal.token_id):
            raise self._unauthenticated(f"the token of {principal.subject!r} (jti {principal.token_id}) was revoked")

    def check_current(self, principal: Principal, now: float | None = None) -> None:
        """``Refusal`` once ``principal``'s token has expired or been revoked (for long-lived streams)."""
        if self.verifier is None:
            return
        moment = time.time() if now is None else now
        if moment > principal.expires_at + self.settings.leeway_s:
            raise self._unauthenticated(f"the token of {principal.subject!r} has expired")
        self.check_revoked(principal)

    def _unauthenticated(self, message: str) -> Refusal:
        self.refused_unauthenticated += 1
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, message)

    # -- what they may do -----------------------------------------------------------------

    def allows(self, principal: Principal, needs: Sequence[Need]) -> bool:
        """Whether ``principal`` holds every need (True without access control); nothing is counted."""
        if self.verifier is None or not needs:
            return True
        return isinstance(decide(principal.roles, self._roles_of(principal.roles), needs), Allowed)

    def authorize(self, principal: Principal, needs: Sequence[Need]) -> None:
        """Return when ``principal`` holds every need; ``Refusal`` PERMISSION_DENIED naming the first that fails."""
        if self.verifier is None or not needs:
            return
        defined = self._roles_of(principal.roles)
        decision = decide(principal.roles, defined, needs)
        if isinstance(decision, Allowed):
            return
        self.refused_permission += 1
        need = decision.need
        where = "every key" if need.right in ("admin", "replicate", "audit") else f"key {need.key!r}"
        roles = ", ".join(principal.roles) or "none"
        missing = [name for name in principal.roles if name not in defined]
        # A role the token names but no region defines (deleted, or not made yet) grants nothing: say so.
        undefined = f"; {', '.join(repr(m) for m in missing)} is not a role this node knows" if missing else ""
        raise Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"principal {principal.subject!r} lacks the right {need.right!r} on {where}: no grant of its roles "
            f"({roles}) holds it there{undefined}",
        )

    def may(self, principal: Principal, need: Need) -> bool:
        """Whether ``principal`` holds ``need`` (a scan's filter: not counted as a refusal)."""
        if self.verifier is None:
            return True
        return isinstance(decide(principal.roles, self._roles_of(principal.roles), [need]), Allowed)

    def _roles_of(self, names: Iterable[str]) -> dict[str, Role]:
        found: dict[str, Role] = {}
        for name in names:
            role = self.role(name)
            if role is not None:
                found[name] = role
        return found

    # -- the rules, read from the store ------------------------------------------------

    def role(self, name: str) -> Role | None:
        if name == ADMIN_ROLE:
            return BUILT_IN_ADMIN
        if name in self._roles:
            return self._roles[name]
        record = self.role_record(name)
        role = None if record is None else record.role
        if len(self._roles) >= _LOOKUPS_CACHED_MAX:
            self._roles.clear()
        self._roles[name] = role
        return role

    def role_record(self, name: str) -> RoleRecord | None:
        """The stored record of role ``name`` (a deleted role's tombstone too), or None if never written."""
        raw = _register_value(self.store, ROLE_PREFIX + name)
        if raw is None:
            return None
        try:
            return decode_role(name, raw)
        except ValueError:
            # Written by a newer version, say: a role this node cannot read grants nothing here.
            return None

    def role_records(self) -> list[RoleRecord]:
        """Every role ever written, in name order (deleted ones too: their grants are None)."""
        records: list[RoleRecord] = []
        after = b""
        while True:
            page, after = self.store.scan(ROLE_PREFIX, after, 1000)
            for key, state in page:
                shown = state.read()
                if shown is None or shown.type is not ValueType.REGISTER:
                    continue
                assert isinstance(shown.value, bytes)
                name = key.removeprefix(ROLE_PREFIX)
                try:
                    records.append(decode_role(name, shown.value))
                except ValueError:
                    continue
            if not after:
                return records

    def system_keys(self) -> int:
        """How many keys the system keyspace holds (what a count of the store's keys leaves out).

        The roles and revocations are counted once per change of the rules;
        the audit records, which grow with every request, are counted from
        their chains' ends (``LmdbStore.audit_record_count``), never scanned;
        the audit floors (one per trimmed chain) are counted each time.
        """
        if self._system_keys is None:
            count, after = 0, b""
            while True:
                page, after = self.store.scan(SYSTEM_PREFIX, after, 1000)
                for key, _ in page:
                    if key.startswith(AUDIT_PREFIX):
                        after = lmdb_key(AUDIT_PREFIX) + b"\xff"  # past every record key
                        break
                    count += not key.startswith(FLOOR_PREFIX)
                if not after:
                    break
            self._system_keys = count
        floors = len(self.store.scan(FLOOR_PREFIX, b"", 100_000)[0])
        return self._system_keys + floors + self.store.audit_record_count()

    def is_revoked(self, token_id: str) -> bool:
        known = self._revoked.get(token_id)
        if known is None:
            known = self.store.contains(REVOKED_SET, [token_id])[0]
            if len(self._revoked) >= _LOOKUPS_CACHED_MAX:
                self._revoked.clear()
            self._revoked[token_id] = known
        return known


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer`` entry of gRPC metadata, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None

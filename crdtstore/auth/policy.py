"""Who may do what: rights, grants, roles, and the pure decision over them.

A role is a named list of grants; a grant is a key prefix and the rights it
gives on every key that starts with it. A request needs a set of (right, key)
pairs: ``set`` on each key a batch writes, ``read`` on the key a read names,
``admin``, ``audit`` or ``replicate`` on the empty key (which only a grant
with the empty prefix, every key, matches; ``admin`` implies ``audit``). It
is allowed when, for each pair, some grant of one of the caller's roles
matches the key and holds the right: the union of the grants that match the
key holds every right needed there. A batch with one forbidden operation is
refused whole, and the refusal names the first pair that failed, in the order
the request gave them.

The role ``admin`` is built in and holds every right on every key. A role name
a token carries that no role defines gives nothing, so deleting a role takes
its rights away from every token that names it.

This module does no I/O: the node asks it with the roles it read from its
store (``crdtstore.node.access``), and the tests compare it with a reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "ADMIN_ROLE",
    "BUILT_IN_ADMIN",
    "EVERY_KEY",
    "RIGHTS",
    "Allowed",
    "Decision",
    "Denied",
    "Grant",
    "Need",
    "PolicyError",
    "Right",
    "Role",
    "decide",
    "parse_grant",
    "parse_rights",
    "validate_role_name",
]

Right = Literal["read", "set", "incr", "decr", "add", "remove", "delete", "replicate", "admin", "audit"]
RIGHTS: tuple[Right, ...] = get_args(Right)
ADMIN_ROLE = "admin"
# What admin and replicate are asked on: only a grant for every key (the empty prefix) matches it.
EVERY_KEY = ""

_ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


class PolicyError(ValueError):
    """A role, a grant or a right that is not well formed; the message says what would be accepted."""


@dataclass(frozen=True, slots=True)
class Grant:
    prefix: str
    rights: frozenset[Right]

    def covers(self, right: Right, key: str) -> bool:
        # The audit trail may be read with the audit right, or with admin (which holds everything an operator may).
        held = right in self.rights or (right == "audit" and "admin" in self.rights)
        return held and key.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Need:
    """One right a request needs on one key."""

    right: Right
    key: str


@dataclass(frozen=True, slots=True)
class Allowed:
    pass


@dataclass(frozen=True, slots=True)
class Denied:
    """The first need no grant covers."""

    need: Need


Decision = Allowed | Denied
_ALLOWED = Allowed()

BUILT_IN_ADMIN = Role(ADMIN_ROLE, (Grant(EVERY_KEY, frozenset(RIGHTS)),))


def decide(role_names: Iterable[str], roles: Mapping[str, Role], needs: Sequence[Need]) -> Decision:
    """Allowed when every need is covered by a grant of one of ``role_names`` (as ``roles`` defines them)."""
    grants: list[Grant] = []
    for name in role_names:
        if name == ADMIN_ROLE:
            return _ALLOWED
        role = roles.get(name)
        if role is not None:
            grants.extend(role.grants)
    for need in needs:
        if not any(grant.covers(need.right, need.key) for grant in grants):
            return Denied(need)
    return _ALLOWED


def parse_rights(text: str | Iterable[str], where: str = "rights") -> frozenset[Right]:
    """``"read,set"`` (or a list of names) -> the rights; ``PolicyError`` for an unknown or missing one."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    rights: set[Right] = set()
    for name in names:
        if name not in RIGHTS:
            raise PolicyError(f"{where}: {name!r} is not a right (rights: {', '.join(RIGHTS)})")
        rights.add(name)
    if not rights:
        raise PolicyError(f"{where}: name at least one right ({', '.join(RIGHTS)})")
    return frozenset(rights)


def parse_grant(text: str) -> Grant:
    """``PREFIX=RIGHT[,RIGHT...]`` -> a grant; the prefix may be empty (every key) and may hold ``=``."""
    prefix, sep, rights = text.rpartition("=")
    if not sep:
        raise PolicyError(
            f"grant {text!r} is not PREFIX=RIGHT[,RIGHT...] (for example orders/=read,add; =read for every key; "
            f"rights: {', '.join(RIGHTS)})"
        )
    return Grant(prefix, parse_rights(rights, f"grant {text!r}"))


def validate_role_name(name: str) -> None:
    if not _ROLE_NAME.match(name):
        raise PolicyError(
            f"role name {name!r} is not valid: use 1-128 letters, digits, '.', '_', ':', '@' or '-', "
            f"starting with a letter or digit"
        )
    if name == ADMIN_ROLE:
        raise PolicyError("the role 'admin' is built in (every right on every key) and cannot be changed")

"""The ``crdtstore`` command: run a node, or read and write one.

    crdtstore serve [--config FILE] [--data-dir DIR] [--listen HOST:PORT] [--region NAME]
                    [--peer NAME=HOST:PORT ...] [--metrics-listen HOST:PORT] [--health-listen HOST:PORT]
    crdtstore demo [--regions N] [--data-dir DIR] [--latency-ms MS] [--base-port PORT] [--metrics-base-port PORT]
    crdtstore [--addr HOST:PORT] [--timeout S] [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] ...
    crdtstore [--addr HOST:PORT] [--timeout S] get KEY [--after TOKEN] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] set KEY VALUE|-|@PATH [--durability D] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] incr KEY [N] [--durability D] [--json]   # N may be negative
    crdtstore [--addr HOST:PORT] [--timeout S] sadd KEY MEMBER [MEMBER ...] [--durability D] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] srem KEY MEMBER [MEMBER ...] [--durability D] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] del KEY [--durability D] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] sismember KEY MEMBER [MEMBER ...] [--after TOKEN] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] smembers KEY [--after TOKEN] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] scan [PREFIX] [--json]
    crdtstore [--addr HOST:PORT] [--timeout S] status [--json]
    crdtstore [--addr HOST:PORT] watch [PREFIX] [--after TOKEN] [--start now] [--on-expired error]
                                       [--failover HOST:PORT ...] [--json]
    crdtstore [--token TOKEN] ...                                   # or CRDTSTORE_TOKEN
    crdtstore token keygen --out DIR
    crdtstore token issue --signing-key FILE --subject NAME --role ROLE [--role ...] [--ttl 1h]
    crdtstore token revoke JTI [--json]
    crdtstore role put NAME --grant PREFIX=RIGHT[,RIGHT...] [--grant ...] [--json]
    crdtstore role get NAME [--json]
    crdtstore role list [--json]
    crdtstore role delete NAME [--json]
    crdtstore [--addr HOST:PORT] backup --out DIR [--json]       # docs/backup.md
    crdtstore backup verify DIR [--json]
    crdtstore restore DIR --data-dir NEW_DIR [--json]
    crdtstore verify --addr A --addr B [--addr C ...] [--deadline S] [--json]
    crdtstore cert ca --out DIR [--name NAME] [--days N]
    crdtstore cert issue --ca DIR --name NAME [--host HOST ...] --out DIR [--days N]
    crdtstore [--addr HOST:PORT] health [--service NAME]

Deployment. ``cert ca`` writes a certificate authority (``ca.crt``, and
``ca.key`` with mode 0600); ``cert issue`` a certificate signed by it for a
region or a client (``tls.crt``, ``tls.key``, a copy of ``ca.crt``), naming
NAME and every ``--host``. ``health`` asks a node's standard gRPC health
service (``grpc.health.v1``) and exits 0 when it is SERVING, 1 otherwise: the
container image's health check.

Access control. Where a node requires tokens, ``--token`` (or
``$CRDTSTORE_TOKEN``) is sent with every request. ``token keygen`` writes a
signing key pair (``signing.pem``, mode 0600, and ``signing.pub.pem``, which
nodes list in ``[auth] token_public_keys``); ``token issue`` prints a token
signed with it, for a subject holding roles, valid for ``--ttl`` (``90s``,
``15m``, ``1h``, ``30d``). Neither talks to a node. The role and revocation
commands need a token with the ``admin`` right. A grant's PREFIX may be empty
(``=read``: every key). ``role get --json`` prints ``{"name", "grants":
[{"prefix", "rights"}], "changed_by", "changed_in", "changed_at_ms",
"built_in"}``; ``role list --json`` one such object per line, and ``role put --json``
the role as stored; ``role delete`` and ``token revoke`` with ``--json``
print ``{"token": <base64>}`` (the change's causal token).

Input. ``set``'s VALUE is stored as its UTF-8 bytes, except that ``-`` reads
the value from standard input and ``@PATH`` from a file, byte for byte (so a
value can be binary, or larger than the shell lets an argument be); ``@@TEXT``
is the literal ``@TEXT``. A MEMBER of ``sadd``, ``srem`` and ``sismember`` is taken the same
way, but ``-`` and ``@PATH`` give one member per line (UTF-8; empty lines are
skipped, a trailing carriage return is dropped).

``D`` is ``local`` (the default: fsynced on this node) or ``replicated:N``
(fsynced in N regions, this one included). ``--after TOKEN`` takes the token a
write printed with ``--json`` (in any region; base64, or hex as an audit
record shows it) and waits until this node has seen it before reading. A
TOKEN that is neither, or does not decode as a token, is a usage error.

``--addr`` defaults to ``$CRDTSTORE_ADDR``, then to ``DEFAULT_ADDR``, where
``serve`` listens by default.

Output. ``get --json`` prints one object ``{"key", "type", "value"}``: a set's
value is its sorted members, a counter's an integer, a register's the winning
value as text, or in base64 with ``"encoding": "base64"`` when it (or one of its
siblings) is not UTF-8. A register with concurrent writes adds ``"siblings"``
(every live value, winner first, in the same encoding) and a key with slots of
other types adds ``"conflicts"`` (``[{"type", "value"}, ...]``). A missing key
is ``{"key": K, "type": null, "value": null}``. ``scan --json`` prints one such
object per line. ``sismember`` prints ``true`` or ``false`` per member, in
the order given (``--json``: ``{"key": K, "members": {MEMBER: bool, ...}}``);
``smembers`` prints a set's members one per line in code point order, read a
page at a time (``--json``: one JSON string per line); both fail with exit
status 1 on a key of another type. ``get`` refuses a set with more members
than the node's ``get_members_max`` (exit status 1: read it with
``smembers``), and ``scan`` lists such a set with ``"value": null``,
``"members_omitted": true`` and ``"member_count"``. Writes print nothing, or with ``--json``
``{"token": <base64>, "replayed": bool}``.

``watch`` follows the change feed until Ctrl-C (exit status 130): one line
per changed key, or with ``--json`` one object per line: a change is
``get --json``'s object plus ``"changes"`` (what happened: ``set``, ``incr``,
``add``, ``remove``, ``delete``, ``state`` for a repair, ``snapshot``),
``"origin"``, ``"region"``, ``"counter"`` (with origin, the event's dot),
``"wall_ms"``, ``"logical"``, ``"applied_ms"``, ``"principal"``,
``"token"``, ``"group_end"`` and ``"reset"`` (part of a snapshot). A
snapshot is framed by ``{"reset_begin": true, "token": ...}`` and
``{"reset_end": true, "token": ...}``; an idle stream prints
``{"progress": true, "token": ...}``. Every object carries a token
(base64) that is safe to store once the object is applied, and to resume
from with ``--after``: the stream's new token at a group's end
(``"group_end"``), ``reset_end`` and ``progress``; the token from before
the group in the middle of one (its changes come again, their dots tell
which you have); empty inside a snapshot (resuming without a token gives a
whole snapshot again). See ``ResumeTokens``.
``--start now`` (only changes from now) applies without ``--after``; with a
token it is accepted and has no effect. ``--after`` (here and for the reads)
takes a token in base64, as the commands print it, or in hex, as an audit
record shows it. ``--failover`` names other regions to resume on, from the
last token, when the node fails.

Exit status: 0 on success (a missing key included), 1 when the server or the
connection reports an error, 2 for wrong usage. Errors are one line on stderr.
``backup verify`` exits 1 on any difference; ``verify`` exits 0 when the
regions agree, 1 on drift, 2 when they could not be brought to a common point
(docs/backup.md says what each prints with ``--json``).

``serve`` and ``demo`` belong to the node: their options come from
``crdtstore.node.main.add_serve_arguments`` and ``crdtstore.tools.demo``, imported
only when they are asked for, so the client commands work without the node's
dependencies.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import grpc

from crdtstore import cli_explain
from crdtstore.auth.policy import Grant, PolicyError, parse_grant
from crdtstore.client import (
    Change,
    Client,
    ClientError,
    ClientTls,
    Entry,
    Progress,
    ResetBegin,
    ResetEnd,
    RoleInfo,
    Status,
    Value,
    WatchItem,
    WriteResult,
    parse_durability,
)
from crdtstore.operations import AddMembers, DeleteKey, Increment, RemoveMembers, SetRegister
from crdtstore.tokens import decode_token, describe_behind, events_behind, parse_token

__all__ = ["ADDR_ENV", "DEFAULT_ADDR", "TOKEN_ENV", "ResumeTokens", "build_parser", "entry_json", "main", "watch_json"]

DEFAULT_ADDR = "127.0.0.1:7420"
ADDR_ENV = "CRDTSTORE_ADDR"
TOKEN_ENV = "CRDTSTORE_TOKEN"
PROG = "crdtstore"

_WRITES = frozenset({"set", "incr", "sadd", "srem", "del"})

# The most the command line reads for one ``-`` or ``@PATH``: a bound on its memory. A node
# refuses far less by default (value_bytes_max, 1 MiB), and says so.
INPUT_BYTES_MAX = 256 * 1024 * 1024

Handler = Callable[[Client, argparse.Namespace], WriteResult | None]
# Commands that need no node: they work on local files.
LocalHandler = Callable[[argparse.Namespace], int]


# -- rendering ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _texts(values: Sequence[bytes]) -> tuple[list[str], bool]:
    """The values as UTF-8 text, or all in base64 (and True) when one is not UTF-8."""
    try:
        return [v.decode("utf-8") for v in values], False
    except UnicodeDecodeError:
        return [_b64(v) for v in values], True


def _json_value(value: Value) -> tuple[object, bool]:
    """A value in JSON, and whether it is base64."""
    if isinstance(value, bytes):
        (text,), is_b64 = _texts([value])
        return text, is_b64
    if isinstance(value, int):
        return value, False
    return sorted(value), False


def entry_json(entry: Entry) -> dict[str, object]:
    """The JSON object ``get --json`` prints for ``entry``."""
    out: dict[str, object] = {"key": entry.key, "type": entry.type, "value": None}
    if entry.members_omitted:
        # Too many to list: smembers pages through them. (Only here: every other object keeps its shape.)
        out["members_omitted"] = True
        out["member_count"] = entry.member_count
    if entry.value is None:
        return out
    if isinstance(entry.value, bytes) and entry.siblings:
        texts, is_b64 = _texts([entry.value, *(s.value for s in entry.siblings)])
        out["value"] = texts[0]
        if is_b64:
            out["encoding"] = "base64"
        out["siblings"] = texts[1:]
    else:
        out["value"], is_b64 = _json_value(entry.value)
        if is_b64:
            out["encoding"] = "base64"
    if entry.conflicts:
        conflicts: list[dict[str, object]] = []
        for conflict in entry.conflicts:
            if conflict.value is None:
                conflicts.append({"type": conflict.type, "value": None, "members_omitted": True})
                continue
            value, is_b64 = _json_value(conflict.value)
            item: dict[str, object] = {"type": conflict.type, "value": value}
            if is_b64:
                item["encoding"] = "base64"
            conflicts.append(item)
        out["conflicts"] = conflicts
    return out


def _escape(text: str) -> str:
    """``text`` on one line: control characters (tab and newline too) and backslashes escaped."""
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _human_register(value: bytes) -> tuple[str, bool]:
    """A register value for a person, and whether it had to be escaped (it is not UTF-8)."""
    try:
        return value.decode("utf-8"), False
    except UnicodeDecodeError:
        return value.decode("utf-8", errors="backslashreplace"), True


def _human_line(value: Value) -> str:
    if isinstance(value, bytes):
        return _escape(_human_register(value)[0])
    if isinstance(value, int):
        return str(value)
    return json.dumps(sorted(value), ensure_ascii=False)


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def _print_entry(entry: Entry) -> None:
    if not entry.exists:
        _note(f"{entry.key!r}: no such key")
        return
    if entry.value is None:
        _note(f"{entry.key!r}: a set of {entry.member_count:,} members: list them with smembers")
        return
    if isinstance(entry.value, bytes):
        text, escaped = _human_register(entry.value)
        print(text)
        if escaped:
            _note(f"{entry.key!r}: the value is not UTF-8 and is shown escaped; --json gives its exact bytes")
        if entry.siblings:
            _note(f"{entry.key!r}: {len(entry.siblings)} concurrent values, this is the winner; --json lists them")
    elif isinstance(entry.value, int):
        print(entry.value)
    else:
        for member in sorted(entry.value):
            print(member)
    if entry.conflicts:
        types = ", ".join(sorted({c.type for c in entry.conflicts}))
        _note(f"{entry.key!r}: also created concurrently as: {types}; delete the key to resolve")


def _status_json(status: Status) -> dict[str, object]:
    peers = [{**peer, "acked": _b64(peer["acked"])} for peer in status["peers"]]
    return {**status, "token": _b64(status["token"]), "peers": peers}


# -- commands ----------------------------------------------------------------------------


# How long the command line asks a node's status after a read with --after ran out of time.
_LAG_STATUS_TIMEOUT_S_MAX = 2.0


def _token_not_seen(client: Client, token: bytes) -> str:
    """Why a read with ``--after`` ran out of time when only the client's own deadline spoke.

    The node usually answers first with its own account; when the answer was
    late, its status says whether it is up and how far behind the token it is.
    """
    try:
        target = decode_token(token)
    except ValueError:
        return f"{client.addr} did not answer in time"
    try:
        with Client(
            client.addr,
            timeout_s=min(client.timeout_s, _LAG_STATUS_TIMEOUT_S_MAX),
            retries_max=0,
            tls=client.tls,
            token=client.token,
        ) as probe:
            seen = decode_token(probe.status()["token"])
    except (ClientError, ValueError):
        return (
            f"{client.addr} did not show within {client.timeout_s:g} s that it has seen the token, "
            f"and did not answer a status request either: is it overloaded or stuck?"
        )
    behind = events_behind(seen, target)
    if not behind:
        return f"{client.addr} has seen the token by now, but not within {client.timeout_s:g} s: retry"
    return (
        f"{client.addr} has not yet seen the token: it is {describe_behind(behind)}. The node is up; replication "
        f"has not brought it that far yet: retry later, or read in the region that wrote it"
    )


def _get(client: Client, args: argparse.Namespace) -> None:
    try:
        entry = client.get(args.key, after=args.after)
    except ClientError as err:
        if args.after and err.code == grpc.StatusCode.DEADLINE_EXCEEDED and "token" not in err.message:
            raise ClientError(err.code, _token_not_seen(client, args.after)) from err
        raise
    if args.json:
        _print_json(entry_json(entry))
    else:
        _print_entry(entry)


def _scan(client: Client, args: argparse.Namespace) -> None:
    for entry in client.scan(args.prefix):
        if args.json:
            _print_json(entry_json(entry))
        elif entry.members_omitted:
            print(f"{_escape(entry.key)}\t(a set of {entry.member_count:,} members: list them with smembers)")
        elif entry.value is not None:
            print(f"{_escape(entry.key)}\t{_human_line(entry.value)}")


class ResumeTokens:
    """The token ``watch --json`` prints with each item: one a consumer may store once it has applied the item.

    Resuming from it loses nothing. At a group's last change, ``reset_end``
    and ``progress`` it is the stream's new token. In the middle of a group
    it is the token from before the group: a consumer that stores it and
    resumes gets the whole group again (each event's dot says which it has).
    From ``reset_begin`` until ``reset_end`` it is empty: a consumer that
    resumes mid-snapshot has forgotten what it held, and must have a whole
    snapshot again (a watch without a token). So every object has a token
    (issue 20: "the token in each"), and storing any of them is safe.
    """

    def __init__(self, after: bytes | None) -> None:
        self.token = after or b""  # after the last whole group, snapshot or progress

    def after(self, item: WatchItem) -> bytes:
        if isinstance(item, ResetBegin):
            self.token = b""
        elif isinstance(item, ResetEnd | Progress) or (isinstance(item, Change) and item.group_end):
            self.token = item.token
        return self.token


def watch_json(item: WatchItem, token: bytes) -> dict[str, object]:
    """The JSON object ``watch --json`` prints for one item of the stream, with ``token`` (``ResumeTokens``)."""
    if isinstance(item, ResetBegin):
        return {"reset_begin": True, "token": _b64(token)}
    if isinstance(item, ResetEnd):
        return {"reset_end": True, "token": _b64(token)}
    if isinstance(item, Progress):
        return {"progress": True, "token": _b64(token)}
    return {
        **entry_json(item.entry),
        "changes": list(item.changes),
        "origin": item.origin,
        "region": item.region,
        "counter": item.counter,
        "wall_ms": item.wall_ms,
        "logical": item.logical,
        "applied_ms": item.applied_ms,
        "principal": item.principal,
        "token": _b64(token),  # safe to store once this change is applied (ResumeTokens)
        "group_end": item.group_end,
        "reset": item.reset,
    }


def _watch(client: Client, args: argparse.Namespace) -> None:
    addresses = [client.addr, *args.failover] if args.failover else None
    items = client.watch(
        args.prefix, after=args.after, start=args.start, on_expired=args.on_expired, addresses=addresses
    )
    tokens = ResumeTokens(args.after)
    for item in items:
        if args.json:
            _print_json(watch_json(item, tokens.after(item)))
        elif isinstance(item, Change):
            shown = _human_line(item.entry.value) if item.entry.value is not None else "(gone)"
            where = f"  [{item.region}]" if item.region else ""
            print(f"{'+'.join(item.changes)}\t{_escape(item.key)}\t{shown}{where}", flush=True)
        elif isinstance(item, ResetBegin):
            print("-- snapshot: the keys as they are now", flush=True)
        elif isinstance(item, ResetEnd):
            print("-- snapshot complete; changes follow", flush=True)
        else:
            continue
        sys.stdout.flush()


def _sismember(client: Client, args: argparse.Namespace) -> None:
    present = client.smismember(args.key, *args.members, after=args.after)
    if args.json:
        _print_json({"key": args.key, "members": dict(zip(args.members, present, strict=True))})
    else:
        for answer in present:
            print("true" if answer else "false")


def _smembers(client: Client, args: argparse.Namespace) -> None:
    for member in client.smembers(args.key, after=args.after):
        if args.json:
            _print_json(member)
        else:
            print(_escape(member))


def _status(client: Client, args: argparse.Namespace) -> None:
    raw = client.status()
    status = _status_json(raw)
    if args.json:
        _print_json(status)
        return
    for name, value in status.items():
        if name == "peers":
            continue
        print(f"{name}: {json.dumps(value) if isinstance(value, bool) else value}")
    for peer in raw["peers"]:
        state = "connected" if peer["connected"] else "DISCONNECTED"
        print(
            f"peer {peer['region']} at {peer['address']}: {state}, {peer['behind']} events behind, "
            f"clock offset {peer['clock_offset_ms']} ms (±{peer['clock_error_ms']} ms)"
        )


def _role_json(role: RoleInfo) -> dict[str, object]:
    return {
        "name": role.name,
        "grants": [{"prefix": prefix, "rights": list(rights)} for prefix, rights in role.grants],
        "changed_by": role.changed_by,
        "changed_in": role.changed_in,
        "changed_at_ms": role.changed_at_ms,
        "built_in": role.built_in,
    }


def _grants_line(role: RoleInfo) -> str:
    return "; ".join(f"{_escape(prefix) or '(every key)'}={','.join(rights)}" for prefix, rights in role.grants)


def _print_role(role: RoleInfo) -> None:
    print(role.name)
    for prefix, rights in role.grants:
        print(f"  {_escape(prefix) or '(every key)'}\t{','.join(rights)}")
    if role.built_in:
        print("  (built in)")
    elif role.changed_by:
        print(f"  changed by {role.changed_by} in {role.changed_in} at {role.changed_at_ms} ms")


def _role_put(client: Client, args: argparse.Namespace) -> None:
    grants: list[Grant] = args.grants
    role = client.put_role(args.name, [(g.prefix, sorted(g.rights)) for g in grants])
    if args.json:
        _print_json(_role_json(role))


def _role_get(client: Client, args: argparse.Namespace) -> None:
    role = client.get_role(args.name)
    if args.json:
        _print_json(_role_json(role))
    else:
        _print_role(role)


def _role_list(client: Client, args: argparse.Namespace) -> None:
    for role in client.list_roles():
        if args.json:
            _print_json(_role_json(role))
        else:
            print(f"{role.name}\t{_grants_line(role)}")


def _role_delete(client: Client, args: argparse.Namespace) -> None:
    token = client.delete_role(args.name)
    if args.json:
        _print_json({"token": _b64(token)})


def _unverified_jti(token: str) -> object:
    """The jti claim of ``token``, read without checking its signature (only to show it or revoke by it);
    ``jwt.PyJWTError`` if it is not a token."""
    import jwt  # noqa: PLC0415 (PyJWT: only here)

    claims = jwt.decode(token, options={"verify_signature": False})
    return claims.get("jti") if isinstance(claims, dict) else None


def _jti(text: str) -> str:
    """``token revoke``'s JTI; a whole token (as ``token issue`` prints it) stands for its own jti."""
    if text.count(".") != 2:
        return text
    import jwt  # noqa: PLC0415 (PyJWT: only here)

    try:
        jti = _unverified_jti(text)
    except jwt.PyJWTError:
        return text  # not a token: a jti of another issuer may hold dots
    if not isinstance(jti, str) or not jti:
        raise argparse.ArgumentTypeError("the token given has no jti (id): it cannot be revoked by id")
    return jti


def _token_revoke(client: Client, args: argparse.Namespace) -> None:
    token = client.revoke_token(args.jti)
    _note(f"revoked the token with jti {args.jti!r}, in every region")
    if args.json:
        _print_json({"token": _b64(token)})


def _token_keygen(args: argparse.Namespace) -> int:
    from crdtstore.auth.tokens import KeyFileError, keygen  # noqa: PLC0415 (needs cryptography: only here)

    try:
        private, public = keygen(args.out)
    except (KeyFileError, OSError) as exc:
        _note(str(exc))
        return 1
    print(f"wrote {private} (the signing key: keep it secret; mode 0600)")
    print(f"wrote {public} (list it in [auth] token_public_keys of every node)")
    return 0


def _token_issue(args: argparse.Namespace) -> int:
    from crdtstore.auth.tokens import KeyFileError, issue_token, parse_ttl  # noqa: PLC0415

    try:
        ttl_s = parse_ttl(args.ttl)
    except ValueError as exc:
        _note(str(exc))
        return 2
    try:
        token = issue_token(
            args.signing_key, args.subject, args.roles, ttl_s=ttl_s, issuer=args.issuer, token_id=args.id
        )
    except (KeyFileError, ValueError) as exc:
        _note(str(exc))
        return 1
    if not args.roles:
        _note("the token holds no role: it can authenticate, but it may do nothing")
    print(token)
    jti = _unverified_jti(token)
    _note(f"its jti is {jti} (crdtstore token revoke {jti} revokes it)")
    return 0


def _cert_ca(args: argparse.Namespace) -> int:
    from crdtstore.auth.certificates import CertificateError, make_authority_files  # noqa: PLC0415

    try:
        cert, key = make_authority_files(args.out, args.name, days=args.days)
    except CertificateError as exc:
        _note(str(exc))
        return 1
    print(f"wrote {cert} (the authority's certificate: every node and client trusts it)")
    print(f"wrote {key} (the authority's key: keep it secret, off the nodes; mode 0600)")
    return 0


def _cert_issue(args: argparse.Namespace) -> int:
    from crdtstore.auth.certificates import CertificateError, issue_files  # noqa: PLC0415

    try:
        cert, key, ca = issue_files(args.ca, args.out, args.name, args.hosts, days=args.days)
    except CertificateError as exc:
        _note(str(exc))
        return 1
    print(f"wrote {cert}, {key} (mode 0600) and {ca}: the certificate of {args.name}")
    return 0


def _health(client: Client, args: argparse.Namespace) -> None:
    status = client.health(args.service)
    print(status)
    if status != "SERVING":
        raise ClientError(grpc.StatusCode.UNAVAILABLE, f"{client.addr} is {status}, not SERVING")


def _set(client: Client, args: argparse.Namespace) -> WriteResult:
    return client.mutate([SetRegister(args.key, args.value)], durability=args.durability)


def _incr(client: Client, args: argparse.Namespace) -> WriteResult:
    return client.mutate([Increment(args.key, args.n)], durability=args.durability)


def _sadd(client: Client, args: argparse.Namespace) -> WriteResult:
    return client.mutate([AddMembers(args.key, tuple(args.members))], durability=args.durability)


def _srem(client: Client, args: argparse.Namespace) -> WriteResult:
    return client.mutate([RemoveMembers(args.key, tuple(args.members))], durability=args.durability)


def _del(client: Client, args: argparse.Namespace) -> WriteResult:
    return client.mutate([DeleteKey(args.key)], durability=args.durability)


class _InputError(Exception):
    """A ``-`` or ``@PATH`` argument whose input cannot be read or used."""


def _read_limited(stream: BinaryIO, source: str) -> bytes:
    data = stream.read(INPUT_BYTES_MAX + 1)
    if len(data) > INPUT_BYTES_MAX:
        raise _InputError(f"{source} holds more than {INPUT_BYTES_MAX} bytes, the most this command reads")
    return data


def _input_bytes(arg: str, stdin: BinaryIO) -> tuple[bytes, str] | None:
    """What ``-`` or ``@PATH`` names, and a description of it; None for any other argument."""
    if arg == "-":
        return _read_limited(stdin, "standard input"), "standard input"
    if not arg.startswith("@") or arg.startswith("@@"):
        return None
    path = arg[1:]
    if not path:
        raise _InputError("'@' names no file: write @PATH to read a file, or @@ for a text that starts with @")
    try:
        with Path(path).open("rb") as file:
            return _read_limited(file, path), path
    except OSError as exc:
        raise _InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _literal(arg: str) -> str:
    """An argument taken as written, with ``@@`` standing for a leading ``@``."""
    return arg[1:] if arg.startswith("@@") else arg


def _read_value(arg: str, stdin: BinaryIO) -> bytes:
    """``set``'s VALUE: ``-`` is standard input, ``@PATH`` a file (both byte for byte), else its UTF-8 bytes."""
    read = _input_bytes(arg, stdin)
    if read is not None:
        return read[0]
    # surrogateescape: an argument that is not UTF-8 keeps the bytes the shell passed.
    return _literal(arg).encode("utf-8", "surrogateescape")


def _read_members(args: Sequence[str], stdin: BinaryIO) -> list[str]:
    """The MEMBERs of ``sadd``/``srem``: ``-`` and ``@PATH`` give one member per line."""
    if args.count("-") > 1:
        raise _InputError("'-' (standard input) can be given once")
    members: list[str] = []
    for arg in args:
        read = _input_bytes(arg, stdin)
        if read is None:
            members.append(_literal(arg))
            continue
        data, source = read
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _InputError(f"{source} is not UTF-8 text (byte {exc.start}); set members are text") from None
        lines = (line.removesuffix("\r") for line in text.split("\n"))
        members.extend(line for line in lines if line)
    if not members:
        raise _InputError(f"no members: {' '.join(args)} held none")
    return members


def _read_inputs(args: argparse.Namespace, stdin: BinaryIO) -> None:
    """Replace ``set``'s VALUE and the MEMBERs by what they stand for (raises ``_InputError``)."""
    if args.command == "set":
        args.value = _read_value(args.value, stdin)
    elif args.command in ("sadd", "srem", "sismember"):
        args.members = _read_members(args.members, stdin)


def _token(text: str) -> bytes:
    """``--after``'s TOKEN: base64 (as commands print it) or hex (as audit records show it), checked to decode."""
    try:
        return parse_token(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _grant(text: str) -> Grant:
    try:
        return parse_grant(text)
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _durability(text: str) -> str:
    try:
        parse_durability(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _describe(err: ClientError, addr: str, *, write: bool) -> str:
    """One line a person can act on."""
    message = " ".join(err.message.split())
    if err.code == grpc.StatusCode.UNAVAILABLE:
        lowered = message.lower()
        if any(s in lowered for s in ("failed to connect", "connection refused", "dns resolution", "name resolution")):
            return f"cannot reach {addr}: is the server running? (UNAVAILABLE: {message})"
        return f"{addr} is unavailable: {message} (UNAVAILABLE)"
    if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if "confirmed" in message or "token" in message:
            return f"{message} (DEADLINE_EXCEEDED)"  # the server's own, more precise account
        maybe = "; the write may or may not have been applied" if write else ""
        return f"{addr} did not answer in time{maybe} (DEADLINE_EXCEEDED)"
    return f"{message} ({err.code.name})"


# -- parsing -----------------------------------------------------------------------------


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the node is and how to reach it: --addr, --timeout, --tls-*, --token."""
    parser.add_argument(
        "--addr",
        metavar="HOST:PORT",
        help=f"the node to talk to (default: ${ADDR_ENV}, else {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--timeout", metavar="S", type=float, default=5.0, help="deadline of each request in seconds (default 5)"
    )
    for flag, what in (
        ("ca", "the CA certificate that signs the node's certificate: turns TLS on"),
        ("cert", "this client's certificate, for a node that requires one (mutual TLS)"),
        ("key", "the private key of --tls-cert"),
        ("server-name", "the name the node's certificate carries, when it is not the host of --addr"),
    ):
        env = f"CRDTSTORE_TLS_{flag.replace('-', '_').upper()}"
        parser.add_argument(
            f"--tls-{flag}", metavar="FILE" if flag != "server-name" else "NAME", help=f"{what} (or ${env})"
        )
    parser.add_argument(
        "--token", metavar="TOKEN", help=f"the bearer token for a node that requires one (default: ${TOKEN_ENV})"
    )


def build_parser(  # noqa: PLR0915 (a few statements per command: the function is the list of commands)
    serve_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    demo_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The parser; ``serve_arguments`` and ``demo_arguments`` add the node's options (main passes them)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A multi-region CRDT key-value store: run a node, or read and write one.",
        allow_abbrev=False,
    )
    _add_connection_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a node", description="Run a crdtstore node.")
    if serve_arguments is not None:
        serve_arguments(serve)
    demo = commands.add_parser(
        "demo",
        help="run a local multi-region cluster",
        description="Run several regions on loopback, peered in a mesh, until Ctrl-C.",
    )
    if demo_arguments is not None:
        demo_arguments(demo)

    def command(name: str, handler: Handler, help_text: str, *, json_help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        sub.set_defaults(handler=handler)
        sub.add_argument("--json", action="store_true", help=json_help)
        return sub

    write_json = 'print {"token": <base64>, "replayed": bool}'

    def write_command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = command(name, handler, help_text, json_help=write_json)
        sub.add_argument(
            "--durability",
            metavar="D",
            type=_durability,
            default="local",
            help="local (fsynced here; the default) or replicated:N (fsynced in N regions, this one included)",
        )
        return sub

    after_help = (
        "first wait until this node has seen the token (printed by a write's --json, in any region: base64; "
        "or hex, as an audit record shows it)"
    )
    get = command("get", _get, "read a key", json_help="print one JSON object")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--after", metavar="TOKEN", type=_token, help=after_help)
    cli_explain.add_explain_command(command)

    set_ = write_command("set", _set, "write a register")
    set_.add_argument("key", metavar="KEY")
    set_.add_argument(
        "value",
        metavar="VALUE",
        help="stored as its UTF-8 bytes; - reads standard input and @PATH a file, byte for byte "
        "(@@TEXT for a value that starts with @)",
    )

    # A negative N ("incr KEY -5") is taken as N, not as an option: argparse
    # does so because no option of this parser looks like a negative number.
    incr = write_command("incr", _incr, "add N to a counter")
    incr.add_argument("key", metavar="KEY")
    incr.add_argument("n", metavar="N", type=int, nargs="?", default=1, help="may be negative (default: 1)")

    member_help = (
        "a member; - reads members from standard input and @PATH from a file, one per line "
        "(@@TEXT for a member that starts with @)"
    )
    sadd = write_command("sadd", _sadd, "add members to a set")
    sadd.add_argument("key", metavar="KEY")
    sadd.add_argument("members", metavar="MEMBER", nargs="+", help=member_help)

    srem = write_command("srem", _srem, "remove members from a set")
    srem.add_argument("key", metavar="KEY")
    srem.add_argument("members", metavar="MEMBER", nargs="+", help=member_help)

    del_ = write_command("del", _del, "delete a key")
    del_.add_argument("key", metavar="KEY")

    sismember = command(
        "sismember",
        _sismember,
        "say whether a set holds members, without reading the set",
        json_help='print {"key": K, "members": {MEMBER: bool, ...}}',
    )
    sismember.add_argument("key", metavar="KEY")
    sismember.add_argument("members", metavar="MEMBER", nargs="+", help=member_help)
    sismember.add_argument("--after", metavar="TOKEN", type=_token, help=after_help)

    smembers = command(
        "smembers", _smembers, "list a set's members, a page at a time", json_help="print one JSON string per line"
    )
    smembers.add_argument("key", metavar="KEY")
    smembers.add_argument("--after", metavar="TOKEN", type=_token, help=after_help)

    scan = command("scan", _scan, "list keys in key order", json_help="print one JSON object per line")
    scan.add_argument("prefix", metavar="PREFIX", nargs="?", default="", help="only keys that start with it")

    command("status", _status, "show the node's status", json_help="print one JSON object")
    _add_watch_arguments(
        command(
            "watch",
            _watch,
            "follow every change under a prefix until Ctrl-C",
            json_help="print one JSON object per line, each with a token safe to store once it is applied "
            "(resume from it with --after)",
        )
    )
    _add_operator_commands(commands)
    _add_backup_commands(commands)
    return parser


def _add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands of whoever runs the nodes: access control, certificates, health, the audit trail."""
    from crdtstore.cli_audit import add_audit_commands  # noqa: PLC0415 (it imports this module's helpers)

    _add_access_commands(commands)
    _add_deploy_commands(commands)
    add_audit_commands(commands)


def _add_watch_arguments(watch: argparse.ArgumentParser) -> None:
    watch.add_argument("prefix", metavar="PREFIX", nargs="?", default="", help="only keys that start with it")
    watch.add_argument(
        "--after",
        metavar="TOKEN",
        type=_token,
        help="resume: the changes this token (any region's; base64, or hex as an audit record shows it) lacks",
    )
    watch.add_argument(
        "--start",
        choices=("snapshot", "now"),
        default="snapshot",
        help="where to start when there is no --after: the keys' current state first (snapshot, the default) "
        "or only changes from now; with --after it is accepted and has no effect (the token says where)",
    )
    watch.add_argument(
        "--on-expired",
        choices=("reset", "error"),
        default="reset",
        help="when --after is older than the node keeps: a snapshot again (reset) or fail (error)",
    )
    watch.add_argument(
        "--failover",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="another region to resume on after an error (repeat for more)",
    )


def _add_deploy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``cert`` (ca, issue) and ``health``."""
    health = commands.add_parser(
        "health",
        help="ask a node's gRPC health service; exit 0 when it serves",
        description="Ask the node's standard gRPC health service (grpc.health.v1); exit 0 when it is SERVING.",
    )
    health.add_argument("--service", metavar="NAME", default="", help="a service's name (default: the node)")
    health.set_defaults(handler=_health)
    cert = commands.add_parser(
        "cert",
        help="make a certificate authority and certificates for mutual TLS",
        description="A certificate authority and the certificates of regions and clients.",
    )
    actions = cert.add_subparsers(dest="action", required=True, metavar="ACTION")
    ca = actions.add_parser(
        "ca", help="write a new certificate authority", description="Write ca.crt and ca.key (mode 0600)."
    )
    ca.add_argument("--out", metavar="DIR", required=True, help="the directory to write them in")
    ca.add_argument("--name", default="crdtstore-ca", help="the authority's common name (default crdtstore-ca)")
    ca.add_argument("--days", type=int, default=3650, help="how long it is valid (default 3650)")
    ca.set_defaults(local_handler=_cert_ca)
    issue = actions.add_parser(
        "issue",
        help="write a certificate for a region or a client",
        description="Write tls.crt, tls.key (mode 0600) and a copy of ca.crt, signed by the authority in --ca.",
    )
    issue.add_argument("--ca", metavar="DIR", required=True, help="the authority's directory (cert ca --out)")
    issue.add_argument(
        "--name",
        required=True,
        help="the region's name (its certificate must name it) or the client's; its common name and a DNS name",
    )
    issue.add_argument(
        "--host",
        metavar="HOST",
        dest="hosts",
        action="append",
        default=[],
        help="another DNS name or IP address it is reached by; repeat for each",
    )
    issue.add_argument("--out", metavar="DIR", required=True, help="the directory to write them in")
    issue.add_argument("--days", type=int, default=365, help="how long it is valid (default 365)")
    issue.set_defaults(local_handler=_cert_issue)


def _add_access_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``token`` (keygen, issue, revoke) and ``role`` (put, get, list, delete)."""
    token = commands.add_parser(
        "token", help="make signing keys and tokens, revoke tokens", description="Signing keys and tokens."
    )
    token_actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = token_actions.add_parser(
        "keygen", help="write a new Ed25519 signing key pair", description="Write signing.pem and signing.pub.pem."
    )
    keygen.add_argument("--out", metavar="DIR", required=True, help="the directory to write them in")
    keygen.set_defaults(local_handler=_token_keygen)
    issue = token_actions.add_parser("issue", help="print a signed token", description="Print a signed token.")
    issue.add_argument("--signing-key", metavar="FILE", required=True, help="the private key (signing.pem)")
    issue.add_argument("--subject", metavar="NAME", required=True, help="who the token speaks for (its sub)")
    issue.add_argument(
        "--role", metavar="ROLE", dest="roles", action="append", default=[], help="a role it holds; repeat for each"
    )
    issue.add_argument("--ttl", default="1h", help="how long it is valid: 90s, 15m, 1h, 30d (default 1h)")
    issue.add_argument("--issuer", metavar="NAME", help="its iss claim, for nodes that check auth.issuer")
    issue.add_argument("--id", metavar="JTI", help="its id, what token revoke names (default: a random one)")
    issue.set_defaults(local_handler=_token_issue)
    revoke = token_actions.add_parser(
        "revoke", help="revoke a token by its id, in every region, for good", description="Revoke a token."
    )
    revoke.add_argument(
        "jti",
        metavar="JTI",
        type=_jti,
        help="the token's id (its jti claim, printed by token issue), or the token itself",
    )
    revoke.add_argument("--json", action="store_true", help='print {"token": <base64>}')
    revoke.set_defaults(handler=_token_revoke)

    role = commands.add_parser(
        "role", help="define roles: grants of rights on key prefixes", description="Manage roles (needs admin)."
    )
    role_actions = role.add_subparsers(dest="action", required=True, metavar="ACTION")
    role_json = "print one JSON object"
    put = role_actions.add_parser("put", help="create or replace a role", description="Create or replace a role.")
    put.add_argument("name", metavar="NAME")
    put.add_argument(
        "--grant",
        metavar="PREFIX=RIGHT[,RIGHT...]",
        dest="grants",
        type=_grant,
        action="append",
        required=True,
        help="rights on every key that starts with PREFIX (empty: every key); repeat for each. Rights: read, set, "
        "incr, decr, add, remove, delete, replicate, admin",
    )
    put.add_argument("--json", action="store_true", help=role_json)
    put.set_defaults(handler=_role_put)
    get = role_actions.add_parser("get", help="show a role", description="Show a role.")
    get.add_argument("name", metavar="NAME")
    get.add_argument("--json", action="store_true", help=role_json)
    get.set_defaults(handler=_role_get)
    list_ = role_actions.add_parser("list", help="list every role", description="List every role.")
    list_.add_argument("--json", action="store_true", help="print one JSON object per line")
    list_.set_defaults(handler=_role_list)
    delete = role_actions.add_parser("delete", help="delete a role", description="Delete a role.")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--json", action="store_true", help='print {"token": <base64>}')
    delete.set_defaults(handler=_role_delete)


# -- backup, restore, verify (crdtstore.backup, crdtstore.tools.verify; docs/backup.md) ------


def _add_backup_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = commands.add_parser(
        "backup",
        help="back up a node into a new directory, or check a backup",
        description="Back up the node at --addr into a new directory (a consistent copy, taken while it serves), "
        "or check a backup with 'backup verify DIR'. Needs the admin right.",
    )
    backup.add_argument("--out", metavar="DIR", help="the new (or empty) directory to write the backup in")
    backup.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    backup.add_argument(
        "--deadline", metavar="S", type=float, default=3600.0, help="give up after S seconds (default 3600)"
    )
    backup.set_defaults(local_handler=_backup)
    backup_actions = backup.add_subparsers(dest="action", required=False, metavar="ACTION")
    verify_backup = backup_actions.add_parser(
        "verify",
        help="recompute a backup's checksums and bucket digests from its own data",
        description="Check a backup from its own bytes; exit status 1 on any difference.",
    )
    verify_backup.add_argument("dir", metavar="DIR")
    verify_backup.add_argument("--json", action="store_true", help="print one JSON object")
    verify_backup.set_defaults(local_handler=_backup_verify)

    restore = commands.add_parser(
        "restore",
        help="lay a backup down as a new data directory",
        description="Check a backup, then lay it down as a new data directory under a new incarnation; start "
        "the node on it with its peers and it catches up from them.",
    )
    restore.add_argument("dir", metavar="DIR", help="the backup")
    restore.add_argument("--data-dir", metavar="NEW_DIR", required=True, help="the new (or empty) data directory")
    restore.add_argument("--json", action="store_true", help="print one JSON object")
    restore.set_defaults(local_handler=_restore)

    verify = commands.add_parser(
        "verify",
        help="compare regions key by key",
        description="Compare regions at a common causal point, bucket digests first. Exit status 0 when they "
        "agree, 1 on drift, 2 when they could not be brought to a common point. Needs the admin right.",
    )
    verify.add_argument(
        "--addr", metavar="HOST:PORT", dest="verify_addrs", action="append", default=[], help="a region; repeat"
    )
    verify.add_argument(
        "--deadline", metavar="S", type=float, default=30.0, help="how long to wait for a common point (default 30)"
    )
    verify.add_argument(
        "--keys-max", metavar="N", type=int, default=1000, help="list at most N diverging keys (default 1000)"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(local_handler=_verify)


def _client_for(args: argparse.Namespace, addr: str) -> Client:
    """A client for ``addr`` with the connection flags' TLS and token (``ValueError``/``OSError`` if bad)."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    return Client(addr, timeout_s=args.timeout, tls=_client_tls(args), token=token)


def _backup(args: argparse.Namespace) -> int:
    from crdtstore.backup.take import BackupError, take_backup  # noqa: PLC0415 (needs LMDB: loaded when asked)

    if args.out is None:
        _note("backup needs --out DIR (or: backup verify DIR)")
        return 2
    addr = _resolve_addr(args.addr)
    try:
        with _client_for(args, addr) as client:
            result = take_backup(client, Path(args.out), timeout_s=args.deadline)
    except (OSError, ValueError) as exc:
        _note(f"backup: {exc}")
        return 1
    except ClientError as err:
        _note(f"backup of {addr}: {err.code.name}: {err.message}")
        return 1
    except BackupError as exc:
        _note(f"backup: {exc}")
        return 1
    if args.json:
        _print_json(result.manifest)
    else:
        m = result.manifest
        print(
            f"backed up region {m['region']} ({m['keys']} stored entries: keys, audit records and the node's own; "
            f"{result.data_bytes} bytes) into {result.directory} in {result.seconds:.1f} s, "
            f"at {json.dumps(m['vector'], sort_keys=True)}"
        )
    return 0


def _backup_verify(args: argparse.Namespace) -> int:
    from crdtstore.backup.manifest import verify_backup  # noqa: PLC0415

    report = verify_backup(Path(args.dir))
    if args.json:
        _print_json(report.as_json())
    elif report.ok:
        m = report.manifest or {}
        print(f"ok: {args.dir} is whole and agrees with itself (region {m.get('region')}, {m.get('keys')} keys)")
    else:
        for problem in report.problems:
            _note(f"{args.dir}: {problem}")
    return 0 if report.ok else 1


def _restore(args: argparse.Namespace) -> int:
    from crdtstore.backup.restore import restore_backup  # noqa: PLC0415
    from crdtstore.backup.take import BackupError  # noqa: PLC0415

    try:
        result = restore_backup(Path(args.dir), Path(args.data_dir))
    except BackupError as exc:
        _note(f"restore: {exc}")
        return 1
    vector = dict(sorted(result.vector.items()))
    if args.json:
        _print_json(
            {
                "data_dir": str(result.data_dir),
                "region": result.region,
                "backup_origin": result.backup_origin,
                "origin": result.origin,
                "vector": vector,
            }
        )
    else:
        print(
            f"restored region {result.region} into {result.data_dir}: it holds {json.dumps(vector, sort_keys=True)} "
            f"and mints under the new origin {result.origin}. Start it with its peers "
            f"(crdtstore serve --region {result.region} --data-dir {result.data_dir} --peer ...): it starts in "
            f"rejoin mode and takes writes once they have filled it in"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from crdtstore.tools.verify import NO_COMMON_POINT, compare_regions, render  # noqa: PLC0415

    addrs = ([args.addr] if args.addr else []) + list(args.verify_addrs)
    if len(set(addrs)) < 2:
        _note("verify needs at least two regions: --addr A --addr B [--addr C ...]")
        return 2
    if not args.deadline > 0:
        _note("--deadline must be a positive number of seconds")
        return 2
    clients: dict[str, Client] = {}
    try:
        for addr in dict.fromkeys(addrs):
            clients[addr] = _client_for(args, addr)
        result = compare_regions(clients, deadline_s=args.deadline, keys_max=max(0, args.keys_max))
    except (OSError, ValueError) as exc:
        _note(f"verify: {exc}")
        return NO_COMMON_POINT
    finally:
        for client in clients.values():
            client.close()
    if args.json:
        _print_json(result.as_json())
    else:
        print(render(result))
    return result.exit_code


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: the first word that is neither an option nor ``--addr``'s value."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--addr", "--timeout", "--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name", "--token"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg
    return None


def _serve(argv: Sequence[str]) -> int:
    try:
        # Imported here, not at the top: the client commands must not need the node's dependencies.
        from crdtstore.node.main import add_serve_arguments, serve_from_args  # noqa: PLC0415
    except ImportError as exc:
        _note(f"cannot start the server: {exc}")
        return 1
    args = build_parser(add_serve_arguments).parse_args(argv)
    return serve_from_args(args)


def _demo(argv: Sequence[str]) -> int:
    try:
        from crdtstore.tools.demo import add_demo_arguments, demo_from_args  # noqa: PLC0415
    except ImportError as exc:
        _note(f"cannot start the demo: {exc}")
        return 1
    args = build_parser(demo_arguments=add_demo_arguments).parse_args(argv)
    return demo_from_args(args)


def _resolve_addr(flag: str | None) -> str:
    return flag or os.environ.get(ADDR_ENV) or DEFAULT_ADDR


def _client_tls(args: argparse.Namespace) -> ClientTls | None:
    """TLS settings from --tls-* flags or CRDTSTORE_TLS_* variables; None for plaintext."""
    values = {
        name: getattr(args, f"tls_{name}") or os.environ.get(f"CRDTSTORE_TLS_{name.upper()}")
        for name in ("ca", "cert", "key", "server_name")
    }
    if not any(values.values()):
        return None
    return ClientTls.from_files(values["ca"], values["cert"], values["key"], values["server_name"])


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if _command_of(argv) == "serve":
        return _serve(argv)
    if _command_of(argv) == "demo":
        return _demo(argv)
    args = build_parser().parse_args(argv)
    local_handler: LocalHandler | None = getattr(args, "local_handler", None)
    if local_handler is not None:
        return local_handler(args)
    addr = _resolve_addr(args.addr)
    handler: Handler = args.handler
    if not args.timeout > 0:
        _note("--timeout must be a positive number of seconds")
        return 2
    try:
        tls = _client_tls(args)
    except (OSError, ValueError) as exc:
        _note(f"TLS settings: {exc}")
        return 2
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and (any(c.isspace() for c in token.strip()) or not token.strip()):
        _note(f"--token (or ${TOKEN_ENV}) must be one token, as crdtstore token issue printed it")
        return 2
    try:
        _read_inputs(args, sys.stdin.buffer)
    except _InputError as exc:
        _note(str(exc))
        return 2
    try:
        with Client(addr, timeout_s=args.timeout, tls=tls, token=token) as client:
            result = handler(client, args)
            if result is not None and args.json:
                _print_json({"token": _b64(result.token), "replayed": result.replayed})
    except ClientError as err:
        _note(_describe(err, addr, write=args.command in _WRITES))
        return 1
    except BrokenPipeError:
        # The reader went away (``scan | head``): stop quietly, and keep Python's exit-time flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

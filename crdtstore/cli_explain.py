"""``crdtstore explain KEY [--json]``: why a key reads as it does, and who made it so (docs/explain.md).

The command asks the node's Explain RPC (``Client.explain``) and prints the
value, each live version with its region and hybrid logical timestamp (the
winner marked), the reason in a sentence, and the audit records of the
requests that made the value, with their principals. ``--json`` prints one
object, whose shape docs/explain.md gives. ``crdtstore.cli`` registers the
command with ``add_explain_command``; the connection flags are the CLI's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from crdtstore import cli
from crdtstore.audit.explain import ExplainedVersion, Explanation, iso_time
from crdtstore.audit.record import AuditRecord
from crdtstore.client import Client

__all__ = ["add_explain_command", "explanation_json"]

# ``crdtstore.cli``'s ``command`` helper: adds a subcommand with its handler and a --json flag.
Command = Callable[..., argparse.ArgumentParser]


def add_explain_command(command: Command) -> None:
    explain = command(
        "explain",
        _explain,
        "show why a key reads as it does, with the audit records of the changes that made it",
        json_help="print one JSON object (docs/explain.md gives its shape)",
    )
    explain.add_argument("key", metavar="KEY")


def _explain(client: Client, args: argparse.Namespace) -> None:
    explained = client.explain(args.key)
    if args.json:
        cli._print_json(explanation_json(explained))
    else:
        _print_explanation(explained)


def _version_json(version: ExplainedVersion, vtype: str | None) -> dict[str, object]:
    out: dict[str, object] = {"origin": version.origin, "region": version.region, "counter": version.counter}
    if vtype == "register":
        value, is_b64 = cli._json_value(version.value)
        out.update(
            wall_ms=version.wall_ms,
            logical=version.logical,
            time=iso_time(version.wall_ms),
            value=value,
            winner=version.winner,
        )
        if is_b64:
            out["encoding"] = "base64"
    elif vtype == "counter":
        out["amount"] = version.amount
    else:
        out["member"] = version.member
    out["record"] = None if version.record is None else version.record.to_json()
    return out


def explanation_json(explained: Explanation) -> dict[str, object]:
    """The object ``explain --json`` prints."""
    vtype = explained.entry.type
    return {
        "key": explained.entry.key,
        "entry": cli.entry_json(explained.entry),
        "reason": explained.reason,
        "explanation": explained.explanation,
        "versions": [_version_json(v, vtype) for v in explained.versions],
        "truncated": explained.truncated,
        "token": cli._b64(explained.token),
    }


def _record_line(record: AuditRecord) -> str:
    principal = record.principal or "(no principal: access control off, or a write from inside the node)"
    ops = ", ".join(f"{op.kind} {cli._escape(op.key)}" for op in record.operations)
    fields = [
        f"{record.origin}:{record.first}..{record.last}"
        if record.first != record.last
        else f"{record.origin}:{record.last}",
        f"seq {record.seq}",
        iso_time(record.wall_ms),
        f"principal {cli._escape(principal)}",
        f"request {cli._escape(record.request_id) or '-'}",
        f"method {record.method or '-'}",
        record.kind,
    ]
    if ops:
        fields.append(ops)
    return "  " + "  ".join(fields)


def _version_line(version: ExplainedVersion, vtype: str | None) -> str:
    dot = f"{version.origin}:{version.counter}"
    if vtype == "register":
        mark = "WINNER" if version.winner else "      "
        when = f"{iso_time(version.wall_ms)} logical {version.logical}"
        return f"  {mark}  {version.region}  {when}  {dot}  {cli._human_line(version.value)}"
    if vtype == "counter":
        return f"  {version.region}  {version.amount:+d}  {dot}"
    return f"  {cli._escape(version.member)}  added in {version.region}  {dot}"


def _print_explanation(explained: Explanation) -> None:
    entry = explained.entry
    key = cli._escape(entry.key)
    if not entry.exists:
        print(f"{key}: no such key")
        print(f"why: {explained.explanation}")
        return
    if entry.value is None:
        print(f"{key}: a set of {entry.member_count:,} members (list them with smembers)")
    else:
        print(f"{key} = {cli._human_line(entry.value)}  ({entry.type})")
    kind = {"register": "live writes", "counter": "contributions", "set": "surviving adds"}.get(entry.type or "", "")
    print(f"{kind}:")
    for version in explained.versions:
        print(_version_line(version, entry.type))
    if explained.truncated:
        print("  ... (the first members only: the set has more than one answer explains)")
    reason = f"{explained.reason}: " if explained.reason else ""
    print(f"why: {reason}{explained.explanation}")
    records = explained.records
    missing = sum(v.record is None for v in explained.versions)
    print("audit records:" if records else "audit records: none held")
    for record in records:
        print(_record_line(record))
    if missing:
        print(
            f"  ({missing} of the versions have no record here: made before auditing was on, "
            "or their records were trimmed)"
        )

"""``crdtstore audit log | verify | export``: the audit trail from the command line (docs/audit.md).

Registered by ``crdtstore.cli.build_parser``; the commands use the same
connection flags as every other admin command (``--addr``, ``--token``,
``--tls-*``, before the command). Exit status: 0 when all is well, 1 when
the trail is broken (``verify``) or the node refused or failed the request,
2 for a usage error or a node that cannot be reached (as ``crdtstore verify``).

``verify`` has three forms: against a running node (its chains and what its
peers last said of their heads; a configured peer that has not reported
lately is named as not compared, which does not change the exit status),
``--data-dir DIR`` on a stopped node's directory (opened read-only, without a
lock file: nothing in it changes), and ``--file FILE`` on an export alone
(read as bytes: a line that is not UTF-8 is a finding, exit 1).

Usage errors are caught before any call: a TIME that does not parse, a
``--since`` in the future or not before ``--until``, a ``--limit`` below 1.

``export`` writes JSON Lines (``crdtstore.audit.export``) into a temporary
file next to ``--out``, fsyncs it, renames it into place (and fsyncs the
directory), and only then tells the node (``AuditExported``), so retention
never drops a record the archive does not durably hold. It never overwrites
a file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from crdtstore.audit.export import (
    TIME_HELP,
    check_export,
    head_line,
    header_line,
    iso_time,
    parse_time,
    report_json,
)
from crdtstore.audit.record import AuditError, ChainReport, decode
from crdtstore.backup.take import fsync_directory
from crdtstore.cli import _client_for, _note, _print_json, _resolve_addr
from crdtstore.client import ClientError
from crdtstore.v1 import kv_pb2 as pb

__all__ = ["add_audit_commands", "peers_json"]

USAGE = 2
BROKEN = 1

# Codes that mean the node was not reached (or not usefully): a usage-like failure, exit 2.
_UNREACHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="read, verify and export the audit trail",
        description="The audit trail: every change and every refused request, chained per region and held by "
        "every region. Needs the audit right (or admin).",
    )
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    log = actions.add_parser(
        "log",
        help="list audit records in causal order, newest last",
        description=f"List audit records in causal order, newest last, a page at a time. TIME is {TIME_HELP}.",
    )
    log.add_argument("--key", metavar="K", default="", help="only records of requests that named this key")
    log.add_argument("--principal", metavar="P", default="", help="only records of this principal's requests")
    log.add_argument(
        "--region",
        metavar="R",
        default="",
        help="only records of this region's requests: a region's name (every chain it had), or an origin as "
        "records print it (eu#4f1c2d...: that chain only)",
    )
    log.add_argument("--since", metavar="TIME", help="only records at or after TIME (hybrid logical time)")
    log.add_argument("--until", metavar="TIME", help="only records before TIME")
    log.add_argument("--limit", metavar="N", type=_limit, help="stop after N records (default, or 0: all)")
    log.add_argument("--json", action="store_true", help="print one JSON object per record per line")
    log.set_defaults(local_handler=_log)

    verify = actions.add_parser(
        "verify",
        help="recompute every audit chain and compare heads with the peers",
        description="Recompute every chain the node holds and compare its heads with what its peers last said "
        "(or check a stopped node's directory with --data-dir, or an export with --file). Exit status 0 when "
        "every chain holds together, 1 on any broken link, missing record or head mismatch (naming the first "
        "bad record), 2 for a usage error or a node that cannot be reached.",
    )
    where = verify.add_mutually_exclusive_group()
    where.add_argument("--data-dir", metavar="DIR", help="a stopped node's data directory, opened read-only")
    where.add_argument("--file", metavar="FILE", help="an export (crdtstore audit export), checked on its own")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument(
        "--deadline", metavar="S", type=float, default=300.0, help="give up after S seconds (default 300)"
    )
    verify.set_defaults(local_handler=_verify)

    export = actions.add_parser(
        "export",
        help="write the audit records from a time on to a JSON Lines file",
        description="Write the audit records from --since on (each chain in order, then each chain's head) to a "
        "new JSON Lines file, durably, then tell the node so that retention may drop what the file holds. "
        f"TIME is {TIME_HELP}.",
    )
    export.add_argument("--since", metavar="TIME", required=True, help="the first records to export")
    export.add_argument("--until", metavar="TIME", help="stop before TIME (default: now)")
    export.add_argument("--out", metavar="FILE", required=True, help="the new file (never overwritten)")
    export.add_argument("--json", action="store_true", help="print a summary as one JSON object")
    export.add_argument(
        "--deadline", metavar="S", type=float, default=3600.0, help="give up after S seconds (default 3600)"
    )
    export.set_defaults(local_handler=_export)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _limit(text: str) -> int | None:
    """``--limit``'s N: a whole number; 0 (as when it is left out) means every record."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (every record) or more, not {n}")
    return n or None


_CLOCK_SLACK_MS = 15 * 60 * 1000


def _times(args: argparse.Namespace, now_ms: int) -> tuple[int, int]:
    """``--since`` and ``--until`` in ms; ValueError for a bad time, a since in the future, or since >= until."""
    since = parse_time(args.since, now_ms) if args.since else 0
    until = parse_time(args.until, now_ms) if args.until else 0
    # Records carry the node's hybrid logical time, which may run a little ahead of this machine's clock:
    # a --since copied from a fresh record is not "in the future" (found in review).
    if since > now_ms + _CLOCK_SLACK_MS:
        raise ValueError(
            f"--since {args.since} is in the future ({iso_time(since)}; it is {iso_time(now_ms)} here): no record is "
            "that new. A duration counts back from now (1h: an hour ago)"
        )
    if until and since >= until:
        raise ValueError("--since must be before --until")
    return since, until


def _failed(command: str, addr: str, err: ClientError) -> int:
    message = " ".join(err.message.split())
    if err.code in _UNREACHED:
        _note(f"audit {command}: cannot get an answer from {addr}: {message} ({err.code.name})")
        return USAGE
    _note(f"audit {command} on {addr}: {message} ({err.code.name})")
    return BROKEN


# -- log --------------------------------------------------------------------------------------


def record_line(record: dict[str, Any]) -> str:
    """One record on one line, for people."""
    ops = ", ".join(
        f"{op['kind']} {op['key']!r}"
        + (f" {op['amount']:+d}" if op["kind"] == "incr" else "")
        + (f" ({op['amount']} members)" if op["kind"] in ("add", "remove") else "")
        + (f" (sha256 {op['value_sha256'][:12]})" if op["kind"] == "set" and op["value_sha256"] else "")
        for op in record["operations"]
    )
    who = record["principal"] or "-"
    refused = f" ({record['code']}: {record['reason']})" if record["kind"] == "refused" else ""
    if record["kind"] == "resumed":
        refused = f" ({record['reason']})"
    return (
        f"{iso_time(record['hlc']['wall_ms'])} {record['origin']} #{record['seq']} {record['kind']} by {who}"
        f" via {record['method'] or '-'}{refused}{': ' + ops if ops else ''}"
        f"{' request ' + record['request_id'] if record['request_id'] else ''}"
    )


def _log(args: argparse.Namespace) -> int:
    try:
        since, until = _times(args, _now_ms())
    except ValueError as exc:
        _note(f"audit log: {exc}")
        return USAGE
    addr = _resolve_addr(args.addr)
    shown = 0
    try:
        with _client_for(args, addr) as client:
            for pb_record in client.audit_log(
                key=args.key, principal=args.principal, region=args.region, since_ms=since, until_ms=until
            ):
                record = decode(pb_record.encoded).to_json()
                print(json.dumps(record, sort_keys=True) if args.json else record_line(record), flush=False)
                shown += 1
                if args.limit and shown >= args.limit:
                    break
    except (OSError, ValueError) as exc:
        _note(f"audit log: {exc}")
        return USAGE
    except AuditError as exc:
        _note(f"audit log: the node sent a record that does not decode: {exc}")
        return BROKEN
    except ClientError as err:
        return _failed("log", addr, err)
    sys.stdout.flush()
    return 0


# -- verify -----------------------------------------------------------------------------------


def _chains_json(chains: Iterable[ChainReport]) -> list[dict[str, Any]]:
    return [
        {
            "origin": c.origin,
            "records": c.records,
            "head_seq": c.head_seq,
            "head_hash": c.head_hash.hex(),
            "ok": c.ok,
            "findings": [{"origin": f.origin, "at": f.at, "seq": f.seq, "problem": f.problem} for f in c.findings],
        }
        for c in chains
    ]


def _finding_line(where: str, origin: str, finding: dict[str, Any]) -> str:
    """The first finding, naming the event where it was found and the record expected there (its seq)."""
    chain = origin or "?"
    at = finding["at"]
    place = f"record {finding['seq']} expected at event {chain}:{at}" if at else "as a whole"
    return f"BROKEN: {where}: chain {chain}, {place}: {finding['problem']}"


def _summary(chains: list[dict[str, Any]], peers: list[dict[str, Any]], where: str) -> tuple[bool, str]:
    """Whether all is well, and what to print: a summary, or the first bad record.

    A peer entry with ``"compared": false`` is a peer whose heads were not
    compared (it has not reported them lately): named, but not a failure.
    """
    bad = [(c, f) for c in chains for f in c["findings"]]
    compared = [p for p in peers if p.get("compared", True)]
    not_compared = [p["problem"] for p in peers if not p.get("compared", True)]
    disagree = [p for p in compared if not p["agrees"]]
    records = sum(c["records"] for c in chains)
    if not bad and not disagree:
        agree = f"; {len({p['peer'] for p in compared})} peer(s) agree on {len(compared)} head(s)" if compared else ""
        unchecked = "".join(f"; {problem}" for problem in not_compared)
        text = f"ok: {where} holds {len(chains)} chain(s), {records} record(s), every link intact{agree}{unchecked}"
        return True, text
    lines = []
    if bad:
        chain, finding = bad[0]
        lines.append(_finding_line(where, chain["origin"], finding))
        if len(bad) > 1:
            lines.append(f"({len(bad) - 1} more finding(s); --json lists them all)")
    for peer in disagree:
        lines.append(f"HEAD MISMATCH with {peer['peer']} on {peer['origin']}: {peer['problem']}")
    lines.extend(f"NOT COMPARED: {problem}" for problem in not_compared)
    return False, "\n".join(lines)


def peers_json(peers: Iterable[pb.AuditPeerHead]) -> list[dict[str, Any]]:
    """``audit verify --json``'s ``peers``: each head a peer reported, and each peer not compared."""
    return [
        {
            "peer": p.peer,
            "origin": p.origin,
            "seq": p.seq,
            "hash": p.hash.hex(),
            "agrees": p.agrees,
            "compared": not p.not_compared,  # not compared: its problem says why
            "problem": p.problem,
            "reported_ms": p.reported_ms,
        }
        for p in peers
    ]


def _verify(args: argparse.Namespace) -> int:
    if args.file is not None:
        return _verify_file(args)
    if args.data_dir is not None:
        return _verify_dir(args)
    addr = _resolve_addr(args.addr)
    try:
        with _client_for(args, addr) as client:
            answer = client.audit_verify(timeout_s=args.deadline)
    except (OSError, ValueError) as exc:
        _note(f"audit verify: {exc}")
        return USAGE
    except ClientError as err:
        _failed("verify", addr, err)
        return USAGE  # 1 means a broken trail, never a refused or failed request
    chains = [
        {
            "origin": c.origin,
            "records": c.records,
            "head_seq": c.head_seq,
            "head_hash": c.head_hash.hex(),
            "ok": not c.findings,
            "findings": [{"origin": f.origin, "at": f.at, "seq": f.seq, "problem": f.problem} for f in c.findings],
        }
        for c in answer.chains
    ]
    peers = peers_json(answer.peers)
    ok, text = _summary(chains, peers, addr)
    ok = ok and answer.ok
    return _report(args, ok, text, {"ok": ok, "source": addr, "chains": chains, "peers": peers})


def _verify_dir(args: argparse.Namespace) -> int:
    # Imported here: the other commands must not need LMDB.
    from crdtstore.storage.audit import chain_reports_in  # noqa: PLC0415
    from crdtstore.storage.backup import open_copy  # noqa: PLC0415
    from crdtstore.storage.errors import StorageError  # noqa: PLC0415

    path = Path(args.data_dir)
    if not (path / "data.mdb").is_file():
        _note(f"audit verify: {path} is not a node's data directory (no data.mdb in it)")
        return USAGE
    try:
        with _stopped(path), open_copy(path) as (txn, data, _, meta):
            reports = chain_reports_in(txn, data, meta)
    except _Running:
        _note(
            f"audit verify: a node is using {path}: verify it through the node (crdtstore --addr HOST:PORT "
            "audit verify), or stop it first"
        )
        return USAGE
    except StorageError as exc:
        _note(f"audit verify: {exc}")
        return USAGE
    chains = _chains_json(reports)
    ok, text = _summary(chains, [], str(path))
    return _report(args, ok, text, {"ok": ok, "source": str(path), "chains": chains, "peers": []})


class _Running(Exception):
    pass


@contextlib.contextmanager
def _stopped(path: Path) -> Iterator[None]:
    """Hold the data directory's lock shared while it is read (``_Running`` if a node holds it).

    A node holds ``crdtstore.lock`` exclusively while it runs; reading its
    LMDB file without LMDB's lock while it writes could read pages being
    reused. The lock file is opened read-only: nothing in the directory changes.
    """
    try:
        lock = (path / "crdtstore.lock").open("rb")
    except FileNotFoundError:
        yield
        return
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise _Running from None
        yield


def _verify_file(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        # As bytes: a line that is not UTF-8 is a finding of check_export (exit 1), not a file that cannot be read.
        with path.open("rb") as lines:
            report = check_export(lines)
    except OSError as exc:
        _note(f"audit verify: cannot read {path}: {exc}")
        return USAGE
    records = sum(c.records for c in report.chains)
    if report.ok:
        text = f"ok: {path} holds {len(report.chains)} chain(s), {records} record(s), every link and head intact"
    else:
        more = (
            f"\n({len(report.problems) - 1} more finding(s); --json lists them all)" if len(report.problems) > 1 else ""
        )
        text = f"BROKEN: {path}: {report.first_problem()}{more}"
    return _report(args, report.ok, text, {"source": str(path), **report_json(report)})


def _report(args: argparse.Namespace, ok: bool, text: str, as_json: dict[str, Any]) -> int:
    if args.json:
        _print_json(as_json)
    elif ok:
        print(text)
    else:
        print(text, file=sys.stderr)
    return 0 if ok else BROKEN


# -- export -----------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    now = _now_ms()
    try:
        since, until = _times(args, now)
    except ValueError as exc:
        _note(f"audit export: {exc}")
        return USAGE
    until = until or now
    out = Path(args.out)
    if out.exists():
        _note(f"audit export: {out} exists; an export never overwrites a file: choose a new name")
        return USAGE
    if not out.parent.is_dir():
        _note(f"audit export: the directory {out.parent} does not exist")
        return USAGE
    addr = _resolve_addr(args.addr)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with _client_for(args, addr) as client, os.fdopen(fd, "w", encoding="utf-8") as sink:
            header = header_line(since_ms=since, through_ms=until, exported_at_ms=now, source=addr)
            sink.write(json.dumps(header, sort_keys=True) + "\n")
            records, last = 0, None
            for chunk in client.audit_export(since_ms=since, until_ms=until, timeout_s=args.deadline):
                for pb_record in chunk.records:
                    sink.write(json.dumps(decode(pb_record.encoded).to_json(), sort_keys=True) + "\n")
                records += len(chunk.records)
                if chunk.done:
                    last = chunk
            if last is None:
                raise ClientError(grpc.StatusCode.UNAVAILABLE, "the export stream ended before its last message")
            heads = list(last.heads)
            for head in heads:
                line = head_line(head.origin, head.seq, head.hash, head.last, len(heads))
                sink.write(json.dumps(line, sort_keys=True) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            os.link(tmp, out)  # fails rather than replace a file that appeared meanwhile
            fsync_directory(out.parent)
            exported_through = client.audit_exported(since_ms=since, through_ms=last.through_ms, heads=heads)
    except FileExistsError:
        _note(f"audit export: {out} appeared while exporting; an export never overwrites a file")
        return USAGE
    except (OSError, ValueError) as exc:
        _note(f"audit export: {exc}")
        return USAGE
    except AuditError as exc:
        _note(f"audit export: the node sent a record that does not decode: {exc}")
        return BROKEN
    except ClientError as err:
        return _failed("export", addr, err)
    finally:
        tmp.unlink(missing_ok=True)
    summary = {
        "file": str(out),
        "records": records,
        "chains": len(heads),
        "since_ms": since,
        "through_ms": last.through_ms,
        "exported_through_ms": exported_through,
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"exported {records} record(s) of {len(heads)} chain(s) from {iso_time(since)} to "
            f"{iso_time(last.through_ms)} into {out}; the node may drop records before "
            f"{iso_time(exported_through)} once past retention"
        )
    return 0

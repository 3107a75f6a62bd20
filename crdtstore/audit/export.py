"""Audit exports (JSON Lines), checking them on their own, and the times the audit commands take.

Pure: no I/O beyond the lines handed in. ``crdtstore audit export`` writes
an export as JSON Lines, meant for an archive that cannot be rewritten:

1. a header: ``{"type": "header", "format": "crdtstore-audit-export", "version": 1,
   "since_ms": ..., "through_ms": ..., "exported_at_ms": ..., "source": ...}``;
2. one line per record, ``AuditRecord.to_json()``, each origin's records in
   chain order (the chains one after another);
3. one line per chain the export holds records of, that chain's last exported
   record: ``{"type": "head", "origin": ..., "seq": ..., "hash": ..., "last": ...,
   "chains": N}`` (``chains``: how many head lines there are).

``check_export`` checks such a file with nothing else: every record is
re-encoded from its JSON and hashed (so its ``hash`` field must be right),
each chain's records must link (the first one may start anywhere: an export
from a time on starts mid-chain), and the head lines must name each chain's
last record, as many as they say. So editing, dropping, reordering or
truncating the file is found, and the finding names the line and the record.
Lines may be handed in as bytes (the file as it is stored): a line that is
not UTF-8 is a finding too ("line N is not UTF-8"), not an error reading it.
The next export's first record of a chain holds the hash of this export's
head of it, which is how a series of exports links up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crdtstore.audit.record import (
    AuditError,
    AuditRecord,
    ChainFinding,
    ChainReport,
    Floor,
    check_chain,
    digest,
    from_json,
)

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "ExportReport",
    "check_export",
    "head_line",
    "header_line",
    "iso_time",
    "parse_time",
    "report_json",
]

EXPORT_FORMAT = "crdtstore-audit-export"
EXPORT_VERSION = 1

_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_DURATION = re.compile(r"^(\d+)([smhdw])$")

TIME_HELP = (
    "an RFC 3339 time (2026-12-05T10:00:00Z, or with an offset) or a duration back from now "
    "(30s, 15m, 1h, 7d, 2w); 0 for the beginning"
)


def iso_time(wall_ms: int) -> str:
    """``wall_ms`` (milliseconds since the epoch) as an ISO 8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(wall_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str, now_ms: int) -> int:
    """Milliseconds since the epoch that ``text`` names (see ``TIME_HELP``); ValueError with why, if none."""
    text = text.strip()
    if text == "0":
        return 0
    match = _DURATION.match(text)
    if match:
        return max(0, now_ms - int(match.group(1)) * _UNITS_MS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time (2026-12-05T10:00:00Z) nor a duration (1h, 7d)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: end it with Z (UTC) or an offset such as +02:00")
    return max(0, int(moment.timestamp() * 1000))


def header_line(*, since_ms: int, through_ms: int, exported_at_ms: int, source: str) -> dict[str, Any]:
    return {
        "type": "header",
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "since_ms": since_ms,
        "through_ms": through_ms,
        "exported_at_ms": exported_at_ms,
        "source": source,
    }


def head_line(origin: str, seq: int, head: bytes, last: int, chains: int) -> dict[str, Any]:
    return {"type": "head", "origin": origin, "seq": seq, "hash": head.hex(), "last": last, "chains": chains}


@dataclass
class ExportReport:
    """What ``check_export`` found: each chain's report, and problems with the file as a whole."""

    header: dict[str, Any] = field(default_factory=dict)
    chains: list[ChainReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each names its line

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.chains)

    def first_problem(self) -> str:
        return next(iter(self.problems), "") or next((c.findings[0].problem for c in self.chains if c.findings), "")


@dataclass
class _Chain:
    lines: list[int] = field(default_factory=list)  # the line of each record
    records: list[tuple[int, bytes]] = field(default_factory=list)
    first: AuditRecord | None = None


def check_export(lines: Iterable[str | bytes]) -> ExportReport:
    """Check an export's lines (text, or bytes as stored) on their own (see the module docstring)."""
    report = ExportReport()
    chains: dict[str, _Chain] = {}
    heads: dict[str, tuple[int, dict[str, Any]]] = {}
    declared: set[int] = set()
    for number, raw_line in enumerate(lines, 1):
        line = _text(raw_line, number, report)
        if line is None:
            return report
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            report.problems.append(f"line {number} is not JSON: {exc}")
            return report
        if not isinstance(obj, dict):
            report.problems.append(f"line {number} is not a JSON object")
            return report
        kind = obj.get("type", "record")
        if number == 1 or kind == "header":
            if number != 1 or kind != "header" or obj.get("format") != EXPORT_FORMAT:
                report.problems.append(f"line {number}: the first line must be the export's header, and only it")
                return report
            report.header = obj
            continue
        if kind == "head":
            _read_head(obj, number, heads, declared, report)
            continue
        if heads:
            report.problems.append(f"line {number}: a record after the head lines (lines were moved)")
            continue
        try:
            record = from_json(obj)
        except AuditError as exc:
            report.problems.append(f"line {number}: not an audit record: {exc}")
            continue
        raw = record.encode()
        if obj.get("hash") != digest(raw).hex():
            report.problems.append(
                f"line {number}: record {record.seq} of {record.origin} does not hash to its hash field: "
                "its contents were altered"
            )
        chain = chains.setdefault(record.origin, _Chain())
        if chain.first is None:
            chain.first = record
        chain.lines.append(number)
        chain.records.append((record.last, raw))
    if not report.header:
        report.problems.append("the file is empty: no header")
        return report
    for origin, chain in chains.items():
        _check_chain(origin, chain, heads.get(origin), report)
    for origin, (line_no, _) in heads.items():
        if origin not in chains:
            report.problems.append(f"line {line_no}: a head of {origin}, whose records are missing from the file")
    if len(declared) > 1 or (declared and declared != {len(heads)}) or (chains and not heads):
        report.problems.append(
            f"the file has {len(heads)} head line(s) for {len(chains)} chain(s), but says there are "
            f"{', '.join(map(str, sorted(declared))) or 'none'}: the end of the file is missing or altered"
        )
    return report


def _text(line: str | bytes, number: int, report: ExportReport) -> str | None:
    """A line as text; None (and the finding) when its bytes are not UTF-8."""
    if isinstance(line, str):
        return line
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.problems.append(
            f"line {number} is not UTF-8 (byte {exc.start + 1} of the line): the file was altered or damaged"
        )
        return None


def _check_chain(origin: str, chain: _Chain, head: tuple[int, dict[str, Any]] | None, report: ExportReport) -> None:
    """One chain of an export: its links (from wherever it starts) and its head line."""
    first = chain.first
    assert first is not None
    floor = Floor(first.seq - 1, first.prev, first.first - 1) if first.seq > 1 else None
    checked = check_chain(origin, chain.records, floor=floor)
    report.chains.append(checked)
    line_of = dict(zip((at for at, _ in chain.records), chain.lines, strict=True))
    for finding in checked.findings:
        report.problems.append(f"line {line_of.get(finding.at, chain.lines[-1])}: {origin}: {finding.problem}")
    if head is None:
        report.problems.append(
            f"the chain of {origin} has no head line: the end of the file is missing (truncated after "
            f"line {chain.lines[-1]}?)"
        )
        return
    line_no, obj = head
    named = (obj.get("seq"), obj.get("hash"), obj.get("last"))
    if checked.ok and named != (checked.head_seq, checked.head_hash.hex(), checked.head_last):
        report.problems.append(
            f"line {line_no}: the head of {origin} names record {obj.get('seq')}, but the file's records "
            f"of it end at record {checked.head_seq}: records were dropped or altered at the end"
        )


def _read_head(
    obj: dict[str, Any],
    number: int,
    heads: dict[str, tuple[int, dict[str, Any]]],
    declared: set[int],
    report: ExportReport,
) -> None:
    origin = obj.get("origin")
    if not isinstance(origin, str) or origin in heads:
        report.problems.append(f"line {number}: a head line without an origin, or a second one for {origin}")
        return
    heads[origin] = (number, obj)
    chains = obj.get("chains")
    declared.add(chains if isinstance(chains, int) else -1)


def finding_json(finding: ChainFinding) -> dict[str, Any]:
    return {"origin": finding.origin, "at": finding.at, "seq": finding.seq, "problem": finding.problem}


def chain_json(report: ChainReport) -> dict[str, Any]:
    return {
        "origin": report.origin,
        "records": report.records,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash.hex(),
        "ok": report.ok,
        "findings": [finding_json(f) for f in report.findings],
    }


def report_json(report: ExportReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "header": report.header,
        "chains": [chain_json(c) for c in report.chains],
        "problems": report.problems,
    }

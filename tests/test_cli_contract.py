"""The command line's contract with the programs written against it (issues 19 and 20), without a node.

A review of the audit trail (issue 19) and the change feed (issue 20) found
differences between what the issues promise and what the commands did; each
test here pins one of them down: usage errors caught before any call (exit
2), tokens taken in base64 or hex, a damaged export reported as broken
(exit 1), peers whose heads were not compared named as such, and the BROKEN
line naming the event where the problem was found. (The watch's JSON and
``Client.watch(after=str)`` are in tests/test_client_unit.py, against its
fake server.)
"""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import pytest

from crdtstore import cli
from crdtstore.audit.export import check_export
from crdtstore.cli_audit import _summary, peers_json
from crdtstore.crdt import VersionVector, encode
from crdtstore.node.audit import PeerHeads
from crdtstore.node.audit_rpc import peer_heads
from crdtstore.tokens import parse_token

TOKEN = encode(VersionVector({"eu#4f1c": 7, "us#a2b0": 2}))


@pytest.fixture
def nowhere() -> str:
    """An address nothing listens on: a command that reached for it would fail, not exit 2 at parsing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``argv`` is refused by the parser (exit 2); what it said."""
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return err


# -- tokens: base64 (what the commands print) or hex (what an audit record shows) ---------------------


def test_a_token_is_taken_in_base64_or_hex_and_anything_else_names_both_forms() -> None:
    assert parse_token(base64.b64encode(TOKEN).decode()) == TOKEN
    assert parse_token(TOKEN.hex()) == TOKEN
    assert parse_token(TOKEN.hex().upper()) == TOKEN
    for bad in ("AAAA", "zz", "not a token", "é", TOKEN.hex()[:-2]):  # ("" is no token: see below)
        with pytest.raises(ValueError, match=r"not a causal token: give the base64 .* or the hex"):
            parse_token(bad)


def test_after_takes_an_audit_records_hex_token_wherever_the_cli_takes_a_token() -> None:
    parser = cli.build_parser()
    for argv in (["get", "k"], ["smembers", "k"], ["sismember", "k", "m"], ["watch", "orders/"]):
        assert parser.parse_args([*argv, "--after", TOKEN.hex()]).after == TOKEN
        assert parser.parse_args([*argv, "--after", base64.b64encode(TOKEN).decode()]).after == TOKEN


def test_watch_after_and_start_now_are_independent_flags() -> None:
    """Issue 20 writes ``[--after TOKEN] [--start now]``: both may be given (--start applies without a token)."""
    args = cli.build_parser().parse_args(["watch", "orders/", "--after", TOKEN.hex(), "--start", "now"])
    assert (args.after, args.start) == (TOKEN, "now")


def test_a_token_that_does_not_decode_is_a_usage_error_before_any_call(
    capsys: pytest.CaptureFixture[str], nowhere: str
) -> None:
    err = usage_error(capsys, "--addr", nowhere, "watch", "orders/", "--after", "AAAA")
    assert "'AAAA' is not a causal token" in err and "base64" in err and "hex" in err
    err = usage_error(capsys, "--addr", nowhere, "get", "k", "--after", "zz")
    assert "--after" in err


# -- the audit commands' usage errors ---------------------------------------------------------------


def test_audit_export_since_in_the_future_is_a_usage_error_before_any_call(
    capsys: pytest.CaptureFixture[str], nowhere: str, tmp_path: Path
) -> None:
    out = tmp_path / "audit.jsonl"
    for since in ("2999-01-01T00:00:00Z",):
        code = cli.main(["--addr", nowhere, "audit", "export", "--since", since, "--out", str(out)])
        _, err = capsys.readouterr()
        assert code == 2
        assert "--since 2999-01-01T00:00:00Z is in the future" in err
        assert "cannot get an answer" not in err  # refused here, not by a failed call
    assert not list(tmp_path.iterdir())
    code = cli.main(["--addr", nowhere, "audit", "log", "--since", "2999-01-01T00:00:00Z"])
    assert code == 2 and "is in the future" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["-1", "x"])
def test_audit_log_limit_must_be_a_whole_number_not_below_zero(
    capsys: pytest.CaptureFixture[str], nowhere: str, limit: str
) -> None:
    err = usage_error(capsys, "--addr", nowhere, "audit", "log", "--limit", limit)
    assert "--limit" in err


def test_audit_log_limit_0_is_every_record_as_the_default_and_an_empty_after_is_no_token() -> None:
    """Found in review: both worked before the contract fixes, and scripts may pass them."""
    parser = cli.build_parser()
    assert parser.parse_args(["audit", "log", "--limit", "0"]).limit is None
    assert parser.parse_args(["audit", "log"]).limit is None
    assert parser.parse_args(["get", "k", "--after", ""]).after == b""
    assert parse_token("  ") == b""


def test_a_since_a_little_ahead_of_this_machines_clock_is_not_in_the_future() -> None:
    """Records carry the node's hybrid logical time, which may run ahead of the machine the CLI runs on."""
    import argparse

    from crdtstore.audit.export import iso_time
    from crdtstore.cli_audit import _times

    now = 1_800_000_000_000
    ahead = argparse.Namespace(since=iso_time(now + 60_000), until=None)
    assert _times(ahead, now)[0] == now + 60_000
    with pytest.raises(ValueError, match="in the future"):
        _times(argparse.Namespace(since=iso_time(now + 3_600_000), until=None), now)


# -- audit verify --file: a damaged export is broken (exit 1), not unreadable (exit 2) --------------------


def _export_with_a_bad_byte(tmp_path: Path) -> Path:
    header = {"type": "header", "format": "crdtstore-audit-export", "version": 1, "since_ms": 0}
    path = tmp_path / "damaged.jsonl"
    path.write_bytes(json.dumps(header).encode() + b'\n{"origin": "eu#4f1c", "principal": "\xff"}\n')
    return path


def test_a_line_that_is_not_utf8_is_a_finding_of_the_export_check(tmp_path: Path) -> None:
    with _export_with_a_bad_byte(tmp_path).open("rb") as lines:
        report = check_export(lines)
    assert not report.ok
    assert report.problems == [
        "line 2 is not UTF-8 (byte 37 of the line): the file was altered or damaged",
    ]


def test_audit_verify_file_with_a_byte_that_is_not_utf8_is_broken(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _export_with_a_bad_byte(tmp_path)
    assert cli.main(["audit", "verify", "--file", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"BROKEN: {path}: line 2 is not UTF-8")
    assert cli.main(["audit", "verify", "--file", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["source"] == str(path)
    assert report["problems"][0].startswith("line 2 is not UTF-8")


# -- audit verify against a node: peers not compared, and the first finding ---------------------------

HEAD = bytes(32)


def test_every_configured_peer_is_listed_and_one_not_compared_says_so() -> None:
    """Found in review: verify said ok with ``"peers": []`` when a configured peer had never reported its heads."""
    now = 1_800_000_000_000
    heard = {
        "us": PeerHeads(now - 1_000, {"us#a2b0": (3, HEAD, 7)}, {}),
        # Last heard 100 s ago, with a mismatch then: the mismatch stays, the agreement is old news.
        "ap": PeerHeads(now - 100_000, {"ap#9": (2, HEAD, 5), "eu#4f1c": (4, HEAD, 9)}, {"eu#4f1c": "altered"}),
    }
    entries = peer_heads(["ap", "us", "zz"], heard, now, stale_ms=30_000)
    assert [(e.peer, e.origin, e.agrees, e.not_compared) for e in entries] == [
        ("ap", "eu#4f1c", False, False),
        ("ap", "", True, True),
        ("us", "us#a2b0", True, False),
        ("zz", "", True, True),
    ]
    assert entries[1].problem.startswith("no heads reported by peer ap for 100 s") and entries[1].reported_ms
    assert entries[3].problem == "no heads reported by peer zz: not compared"

    peers = peers_json(entries)
    assert [p["compared"] for p in peers] == [True, False, True, False]
    ok, text = _summary([], peers, "eu:7420")
    assert not ok  # the mismatch ap reported: found once, it stays found
    assert "HEAD MISMATCH with ap on eu#4f1c: altered" in text
    assert "NOT COMPARED: no heads reported by peer zz: not compared" in text

    # A peer that never reported does not make verify fail, but the summary does not claim it agreed.
    ok, text = _summary([], peers_json(peer_heads(["us", "zz"], {"us": heard["us"]}, now, 30_000)), "eu:7420")
    assert ok
    assert text == (
        "ok: eu:7420 holds 0 chain(s), 0 record(s), every link intact; 1 peer(s) agree on 1 head(s); "
        "no heads reported by peer zz: not compared"
    )
    ok, text = _summary([], peers_json(peer_heads(["zz"], {}, now, 30_000)), "eu:7420")
    assert ok and "agree" not in text and text.endswith("intact; no heads reported by peer zz: not compared")


def test_the_broken_line_names_the_event_where_the_problem_was_found() -> None:
    """Found in review: "record 3 (event us#...:8): record 3 is missing", where event 8 is record 4."""
    finding = {"origin": "us#a2b0", "at": 8, "seq": 3, "problem": "record 3 is missing: the next record held is 4"}
    chains = [{"origin": "us#a2b0", "records": 5, "findings": [finding]}]
    ok, text = _summary(chains, [], "./copy")
    assert not ok
    assert text == (
        "BROKEN: ./copy: chain us#a2b0, record 3 expected at event us#a2b0:8: "
        "record 3 is missing: the next record held is 4"
    )
    whole = {"origin": "us#a2b0", "at": 0, "seq": 9, "problem": "the records after record 8 are missing"}
    ok, text = _summary([{"origin": "us#a2b0", "records": 8, "findings": [whole]}], [], "./copy")
    assert text == "BROKEN: ./copy: chain us#a2b0, as a whole: the records after record 8 are missing"

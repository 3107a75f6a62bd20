"""Explain: the pure explanation of a key's state, the RPC's answer from a store, and three real regions.

The pure part (``crdtstore.audit.explain``) is held by properties to the rule
reads use: the winner it names is what ``KeyState.read()`` returns, and its
reason agrees with the versions' timestamps. ``explain_key`` runs against real
LMDB stores whose writes were exchanged as replication does (equal timestamps
come from one fake clock). The end-to-end test partitions three ``crdtstore
serve`` processes with access control, makes them write one register
concurrently (two of them at equal timestamps), heals, and checks that every
region names the same winner and reason, with each version's audit record and
principal; the CLI runs in-process through ``crdtstore.cli.main``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore import cli, cli_explain
from crdtstore.audit.explain import REASONS, Explanation, explain, explanation_from_pb, iso_time
from crdtstore.client import Client, ClientError, _entry_from_proto
from crdtstore.crdt import HybridLogicalClock, VersionVector
from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.causal import Dot
from crdtstore.crdt.counter import Counter, Share
from crdtstore.crdt.hlc import Timestamp
from crdtstore.crdt.keyed import KeyState, ValueType
from crdtstore.crdt.register import Register, Version
from crdtstore.node.explain import explain_key
from crdtstore.operations import AddMembers, Increment, Operation, SetRegister
from crdtstore.storage import LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.audit import RequestInfo
from crdtstore.testing.auth import AuthKit
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.regions import RegionProcesses
from crdtstore.testing.waits import wait_for
from crdtstore.v1 import kv_pb2 as pb

# -- the pure explanation ------------------------------------------------------------------------

# Few origins, counters and clock values, so that equal timestamps and same-region incarnations are common.
_origins = st.sampled_from(["a#01", "b#01", "b#02", "c#0f", "c"])
_dots = st.builds(Dot, _origins, st.integers(1, 4))
_timestamps = st.builds(Timestamp, st.integers(0, 2), st.integers(0, 2))
_registers = st.dictionaries(_dots, st.builds(Version, _timestamps, st.binary(max_size=3)), min_size=1, max_size=6)


def _register(entries: dict[Dot, Version]) -> KeyState:
    return KeyState({ValueType.REGISTER: Register(entries)})


@given(_registers)
def test_the_winner_named_is_what_reads_return_and_the_reason_fits_the_versions(entries: dict[Dot, Version]) -> None:
    state = _register(entries)
    told = explain(state)
    read = state.read()
    assert read is not None
    winner = told.winner
    assert winner is not None
    assert winner.value == read.value
    # The winner is the highest (timestamp, origin, counter): the rule of register reads, checked on its own terms.
    top = max(entries, key=lambda d: (entries[d].timestamp, d.region, d.counter))
    assert (winner.origin, winner.counter) == top
    assert sum(v.winner for v in told.versions) == 1
    assert {(v.origin, v.counter) for v in told.versions} == set(entries)
    assert told.reason in REASONS
    others = [entries[d].timestamp for d in entries if d != top]
    if not others:
        assert told.reason == "only"
    elif all(ts < entries[top].timestamp for ts in others):
        assert told.reason == "timestamp"
    else:
        assert told.reason == "tie-break"
        assert entries[top].timestamp in others
    assert winner.region in told.explanation


@given(st.dictionaries(_dots, st.builds(Share, st.integers(0, 2**70), st.integers(0, 2**70)), max_size=5))
def test_a_counter_is_the_sum_of_the_contributions_explained(shares: dict[Dot, Share]) -> None:
    state = KeyState({ValueType.COUNTER: Counter(shares)}) if shares else None
    told = explain(state)
    if state is None:
        assert told.type is None
        assert not told.versions
        return
    read = state.read()
    assert read is not None
    assert sum(v.amount for v in told.versions) == read.value
    assert told.reason == ""
    assert str(read.value) in told.explanation


@given(st.dictionaries(st.text(max_size=3), st.frozensets(_dots, min_size=1, max_size=3), min_size=1, max_size=5))
def test_a_set_explains_each_surviving_add_of_each_member(entries: dict[str, frozenset[Dot]]) -> None:
    state = KeyState({ValueType.SET: AWSet(entries)})
    told = explain(state)
    read = state.read()
    assert read is not None
    assert frozenset(v.member for v in told.versions) == read.value
    assert {(v.member, Dot(v.origin, v.counter)) for v in told.versions} == {
        (m, d) for m, dots in entries.items() for d in dots
    }


def test_each_reason_in_words() -> None:
    one = explain(_register({Dot("eu#1", 3): Version(Timestamp(1_700_000_000_000, 0), b"v")}))
    assert one.reason == "only"
    assert "eu at 2023-11-14T22:13:20.000Z (logical 0)" in one.explanation
    assert "causal overwrite" in one.explanation

    later = explain(
        _register(
            {
                Dot("eu#1", 3): Version(Timestamp(5, 0), b"eu"),
                Dot("us#1", 9): Version(Timestamp(5, 1), b"us"),
            }
        )
    )
    assert (later.reason, later.versions[0].value) == ("timestamp", b"us")
    assert "The one from us has the highest hybrid logical timestamp" in later.explanation

    tied = explain(
        _register(
            {
                Dot("ap#1", 1): Version(Timestamp(4, 0), b"ap"),
                Dot("eu#1", 3): Version(Timestamp(5, 0), b"eu"),
                Dot("us#1", 9): Version(Timestamp(5, 0), b"us"),
            }
        )
    )
    assert (tied.reason, tied.versions[0].region) == ("tie-break", "us")
    assert [v.region for v in tied.versions] == ["us", "eu", "ap"]
    assert "2 of them share the highest" in tied.explanation
    assert "the region name decides: us sorts after eu" in tied.explanation

    incarnations = explain(
        _register({Dot("eu#1", 3): Version(Timestamp(5, 0), b"x"), Dot("eu#2", 1): Version(Timestamp(5, 0), b"y")})
    )
    assert incarnations.reason == "tie-break"
    assert "the incarnation decides: eu#2 sorts after eu#1" in incarnations.explanation

    counters = explain(
        _register({Dot("eu#1", 3): Version(Timestamp(5, 0), b"x"), Dot("eu#1", 4): Version(Timestamp(5, 0), b"y")})
    )
    assert "the event counter decides: 4 after 3" in counters.explanation


def test_a_type_conflict_is_explained_as_reads_show_it() -> None:
    state = KeyState(
        {
            ValueType.SET: AWSet({"m": frozenset({Dot("us#1", 2)})}),
            ValueType.REGISTER: Register({Dot("eu#1", 1): Version(Timestamp(1, 0), b"v")}),
        }
    )
    told = explain(state)
    assert told.type is ValueType.REGISTER
    assert told.conflicts == (ValueType.SET,)
    assert [v.value for v in told.versions] == [b"v"]
    assert "also created concurrently as a set" in told.explanation


def test_a_key_that_does_not_exist() -> None:
    for state in (None, KeyState()):
        told = explain(state)
        assert (told.type, told.versions, told.reason) == (None, (), "")
        assert "does not exist" in told.explanation


def test_iso_time() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


# -- the answer from real stores -----------------------------------------------------------------


class Region:
    """One region's store, its clock on a shared fake physical time, writing as a named principal."""

    def __init__(self, root: Path, name: str, wall: FakeClock) -> None:
        self.store = LmdbStore(StorageConfig(root / name, name, StorageOptions(audit=True)), wall_ms=wall)
        self.clock = HybridLogicalClock(wall, floor=self.store.hlc_mark)

    def write(self, principal: str, *ops: Operation) -> None:
        info = RequestInfo(principal=principal, request_id=f"req-{principal}", method="Mutate")
        (result,) = self.store.write_batch([WriteRequest(list(ops), info=info)], self.clock)
        assert type(result).__name__ == "Applied", result

    def receive(self, *sources: Region) -> None:
        for source in sources:
            entries = source.store.log_since(VersionVector(), 1 << 24).entries
            self.store.apply_raw(entries, source.store.region, self.clock)


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[dict[str, Region]]:
    wall = FakeClock(1_700_000_000_000)
    out = {name: Region(tmp_path, name, wall) for name in ("ap", "eu", "us")}
    yield out
    for region in out.values():
        region.store.close()


def _comparable(response: pb.ExplainResponse) -> bytes:
    without_token = pb.ExplainResponse()
    without_token.CopyFrom(response)
    without_token.ClearField("token")
    return without_token.SerializeToString(deterministic=True)


def test_every_region_explains_a_tie_the_same_way_with_each_writes_record(regions: dict[str, Region]) -> None:
    ap, eu, us = regions["ap"], regions["eu"], regions["us"]
    # One physical time for all, and nobody has seen another's write: eu and us write k at the same hybrid
    # logical timestamp, and the origin (us after eu) decides.
    eu.write("alice", SetRegister("k", b"from eu"), Increment("n", 2))
    us.write("bob", SetRegister("k", b"from us"), Increment("n", -5))
    ap.write("carol", AddMembers("s", ("x",)))
    for region in regions.values():
        region.receive(*(r for r in regions.values() if r is not region))
    answers = {name: explain_key(region.store, "k") for name, region in regions.items()}
    assert len({_comparable(a) for a in answers.values()}) == 1
    answer = answers["ap"]
    assert answer.reason == "tie-break"
    assert [(v.region, v.winner, v.value) for v in answer.versions] == [
        ("us", True, b"from us"),
        ("eu", False, b"from eu"),
    ]
    assert answer.versions[0].wall_ms == answer.versions[1].wall_ms == 1_700_000_000_000
    assert answer.entry.value.register == b"from us"
    assert [s.region for s in answer.entry.siblings] == ["us", "eu"]
    assert [(v.record.principal, v.record.request_id, v.record.kind) for v in answer.versions] == [
        ("bob", "req-bob", "write"),
        ("alice", "req-alice", "write"),
    ]
    for version in answer.versions:
        assert version.record.first <= version.counter <= version.record.last
        assert version.record.origin == version.origin
        assert [op.key for op in version.record.operations] == ["k", "n"]
    counter = explain_key(eu.store, "n")
    assert sorted((v.region, v.amount, v.record.principal) for v in counter.versions) == [
        ("eu", 2, "alice"),
        ("us", -5, "bob"),
    ]
    assert counter.entry.value.counter == -3
    member = explain_key(us.store, "s")
    assert [(v.member, v.region, v.record.principal) for v in member.versions] == [("x", "ap", "carol")]
    # A later write in a region that has seen both replaces them: one version, overwritten causally.
    ap.write("dave", SetRegister("k", b"settled"))
    after = explain_key(ap.store, "k")
    assert after.reason == "only"
    assert [(v.value, v.record.principal) for v in after.versions] == [(b"settled", "dave")]


def test_a_missing_key_answers_an_empty_entry(regions: dict[str, Region]) -> None:
    answer = explain_key(regions["eu"].store, "nothing")
    assert answer.entry.key == "nothing"
    assert answer.entry.value.type == pb.VALUE_TYPE_UNSPECIFIED
    assert not answer.versions
    assert answer.token.vector


def test_a_large_set_is_explained_a_page_at_a_time(regions: dict[str, Region]) -> None:
    eu = regions["eu"]
    members = [f"m{i:05d}" for i in range(1_203)]
    eu.write("alice", AddMembers("big", tuple(members[:700])))
    eu.write("bob", AddMembers("big", tuple(members[700:])))
    answer = explain_key(eu.store, "big")
    assert answer.truncated
    # The entry as Get shows a set too large for one answer: its size only.
    assert answer.entry.value.members_omitted
    assert answer.entry.value.member_count == 1_203
    assert len(answer.versions) == 1_000
    assert [v.member for v in answer.versions] == members[:1_000]
    assert {v.record.principal for v in answer.versions[:700]} == {"alice"}
    assert {v.record.principal for v in answer.versions[700:]} == {"bob"}
    assert "1,203 members, of which the first 1,000 are shown" in answer.explanation


def _json_versions(obj: dict[str, object]) -> list[dict[str, Any]]:
    versions = obj["versions"]
    assert isinstance(versions, list)
    return versions


def _as_client_sees(response: pb.ExplainResponse) -> Explanation:
    return explanation_from_pb(response, _entry_from_proto(response.entry, bytes(response.token.vector)))


def test_the_command_prints_each_type(regions: dict[str, Region], capsys: pytest.CaptureFixture[str]) -> None:
    eu, us = regions["eu"], regions["us"]
    eu.write("alice", Increment("n", 7), AddMembers("s", ("x", "y")), SetRegister("bin", b"\xff\x00"))
    us.write("bob", Increment("n", -2), AddMembers("s", ("x",)))
    eu.receive(us)
    counter = _as_client_sees(explain_key(eu.store, "n"))
    cli_explain._print_explanation(counter)
    out = capsys.readouterr().out
    assert "n = 5  (counter)" in out
    assert "  eu  +7  eu#" in out
    assert "  us  -2  us#" in out
    assert "principal alice" in out and "principal bob" in out
    assert [v["amount"] for v in _json_versions(cli_explain.explanation_json(counter))] == [7, -2]

    members = _as_client_sees(explain_key(eu.store, "s"))
    cli_explain._print_explanation(members)
    out = capsys.readouterr().out
    # x was added concurrently in both regions: both adds survive.
    assert [line.split("  ")[1:3] for line in out.splitlines() if "added in" in line] == [
        ["x", "added in eu"],
        ["x", "added in us"],
        ["y", "added in eu"],
    ]
    assert "1 of them are held by concurrent adds" in out
    obj = cli_explain.explanation_json(members)
    assert [(v["member"], v["region"]) for v in _json_versions(obj)] == [("x", "eu"), ("x", "us"), ("y", "eu")]
    assert obj["entry"] == {"key": "s", "type": "set", "value": ["x", "y"]}

    binary = cli_explain.explanation_json(_as_client_sees(explain_key(eu.store, "bin")))
    (version,) = _json_versions(binary)
    assert (version["value"], version["encoding"], version["winner"]) == ("/wA=", "base64", True)

    cli_explain._print_explanation(_as_client_sees(explain_key(eu.store, "absent")))
    assert capsys.readouterr().out.startswith("absent: no such key\nwhy: The key does not exist")


# -- three real regions --------------------------------------------------------------------------

NAMES = ("a", "b", "c")
BEHIND_MS = 30_000  # b's and c's clocks; the bound below lets a's timestamps into their clocks all the same


def _cli_json(addr: str, token: str, key: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert cli.main(["--addr", addr, "--token", token, "explain", key, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.processes
def test_three_regions_name_the_same_winner_and_reason_with_records_and_principals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml", extra="[server]\nmax_clock_offset_ms = 120000\n")
    admin = kit.token("root", ["admin"])
    env: dict[str, dict[str, str]] = {
        name: {"CRDTSTORE_PEER_TOKEN": kit.token(name, ["replicator"], ttl_s=24 * 3600)} for name in NAMES
    }
    for name in ("b", "c"):
        env[name]["CRDTSTORE_CHAOS_CLOCK_OFFSET_MS"] = str(-BEHIND_MS)
    writers = {"a": "alice", "b": "bob", "c": "carol"}
    with RegionProcesses(tmp_path, NAMES, extra_args=("--config", str(config)), env=env, client_token=admin) as cl:
        for name in NAMES:
            cl.clients[name].put_role("replicator", {"": ["replicate"]})
            cl.clients[name].put_role("writer", {"k": ["read", "set"]})
        cl.wait_connected()
        clients = {name: Client(cl.servers[name].addr, token=kit.token(writers[name], ["writer"])) for name in NAMES}
        try:
            # a's write reaches b and c, and moves their clocks (30 s behind) up to its timestamp. Cut off
            # from each other, b and c then write at the same hybrid logical timestamp: the one after a's.
            cl.clients["a"].set("sync", "now")
            wait_for(lambda: all(cl.clients[n].get("sync").exists for n in ("b", "c")), "sync in b and c", 60.0)
            for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
                cl.cut(x, y)
            # Each region writes k (and b and c k2, in the same batch: the same timestamps again) unseen by the others.
            clients["a"].set("k", "from a")
            for name in ("b", "c"):
                clients[name].mutate([SetRegister("k", f"from {name}".encode()), SetRegister("k2", name.encode())])
            cl.heal()
            wait_for(
                lambda: (
                    all(len(cl.clients[n].get("k").siblings) == 3 for n in NAMES)
                    and all(len(cl.clients[n].get("k2").siblings) == 2 for n in NAMES)
                ),
                "the concurrent writes everywhere",
                60.0,
            )
            told = {n: cl.clients[n].explain("k") for n in NAMES}
            tied = {n: cl.clients[n].explain("k2") for n in NAMES}
            # A writer (read and set on k, no audit right) may not see the audit trail.
            with pytest.raises(ClientError) as refused:
                clients["a"].explain("k")
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(ClientError) as reserved:
                cl.clients["a"].explain("\x00audit/x")
            assert reserved.value.code == grpc.StatusCode.INVALID_ARGUMENT
            missing = cl.clients["b"].explain("never-written")
            from_cli = {n: _cli_json(cl.servers[n].addr, admin, "k2", capsys) for n in NAMES}
            assert cli.main(["--addr", cl.servers["c"].addr, "--token", admin, "explain", "k"]) == 0
            human = capsys.readouterr().out
        finally:
            for client in clients.values():
                client.close()

    def summary(explained: Explanation) -> object:
        return (
            explained.reason,
            explained.explanation,
            [(v.origin, v.counter, v.wall_ms, v.logical, v.value, v.winner, v.record) for v in explained.versions],
        )

    for name in NAMES:
        assert summary(told[name]) == summary(told["a"]), name
        assert summary(tied[name]) == summary(tied["a"]), name
    k, k2 = told["a"], tied["a"]
    # k: a's write is ahead of b's and c's (theirs sit on the timestamp after a's sync write, 30 s back).
    assert k.reason == "timestamp"
    assert [v.region for v in k.versions] == ["a", "c", "b"]
    assert k.winner is not None and k.winner.value == b"from a"
    assert k.entry.value == b"from a"
    assert (k.versions[1].wall_ms, k.versions[1].logical) == (k.versions[2].wall_ms, k.versions[2].logical)
    # k2: only b and c wrote it, at equal timestamps: the region name decides.
    assert k2.reason == "tie-break"
    assert [(v.region, v.winner) for v in k2.versions] == [("c", True), ("b", False)]
    assert "the region name decides: c sorts after b" in k2.explanation
    for explained in (k, k2):
        for version in explained.versions:
            assert version.record is not None
            assert version.record.principal == writers[version.region]
            assert version.record.method == "Mutate"
            assert version.record.first <= version.counter <= version.record.last
    # In causal order: b's and c's records share a timestamp (the origin orders them), a's is later.
    assert [r.principal for r in k.records] == ["bob", "carol", "alice"]
    assert missing.entry.type is None and not missing.versions
    for name in NAMES:
        obj = from_cli[name]
        assert obj["reason"] == "tie-break"
        assert obj["entry"] == {"key": "k2", "type": "register", "value": "c", "siblings": ["c", "b"]}
        versions = obj["versions"]
        assert isinstance(versions, list)
        assert [(v["region"], v["winner"], v["value"], v["record"]["principal"]) for v in versions] == [
            ("c", True, "c", "carol"),
            ("b", False, "b", "bob"),
        ]
    assert "WINNER  a" in human
    assert "why: timestamp: 3 writes are live" in human
    for principal in writers.values():
        assert f"principal {principal}" in human

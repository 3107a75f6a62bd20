"""The client and the command line against a fake KV server on loopback (no real node).

The fake is a plain gRPC server with scripted answers: it can refuse the next
calls with a status, remembers every request, and deduplicates mutations by
idempotency key the way the protocol asks. Backoff sleeps are replaced by a
recorder, so nothing here waits on a clock.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import socket
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

import crdtstore.client as client_module
from crdtstore import cli
from crdtstore.client import (
    AsyncClient,
    Change,
    Client,
    ClientError,
    Conflict,
    Entry,
    Progress,
    ResetBegin,
    ResetEnd,
    Sibling,
    TypeMismatchError,
    WriteResult,
    _entry_from_get,
)
from crdtstore.crdt import VersionVector, encode
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.v1 import kv_pb2, kv_pb2_grpc

BIG = 2**64 + 5  # beyond int64: travels only as counter_decimal


# -- the fake server ---------------------------------------------------------------------


def register(value: bytes, *siblings: bytes) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        value=kv_pb2.Value(type=kv_pb2.VALUE_TYPE_REGISTER, register=value),
        siblings=[kv_pb2.Sibling(value=v, region=f"r{i}", wall_ms=1000 + i, logical=i) for i, v in enumerate(siblings)],
    )


def counter(n: int) -> kv_pb2.Value:
    fits = -(2**63) <= n < 2**63
    return kv_pb2.Value(
        type=kv_pb2.VALUE_TYPE_COUNTER, counter=n if fits else 0, counter_fits=fits, counter_decimal=str(n)
    )


def members(*names: str) -> kv_pb2.Value:
    return kv_pb2.Value(type=kv_pb2.VALUE_TYPE_SET, members=sorted(names))


class FakeKV(kv_pb2_grpc.KVServicer, kv_pb2_grpc.AdminServicer):
    """KV and Admin servicers with scripted failures; every request is recorded (the rest: UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, kv_pb2.KeyValue] = {}
        self.failures: list[tuple[grpc.StatusCode, str]] = []  # answers to the next calls, any method
        self.mutations: list[kv_pb2.MutateRequest] = []
        self.scans: list[kv_pb2.ScanRequest] = []
        self.gets: list[str] = []
        self.applied: dict[bytes, kv_pb2.MutateResponse] = {}
        self.status_token = b"\x00\xff"
        self.members_requests: list[kv_pb2.MembersRequest] = []
        self.contains_extra: list[bool] = []  # answers beyond the members asked: a malformed reply
        self.roles: dict[str, kv_pb2.Role] = {}
        self.revoked: list[str] = []
        self.metadata: list[dict[str, str | bytes]] = []  # of each admin call
        # Watch: each call takes the next script (messages, then the status it ends with); requests recorded.
        self.watch_scripts: list[tuple[list[kv_pb2.WatchResponse], grpc.StatusCode]] = []
        self.watches: list[kv_pb2.WatchRequest] = []

    def put(self, key: str, kv: kv_pb2.KeyValue) -> None:
        kv.key = key
        self.entries[key] = kv

    def _maybe_fail(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            context.abort(*failure)

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        self.gets.append(request.key)
        self._maybe_fail(context)
        entry = self.entries.get(request.key, kv_pb2.KeyValue(key=request.key))
        return kv_pb2.GetResponse(entry=entry, token=kv_pb2.CausalToken(vector=b"read-token"))

    def Mutate(self, request: kv_pb2.MutateRequest, context: grpc.ServicerContext) -> kv_pb2.MutateResponse:
        with self.lock:
            self.mutations.append(request)
        self._maybe_fail(context)
        with self.lock:
            if request.idempotency_key in self.applied:
                first = self.applied[request.idempotency_key]
                return kv_pb2.MutateResponse(token=first.token, replayed=True)
            response = kv_pb2.MutateResponse(token=kv_pb2.CausalToken(vector=b"write-%d" % len(self.applied)))
            if request.idempotency_key:
                self.applied[request.idempotency_key] = response
            return response

    def Scan(self, request: kv_pb2.ScanRequest, context: grpc.ServicerContext) -> kv_pb2.ScanResponse:
        self.scans.append(request)
        self._maybe_fail(context)
        keys = sorted(k for k in self.entries if k.startswith(request.prefix) and k > request.page_token)
        page = keys[: request.limit or 1000]
        more = len(keys) > len(page)
        return kv_pb2.ScanResponse(entries=[self.entries[k] for k in page], next_page_token=page[-1] if more else "")

    def _members(self, key: str) -> list[str]:
        return sorted(self.entries[key].value.members) if key in self.entries else []

    def Contains(self, request: kv_pb2.ContainsRequest, context: grpc.ServicerContext) -> kv_pb2.ContainsResponse:
        self._maybe_fail(context)
        held = set(self._members(request.key))
        present = [m in held for m in request.members] + self.contains_extra
        return kv_pb2.ContainsResponse(present=present)

    def Members(self, request: kv_pb2.MembersRequest, context: grpc.ServicerContext) -> kv_pb2.MembersResponse:
        self.members_requests.append(request)
        self._maybe_fail(context)
        members = [m for m in self._members(request.key) if m > request.page_token]
        page = members[: request.limit or 1000]
        more = len(members) > len(page)
        return kv_pb2.MembersResponse(members=page, next_page_token=page[-1] if more else "")

    def Status(self, request: kv_pb2.StatusRequest, context: grpc.ServicerContext) -> kv_pb2.StatusResponse:
        self._maybe_fail(context)
        return kv_pb2.StatusResponse(
            region="eu",
            version="0.1.0",
            keys=len(self.entries),
            token=kv_pb2.CausalToken(vector=self.status_token),
            draining=False,
            data_bytes=4096,
            commits=7,
            requests_committed=19,
            peers=[
                kv_pb2.PeerStatus(
                    region="us",
                    address="10.0.0.2:7420",
                    connected=True,
                    acked=kv_pb2.CausalToken(vector=b"\x01"),
                    behind=3,
                    clock_offset_ms=-12,
                    clock_error_ms=3,
                )
            ],
            clock_skew_events=2,
            clock_fenced=False,
            origin="eu#0123456789ab",
            conflicting_events=0,
        )

    def Watch(self, request: kv_pb2.WatchRequest, context: grpc.ServicerContext) -> Iterator[kv_pb2.WatchResponse]:
        with self.lock:
            self.watches.append(request)
            messages, end = self.watch_scripts.pop(0) if self.watch_scripts else ([], grpc.StatusCode.UNAVAILABLE)
        yield from messages
        context.abort(end, f"scripted end: {end.name}")

    # Roles and revocations: kept in memory, with the metadata of each call, so the client and the
    # command line can be checked without a node.
    def _admin(self, context: grpc.ServicerContext) -> None:
        self.metadata.append(dict(context.invocation_metadata()))
        self._maybe_fail(context)

    def PutRole(self, request: kv_pb2.PutRoleRequest, context: grpc.ServicerContext) -> kv_pb2.PutRoleResponse:
        self._admin(context)
        role = kv_pb2.Role(name=request.name, grants=request.grants, changed_by="tester", changed_in="eu#1")
        self.roles[request.name] = role
        return kv_pb2.PutRoleResponse(role=role, token=kv_pb2.CausalToken(vector=b"put"))

    def GetRole(self, request: kv_pb2.GetRoleRequest, context: grpc.ServicerContext) -> kv_pb2.GetRoleResponse:
        self._admin(context)
        if request.name not in self.roles:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no role {request.name!r}")
        return kv_pb2.GetRoleResponse(role=self.roles[request.name])

    def ListRoles(self, request: kv_pb2.ListRolesRequest, context: grpc.ServicerContext) -> kv_pb2.ListRolesResponse:
        self._admin(context)
        return kv_pb2.ListRolesResponse(roles=[self.roles[name] for name in sorted(self.roles)])

    def DeleteRole(self, request: kv_pb2.DeleteRoleRequest, context: grpc.ServicerContext) -> kv_pb2.DeleteRoleResponse:
        self._admin(context)
        if self.roles.pop(request.name, None) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no role {request.name!r}")
        return kv_pb2.DeleteRoleResponse(token=kv_pb2.CausalToken(vector=b"deleted"))

    def RevokeToken(
        self, request: kv_pb2.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> kv_pb2.RevokeTokenResponse:
        self._admin(context)
        self.revoked.append(request.jti)
        return kv_pb2.RevokeTokenResponse(token=kv_pb2.CausalToken(vector=b"revoked"))

    # Backup and verification are run against real nodes (test_backup*.py, test_verify.py); here they only exist.
    def Backup(self, request: kv_pb2.BackupRequest, context: grpc.ServicerContext) -> Iterator[kv_pb2.BackupChunk]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    def Digest(self, request: kv_pb2.DigestRequest, context: grpc.ServicerContext) -> kv_pb2.DigestResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    def BucketKeys(self, request: kv_pb2.BucketKeysRequest, context: grpc.ServicerContext) -> kv_pb2.BucketKeysResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")


@pytest.fixture
def fake() -> Iterator[FakeKV]:
    yield FakeKV()


@contextlib.contextmanager
def serving(fake: FakeKV, addr: str = "127.0.0.1:0") -> Iterator[str]:
    """``fake`` served at ``addr`` (a free port by default); yields the address bound."""
    generated: Any = kv_pb2_grpc  # untyped generated code
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    generated.add_KVServicer_to_server(fake, server)
    generated.add_AdminServicer_to_server(fake, server)
    port = server.add_insecure_port(addr)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


@pytest.fixture
def addr(fake: FakeKV) -> Iterator[str]:
    with serving(fake) as bound:
        yield bound


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff sleeps instead of sleeping."""
    slept: list[float] = []

    async def async_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(client_module, "_sleep", slept.append)
    monkeypatch.setattr(client_module, "_async_sleep", async_sleep)
    return slept


@pytest.fixture
def kv(addr: str) -> Iterator[Client]:
    with Client(addr) as c:
        yield c


def closed_port() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "the node is draining")


# -- retries and idempotency ---------------------------------------------------------------


def test_unavailable_is_retried_with_the_same_idempotency_key(kv: Client, fake: FakeKV, sleeps: list[float]) -> None:
    fake.failures = [UNAVAILABLE, UNAVAILABLE]
    result = kv.set("k", "v")
    assert result == WriteResult(b"write-0", False)
    keys = [m.idempotency_key for m in fake.mutations]
    assert len(keys) == 3
    assert len(keys[0]) == 16
    assert keys == [keys[0]] * 3
    # Jittered exponential backoff: half to all of 50 ms, then of 100 ms.
    assert len(sleeps) == 2
    assert 0.025 <= sleeps[0] <= 0.05
    assert 0.05 <= sleeps[1] <= 0.1


def test_each_mutate_gets_a_fresh_idempotency_key(kv: Client, fake: FakeKV) -> None:
    kv.incr("c")
    kv.incr("c")
    first, second = (m.idempotency_key for m in fake.mutations)
    assert first != second


def test_a_given_idempotency_key_is_sent_and_a_repeat_is_replayed(kv: Client, fake: FakeKV) -> None:
    ops: list[Operation] = [
        SetRegister("a", b"1"),
        Increment("b", -2),
        AddMembers("s", ("x", "y")),
        RemoveMembers("s", ("z",)),
    ]
    first = kv.mutate([*ops, DeleteKey("d")], idempotency_key=b"batch-1")
    again = kv.mutate([*ops, DeleteKey("d")], idempotency_key=b"batch-1")
    assert first == WriteResult(b"write-0", False)
    assert again == WriteResult(b"write-0", True)
    request = fake.mutations[0]
    assert request.idempotency_key == b"batch-1"
    assert [op.WhichOneof("op") for op in request.operations] == ["set", "increment", "add", "remove", "delete"]
    assert request.operations[1].increment.amount == -2
    assert list(request.operations[2].add.members) == ["x", "y"]


def test_retries_stop_after_retries_max(addr: str, fake: FakeKV, sleeps: list[float]) -> None:
    fake.failures = [UNAVAILABLE] * 10
    with Client(addr, retries_max=2) as c, pytest.raises(ClientError) as info:
        c.sadd("s", "m")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message == "the node is draining"
    assert len(fake.mutations) == 3
    assert len(sleeps) == 2
    # The error names the batch's key, so the caller can retry it safely later.
    assert info.value.idempotency_key == fake.mutations[0].idempotency_key


def test_backoff_is_capped(addr: str, fake: FakeKV, sleeps: list[float]) -> None:
    fake.failures = [UNAVAILABLE] * 5
    with Client(addr, backoff_ms_initial=100, backoff_ms_max=300) as c:
        c.delete("k")
    assert len(sleeps) == 5
    assert all(0.15 <= s <= 0.3 for s in sleeps[2:])


def test_without_an_idempotency_key_a_batch_is_not_retried(kv: Client, fake: FakeKV) -> None:
    fake.failures = [UNAVAILABLE]
    with pytest.raises(ClientError):
        kv.mutate([Increment("c", 1)], idempotency_key=b"")
    assert len(fake.mutations) == 1


def test_reads_are_retried_too(kv: Client, fake: FakeKV) -> None:
    fake.failures = [UNAVAILABLE]
    assert kv.get("missing").type is None
    assert fake.gets == ["missing", "missing"]


def test_regression_a_new_client_does_not_wait_out_another_clients_reconnect_backoff(fake: FakeKV) -> None:
    """Found by CI: a test's client opened right after its node restarted failed every retry.

    gRPC shared one connection per address among all the channels of a process,
    with its reconnection backoff: the new client inherited the backoff the old
    one had earned while the node was down. Each client now has its own.
    """
    addr = closed_port()
    with Client(addr, retries_max=0) as old:
        for _ in range(3):
            with pytest.raises(ClientError):
                old.get("k")
        with serving(fake, addr), Client(addr, retries_max=0) as new:
            assert new.get("missing").type is None  # at the first attempt


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
def test_other_errors_are_not_retried(kv: Client, fake: FakeKV, code: grpc.StatusCode) -> None:
    fake.failures = [(code, "no")]
    with pytest.raises(ClientError) as info:
        kv.set("k", b"v")
    assert type(info.value) is ClientError
    assert info.value.code == code
    assert len(fake.mutations) == 1


def test_failed_precondition_is_a_type_mismatch(kv: Client, fake: FakeKV) -> None:
    fake.failures = [(grpc.StatusCode.FAILED_PRECONDITION, "key 'k' holds a register")]
    with pytest.raises(TypeMismatchError) as info:
        kv.incr("k")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.message == "key 'k' holds a register"
    assert "FAILED_PRECONDITION" in str(info.value)
    assert len(fake.mutations) == 1


def test_an_amount_beyond_int64_is_refused_before_sending(kv: Client, fake: FakeKV) -> None:
    with pytest.raises(ClientError) as info:
        kv.incr("c", 2**63)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fake.mutations == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", timeout_s=0)
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", retries_max=-1)
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", backoff_ms_initial=10, backoff_ms_max=5)


def test_an_unreachable_server_is_unavailable(sleeps: list[float]) -> None:
    with Client(closed_port(), retries_max=1) as c, pytest.raises(ClientError) as info:
        c.get("k")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(sleeps) == 1


# -- conversions -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, -1, 2**63 - 1, -(2**63), BIG, -BIG, 10**40])
def test_counters_are_exact(n: int) -> None:
    value = counter(n)
    entry = _entry_from_get(kv_pb2.GetResponse(entry=kv_pb2.KeyValue(key="c", value=value)))
    assert entry.type == "counter"
    assert entry.value == n
    assert type(entry.value) is int


def test_a_counter_without_decimal_uses_the_int64_field() -> None:
    value = kv_pb2.Value(type=kv_pb2.VALUE_TYPE_COUNTER, counter=-7, counter_fits=True)
    entry = _entry_from_get(kv_pb2.GetResponse(entry=kv_pb2.KeyValue(key="c", value=value)))
    assert entry.value == -7


def test_a_malformed_counter_is_a_client_error() -> None:
    value = kv_pb2.Value(type=kv_pb2.VALUE_TYPE_COUNTER, counter_decimal="12x")
    with pytest.raises(ClientError):
        _entry_from_get(kv_pb2.GetResponse(entry=kv_pb2.KeyValue(key="c", value=value)))


def test_get_converts_every_type(kv: Client, fake: FakeKV) -> None:
    fake.put("r", register(b"win", b"win", b"lose"))
    fake.put("c", kv_pb2.KeyValue(value=counter(BIG)))
    fake.put("s", kv_pb2.KeyValue(value=members("b", "a"), conflicts=[counter(3), members("x")]))

    r = kv.get("r")
    assert r == Entry(
        key="r",
        type="register",
        value=b"win",
        siblings=(Sibling(b"win", "r0", 1000, 0), Sibling(b"lose", "r1", 1001, 1)),
        token=b"read-token",
    )
    assert r.exists
    assert kv.get("c").value == BIG
    s = kv.get("s")
    assert s.value == frozenset({"a", "b"})
    assert s.conflicts == (Conflict("counter", 3), Conflict("set", frozenset({"x"})))

    missing = kv.get("nope")
    assert missing == Entry("nope", None, None, token=b"read-token")
    assert not missing.exists


def test_text_reads_a_register_as_utf8() -> None:
    assert Entry("r", "register", "héllo".encode()).text == "héllo"
    assert Entry("gone", None, None).text is None


def test_text_of_bytes_that_are_not_utf8_names_the_key() -> None:
    with pytest.raises(UnicodeDecodeError, match="register 'bin' is not UTF-8 text") as caught:
        _ = Entry("bin", "register", b"ok\xff").text
    assert (caught.value.start, caught.value.object) == (2, b"ok\xff")


@pytest.mark.parametrize("entry", [Entry("c", "counter", 3), Entry("s", "set", frozenset({"a"}))])
def test_text_of_a_counter_or_a_set_is_a_type_error(entry: Entry) -> None:
    with pytest.raises(TypeError, match=f"{entry.key!r} holds a {entry.type}, not a register"):
        _ = entry.text


def test_scan_follows_page_tokens(kv: Client, fake: FakeKV) -> None:
    for i in range(5):
        fake.put(f"user/{i}", kv_pb2.KeyValue(value=counter(i)))
    fake.put("other", kv_pb2.KeyValue(value=counter(9)))
    entries = list(kv.scan("user/", page_size=2))
    assert [(e.key, e.value) for e in entries] == [(f"user/{i}", i) for i in range(5)]
    assert [(s.limit, s.page_token) for s in fake.scans] == [(2, ""), (2, "user/1"), (2, "user/3")]
    assert all(e.token == b"" for e in entries)


def test_membership_and_members_follow_page_tokens(kv: Client, fake: FakeKV) -> None:
    fake.put("s", kv_pb2.KeyValue(value=kv_pb2.Value(type=kv_pb2.VALUE_TYPE_SET, members=["a", "b", "c", "d", "e"])))
    assert kv.smismember("s", "b", "x") == [True, False]
    assert kv.sismember("s", "e")
    assert list(kv.smembers("s", page_size=2)) == ["a", "b", "c", "d", "e"]
    assert [(r.limit, r.page_token) for r in fake.members_requests] == [(2, ""), (2, "b"), (2, "d")]
    with pytest.raises(ValueError, match="at least one member"):
        kv.smismember("s")
    fake.contains_extra = [True]
    with pytest.raises(ClientError, match="answered for 2 members, 1 were asked"):
        kv.sismember("s", "a")


def test_status(kv: Client) -> None:
    assert kv.status() == {
        "region": "eu",
        "version": "0.1.0",
        "keys": 0,
        "token": b"\x00\xff",
        "draining": False,
        "data_bytes": 4096,
        "commits": 7,
        "requests_committed": 19,
        "peers": [
            {
                "region": "us",
                "address": "10.0.0.2:7420",
                "connected": True,
                "acked": b"\x01",
                "behind": 3,
                "clock_offset_ms": -12,
                "clock_error_ms": 3,
            }
        ],
        "clock_skew_events": 2,
        "clock_fenced": False,
        "origin": "eu#0123456789ab",
        "conflicting_events": 0,
        "auth_enabled": False,
        "refused_unauthenticated": 0,
        "refused_permission_denied": 0,
        "watch_streams": 0,
        "watch_events_sent": 0,
        "watch_streams_cut": 0,
        "feed_records": 0,
        "feed_bytes": 0,
        "audit_enabled": False,
        "audit_records": 0,
        "audit_refusals_dropped": 0,
        "audit_head_mismatches": 0,
        "audit_retention_blocked": "",
        "rejoin_waiting": "",
    }


# -- the asyncio client --------------------------------------------------------------------


def test_async_client(addr: str, fake: FakeKV, sleeps: list[float]) -> None:
    fake.put("c", kv_pb2.KeyValue(value=counter(BIG)))
    for i in range(3):
        fake.put(f"p/{i}", kv_pb2.KeyValue(value=members(str(i))))

    async def scenario() -> None:
        async with AsyncClient(addr) as c:
            fake.failures = [UNAVAILABLE, UNAVAILABLE]
            assert await c.sadd("s", "m") == WriteResult(b"write-0", False)
            keys = {m.idempotency_key for m in fake.mutations}
            assert len(fake.mutations) == 3
            assert len(keys) == 1
            assert len(sleeps) == 2

            assert (await c.get("c")).value == BIG
            scanned: AsyncIterator[Entry] = c.scan("p/", page_size=1)
            assert [e.value async for e in scanned] == [frozenset({"0"}), frozenset({"1"}), frozenset({"2"})]
            assert (await c.status())["region"] == "eu"

            fake.failures = [(grpc.StatusCode.FAILED_PRECONDITION, "wrong type")]
            with pytest.raises(TypeMismatchError):
                await c.incr("s", -1)
            for write in (c.set("r", b"x"), c.srem("s", "m"), c.delete("r")):
                assert not (await write).replayed

    asyncio.run(scenario())


# -- the command line ----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_incr_takes_a_negative_n(addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--addr", addr, "incr", "c", "-5") == (0, "", "")
    assert run(capsys, "--addr", addr, "incr", "c") == (0, "", "")
    assert [m.operations[0].increment.amount for m in fake.mutations] == [-5, 1]


def test_addr_comes_from_the_environment(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.ADDR_ENV, addr)
    assert run(capsys, "set", "k", "v")[0] == 0
    assert fake.mutations[0].operations[0].set.value == b"v"
    # --addr wins over the environment.
    assert run(capsys, "--addr", closed_port(), "del", "k")[0] == 1
    monkeypatch.delenv(cli.ADDR_ENV)
    assert cli._resolve_addr(None) == cli.DEFAULT_ADDR == "127.0.0.1:7420"


def test_get_json_of_a_missing_key(addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--addr", addr, "get", "k", "--json")
    assert code == 0
    assert json.loads(out) == {"key": "k", "type": None, "value": None}
    assert out.count("\n") == 1
    code, out, err = run(capsys, "--addr", addr, "get", "k")
    assert (code, out) == (0, "")
    assert "no such key" in err


def test_get_json_shapes(addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]) -> None:
    fake.put("r", register(b"hi"))
    fake.put("rs", register(b"a", b"a", b"b"))
    fake.put("bin", register(b"\xff\x00"))
    fake.put("c", kv_pb2.KeyValue(value=counter(BIG)))
    fake.put(
        "s",
        kv_pb2.KeyValue(
            value=members("b", "a"), conflicts=[kv_pb2.Value(type=kv_pb2.VALUE_TYPE_REGISTER, register=b"\xfe")]
        ),
    )

    def get(key: str) -> Any:
        code, out, _ = run(capsys, "--addr", addr, "get", key, "--json")
        assert code == 0
        return json.loads(out)

    assert get("r") == {"key": "r", "type": "register", "value": "hi"}
    assert get("rs") == {"key": "rs", "type": "register", "value": "a", "siblings": ["a", "b"]}
    assert get("bin") == {"key": "bin", "type": "register", "value": "/wA=", "encoding": "base64"}
    assert get("c") == {"key": "c", "type": "counter", "value": BIG}
    assert get("s") == {
        "key": "s",
        "type": "set",
        "value": ["a", "b"],
        "conflicts": [{"type": "register", "value": "/g==", "encoding": "base64"}],
    }


def test_get_human_form(addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]) -> None:
    fake.put("r", register(b"hello world"))
    fake.put("rs", register(b"a", b"a", b"b"))
    fake.put("c", kv_pb2.KeyValue(value=counter(-3)))
    fake.put("s", kv_pb2.KeyValue(value=members("b", "a")))
    assert run(capsys, "--addr", addr, "get", "r") == (0, "hello world\n", "")
    code, out, err = run(capsys, "--addr", addr, "get", "rs")
    assert (code, out) == (0, "a\n")
    assert "2 concurrent values" in err
    assert run(capsys, "--addr", addr, "get", "c") == (0, "-3\n", "")
    assert run(capsys, "--addr", addr, "get", "s") == (0, "a\nb\n", "")


def test_scan_output(addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]) -> None:
    fake.put("a", register(b"x\ty"))
    fake.put("b", kv_pb2.KeyValue(value=counter(2)))
    fake.put("c", kv_pb2.KeyValue(value=members("m")))
    code, out, _ = run(capsys, "--addr", addr, "scan")
    assert code == 0
    assert out == 'a\tx\\ty\nb\t2\nc\t["m"]\n'
    code, out, _ = run(capsys, "--addr", addr, "scan", "b", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [{"key": "b", "type": "counter", "value": 2}]


def test_write_json(addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--addr", addr, "sadd", "s", "a", "b", "--json")
    assert code == 0
    assert json.loads(out) == {"token": base64.b64encode(b"write-0").decode(), "replayed": False}


def test_status_output(addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--addr", addr, "status", "--json")
    assert code == 0
    assert json.loads(out) == {
        "region": "eu",
        "version": "0.1.0",
        "keys": 0,
        "token": "AP8=",
        "draining": False,
        "data_bytes": 4096,
        "commits": 7,
        "requests_committed": 19,
        "peers": [
            {
                "region": "us",
                "address": "10.0.0.2:7420",
                "connected": True,
                "acked": "AQ==",
                "behind": 3,
                "clock_offset_ms": -12,
                "clock_error_ms": 3,
            }
        ],
        "clock_skew_events": 2,
        "clock_fenced": False,
        "origin": "eu#0123456789ab",
        "conflicting_events": 0,
        "auth_enabled": False,
        "refused_unauthenticated": 0,
        "refused_permission_denied": 0,
        "watch_streams": 0,
        "watch_events_sent": 0,
        "watch_streams_cut": 0,
        "feed_records": 0,
        "feed_bytes": 0,
        "audit_enabled": False,
        "audit_records": 0,
        "audit_refusals_dropped": 0,
        "audit_head_mismatches": 0,
        "audit_retention_blocked": "",
        "rejoin_waiting": "",
    }
    code, out, _ = run(capsys, "--addr", addr, "status")
    assert "region: eu" in out.splitlines()
    assert "draining: false" in out.splitlines()
    assert "peer us at 10.0.0.2:7420: connected, 3 events behind, clock offset -12 ms (±3 ms)" in out.splitlines()


def test_errors_are_one_line_and_exit_1(addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]) -> None:
    fake.failures = [(grpc.StatusCode.FAILED_PRECONDITION, "key 'k' holds a register")]
    assert run(capsys, "--addr", addr, "incr", "k") == (
        1,
        "",
        "crdtstore: key 'k' holds a register (FAILED_PRECONDITION)\n",
    )
    dead = closed_port()
    code, out, err = run(capsys, "--addr", dead, "get", "k")
    assert (code, out) == (1, "")
    assert err.startswith(f"crdtstore: cannot reach {dead}: is the server running? (UNAVAILABLE")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [[], ["incr", "k", "x"], ["sadd", "s"], ["get"], ["nope"], ["set", "k"], ["--addr"]],
)
def test_wrong_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    capsys.readouterr()


def test_serve_is_delegated_to_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--listen")
        parser.add_argument("--region")

    def serve_from_args(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    node = types.ModuleType("crdtstore.node")
    node_main = types.ModuleType("crdtstore.node.main")
    node_main.add_serve_arguments = add_serve_arguments  # type: ignore[attr-defined]
    node_main.serve_from_args = serve_from_args  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "crdtstore.node", node)
    monkeypatch.setitem(sys.modules, "crdtstore.node.main", node_main)

    assert cli.main(["--addr", "x:1", "serve", "--listen", "0.0.0.0:7420", "--region", "eu"]) == 7
    assert seen[0].listen == "0.0.0.0:7420"
    assert seen[0].region == "eu"
    assert seen[0].command == "serve"


def test_command_of() -> None:
    assert cli._command_of(["--addr", "serve", "get", "serve"]) == "get"
    assert cli._command_of(["--addr=h:1", "serve"]) == "serve"
    assert cli._command_of(["-h"]) is None


# -- values and members from standard input and files ----------------------------------------


def stdin_of(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def sent_value(fake: FakeKV) -> bytes:
    return fake.mutations[-1].operations[0].set.value


def test_set_reads_the_value_from_a_file_byte_for_byte(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = bytes(range(256)) * 1024 + b"\n"  # binary, with a trailing newline kept
    (tmp_path / "value.bin").write_bytes(data)
    assert run(capsys, "--addr", addr, "set", "k", f"@{tmp_path / 'value.bin'}") == (0, "", "")
    assert sent_value(fake) == data


def test_set_reads_the_value_from_standard_input(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin_of(monkeypatch, b"\xff\x00 from stdin\n")
    assert run(capsys, "--addr", addr, "set", "k", "-") == (0, "", "")
    assert sent_value(fake) == b"\xff\x00 from stdin\n"


@pytest.mark.parametrize(("arg", "stored"), [("@@home", b"@home"), ("@@@x", b"@@x"), ("a@b", b"a@b")])
def test_a_literal_value_that_starts_with_at_is_escaped_with_a_second_at(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str], arg: str, stored: bytes
) -> None:
    assert run(capsys, "--addr", addr, "set", "k", "--", arg)[0] == 0
    assert sent_value(fake) == stored


def test_members_come_one_per_line_from_standard_input_and_files(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "more.txt").write_bytes("pear\r\n\näpfel\n".encode())
    stdin_of(monkeypatch, b"apple\nfig tree\n")
    argv = ("sadd", "s", "kiwi", "-", f"@{tmp_path / 'more.txt'}", "@@at")
    assert run(capsys, "--addr", addr, *argv) == (0, "", "")
    assert list(fake.mutations[-1].operations[0].add.members) == ["kiwi", "apple", "fig tree", "pear", "äpfel", "@at"]
    stdin_of(monkeypatch, b"apple\n")
    assert run(capsys, "--addr", addr, "srem", "s", "-")[0] == 0
    assert list(fake.mutations[-1].operations[0].remove.members) == ["apple"]


UNREADABLE = [
    (("set", "k", "@/no/such/file"), b"", "cannot read /no/such/file: No such file or directory"),
    (("set", "k", "@"), b"", "'@' names no file"),
    (("sadd", "s", "-"), b"\xff\n", "standard input is not UTF-8 text"),
    (("sadd", "s", "-"), b"\n\n", "no members"),
    (("sadd", "s", "-", "-"), b"a\n", "'-' (standard input) can be given once"),
]


@pytest.mark.parametrize("case", UNREADABLE, ids=[" ".join(argv) for argv, _, _ in UNREADABLE])
def test_unreadable_input_is_wrong_usage_and_sends_nothing(
    addr: str,
    fake: FakeKV,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[tuple[str, ...], bytes, str],
) -> None:
    argv, stdin, message = case
    stdin_of(monkeypatch, stdin)
    code, out, err = run(capsys, "--addr", addr, *argv)
    assert (code, out) == (2, "")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert fake.mutations == []


def test_input_beyond_the_bound_is_refused(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "INPUT_BYTES_MAX", 8)
    stdin_of(monkeypatch, b"123456789")
    code, _, err = run(capsys, "--addr", addr, "set", "k", "-")
    assert code == 2
    assert "more than 8 bytes" in err
    assert fake.mutations == []


# -- a read with --after that runs out of time ---------------------------------------------------

# What gRPC itself says when the client's deadline passes before the node answers.
LOCAL_DEADLINE = (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def after_token(**counts: int) -> str:
    return base64.b64encode(encode(VersionVector(counts))).decode()


def test_a_late_causal_read_says_how_far_behind_the_node_is(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.failures = [LOCAL_DEADLINE]
    fake.status_token = encode(VersionVector({"us": 2, "eu": 7}))
    code, out, err = run(capsys, "--addr", addr, "get", "k", "--after", after_token(us=5, eu=7, ap=1))
    assert (code, out) == (1, "")
    assert f"{addr} has not yet seen the token: it is 4 events behind it (from ap 1, us 3)" in err
    assert "did not answer in time" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_late_causal_read_of_a_node_that_caught_up_since_says_retry(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.failures = [LOCAL_DEADLINE]
    fake.status_token = encode(VersionVector({"us": 5}))
    code, _, err = run(capsys, "--addr", addr, "get", "k", "--after", after_token(us=5))
    assert code == 1
    assert "has seen the token by now" in err


def test_a_late_causal_read_of_a_node_that_does_not_answer_status(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.failures = [LOCAL_DEADLINE, (grpc.StatusCode.UNAVAILABLE, "gone")]
    code, _, err = run(capsys, "--addr", addr, "get", "k", "--after", after_token(us=5))
    assert code == 1
    assert "did not answer a status request either" in err


def test_the_nodes_own_account_of_a_late_causal_read_is_passed_on(
    addr: str, fake: FakeKV, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "region eu has not yet seen the token: it is 1 event behind it (from us 1)"
    fake.failures = [(grpc.StatusCode.DEADLINE_EXCEEDED, message)]
    code, _, err = run(capsys, "--addr", addr, "get", "k", "--after", after_token(us=5))
    assert code == 1
    assert err == f"crdtstore: {message} (DEADLINE_EXCEEDED)\n"


# -- the change feed -------------------------------------------------------------------------


def _event(key: str, value: bytes, counter: int, *changes: kv_pb2.ChangeKind) -> kv_pb2.WatchEvent:
    return kv_pb2.WatchEvent(
        key=key,
        changes=list(changes) or [kv_pb2.CHANGE_KIND_SET],
        entry=register(value),
        origin="eu#1",
        region="eu",
        counter=counter,
    )


def _message(token: bytes, *events: kv_pb2.WatchEvent, **flags: bool) -> kv_pb2.WatchResponse:
    """One message; outside a snapshot its events are one change, the last carrying the token."""
    if events and not flags.get("reset"):
        events[-1].group_end = True
        events[-1].token.vector = token
    return kv_pb2.WatchResponse(events=events, token=kv_pb2.CausalToken(vector=token), **flags)


def test_a_watch_resumes_on_the_next_address_from_the_last_complete_token(fake: FakeKV, addr: str) -> None:
    second = FakeKV()
    generated: Any = kv_pb2_grpc
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    generated.add_KVServicer_to_server(second, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        fake.watch_scripts.append(
            (
                [
                    _message(b"T0", progress=True),
                    _message(b"T1", _event("k/a", b"1", 1)),
                    # A group cut by the failure: its first part is never yielded, and comes again.
                    kv_pb2.WatchResponse(events=[_event("k/b", b"2", 2)], partial=True),
                ],
                grpc.StatusCode.UNAVAILABLE,
            )
        )
        second.watch_scripts.append(
            ([_message(b"T2", _event("k/b", b"2", 2), _event("k/c", b"3", 2))], grpc.StatusCode.PERMISSION_DENIED)
        )
        items: list[object] = []
        with Client(addr) as kv, pytest.raises(ClientError) as info:
            for item in kv.watch("k/", addresses=[addr, f"127.0.0.1:{port}"]):
                items.append(item)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED  # not resumable: raised
        assert [type(i).__name__ for i in items] == ["Progress", "Change", "Change", "Change"]
        changes = [i for i in items if isinstance(i, Change)]
        assert [(c.key, c.token, c.group_end) for c in changes] == [
            ("k/a", b"T1", True),
            ("k/b", b"T2", False),
            ("k/c", b"T2", True),
        ]
        assert changes[0].dot == ("eu#1", 1) and changes[0].entry.value == b"1"
        # The first stream asked for a snapshot; the second resumed from the last complete token.
        assert fake.watches[0].start == "snapshot" and not fake.watches[0].after.vector
        assert second.watches[0].after.vector == b"T1" and second.watches[0].start == ""
    finally:
        server.stop(None).wait()


def test_a_watch_frames_a_snapshot_and_gives_up_after_its_retries(fake: FakeKV, kv: Client) -> None:
    fake.watch_scripts.append(
        (
            [
                _message(b"old", _event("k/a", b"1", 0, kv_pb2.CHANGE_KIND_SNAPSHOT), reset=True),
                _message(b"T5", reset=True, reset_done=True),
            ],
            grpc.StatusCode.UNAVAILABLE,
        )
    )
    items: list[object] = []
    with pytest.raises(ClientError) as info:
        for item in kv.watch("k/", after=b"old"):
            items.append(item)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert [type(i).__name__ for i in items] == ["ResetBegin", "Change", "ResetEnd"]
    snapshot = items[1]
    assert isinstance(snapshot, Change) and snapshot.reset and snapshot.changes == ("snapshot",)
    assert not snapshot.group_end
    assert isinstance(items[2], ResetEnd) and items[2].token == b"T5"
    # Every retry resumed from the snapshot's token; the last error is raised once they are spent.
    assert [w.after.vector for w in fake.watches] == [b"old"] + [b"T5"] * (len(fake.watches) - 1)
    assert len(fake.watches) == 1 + kv._retry.retries_max


def test_watch_arguments_are_checked_before_anything_is_sent(fake: FakeKV, kv: Client) -> None:
    with pytest.raises(ValueError, match="start"):
        next(kv.watch("k/", start="later"))
    with pytest.raises(ValueError, match="on_expired"):
        next(kv.watch("k/", on_expired="ignore"))
    assert not fake.watches


def test_a_message_of_several_changes_gives_each_its_own_token(fake: FakeKV, kv: Client) -> None:
    first, second = _event("k/a", b"1", 1), _event("k/b", b"2", 2)
    first.group_end, first.token.vector = True, b"T1"
    second.group_end, second.token.vector = True, b"T2"
    fake.watch_scripts.append(
        (
            [kv_pb2.WatchResponse(events=[first, second], token=kv_pb2.CausalToken(vector=b"T3"))],
            grpc.StatusCode.OUT_OF_RANGE,
        )
    )
    items: list[object] = []
    with pytest.raises(ClientError):
        items.extend(kv.watch("k/", after=b"T0"))
    assert [(i.key, i.token, i.group_end) for i in items if isinstance(i, Change)] == [
        ("k/a", b"T1", True),
        ("k/b", b"T2", True),
    ]


def test_regression_a_snapshot_cut_off_by_a_failure_starts_again_as_a_snapshot(fake: FakeKV, kv: Client) -> None:
    """Found in review: the next stream resumed from the old token, and a consumer committed the reset's deletes."""
    fake.watch_scripts.append(
        (
            [_message(b"old", _event("k/a", b"1", 0, kv_pb2.CHANGE_KIND_SNAPSHOT), reset=True)],
            grpc.StatusCode.UNAVAILABLE,
        )
    )
    fake.watch_scripts.append(
        (
            [
                _message(b"none", _event("k/a", b"1", 0, kv_pb2.CHANGE_KIND_SNAPSHOT), reset=True),
                _message(b"T9", reset=True, reset_done=True),
            ],
            grpc.StatusCode.PERMISSION_DENIED,
        )
    )
    items: list[object] = []
    with pytest.raises(ClientError):
        items.extend(kv.watch("k/", after=b"old"))
    assert [type(i).__name__ for i in items] == ["ResetBegin", "Change", "ResetBegin", "Change", "ResetEnd"]
    assert not fake.watches[1].after.vector and fake.watches[1].start == "snapshot"


# -- the change feed's contract (issue 20, as a review found it) ---------------------------------


def test_watch_takes_a_str_token_in_base64_or_hex_and_refuses_anything_else(fake: FakeKV, kv: Client) -> None:
    """Found in review: ``watch(after=<str>)`` raised a raw ``TypeError: expected bytes, str found``."""
    token = encode(VersionVector({"eu#1": 3}))
    for written in (base64.b64encode(token).decode(), token.hex()):
        fake.watch_scripts.append(([], grpc.StatusCode.PERMISSION_DENIED))
        with pytest.raises(ClientError):
            next(kv.watch("k/", after=written))
        assert fake.watches[-1].after.vector == token
    with pytest.raises(ValueError, match=r"base64.*hex"):
        next(kv.watch("k/", after="AAAA"))
    with pytest.raises(TypeError, match=r"after is a token.*not int"):
        next(kv.watch("k/", after=42))  # type: ignore[arg-type]
    assert len(fake.watches) == 2  # the bad ones sent nothing

    async def scenario() -> None:
        async with AsyncClient(kv.addr) as c:
            fake.watch_scripts.append(([], grpc.StatusCode.PERMISSION_DENIED))
            with pytest.raises(ClientError):
                await anext(c.watch("k/", after=token.hex()))
            with pytest.raises(ValueError, match="not a causal token"):
                await anext(c.watch("k/", after="not a token"))

    asyncio.run(scenario())
    assert [w.after.vector for w in fake.watches] == [token] * 3


def test_watch_json_prints_the_token_in_every_object(
    fake: FakeKV, addr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: "one JSON object per event, the token in each"; group_end says where a consumer may store it."""
    after = encode(VersionVector({"eu#1": 1}))
    group = [_event("k/a", b"1", 2), _event("k/b", b"2", 2)]
    fake.watch_scripts.append(
        (
            [
                _message(b"T2", *group),
                _message(b"snap", _event("k/a", b"1", 0, kv_pb2.CHANGE_KIND_SNAPSHOT), reset=True),
                _message(b"T3", reset=True, reset_done=True),
                _message(b"T4", progress=True),
            ],
            grpc.StatusCode.PERMISSION_DENIED,
        )
    )
    # --after in hex (as an audit record shows a token) with --start now: both accepted.
    code, out, err = run(capsys, "--addr", addr, "watch", "k/", "--json", "--after", after.hex(), "--start", "now")
    assert code == 1 and "PERMISSION_DENIED" in err
    assert fake.watches[0].after.vector == after
    lines = [json.loads(line) for line in out.splitlines()]
    b64 = {t: base64.b64encode(t).decode() for t in (after, b"T2", b"snap", b"T3", b"T4")}
    assert all("token" in line for line in lines)
    # Every token is safe to store once its object is applied: resuming from it loses nothing.
    assert [(line.get("value"), line["token"], line.get("group_end")) for line in lines[:2]] == [
        ("1", b64[after], False),  # mid-group: the token from before the group (the group comes again)
        ("2", b64[b"T2"], True),  # the group's end: the stream's new token
    ]
    assert lines[2] == {"reset_begin": True, "token": ""}  # a snapshot: until it ends, resume without a token
    assert lines[3]["reset"] and lines[3]["token"] == "" and not lines[3]["group_end"]
    assert lines[4] == {"reset_end": True, "token": b64[b"T3"]}
    assert lines[5] == {"progress": True, "token": b64[b"T4"]}


def test_watch_json_tokens_are_each_a_point_to_resume_from_that_loses_nothing() -> None:
    tokens = cli.ResumeTokens(b"A")
    assert tokens.after(Progress(b"P")) == b"P"
    assert tokens.after(ResetBegin()) == b""
    assert tokens.after(ResetEnd(b"E")) == b"E"
    assert cli.ResumeTokens(None).token == b""

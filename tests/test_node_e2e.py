"""End to end: real ``crdtstore serve`` processes on loopback, driven by the Python clients and the CLI.

Every server here is a ``ServerProcess`` (an OS-chosen port on 127.0.0.1, a
data directory under ``tmp_path``) that a fixture always kills. The CLI is run
as ``python -m crdtstore`` in a subprocess, exactly as a person would run it.
Nothing here asserts on time; every subprocess and RPC has a generous bound so
a hung server fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from crdtstore.cli import ADDR_ENV
from crdtstore.client import AsyncClient, Client, ClientError, Entry, TypeMismatchError
from crdtstore.operations import AddMembers, Increment, Operation, SetRegister
from crdtstore.testing.process import ServerProcess, StopTimeout
from crdtstore.testing.waits import wait_for
from crdtstore.v1 import kv_pb2, kv_pb2_grpc

# ServerProcess.start() opens the server's log file for the child's stderr and
# never closes the parent's handle, so every start leaks one file object and
# Python warns when it is collected. That is a bug of the harness, pinned by
# test_server_process_leaves_no_file_open below; everywhere else only that one
# warning is ignored, so the suite's ``filterwarnings = error`` still guards
# against every other leak.
LOG_LEAK = "ignore:unclosed file <_io.TextIOWrapper name='[^']*[.]log' mode='a':ResourceWarning"
pytestmark = [pytest.mark.processes, pytest.mark.filterwarnings(LOG_LEAK)]

CLI_TIMEOUT_S = 60.0
SERVE_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 10.0


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("e2e") / "data", region="eu")
    try:
        proc.start()
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that stop and start it."""
    proc = ServerProcess(tmp_path / "data", region="eu")
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
        yield kv


def run_cli(*args: str, addr: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m crdtstore [--addr ADDR] ARGS...``; ``CRDTSTORE_ADDR`` is removed unless ``env`` sets it."""
    base = {k: v for k, v in os.environ.items() if k != ADDR_ENV}
    cmd = [sys.executable, "-m", "crdtstore", *(["--addr", addr] if addr is not None else []), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env={**base, **(env or {})}, check=False
    )


def cli_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "crdtstore", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SERVE_TIMEOUT_S, check=False)


def free_port() -> int:
    """A loopback port nothing listens on (bound, read and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def entry(kv: Client, key: str) -> tuple[str | None, object]:
    got = kv.get(key)
    return got.type, got.value


# -- the harness itself ----------------------------------------------------------------------


def test_server_process_leaves_no_file_open(tmp_path: Path) -> None:
    """ServerProcess must not leak the parent's handle on the server's log file (see LOG_LEAK)."""
    proc = ServerProcess(tmp_path / "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            proc.start()
            assert proc.stop() == 0
        finally:
            proc.kill()
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], "ServerProcess.start() leaves the log file it opens for the child's stderr open"


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_node_keeps_serving(own_server: ServerProcess) -> None:
    """`kill -USR1` is how an operator (and ServerProcess.stop, when a node will not stop) sees where it is."""
    own_server.start()
    assert own_server.proc is not None
    os.kill(own_server.proc.pid, signal.SIGUSR1)
    wait_for(lambda: "Current thread" in own_server.log_path.read_text(), what="a stack dump in the log")
    with Client(own_server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
        kv.set("after-dump", "ok")
        assert entry(kv, "after-dump") == ("register", b"ok")
    assert own_server.stop() == 0
    steps = [
        json.loads(line)["message"] for line in own_server.log_path.read_text().splitlines() if '"draining: ' in line
    ]
    assert [m.split(" (")[0] for m in steps] == [
        "draining: refusing new requests, finishing the ones in flight",
        "draining: ending replication streams",
        "draining: stopping the server",
        "draining: stopping retention",
        "draining: committing the writer's queue",
        "draining: closing the store",
    ]


def test_a_stop_that_times_out_says_so_with_the_end_of_the_nodes_log(own_server: ServerProcess) -> None:
    own_server.start()
    own_server.pause()  # SIGSTOPped: the SIGTERM waits, so the stop times out
    try:
        assert own_server.proc is not None
        own_server.paused = False  # keep stop() from continuing it first
        with pytest.raises(StopTimeout) as caught:
            own_server.stop(timeout_s=0.5)
        assert "after SIGTERM; the end of its log:" in str(caught.value)
        assert "region eu serving" in str(caught.value)
    finally:
        own_server.kill()


# -- the Python clients --------------------------------------------------------------------


def test_client_register_counter_set_delete(client: Client) -> None:
    assert client.set("py/reg", "hello").replayed is False
    assert entry(client, "py/reg") == ("register", b"hello")
    client.set("py/reg", b"\x00\xffbytes")
    assert entry(client, "py/reg") == ("register", b"\x00\xffbytes")

    client.incr("py/ctr")
    client.incr("py/ctr", 10)
    client.incr("py/ctr", -5)
    assert entry(client, "py/ctr") == ("counter", 6)
    client.incr("py/ctr", -20)
    assert entry(client, "py/ctr") == ("counter", -14)

    client.sadd("py/set", "pear", "apple", "fig")
    client.srem("py/set", "fig", "never-there")
    assert entry(client, "py/set") == ("set", frozenset({"apple", "pear"}))

    for key in ("py/reg", "py/ctr", "py/set"):
        client.delete(key)
        got = client.get(key)
        assert got == Entry(key, None, None, token=got.token)
        assert not got.exists
    # A deleted key takes a new type on its next first write.
    client.incr("py/reg", 2)
    assert entry(client, "py/reg") == ("counter", 2)


def test_client_wrong_type_is_type_mismatch_and_applies_nothing(client: Client) -> None:
    client.sadd("py/typed", "a")
    with pytest.raises(TypeMismatchError) as info:
        client.mutate([SetRegister("py/typed-other", b"x"), Increment("py/typed", 1)])
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "py/typed" in info.value.message
    assert entry(client, "py/typed") == ("set", frozenset({"a"}))
    assert entry(client, "py/typed-other") == (None, None)


def test_client_batch_is_atomic_and_visible_together(client: Client) -> None:
    client.mutate([SetRegister("py/batch/r", b"v"), Increment("py/batch/c", 3), AddMembers("py/batch/s", ("x", "y"))])
    assert entry(client, "py/batch/r") == ("register", b"v")
    assert entry(client, "py/batch/c") == ("counter", 3)
    assert entry(client, "py/batch/s") == ("set", frozenset({"x", "y"}))


def test_async_client(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            await kv.set("async/reg", "one")
            await kv.incr("async/ctr", 7)
            await kv.incr("async/ctr", -5)
            await kv.sadd("async/set", "b", "a", "c")
            await kv.srem("async/set", "c")
            reg, ctr, st = await asyncio.gather(kv.get("async/reg"), kv.get("async/ctr"), kv.get("async/set"))
            assert (reg.type, reg.value) == ("register", b"one")
            assert (ctr.type, ctr.value) == ("counter", 2)
            assert (st.type, st.value) == ("set", frozenset({"a", "b"}))
            assert await kv.smismember("async/set", "a", "c") == [True, False]
            assert [m async for m in kv.smembers("async/set", page_size=1)] == ["a", "b"]

            # Concurrent increments through one channel all land.
            await asyncio.gather(*(kv.incr("async/many") for _ in range(50)))
            assert (await kv.get("async/many")).value == 50

            await kv.mutate([SetRegister(f"async/scan/{i:03d}", b"v") for i in range(25)])
            keys = [e.key async for e in kv.scan("async/scan/", page_size=4)]
            assert keys == [f"async/scan/{i:03d}" for i in range(25)]

            with pytest.raises(TypeMismatchError):
                await kv.incr("async/set")

            first = await kv.mutate([Increment("async/idem", 1)], idempotency_key=b"async-idem")
            again = await kv.mutate([Increment("async/idem", 1)], idempotency_key=b"async-idem")
            assert (first.replayed, again.replayed) == (False, True)
            assert (await kv.get("async/idem")).value == 1

            status = await kv.status()
            assert status["region"] == "eu"
            assert status["draining"] is False

            await kv.delete("async/reg")
            assert not (await kv.get("async/reg")).exists

    asyncio.run(scenario())


def test_scan_prefix_and_paging(client: Client) -> None:
    keys = [f"page/{i:04d}" for i in range(257)]
    client.mutate([SetRegister(k, k.encode()) for k in keys[:200]])
    client.mutate([Increment(k, 1) for k in keys[200:]])
    # Neighbours that must stay out of a scan of "page/".
    client.mutate([SetRegister(k, b"x") for k in ("page", "page.", "pagf/0", "pag/9", "apage/1")])

    for page_size in (1, 7, 100, 256, 257, 1000):
        scanned = list(client.scan("page/", page_size=page_size))
        assert [e.key for e in scanned] == keys, page_size
    values = {e.key: (e.type, e.value) for e in client.scan("page/", page_size=50)}
    assert values["page/0000"] == ("register", b"page/0000")
    assert values["page/0256"] == ("counter", 1)

    # The raw pages: several of them, each at most the limit, the last with no next token.
    token, pages = "", 0
    seen: list[str] = []
    with grpc.insecure_channel(client.addr) as channel:
        stub: Any = kv_pb2_grpc.KVStub(channel)
        while pages < 100:
            resp = stub.Scan(kv_pb2.ScanRequest(prefix="page/", limit=60, page_token=token), timeout=RPC_TIMEOUT_S)
            pages += 1
            assert len(resp.entries) <= 60
            seen.extend(kv.key for kv in resp.entries)
            token = resp.next_page_token
            if not token:
                break
    assert pages >= 5
    assert seen == keys

    assert [e.key for e in client.scan("page/02", page_size=3)] == [k for k in keys if k.startswith("page/02")]
    assert list(client.scan("no-such-prefix/", page_size=3)) == []


def test_membership_and_members_of_a_set_a_page_at_a_time(client: Client) -> None:
    members = [f"m{i:04d}" for i in range(2_345)] + ["Zebra", "äpfel", "𝄞"]
    for i in range(0, len(members), 1000):
        client.sadd("members/s", *members[i : i + 1000])
    client.srem("members/s", "m0007")
    present = sorted(set(members) - {"m0007"})  # code point order: what the server promises
    assert client.smismember("members/s", "m0001", "m0007", "nope", "𝄞") == [True, False, False, True]
    assert client.sismember("members/s", "äpfel")
    assert not client.sismember("members/missing-key", "m0001")
    for page_size in (0, 1, 999, 2_345, 10_000):
        assert list(client.smembers("members/s", page_size=page_size)) == present, page_size
    assert list(client.smembers("members/missing-key")) == []
    # The raw pages: each at most the limit, the last with no next token.
    token, pages, seen = "", 0, []
    with grpc.insecure_channel(client.addr) as channel:
        stub: Any = kv_pb2_grpc.KVStub(channel)
        while pages < 100:
            resp = stub.Members(
                kv_pb2.MembersRequest(key="members/s", limit=500, page_token=token), timeout=RPC_TIMEOUT_S
            )
            pages += 1
            assert len(resp.members) <= 500
            seen.extend(resp.members)
            token = resp.next_page_token
            if not token:
                break
        assert (pages, seen) == (5, present)
        with pytest.raises(grpc.RpcError) as bad_token:
            stub.Members(kv_pb2.MembersRequest(key="members/s", page_token="%%%"), timeout=RPC_TIMEOUT_S)
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as no_members:
            stub.Contains(kv_pb2.ContainsRequest(key="members/s"), timeout=RPC_TIMEOUT_S)
        assert no_members.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_membership_of_a_key_of_another_type_is_refused(client: Client) -> None:
    client.incr("members/counter")
    for read in (lambda: client.sismember("members/counter", "x"), lambda: list(client.smembers("members/counter"))):
        with pytest.raises(TypeMismatchError, match="holds a counter, not a set"):
            read()


def test_a_set_too_large_for_one_response_is_read_a_page_at_a_time(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[server]\nget_members_max = 50\n")
    proc = ServerProcess(tmp_path / "data", region="eu", extra_args=("--config", str(config)))
    try:
        proc.start()
        with Client(proc.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            kv.sadd("big", *(f"m{i:03d}" for i in range(51)))
            kv.sadd("small", *(f"m{i:03d}" for i in range(50)))
            kv.set("reg", "v")
            with pytest.raises(ClientError, match="a set of 51 members, more than one Get returns") as info:
                kv.get("big")
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert kv.get("small").member_count == 50
            scanned = {e.key: e for e in kv.scan("")}
            assert (scanned["big"].type, scanned["big"].value) == ("set", None)
            assert (scanned["big"].members_omitted, scanned["big"].member_count) == (True, 51)
            assert scanned["small"].value == frozenset(f"m{i:03d}" for i in range(50))
            assert not scanned["small"].members_omitted
            assert len(list(kv.smembers("big", page_size=7))) == 51
        listed = run_cli("scan", "--json", addr=proc.addr)
        rows = {row["key"]: row for row in map(json.loads, listed.stdout.splitlines())}
        assert rows["big"] == {"key": "big", "type": "set", "value": None, "members_omitted": True, "member_count": 51}
        assert rows["small"]["value"] == [f"m{i:03d}" for i in range(50)]
        human = run_cli("scan", addr=proc.addr)
        assert "big\t(a set of 51 members: list them with smembers)" in human.stdout.splitlines()
        refused = run_cli("get", "big", addr=proc.addr)
        assert refused.returncode == 1
        assert "smembers" in refused.stderr
    finally:
        proc.kill()


def test_membership_reads_wait_for_a_token(client: Client) -> None:
    token = client.sadd("members/t", "a").token
    assert client.sismember("members/t", "a", after=token)
    assert list(client.smembers("members/t", after=token)) == ["a"]


def test_idempotency_applies_once(client: Client) -> None:
    batch: list[Operation] = [Increment("idem/ctr", 5), AddMembers("idem/set", ("m",))]
    first = client.mutate(batch, idempotency_key=b"idem-key-1")
    second = client.mutate(batch, idempotency_key=b"idem-key-1")
    assert first.replayed is False
    assert second.replayed is True
    assert second.token == first.token  # the retry gets the first attempt's answer
    assert entry(client, "idem/ctr") == ("counter", 5)

    with pytest.raises(ClientError) as info:
        client.mutate([Increment("idem/ctr", 6), AddMembers("idem/set", ("m",))], idempotency_key=b"idem-key-1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ClientError) as info:
        client.mutate([SetRegister("idem/other", b"x")], idempotency_key=b"idem-key-1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert entry(client, "idem/ctr") == ("counter", 5)
    assert entry(client, "idem/other") == (None, None)

    # Without a key there is no deduplication; fresh keys apply every time.
    client.mutate([Increment("idem/ctr", 1)], idempotency_key=b"")
    client.mutate([Increment("idem/ctr", 1)], idempotency_key=b"")
    client.incr("idem/ctr")
    assert entry(client, "idem/ctr") == ("counter", 8)


# -- the command line ----------------------------------------------------------------------


def test_cli_register(server: ServerProcess) -> None:
    addr = server.addr
    assert run_cli("set", "cli/reg", "héllo wörld", addr=addr).returncode == 0
    assert cli_json(run_cli("get", "cli/reg", "--json", addr=addr)) == {
        "key": "cli/reg",
        "type": "register",
        "value": "héllo wörld",
    }
    human = run_cli("get", "cli/reg", addr=addr)
    assert (human.returncode, human.stdout) == (0, "héllo wörld\n")

    written = cli_json(run_cli("set", "cli/reg", "second", "--json", addr=addr))
    assert set(written) == {"token", "replayed"}
    assert written["replayed"] is False
    assert base64.b64decode(written["token"], validate=True)
    assert cli_json(run_cli("get", "cli/reg", "--json", addr=addr))["value"] == "second"


def test_cli_sets_a_large_binary_value_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    """2 MiB is far beyond what one shell argument may hold; ``@PATH`` and ``-`` carry it byte for byte."""
    config = tmp_path / "node.toml"
    config.write_text("[limits]\nvalue_bytes_max = 4194304\n")
    value = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    (tmp_path / "value.bin").write_bytes(value)
    with ServerProcess(tmp_path / "data", region="eu", extra_args=("--config", str(config))) as node:
        assert run_cli("set", "big/file", f"@{tmp_path / 'value.bin'}", addr=node.addr).returncode == 0
        cmd = [sys.executable, "-m", "crdtstore", "--addr", node.addr, "set", "big/stdin", "-"]
        piped = subprocess.run(cmd, input=value[::-1], capture_output=True, timeout=CLI_TIMEOUT_S, check=False)
        assert piped.returncode == 0, piped.stderr
        with Client(node.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            assert kv.get("big/file").value == value
            assert kv.get("big/stdin").value == value[::-1]
        got = cli_json(run_cli("get", "big/file", "--json", addr=node.addr))
        assert got["encoding"] == "base64"
        assert base64.b64decode(got["value"]) == value


def test_cli_register_not_utf8_is_base64(server: ServerProcess, client: Client) -> None:
    client.set("cli/bin", b"\xff\x00\xfe")
    assert cli_json(run_cli("get", "cli/bin", "--json", addr=server.addr)) == {
        "key": "cli/bin",
        "type": "register",
        "value": base64.b64encode(b"\xff\x00\xfe").decode(),
        "encoding": "base64",
    }


def test_cli_counter(server: ServerProcess) -> None:
    addr = server.addr
    assert run_cli("incr", "cli/ctr", addr=addr).returncode == 0
    assert run_cli("incr", "cli/ctr", "10", addr=addr).returncode == 0
    proc = run_cli("incr", "cli/ctr", "-5", addr=addr)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert cli_json(run_cli("get", "cli/ctr", "--json", addr=addr)) == {"key": "cli/ctr", "type": "counter", "value": 6}
    assert run_cli("incr", "cli/neg", "-5", addr=addr).returncode == 0
    got = cli_json(run_cli("get", "cli/neg", "--json", addr=addr))
    assert got == {"key": "cli/neg", "type": "counter", "value": -5}
    assert type(got["value"]) is int


def test_cli_set_members(server: ServerProcess) -> None:
    addr = server.addr
    assert run_cli("sadd", "cli/set", "pear", "apple", "Zebra", "äpfel", addr=addr).returncode == 0
    assert run_cli("srem", "cli/set", "pear", addr=addr).returncode == 0
    assert cli_json(run_cli("get", "cli/set", "--json", addr=addr)) == {
        "key": "cli/set",
        "type": "set",
        "value": sorted(["apple", "Zebra", "äpfel"]),
    }
    human = run_cli("get", "cli/set", addr=addr)
    assert human.stdout.splitlines() == sorted(["apple", "Zebra", "äpfel"])


def test_cli_sismember_and_smembers(server: ServerProcess, client: Client) -> None:
    addr = server.addr
    members = [f"c{i:04d}" for i in range(1_500)] + ["tab\there"]  # more than one page of the server's default
    client.sadd("cli/members", *members)
    proc = run_cli("sismember", "cli/members", "c0001", "nope", addr=addr)
    assert (proc.returncode, proc.stdout) == (0, "true\nfalse\n"), proc.stderr
    assert cli_json(run_cli("sismember", "cli/members", "c0001", "nope", "--json", addr=addr)) == {
        "key": "cli/members",
        "members": {"c0001": True, "nope": False},
    }
    listed = run_cli("smembers", "cli/members", addr=addr)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == sorted(m.replace("\t", "\\t") for m in members)
    as_json = run_cli("smembers", "cli/members", "--json", addr=addr)
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == sorted(members)
    assert run_cli("set", "cli/not-a-set", "x", addr=addr).returncode == 0
    wrong = run_cli("smembers", "cli/not-a-set", addr=addr)
    assert wrong.returncode == 1
    assert "not a set" in wrong.stderr


def test_cli_delete_and_missing_key(server: ServerProcess) -> None:
    addr = server.addr
    assert run_cli("set", "cli/gone", "x", addr=addr).returncode == 0
    deleted = cli_json(run_cli("del", "cli/gone", "--json", addr=addr))
    assert deleted["replayed"] is False
    for key in ("cli/gone", "cli/never-written"):
        proc = run_cli("get", key, "--json", addr=addr)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == json.dumps({"key": key, "type": None, "value": None}) + "\n"
        assert json.loads(proc.stdout) == {"key": key, "type": None, "value": None}
    human = run_cli("get", "cli/never-written", addr=addr)
    assert (human.returncode, human.stdout) == (0, "")
    assert "no such key" in human.stderr


def test_cli_scan_pages_through_everything(server: ServerProcess, client: Client) -> None:
    keys = [f"cliscan/{i:04d}" for i in range(230)]  # more than the CLI's page of 100
    client.mutate([SetRegister(k, f"v{i}".encode()) for i, k in enumerate(keys)])
    client.set("cliscan", "outside")
    client.set("cliscan0", "outside")

    proc = run_cli("scan", "cliscan/", "--json", addr=server.addr)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows == [{"key": k, "type": "register", "value": f"v{i}"} for i, k in enumerate(keys)]

    human = run_cli("scan", "cliscan/", addr=server.addr)
    assert human.returncode == 0
    assert human.stdout.splitlines() == [f"{k}\tv{i}" for i, k in enumerate(keys)]


def test_cli_status_json(server: ServerProcess) -> None:
    status = cli_json(run_cli("status", "--json", addr=server.addr))
    assert set(status) == {
        "region",
        "version",
        "keys",
        "token",
        "draining",
        "data_bytes",
        "commits",
        "requests_committed",
        "peers",
        "clock_skew_events",
        "clock_fenced",
        "origin",
        "conflicting_events",
        "auth_enabled",
        "refused_unauthenticated",
        "refused_permission_denied",
        "watch_streams",
        "watch_events_sent",
        "watch_streams_cut",
        "feed_records",
        "feed_bytes",
        "audit_enabled",
        "audit_records",
        "audit_refusals_dropped",
        "audit_head_mismatches",
        "audit_retention_blocked",
        "rejoin_waiting",
    }
    assert status["auth_enabled"] is False  # on loopback without [auth]
    assert status["peers"] == []  # a single node
    assert status["region"] == "eu"
    assert status["origin"].startswith("eu#"), "what it mints under: its region and an incarnation"
    assert status["conflicting_events"] == 0
    assert status["audit_enabled"] is True  # the default
    assert status["audit_head_mismatches"] == 0 and status["audit_retention_blocked"] == ""
    assert status["rejoin_waiting"] == ""  # not a restored region
    assert status["draining"] is False
    assert isinstance(status["version"], str) and status["version"]
    assert isinstance(status["keys"], int) and status["keys"] >= 0
    assert isinstance(status["data_bytes"], int) and status["data_bytes"] > 0
    base64.b64decode(status["token"], validate=True)
    human = run_cli("status", addr=server.addr)
    assert human.returncode == 0
    assert "region: eu" in human.stdout.splitlines()
    # The group-commit counters the proto carries are in both outputs, and the writes are counted.
    assert run_cli("set", "status/counted", "x", addr=server.addr).returncode == 0
    after = cli_json(run_cli("status", "--json", addr=server.addr))
    assert after["commits"] >= 1
    assert after["requests_committed"] >= 1
    human_names = {line.split(":")[0] for line in run_cli("status", addr=server.addr).stdout.splitlines()}
    assert {"commits", "requests_committed"} <= human_names


def test_cli_keys_count_matches_status(own_server: ServerProcess) -> None:
    own_server.start()
    with Client(own_server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
        kv.mutate([SetRegister(f"k{i}", b"v") for i in range(12)])
        kv.delete("k3")
    assert cli_json(run_cli("status", "--json", addr=own_server.addr))["keys"] == 11


def test_cli_causal_read_of_a_token_the_node_lacks_says_so(server: ServerProcess) -> None:
    """Not "did not answer in time", which reads as a dead node: the node is up and behind the token."""
    from crdtstore.crdt import VersionVector, encode

    token = base64.b64encode(encode(VersionVector({"elsewhere": 5}))).decode()
    proc = run_cli("--timeout", "1", "get", "cli/causal", "--after", token, addr=server.addr)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert "has not yet seen the token: it is 5 events behind it (from elsewhere 5)" in proc.stderr
    assert "no event of at all (elsewhere): if the token came from another cluster" in proc.stderr
    assert "did not answer in time" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("time_left_s", "wait_s"), [(5.0, 4.5), (1.0, 0.9), (60.0, 59.5), (0.0, 0.0)])
def test_a_causal_read_gives_up_before_the_callers_deadline(time_left_s: float, wait_s: float) -> None:
    """So the node's account of what it lacks reaches the caller before the caller's own timer fires."""
    from crdtstore.node.service import _answer_before_deadline_s

    assert _answer_before_deadline_s(time_left_s) == pytest.approx(wait_s)


def test_cli_wrong_type_exits_1(server: ServerProcess) -> None:
    assert run_cli("sadd", "cli/typed", "a", addr=server.addr).returncode == 0
    proc = run_cli("incr", "cli/typed", addr=server.addr)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "FAILED_PRECONDITION" in proc.stderr
    assert "cli/typed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert cli_json(run_cli("get", "cli/typed", "--json", addr=server.addr))["value"] == ["a"]


def test_cli_nothing_listening_exits_1() -> None:
    addr = f"127.0.0.1:{free_port()}"
    for args in (("get", "k"), ("set", "k", "v"), ("status", "--json")):
        proc = run_cli(*args, addr=addr)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stdout == ""
        assert "cannot reach" in proc.stderr
        assert addr in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("bogus",),
        ("get",),
        ("get", "a", "b"),
        ("set", "k"),
        ("incr", "k", "not-a-number"),
        ("incr", "k", "1.5"),
        ("sadd", "k"),
        ("srem", "k"),
        ("del",),
        ("get", "k", "--no-such-flag"),
        ("--addr",),
    ],
    ids=lambda args: " ".join(args) or "nothing",
)
def test_cli_wrong_usage_exits_2(server: ServerProcess, args: tuple[str, ...]) -> None:
    proc = run_cli(*args, addr=None, env={ADDR_ENV: server.addr})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "usage:" in proc.stderr


def test_cli_honours_crdtstore_addr(server: ServerProcess) -> None:
    env = {ADDR_ENV: server.addr}
    assert run_cli("set", "cli/env", "from-env", env=env).returncode == 0
    assert cli_json(run_cli("get", "cli/env", "--json", env=env))["value"] == "from-env"
    # --addr wins over the environment.
    dead = {ADDR_ENV: f"127.0.0.1:{free_port()}"}
    assert cli_json(run_cli("get", "cli/env", "--json", addr=server.addr, env=dead))["value"] == "from-env"
    proc = run_cli("get", "cli/env", env=dead)
    assert proc.returncode == 1
    assert dead[ADDR_ENV] in proc.stderr


# -- lifecycle -------------------------------------------------------------------------------


def test_clean_restart_keeps_everything(own_server: ServerProcess) -> None:
    own_server.start()
    with Client(own_server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
        kv.set("r", "kept")
        kv.incr("c", 40)
        kv.incr("c", -2)
        kv.sadd("s", "a", "b")
        kv.srem("s", "a")
        kv.set("deleted", "x")
        kv.delete("deleted")
        kv.mutate([SetRegister(f"many/{i:03d}", b"v") for i in range(150)])
        first = kv.mutate([Increment("idem", 1)], idempotency_key=b"restart-idem")
        before = kv.status()
    port = own_server.port

    assert own_server.stop() == 0  # SIGTERM drains and exits 0

    own_server.start()
    assert own_server.port == port
    with Client(own_server.addr, timeout_s=RPC_TIMEOUT_S) as kv:
        assert entry(kv, "r") == ("register", b"kept")
        assert entry(kv, "c") == ("counter", 38)
        assert entry(kv, "s") == ("set", frozenset({"b"}))
        assert entry(kv, "deleted") == (None, None)
        assert len(list(kv.scan("many/", page_size=40))) == 150
        assert entry(kv, "idem") == ("counter", 1)
        after = kv.status()
        assert after["keys"] == before["keys"]
        assert after["token"] == before["token"]
        # The idempotency record survived too: the retry is answered, not applied again.
        again = kv.mutate([Increment("idem", 1)], idempotency_key=b"restart-idem")
        assert again.replayed is True
        assert again.token == first.token
        assert entry(kv, "idem") == ("counter", 1)
        # And the node keeps writing after the restart.
        kv.incr("c", 2)
        assert entry(kv, "c") == ("counter", 40)
    assert own_server.stop() == 0


def test_health_check_serving(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        for service in ("", "crdtstore.v1.KV", "crdtstore.v1.Admin"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = db.get_services()
        assert "crdtstore.v1.KV" in services
        assert "crdtstore.v1.Admin" in services
        assert "grpc.health.v1.Health" in services
        proto = db.FindFileContainingSymbol("crdtstore.v1.KV")
        kv_service = next(s for s in proto.service if s.name == "KV")
        assert {m.name for m in kv_service.method} == {"Get", "Mutate", "Scan", "Contains", "Members", "Watch"}


# -- refusing to start -------------------------------------------------------------------------


def test_data_dir_of_another_region_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "eu-data"
    eu = ServerProcess(data, region="eu")
    try:
        eu.start()
        with Client(eu.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            kv.set("mine", "eu's")
        assert eu.stop() == 0

        proc = run_serve("--region", "other", "--data-dir", str(data), "--listen", "127.0.0.1:0")
        assert proc.returncode != 0
        assert "listening on" not in proc.stdout
        assert "belongs to region 'eu'" in proc.stderr
        assert "'other'" in proc.stderr
        assert "--region eu" in proc.stderr
        assert "Traceback" not in proc.stderr

        # The refused start changed nothing: region eu still opens it, data intact.
        eu.start()
        with Client(eu.addr, timeout_s=RPC_TIMEOUT_S) as kv:
            assert entry(kv, "mine") == ("register", b"eu's")
            assert kv.status()["region"] == "eu"
    finally:
        eu.kill()


def test_port_in_use_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    proc = run_serve("--region", "eu", "--data-dir", str(tmp_path / "second"), "--listen", server.addr)
    assert proc.returncode != 0
    assert "listening on" not in proc.stdout
    # Our one line only: not gRPC's C-core log of the failed bind, nor its advice about GRPC_VERBOSITY.
    assert proc.stderr.splitlines() == [
        f"crdtstore serve: cannot listen on {server.addr}: the address is already in use (is a node running there?)"
    ]
    with Client(server.addr, timeout_s=RPC_TIMEOUT_S) as kv:  # the first server is unharmed
        kv.set("port/still", "serving")
        assert entry(kv, "port/still") == ("register", b"serving")


def test_an_address_that_does_not_resolve_is_refused_in_one_line(tmp_path: Path) -> None:
    # --insecure-no-auth: without it the non-loopback address is refused before the node tries to bind it.
    proc = run_serve(
        "--region", "eu", "--data-dir", str(tmp_path / "data"), "--listen", "256.0.0.1:7420", "--insecure-no-auth"
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("crdtstore serve: cannot listen on 256.0.0.1:7420: is the port in use or the address wrong?")
    assert "256.0.0.1" in line.partition("wrong?")[2]  # the core's reason, without its log line
    assert "GRPC_VERBOSITY" not in line


def test_stderr_held_keeps_what_the_descriptor_received(capfd: pytest.CaptureFixture[str]) -> None:
    from crdtstore.node.main import _stderr_held

    with _stderr_held() as held:
        os.write(2, b"from the C core\n")
    os.write(2, b"after\n")
    assert held == [b"from the C core\n"]
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_unwritable_data_dir_is_refused(tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "regular-file"
    a_file.write_text("not a directory")
    data = a_file / "data" if where == "under-a-file" else a_file
    proc = run_serve("--region", "eu", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    assert proc.returncode != 0
    assert "listening on" not in proc.stdout
    assert "crdtstore serve:" in proc.stderr
    assert str(data) in proc.stderr
    assert "data directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert a_file.read_text() == "not a directory"

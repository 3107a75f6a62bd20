"""Access control on real nodes: every RPC against every way a request can fail, across regions, key rotation.

One node serves the whole matrix (the module's fixture); the tests across
regions share one cluster of three. Every refusal is checked twice: the status
code and message, and, with an admin token, that nothing of it was applied.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from crdtstore.client import Change, Client, ClientError, Progress, WatchItem
from crdtstore.operations import DeleteKey, Increment, RemoveMembers, SetRegister
from crdtstore.replica.wire import SYNC_METHOD
from crdtstore.testing.auth import AuthKit
from crdtstore.testing.process import ServerProcess
from crdtstore.testing.regions import RegionProcesses
from crdtstore.testing.waits import wait_for
from crdtstore.v1 import kv_pb2 as kpb
from crdtstore.v1 import kv_pb2_grpc as kpb_grpc
from crdtstore.v1 import replication_pb2 as rpb

# ServerProcess leaves its log file handle to the child; see tests/test_node_e2e.py.
pytestmark = [pytest.mark.processes, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@dataclass
class Node:
    server: ServerProcess
    kit: AuthKit
    admin: Client
    tokens: dict[str, str]

    def client(self, token: str | None) -> Client:
        return Client(self.server.addr, token=token, timeout_s=10, retries_max=0)


ROLES: dict[str, dict[str, list[str]]] = {
    "orders": {"orders/": ["read", "set"]},
    "temp": {"orders/": ["read", "set"]},  # deleted once the node is up
    "counter": {"c/": ["read", "incr"]},
    "adder": {"s/": ["read", "add"]},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("auth-node")
    kit = AuthKit.create(root / "keys")
    config = kit.write_config(root / "node.toml")
    with ServerProcess(root / "data", region="eu", extra_args=("--config", str(config))) as server:
        admin_token = kit.token("root", ["admin"])
        admin = Client(server.addr, token=admin_token, timeout_s=10)
        for name, grants in ROLES.items():
            admin.put_role(name, grants)
        tokens = {
            "admin": admin_token,
            "orders": kit.token("svc-orders", ["orders"]),
            "counter": kit.token("svc-counter", ["counter"]),
            "adder": kit.token("svc-adder", ["adder"]),
            "role deleted": kit.token("svc-temp", ["temp"]),
            "revoked jti": kit.token("svc-revoked", ["admin"], token_id="revoked-jti-1"),
            "victim": kit.token("svc-victim", ["orders"], token_id="victim-jti"),
        }
        admin.delete_role("temp")
        admin.revoke_token("revoked-jti-1")
        admin.put_role("keep", {"k/": ["read"]})
        admin.set("orders/existing", "v")
        admin.incr("c/n", 5)
        admin.sadd("s/set", "m")
        try:
            yield Node(server, kit, admin, tokens)
        finally:
            admin.close()


def sync_refusal(addr: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    """Open a replication stream as a region named 'intruder' would; the status it ends with."""
    hello = rpb.SyncMessage(hello=rpb.SyncHello(region="intruder", vector=b"", protocol=1))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(addr) as channel:
        sync: Any = channel.stream_stream(SYNC_METHOD, request_serializer=rpb.SyncMessage.SerializeToString)
        try:
            list(sync(iter([hello]), metadata=metadata, timeout=10))
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
    raise AssertionError("the replication stream ended without a status")


# -- every RPC: a call, and what an admin sees afterwards if it had applied ---------------------


@dataclass(frozen=True)
class Rpc:
    call: Callable[[Client], object]
    applied: Callable[[Node], bool] | None = None  # None for reads: nothing to apply


def _role_exists(node: Node, name: str) -> bool:
    return name in {role.name for role in node.admin.list_roles()}


def _victim_revoked(node: Node) -> bool:
    try:
        with node.client(node.tokens["victim"]) as c:
            c.get("orders/existing")
    except ClientError as err:
        return err.code == grpc.StatusCode.UNAUTHENTICATED
    return False


RPCS: dict[str, Rpc] = {
    "KV.Get": Rpc(lambda c: c.get("orders/existing")),
    "KV.Mutate": Rpc(lambda c: c.set("orders/new", "x"), lambda n: n.admin.get("orders/new").exists),
    "KV.Scan": Rpc(lambda c: list(c.scan("orders/"))),
    "KV.Contains": Rpc(lambda c: c.sismember("s/set", "m")),
    "KV.Members": Rpc(lambda c: list(c.smembers("s/set"))),
    "Admin.Status": Rpc(lambda c: c.status()),
    "Admin.PutRole": Rpc(lambda c: c.put_role("intruded", {"": ["admin"]}), lambda n: _role_exists(n, "intruded")),
    "Admin.GetRole": Rpc(lambda c: c.get_role("keep")),
    "Admin.ListRoles": Rpc(lambda c: c.list_roles()),
    "Admin.DeleteRole": Rpc(lambda c: c.delete_role("keep"), lambda n: not _role_exists(n, "keep")),
    "Admin.RevokeToken": Rpc(lambda c: c.revoke_token("victim-jti"), _victim_revoked),
    "Admin.Backup": Rpc(lambda c: list(c.backup_chunks())),
    "Admin.Digest": Rpc(lambda c: c.digest()),
    "Admin.BucketKeys": Rpc(lambda c: c.bucket_keys([0])),
}

UNAUTHENTICATED_TOKENS: dict[str, Callable[[Node], str | None]] = {
    "no token": lambda n: None,
    "malformed": lambda n: "not.a-jwt",
    "wrong signature": lambda n: n.kit.forged("root", ["admin"]),
    "expired": lambda n: n.kit.expired("root", ["admin"]),
    "not yet valid": lambda n: n.kit.not_yet_valid("root", ["admin"]),
    "unknown issuer key": lambda n: AuthKit.foreign("root", ["admin"]),
    "revoked jti": lambda n: n.tokens["revoked jti"],
}


@pytest.mark.parametrize("failure", list(UNAUTHENTICATED_TOKENS))
@pytest.mark.parametrize("rpc", [*RPCS, "Replication.Sync"])
def test_every_rpc_refuses_an_unauthenticated_caller(node: Node, rpc: str, failure: str) -> None:
    token = UNAUTHENTICATED_TOKENS[failure](node)
    if rpc == "Replication.Sync":
        code, message = sync_refusal(node.server.addr, token)
    else:
        with node.client(token) as client, pytest.raises(ClientError) as info:
            RPCS[rpc].call(client)
        code, message = info.value.code, info.value.message
        applied = RPCS[rpc].applied
        assert applied is None or not applied(node), "a refused request applied nothing"
    assert code == grpc.StatusCode.UNAUTHENTICATED, message
    assert not token or token not in message


@pytest.mark.parametrize("rpc", [*RPCS, "Replication.Sync"])
def test_every_rpc_admits_an_admin(node: Node, rpc: str) -> None:
    """The control for the matrix: the same calls pass with a good token (so a refusal means something)."""
    if rpc == "Replication.Sync":
        code, message = sync_refusal(node.server.addr, node.tokens["admin"])
        # Past access control: the region is refused for not being a peer, not for its token.
        assert (code, "is not a peer" in message) == (grpc.StatusCode.PERMISSION_DENIED, True), message
        return
    with node.client(node.tokens["admin"]) as client:
        # The calls that change something do it to keys and roles of their own, which the matrix never reads.
        if rpc == "KV.Mutate":
            client.set("orders/control", "x")
            assert node.admin.get("orders/control").exists
        elif rpc == "Admin.PutRole":
            client.put_role("control", {"": ["read"]})
            assert _role_exists(node, "control")
        elif rpc == "Admin.DeleteRole":
            client.put_role("control-deleted", {"": ["read"]})
            client.delete_role("control-deleted")
            assert not _role_exists(node, "control-deleted")
        elif rpc == "Admin.RevokeToken":
            client.revoke_token("control-jti")
        else:
            RPCS[rpc].call(client)


@pytest.mark.parametrize("failure", ["role deleted", "key outside every granted prefix"])
@pytest.mark.parametrize("rpc", [*RPCS, "Replication.Sync"])
def test_every_rpc_refuses_a_caller_without_the_right(node: Node, rpc: str, failure: str) -> None:
    token = node.tokens["role deleted" if failure == "role deleted" else "adder"]
    if failure != "role deleted" and rpc in ("KV.Contains", "KV.Members"):
        token = node.tokens["orders"]  # the adder may read s/set; the orders role may not
    if rpc == "Replication.Sync":
        code, message = sync_refusal(node.server.addr, token)
    elif rpc == "KV.Scan":
        with node.client(token) as client:
            assert RPCS[rpc].call(client) == [], "keys the caller may not read are left out, silently"
        return
    else:
        with node.client(token) as client, pytest.raises(ClientError) as info:
            RPCS[rpc].call(client)
        code, message = info.value.code, info.value.message
        applied = RPCS[rpc].applied
        assert applied is None or not applied(node)
    assert code == grpc.StatusCode.PERMISSION_DENIED, message
    assert token not in message
    assert "principal 'svc-" in message, "the refusal names the principal"


@pytest.mark.parametrize(
    ("token", "ops", "right", "key"),
    [
        ("counter", [Increment("c/n", -1)], "decr", "c/n"),
        ("adder", [RemoveMembers("s/set", ("m",))], "remove", "s/set"),
        ("adder", [DeleteKey("s/set")], "delete", "s/set"),
        ("counter", [Increment("c/n", 1), Increment("c/other", 1), SetRegister("c/n2", b"x")], "set", "c/n2"),
    ],
    ids=["decr with only incr", "remove with only add", "delete with only add", "a batch with one forbidden op"],
)
def test_an_operation_needs_its_own_right(node: Node, token: str, ops: list[Any], right: str, key: str) -> None:
    before = {k: node.admin.get(k) for k in ("c/n", "c/other", "c/n2", "s/set")}
    with node.client(node.tokens[token]) as client, pytest.raises(ClientError) as info:
        client.mutate(ops)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"right {right!r} on key {key!r}" in info.value.message
    after = {k: node.admin.get(k) for k in before}
    assert {k: (e.type, e.value) for k, e in after.items()} == {k: (e.type, e.value) for k, e in before.items()}


def test_rights_allow_what_they_name(node: Node) -> None:
    with node.client(node.tokens["counter"]) as counter:
        counter.incr("c/allowed", 2)
        assert counter.get("c/allowed").value == 2
    with node.client(node.tokens["adder"]) as adder:
        adder.sadd("s/allowed", "x")
        assert adder.sismember("s/allowed", "x")
    with node.client(node.tokens["orders"]) as orders:
        orders.mutate([SetRegister("orders/a", b"1"), SetRegister("orders/b", b"2")])


def test_scan_shows_only_what_the_caller_may_read(node: Node) -> None:
    node.admin.mutate([SetRegister("orders/scan", b"o"), SetRegister("private/scan", b"p"), Increment("c/scan", 1)])
    with node.client(node.tokens["orders"]) as orders:
        keys = [e.key for e in orders.scan("")]
    assert "orders/scan" in keys
    assert not [k for k in keys if not k.startswith("orders/")], keys
    everything = [e.key for e in node.admin.scan("")]
    assert {"private/scan", "c/scan", "orders/scan"} <= set(everything)
    assert not [k for k in everything if k.startswith("\x00")], "the system keyspace never shows"
    assert node.admin.status()["keys"] == len(everything), "nor is it counted among the keys"


def test_regression_scan_page_tokens_say_nothing_of_the_keys_left_out(node: Node) -> None:
    """Review: a page token was the last key the page read, readable or not: a caller allowed orders/ alone
    could page through Scan(limit=1) and decode every key name, roles and revoked token ids included."""
    node.admin.mutate([SetRegister("payroll/raise", b"p"), SetRegister("orders/zz-last", b"o")])
    node.admin.put_role("hidden-role", {"nothing/": ["read"]})
    seen: list[str] = []
    tokens: list[str] = []
    with grpc.insecure_channel(node.server.addr) as channel:
        scan = kpb_grpc.KVStub(channel).Scan
        metadata = (("authorization", f"Bearer {node.tokens['orders']}"),)
        page_token = ""
        for _ in range(10_000):
            page = scan(kpb.ScanRequest(prefix="", limit=1, page_token=page_token), metadata=metadata, timeout=10)
            seen += [e.key for e in page.entries]
            if not page.next_page_token:
                break
            page_token = page.next_page_token
            tokens.append(page_token)
        with pytest.raises(grpc.RpcError) as info:  # a token this node did not seal
            scan(
                kpb.ScanRequest(limit=1, page_token=base64.urlsafe_b64encode(b"payroll/").decode()),
                metadata=metadata,
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "orders/zz-last" in seen and all(k.startswith("orders/") for k in seen), seen
    assert tokens, "the scan took several pages"
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for secret in (b"payroll", b"hidden-role", b"auth/", b"victim-jti"):
            assert secret not in raw, (secret, raw)


def test_the_system_keyspace_is_out_of_reach(node: Node) -> None:
    for call in (
        lambda: node.admin.set("\x00auth/role/orders", "x"),
        lambda: node.admin.get("\x00auth/revoked"),
        lambda: node.admin.mutate([SetRegister("ok/key", b"1"), DeleteKey("\x00auth/revoked")]),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "reserved" in info.value.message
    assert not node.admin.get("ok/key").exists
    with pytest.raises(ClientError) as info:
        node.admin.put_role("sneaky", {"\x00auth/": ["set"]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_role_changes_record_principal_and_origin(node: Node) -> None:
    node.admin.put_role("audited", {"a/": ["read"]})
    role = node.admin.get_role("audited")
    assert role.changed_by == "root"
    assert role.changed_in.startswith("eu#")
    assert role.grants == (("a/", ("read",)),)
    builtin = node.admin.get_role("admin")
    assert builtin.built_in
    with pytest.raises(ClientError) as info:
        node.admin.put_role("admin", {"": ["read"]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ClientError) as info:
        node.admin.get_role("never-defined")
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_a_role_put_replaces_it_whole(node: Node) -> None:
    token = node.kit.token("svc-replaced", ["replaced"])
    node.admin.put_role("replaced", {"r/": ["read", "set"]})
    with node.client(token) as client:
        client.set("r/1", "x")
        node.admin.put_role("replaced", {"r/": ["read"]})
        with pytest.raises(ClientError) as info:
            client.set("r/2", "x")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert client.get("r/1").value == b"x"


def test_a_refusal_names_a_role_the_token_holds_but_no_region_defines(node: Node) -> None:
    """Found by a newcomer: after `role delete`, the refusal still read as if the role granted too little."""
    token = node.kit.token("svc-ghost", ["ghost-role", "orders"])
    with node.client(token) as client, pytest.raises(ClientError) as info:
        client.get("private/x")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "'ghost-role' is not a role this node knows" in str(info.value)
    assert "'orders' is not" not in str(info.value)


def test_refusals_are_counted(node: Node) -> None:
    before = node.admin.status()
    with node.client(None) as anonymous, pytest.raises(ClientError):
        anonymous.get("orders/existing")
    with node.client(node.tokens["orders"]) as orders, pytest.raises(ClientError):
        orders.get("private/x")
    after = node.admin.status()
    assert after["auth_enabled"]
    assert after["refused_unauthenticated"] == before["refused_unauthenticated"] + 1
    assert after["refused_permission_denied"] == before["refused_permission_denied"] + 1


def test_the_asyncio_client_sends_its_token(node: Node) -> None:
    import asyncio

    from crdtstore.client import AsyncClient

    async def scenario() -> tuple[bytes | None, list[str]]:
        async with AsyncClient(node.server.addr, token=node.tokens["orders"]) as client:
            await client.set("orders/async", "a")
            value = (await client.get("orders/async")).value
        async with AsyncClient(node.server.addr, token=node.tokens["admin"]) as admin:
            names = [r.name for r in await admin.list_roles()]
        assert isinstance(value, bytes)
        return value, names

    value, names = asyncio.run(scenario())
    assert value == b"a"
    assert "orders" in names


def run_cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CRDTSTORE_ADDR", "CRDTSTORE_TOKEN")}
    if token is not None:
        env["CRDTSTORE_TOKEN"] = token
    cmd = [sys.executable, "-m", "crdtstore", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_the_command_line_manages_roles(node: Node) -> None:
    addr, admin = node.server.addr, node.tokens["admin"]
    put = run_cli(
        "--addr", addr, "role", "put", "cli-role", "--grant", "x/=read,add", "--grant", "=read", "--json", token=admin
    )
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["grants"] == [
        {"prefix": "x/", "rights": ["add", "read"]},
        {"prefix": "", "rights": ["read"]},
    ]
    got = run_cli("--addr", addr, "--token", admin, "role", "get", "cli-role", "--json")
    assert json.loads(got.stdout)["changed_by"] == "root"
    listed = run_cli("--addr", addr, "role", "list", "--json", token=admin)
    assert "cli-role" in [json.loads(line)["name"] for line in listed.stdout.splitlines()]
    human = run_cli("--addr", addr, "role", "get", "cli-role", token=admin)
    assert human.stdout.splitlines()[:3] == ["cli-role", "  x/\tadd,read", "  (every key)\tread"]
    deleted = run_cli("--addr", addr, "role", "delete", "cli-role", "--json", token=admin)
    base64.b64decode(json.loads(deleted.stdout)["token"], validate=True)
    gone = run_cli("--addr", addr, "role", "get", "cli-role", token=admin)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr

    refused = run_cli("--addr", addr, "role", "list")
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr and "--token" in refused.stderr
    token = node.kit.token("cli-victim", ["orders"], token_id="cli-victim-jti")
    assert run_cli("--addr", addr, "get", "orders/existing", token=token).stdout == "v\n"
    revoked = run_cli("--addr", addr, "token", "revoke", "cli-victim-jti", "--json", token=admin)
    assert revoked.returncode == 0, revoked.stderr
    after = run_cli("--addr", addr, "get", "orders/existing", token=token)
    assert after.returncode == 1 and "revoked" in after.stderr and token not in after.stderr


# -- key rotation, and the protected default ------------------------------------------------------


def test_key_rotation(tmp_path: Path) -> None:
    old, new = AuthKit.create(tmp_path / "old"), AuthKit.create(tmp_path / "new")
    config = old.write_config(tmp_path / "node.toml", public_keys=[old.public_key, new.public_key])
    old_token, new_token = old.token("a", ["admin"]), new.token("b", ["admin"])
    with ServerProcess(tmp_path / "data", region="eu", extra_args=("--config", str(config))) as server:
        for token in (old_token, new_token):
            with Client(server.addr, token=token, retries_max=0) as client:
                client.set("rotation/k", "v")
        new.write_config(config, public_keys=[new.public_key])  # the old key retires at the restart
        server.stop()
        server.start()
        with Client(server.addr, token=new_token, retries_max=0) as client:
            assert client.get("rotation/k").value == b"v"
        with Client(server.addr, token=old_token, retries_max=0) as client, pytest.raises(ClientError) as info:
            client.get("rotation/k")
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "not among this node's auth.token_public_keys" in info.value.message


def test_the_protected_default(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "crdtstore", "serve", "--region", "eu", "--data-dir", str(tmp_path / "d")]
    proc = subprocess.run([*cmd, "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "without access control" in proc.stderr
    assert "--insecure-no-auth" in proc.stderr and "[auth]" in proc.stderr
    assert not (tmp_path / "d").exists(), "refused before anything was created"


def test_a_node_on_every_address_with_auth(tmp_path: Path) -> None:
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    server = ServerProcess(tmp_path / "data", region="eu", extra_args=("--config", str(config)), host="0.0.0.0")
    with server:
        with Client(f"127.0.0.1:{server.port}", retries_max=0) as anonymous, pytest.raises(ClientError) as info:
            anonymous.get("k")
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


# -- across regions --------------------------------------------------------------------------------

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegionProcesses, AuthKit]]:
    root = tmp_path_factory.mktemp("auth-regions")
    kit = AuthKit.create(root / "keys")
    config = kit.write_config(root / "node.toml")
    admin = kit.token("root", ["admin"])
    # A peer token names its region as subject.
    env = {name: {"CRDTSTORE_PEER_TOKEN": kit.token(name, ["replicator"], ttl_s=24 * 3600)} for name in NAMES}
    # The peers' token holds the role replicator (replicate on every key). A region cannot learn that role
    # from a peer it cannot reach yet, so each region is given it first; the puts converge like any register.
    cluster = RegionProcesses(root, NAMES, extra_args=("--config", str(config)), env=env, client_token=admin)
    with cluster:
        for name in NAMES:
            cluster.clients[name].put_role("replicator", {"": ["replicate"]})
        cluster.wait_connected()
        yield cluster, kit


def _refusal(client: Client, key: str) -> grpc.StatusCode | None:
    try:
        client.get(key)
    except ClientError as err:
        return err.code
    return None


def test_a_role_made_in_one_region_is_enforced_in_the_others(regions: tuple[RegionProcesses, AuthKit]) -> None:
    cluster, kit = regions
    token = kit.token("svc-reports", ["reports"])
    readers = {name: Client(cluster.servers[name].addr, token=token, retries_max=0) for name in NAMES}
    try:
        cluster.clients["a"].set("reports/q1", "42")
        for name in NAMES:
            assert _refusal(readers[name], "reports/q1") == grpc.StatusCode.PERMISSION_DENIED
        cluster.clients["a"].put_role("reports", {"reports/": ["read"]})
        for name in NAMES:
            wait_for(lambda name=name: _refusal(readers[name], "reports/q1") is None, f"role in {name}")  # type: ignore[misc]
            assert _refusal(readers[name], "private/x") == grpc.StatusCode.PERMISSION_DENIED
        cluster.clients["c"].delete_role("reports")
        for name in NAMES:
            wait_for(
                lambda name=name: _refusal(readers[name], "reports/q1") == grpc.StatusCode.PERMISSION_DENIED,  # type: ignore[misc]
                f"deletion in {name}",
            )
    finally:
        for client in readers.values():
            client.close()


def test_a_revocation_stops_the_token_everywhere_even_across_a_partition(
    regions: tuple[RegionProcesses, AuthKit],
) -> None:
    cluster, kit = regions
    token = kit.token("svc-leaked", ["admin"], token_id="leaked-jti")
    users = {name: Client(cluster.servers[name].addr, token=token, retries_max=0) for name in NAMES}
    try:
        for name in NAMES:
            assert _refusal(users[name], "any/key") is None
        cluster.isolate("c")
        cluster.clients["a"].revoke_token("leaked-jti")
        wait_for(lambda: _refusal(users["b"], "any/key") == grpc.StatusCode.UNAUTHENTICATED, "revoked in b")
        assert _refusal(users["a"], "any/key") == grpc.StatusCode.UNAUTHENTICATED
        assert _refusal(users["c"], "any/key") is None, "c cannot know yet: it is cut off"
        cluster.heal()
        wait_for(lambda: _refusal(users["c"], "any/key") == grpc.StatusCode.UNAUTHENTICATED, "revoked in c")
    finally:
        for client in users.values():
            client.close()
    cluster.wait_connected()


def test_peers_without_a_token_cannot_replicate(tmp_path: Path) -> None:
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    admin = kit.token("root", ["admin"])
    with RegionProcesses(tmp_path, ("x", "y"), extra_args=("--config", str(config)), client_token=admin) as cluster:
        cluster.clients["x"].set("k", "from x")
        wait_for(lambda: cluster.clients["y"].status()["refused_unauthenticated"] > 2, "y refuses x's stream, again")
        assert not any(p["connected"] for p in cluster.clients["y"].status()["peers"])
        assert not cluster.clients["y"].get("k").exists
        # Each refusal of a stream is a refused request (issue 19), recorded at most once a minute alike:
        # x dials again and again, and the trail holds one record of it.
        syncs = [r for r in cluster.clients["y"].audit_log() if r.method == "Sync"]
        assert [(r.kind, r.code, r.principal) for r in syncs] == [("refused", "UNAUTHENTICATED", "")]
        assert [(op.key, op.kind) for op in syncs[0].operations] == [("", "replicate")]


def test_a_peer_without_the_replicate_right_is_refused_and_recorded_by_name(tmp_path: Path) -> None:
    """The Sync refusal's record names the peer its token speaks for (review: it was empty)."""
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    env = {"x": {"CRDTSTORE_PEER_TOKEN": kit.token("x", ["no-such-role"])}}
    admin = kit.token("root", ["admin"])
    with RegionProcesses(
        tmp_path, ("x", "y"), extra_args=("--config", str(config)), env=env, client_token=admin
    ) as cluster:
        y = cluster.clients["y"]
        wait_for(lambda: y.status()["refused_permission_denied"] > 0, "y refuses x's stream")
        syncs = [r for r in y.audit_log() if r.method == "Sync"]
        assert [(r.code, r.principal) for r in syncs][:1] == [("PERMISSION_DENIED", "x")]
        assert "lacks the right 'replicate'" in syncs[0].reason


def test_a_node_takes_data_only_from_an_answering_peer_with_a_token(tmp_path: Path) -> None:
    """x dials y; y answers without a token of its own: x takes nothing from it."""
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    env = {"x": {"CRDTSTORE_PEER_TOKEN": kit.token("x", ["admin"])}}  # and y presents none
    admin = kit.token("root", ["admin"])
    with RegionProcesses(
        tmp_path, ("x", "y"), extra_args=("--config", str(config)), env=env, client_token=admin
    ) as cluster:
        x = cluster.clients["x"]
        cluster.clients["y"].set("from/y", "1")
        wait_for(lambda: x.status()["refused_unauthenticated"] > 0, "x refuses y")
        assert not any(p["connected"] for p in x.status()["peers"])
        assert not x.get("from/y").exists
        assert "is not one to take data from" in cluster.servers["x"].log_path.read_text()


@pytest.mark.parametrize(
    ("x_presents", "y_presents", "refusal"),
    [
        ("y", "y", "a peer token for 'y' presented for region 'x'"),  # y refuses the dialling x
        ("x", "x", "a peer token for 'x' presented for region 'y'"),  # x refuses the answering y (its own, echoed)
    ],
)
def test_regression_a_peer_token_speaks_for_its_own_region_only(
    tmp_path: Path, x_presents: str, y_presents: str, refusal: str
) -> None:
    """Review: any replicate token was taken from any peer, so whatever answered at a peer's address could echo
    the token it was sent, and one region could present another's. x dials y; each presents a token whose
    subject is the name given."""
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    env = {
        "x": {"CRDTSTORE_PEER_TOKEN": kit.token(x_presents, ["admin"])},
        "y": {"CRDTSTORE_PEER_TOKEN": kit.token(y_presents, ["admin"])},
    }
    admin = kit.token("root", ["admin"])
    with RegionProcesses(
        tmp_path, ("x", "y"), extra_args=("--config", str(config)), env=env, client_token=admin
    ) as cluster:
        cluster.clients["y"].set("from/y", "1")
        cluster.clients["x"].set("from/x", "1")
        logs = [cluster.servers[name].log_path for name in ("x", "y")]
        wait_for(lambda: any(refusal in p.read_text() for p in logs), refusal)
        time.sleep(0.5)  # had either side taken the other's stream, the writes would have travelled by now
        assert not cluster.clients["x"].get("from/y").exists
        assert not cluster.clients["y"].get("from/x").exists
        assert not any(p["connected"] for p in cluster.clients["x"].status()["peers"])


def test_one_peer_token_shared_by_every_region_still_connects_them(tmp_path: Path) -> None:
    """The issue's form: one token holding replicate, presented by every region; its subject names no region."""
    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    shared = kit.token("peers", ["admin"])
    env = {name: {"CRDTSTORE_PEER_TOKEN": shared} for name in ("x", "y")}
    admin = kit.token("root", ["admin"])
    with RegionProcesses(
        tmp_path, ("x", "y"), extra_args=("--config", str(config)), env=env, client_token=admin
    ) as cluster:
        cluster.wait_connected()
        token = cluster.clients["x"].set("shared/token", "1").token
        assert cluster.clients["y"].get("shared/token", after=token).value == b"1"


def test_a_replication_stream_ends_when_its_token_expires_or_is_revoked(tmp_path: Path) -> None:
    """x dials y with the token in its peer_token_file; y ends the stream at its expiry and at its revocation."""
    kit = AuthKit.create(tmp_path / "keys")
    token_file = tmp_path / "peer-x.token"  # written once the regions run: until then x dials without a token
    y_token = tmp_path / "peer-y.token"
    y_token.write_text(kit.token("y", ["admin"], ttl_s=24 * 3600))
    env = {
        name: {
            "CRDTSTORE_CONFIG": str(
                kit.write_config(tmp_path / f"{name}.toml", extra=f'leeway_s = 0\npeer_token_file = "{file}"\n')
            )
        }
        for name, file in (("x", token_file), ("y", y_token))
    }
    admin = kit.token("root", ["admin"])
    with RegionProcesses(tmp_path, ("x", "y"), env=env, client_token=admin) as cluster:
        y = cluster.clients["y"]

        def connected() -> bool:
            return all(p["connected"] for p in y.status()["peers"])

        wait_for(lambda: y.status()["refused_unauthenticated"] > 0, "y refuses x without a token")
        token_file.write_text(kit.token("x", ["admin"], ttl_s=4))
        wait_for(connected, "x connects with its token")
        wait_for(lambda: not connected(), "the stream ends when the token expires")
        token_file.write_text(kit.token("x", ["admin"], token_id="peer-x-2"))  # read afresh at each dial
        wait_for(connected, "x reconnects with its new token")
        y.revoke_token("peer-x-2")
        wait_for(lambda: not connected(), "the stream ends when the token is revoked")
        cluster.clients["x"].set("after/revocation", "1")
        time.sleep(0.5)  # x's write had every chance to travel; it must not have
        assert not y.get("after/revocation").exists


def _first_change(stream: Iterator[WatchItem]) -> Change:
    for item in stream:
        if isinstance(item, Change):
            return item
    raise AssertionError("the stream ended")


def test_a_watch_needs_read_on_its_prefix_and_never_shows_the_nodes_own_records(node: Node) -> None:
    with node.client(None) as anonymous, pytest.raises(ClientError) as info:
        next(anonymous.watch("orders/", start="now"))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with node.client(node.tokens["orders"]) as orders:
        with pytest.raises(ClientError) as info:
            next(orders.watch("", start="now"))  # read on orders/ only, not on every key
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        stream = orders.watch("orders/", start="now", progress_interval_ms=100)
        try:
            assert isinstance(next(stream), Progress)
            node.admin.set("orders/watched", "w")
            change = _first_change(stream)
            assert (change.key, change.entry.value) == ("orders/watched", b"w")
        finally:
            stream.close()
    # An administrator watching every key sees data, never the roles and revocations kept beside it.
    stream = node.admin.watch("", start="now", progress_interval_ms=100)
    try:
        assert isinstance(next(stream), Progress)
        node.admin.put_role("watch-probe", {"w/": ["read"]})
        node.admin.revoke_token("watch-probe-jti")
        node.admin.set("zz/after-the-rules", "x")
        change = _first_change(stream)
        assert change.key == "zz/after-the-rules"  # the role and the revocation came first, unseen
    finally:
        stream.close()


def test_regression_an_open_watch_ends_when_its_token_is_revoked(node: Node) -> None:
    """Found in review: the stream kept delivering after a revocation that unary calls already obeyed."""
    token = node.kit.token("svc-watcher", ["orders"], token_id="watch-revoked-jti")
    with node.client(token) as watcher:
        stream = watcher.watch("orders/", start="now", progress_interval_ms=100)
        try:
            assert isinstance(next(stream), Progress)
            node.admin.revoke_token("watch-revoked-jti")
            node.admin.set("orders/after-revocation", "secret")
            with pytest.raises(ClientError) as info:
                for item in stream:
                    assert not (isinstance(item, Change) and item.key == "orders/after-revocation")
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in str(info.value)
        finally:
            stream.close()


def test_a_watch_names_the_principal_of_each_change_only_to_a_caller_who_may_read_the_audit_trail(
    node: Node,
) -> None:
    """Issue 20's last field: the principal comes from the change's audit record (issue 19)."""
    node.admin.put_role("orders-auditor", {"orders/": ["read"], "": ["audit"]})
    auditor = node.kit.token("svc-auditor", ["orders-auditor"])
    with node.client(auditor) as audited, node.client(node.tokens["orders"]) as orders:
        seen_by_auditor = audited.watch("orders/", start="now", progress_interval_ms=100)
        seen_by_reader = orders.watch("orders/", start="now", progress_interval_ms=100)
        try:
            assert isinstance(next(seen_by_auditor), Progress)
            assert isinstance(next(seen_by_reader), Progress)
            orders.set("orders/by-svc-orders", "o")
            change = _first_change(seen_by_auditor)
            assert (change.key, change.principal) == ("orders/by-svc-orders", "svc-orders")
            change = _first_change(seen_by_reader)
            assert (change.key, change.principal) == ("orders/by-svc-orders", "")  # no audit right: not shown
        finally:
            seen_by_auditor.close()
            seen_by_reader.close()


def test_refused_requests_leave_records_naming_who_asked_what(node: Node) -> None:
    """Issue 19: a refused read and a refused write each leave a record with the principal, the key and why."""
    with node.client(node.tokens["counter"]) as counter:
        with pytest.raises(ClientError):
            counter.get("orders/secret-read")  # read on c/ only
        with pytest.raises(ClientError):
            counter.set("c/not-a-set-right", "x")  # incr on c/, not set
    with node.client(None) as anonymous, pytest.raises(ClientError):
        anonymous.get("orders/no-token")
    read = [r for r in node.admin.audit_log(key="orders/secret-read") if r.kind == "refused"]
    assert [(r.principal, r.method, r.code) for r in read] == [("svc-counter", "Get", "PERMISSION_DENIED")]
    assert [(op.key, op.kind) for op in read[0].operations] == [("orders/secret-read", "read")]
    write = [r for r in node.admin.audit_log(key="c/not-a-set-right") if r.kind == "refused"]
    assert [(r.principal, r.method, r.code) for r in write] == [("svc-counter", "Mutate", "PERMISSION_DENIED")]
    assert "lacks the right 'set'" in write[0].reason
    unauthenticated = [r for r in node.admin.audit_log(principal="") if r.code == "UNAUTHENTICATED"]
    assert unauthenticated and unauthenticated[-1].method == "Get"
    # Without a valid token too, the record names what was asked: found by the key (a contract review).
    no_token = [r for r in node.admin.audit_log(key="orders/no-token") if r.kind == "refused"]
    assert [(r.principal, r.method, r.code) for r in no_token] == [("", "Get", "UNAUTHENTICATED")]
    assert [(op.key, op.kind) for op in no_token[0].operations] == [("orders/no-token", "read")]
    # But only a small request is read for it: an anonymous caller cannot make the node parse megabytes,
    # nor fill every region's trail with what it sent (review).
    with node.client(None) as anonymous, pytest.raises(ClientError):
        anonymous.set("orders/large-without-a-token", b"x" * 5000)
    large = [r for r in node.admin.audit_log(principal="") if r.code == "UNAUTHENTICATED" and r.method == "Mutate"]
    assert large and large[-1].operations == []
    # The node's own records are never a key a client sees or counts.
    assert all(not e.key.startswith("\x00") for e in node.admin.scan(""))


def test_regression_a_revocation_applied_while_a_watch_page_is_read_stops_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a parallel run of the suite (test_regression_an_open_watch_ends_when_its_token_is_revoked).

    The stream checked the caller's rights, then read a page of changes: a
    revocation and the next change that both landed during the read went out,
    the change included. Here they land exactly then, every time: the page's
    read waits for them. The rights are checked again after the read.
    """
    import asyncio
    import threading

    from crdtstore.client import AsyncClient
    from crdtstore.node import feed
    from crdtstore.node.config import NodeConfig
    from crdtstore.node.main import run_node
    from crdtstore.testing.regions import free_port

    kit = AuthKit.create(tmp_path / "keys")
    port = free_port()
    config = NodeConfig.load(
        config_file=str(kit.write_config(tmp_path / "node.toml")),
        flags={"region": "eu", "data_dir": str(tmp_path / "eu"), "listen": f"127.0.0.1:{port}"},
        environ={},
    )
    armed, reading, landed = threading.Event(), threading.Event(), threading.Event()
    prepare = feed._Stream._prepare

    def prepare_once_they_landed(stream: Any) -> Any:
        if armed.is_set():
            armed.clear()
            reading.set()
            assert landed.wait(30), "the revocation and the change never landed"
        return prepare(stream)

    monkeypatch.setattr(feed._Stream, "_prepare", prepare_once_they_landed)

    async def scenario() -> list[str]:
        stop, ready = asyncio.Event(), asyncio.Event()
        node = asyncio.ensure_future(run_node(config, ready=ready, stop=stop))
        seen: list[str] = []
        try:
            async with asyncio.timeout(30):
                await ready.wait()
            address = f"127.0.0.1:{port}"
            async with (
                AsyncClient(address, token=kit.token("root", ["admin"]), timeout_s=20) as admin,
                AsyncClient(address, token=kit.token("svc", ["admin"], token_id="mid-page-jti")) as watcher,
            ):
                stream = watcher.watch("orders/", start="now", progress_interval_ms=100)
                with pytest.raises(ClientError) as info:
                    async for item in stream:
                        if isinstance(item, Change):
                            seen.append(item.key)
                        elif not armed.is_set() and not landed.is_set():
                            armed.set()  # the stream's next page read waits for what follows
                            assert await asyncio.to_thread(reading.wait, 30), "the stream read no page"
                            await admin.revoke_token("mid-page-jti")
                            await admin.set("orders/after-revocation", "secret")
                            landed.set()
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED, info.value
        finally:
            stop.set()
            async with asyncio.timeout(60):
                await node
        return seen

    assert asyncio.run(scenario()) == []

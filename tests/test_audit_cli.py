"""The audit commands against a real node: log (filters, paging), export and verify --file, retention, rights.

One node serves the module (access control on, ``audit_bytes_max = 1`` so
that retention wants to drop every record but each chain's newest, and may
drop only what an export holds). Each test writes its own records under its
own keys, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crdtstore import client as client_module
from crdtstore.audit.export import check_export
from crdtstore.client import Client, ClientError
from crdtstore.testing.auth import AuthKit
from crdtstore.testing.process import ServerProcess
from crdtstore.testing.regions import RegionProcesses
from crdtstore.testing.waits import wait_for
from crdtstore.v1 import kv_pb2

pytestmark = [pytest.mark.processes, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@dataclass
class Node:
    server: ServerProcess
    tokens: dict[str, str]
    admin: Client
    root: Path

    def client(self, who: str) -> Client:
        return Client(self.server.addr, token=self.tokens[who], timeout_s=10, retries_max=0)

    def cli(self, *argv: str, who: str = "auditor") -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CRDTSTORE_ADDR=self.server.addr, CRDTSTORE_TOKEN=self.tokens[who])
        return subprocess.run(
            [sys.executable, "-m", "crdtstore", *argv], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    def status(self) -> kv_pb2.StatusResponse:
        return self.admin._call(client_module._STATUS, kv_pb2.StatusRequest())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("audit-node")
    kit = AuthKit.create(root / "keys")
    config = kit.write_config(root / "node.toml", extra="[storage]\naudit_bytes_max = 1\n")
    with ServerProcess(root / "data", region="eu", extra_args=("--config", str(config))) as server:
        tokens = {
            "admin": kit.token("root", ["admin"]),
            "auditor": kit.token("carol-auditor", ["auditor"]),
            "writer": kit.token("dave-writer", ["writer"]),
        }
        admin = Client(server.addr, token=tokens["admin"], timeout_s=10)
        admin.put_role("auditor", {"": ["audit"]})
        admin.put_role("writer", {"w/": ["read", "set"]})
        try:
            yield Node(server, tokens, admin, root)
        finally:
            admin.close()


def _write(node: Node, key: str, n: int, who: str = "writer") -> None:
    with node.client(who) as c:
        for i in range(n):
            c.set(key, f"value {i}")


def test_log_pages_resume_exactly_and_filters_select(node: Node) -> None:
    key = f"w/log-{uuid.uuid4().hex[:8]}"
    _write(node, key, 105)  # more than the CLI's page (100)
    _write(node, "w/other", 3)
    with node.client("auditor") as c:
        paged = list(c.audit_log(key=key, page_size=7))
        assert len(paged) == 105
        assert [r.seq for r in paged] == sorted(r.seq for r in paged)  # one chain: causal order is chain order
        assert len({r.seq for r in paged}) == 105  # no record twice across 15 pages
        assert all(r.principal == "dave-writer" and r.kind == "write" for r in paged)
        assert all([op.key for op in r.operations] == [key] for r in paged)
        middle = paged[50]
        since = [r.seq for r in c.audit_log(key=key, since_ms=middle.hlc_wall_ms)]
        assert since[0] <= middle.seq and since[-1] == paged[-1].seq
        assert all(r.hlc_wall_ms >= middle.hlc_wall_ms for r in c.audit_log(key=key, since_ms=middle.hlc_wall_ms))
        until = list(c.audit_log(key=key, until_ms=middle.hlc_wall_ms))
        assert until and all(r.hlc_wall_ms < middle.hlc_wall_ms for r in until)
        assert len(until) + len(since) == 105
        assert list(c.audit_log(key=key, region="elsewhere")) == []
        assert len(list(c.audit_log(key=key, region="eu"))) == 105
        assert list(c.audit_log(key=key, principal="root")) == []
        with pytest.raises(ClientError) as bad:
            next(c.audit_log_pages(page_token="not a token"))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    proc = node.cli("audit", "log", "--key", key, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seq"] for r in lines] == [r.seq for r in paged]
    assert lines[0]["principal"] == "dave-writer" and lines[0]["operations"][0]["key"] == key
    assert len(lines[0]["operations"][0]["value_sha256"]) == 64  # a digest, never the value
    human = node.cli("audit", "log", "--key", key, "--since", "1h", "--limit", "2")
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 2
    assert "by dave-writer via Mutate" in human.stdout
    assert node.cli("audit", "log", "--since", "yesterday").returncode == 2


def test_a_refused_request_is_in_the_log_with_its_code(node: Node) -> None:
    key = f"x/refused-{uuid.uuid4().hex[:8]}"
    with node.client("writer") as c, pytest.raises(ClientError) as refused:
        c.set(key, "nope")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    with node.client("auditor") as c:
        (record, *_) = [r for r in c.audit_log(principal="dave-writer") if r.kind == "refused"][-1:]
    assert (record.code, record.method) == ("PERMISSION_DENIED", "Mutate")
    assert key in record.reason  # the refusal's message names the key


def test_a_write_refused_for_a_full_store_is_recorded_apart(tmp_path: Path) -> None:
    """Its batch's transaction could not commit, the record in it neither: the record is written alone.

    (Before, the writer's answer was taken as "recorded in the batch" and the
    refusal left no record, though issue 19 names resource exhaustion.)
    """
    config = tmp_path / "node.toml"
    config.write_text("[storage]\nmap_size_bytes = 1048576\nmap_size_bytes_max = 2097152\n", encoding="utf-8")
    args = ("--config", str(config), "--insecure-no-auth")
    with ServerProcess(tmp_path / "data", region="eu", extra_args=args) as server, Client(server.addr) as c:
        refused = None
        for i in range(20):  # each value takes its size twice (the key and the delta log): the map fills
            try:
                c.set(f"big/{i}", b"x" * 400_000)
            except ClientError as exc:
                refused = exc
                break
        assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        records = [r for r in c.audit_log(key=f"big/{i}") if r.kind == "refused"]
        assert [(r.code, r.method, r.principal) for r in records] == [("RESOURCE_EXHAUSTED", "Mutate", "anonymous")]
        assert "maximum size" in records[0].reason
        assert c.status()["audit_refusals_dropped"] == 0


def test_a_node_started_with_auditing_on_again_covers_what_it_minted_while_off(tmp_path: Path) -> None:
    """The start path (crdtstore.node.main): one ``resumed`` record, then verify passes (it failed from then on)."""
    off = tmp_path / "off.toml"
    off.write_text("[storage]\naudit = false\n", encoding="utf-8")
    data = tmp_path / "data"
    for extra in ((), ("--config", str(off)), ()):
        with ServerProcess(data, region="eu", extra_args=("--insecure-no-auth", *extra)) as server:
            with Client(server.addr) as c:
                c.set("k", f"with {extra or 'auditing'}")
            addr = server.addr
            env = dict(os.environ, CRDTSTORE_ADDR=addr)
            verify = subprocess.run(
                [sys.executable, "-m", "crdtstore", "audit", "verify"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
            if not extra:
                assert verify.returncode == 0, verify.stdout + verify.stderr
            with Client(server.addr) as c:
                kinds = [r.kind for r in c.audit_log()]
    assert kinds == ["write", "resumed", "write"]


def test_export_then_verify_file_and_a_tampered_export_fails(node: Node, tmp_path: Path) -> None:
    _write(node, f"w/export-{uuid.uuid4().hex[:8]}", 5)
    out = tmp_path / "audit.jsonl"
    proc = node.cli("audit", "export", "--since", "0", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["records"] > 5 and summary["chains"] == 1
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "header" and json.loads(lines[-1])["type"] == "head"
    assert len(lines) == summary["records"] + 2
    assert not list(tmp_path.glob(".*partial")), "the temporary file is gone"
    assert node.cli("audit", "export", "--since", "0", "--out", str(out)).returncode == 2  # never overwritten

    verified = node.cli("audit", "verify", "--file", str(out))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok:")

    record = json.loads(lines[3])
    record["principal"] = "someone-else"
    edited = [*lines[:3], json.dumps(record), *lines[4:]]
    for name, text in {
        "edited": edited,
        "dropped": lines[:3] + lines[4:],
        "swapped": [*lines[:2], lines[3], lines[2], *lines[4:]],
        "truncated": lines[:-3],
    }.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text("\n".join(text) + "\n")
        report = check_export(text)
        assert not report.ok, name
        if name == "edited":
            failed = node.cli("audit", "verify", "--file", str(bad))
            assert failed.returncode == 1 and "line 4" in failed.stderr, failed.stderr


def test_retention_drops_only_what_was_exported_and_verification_still_passes(node: Node, tmp_path: Path) -> None:
    key = f"w/retained-{uuid.uuid4().hex[:8]}"
    _write(node, key, 10)
    wait_for(lambda: "not been exported" in node.status().audit_retention_blocked, "retention says it is blocked")
    with node.client("auditor") as c:
        assert len(list(c.audit_log(key=key))) == 10  # blocked: nothing of it dropped
        first_kept = c.audit_verify().chains[0].records

    proc = node.cli("audit", "export", "--since", "0", "--out", str(tmp_path / "all.jsonl"))
    assert proc.returncode == 0, proc.stderr

    def dropped() -> bool:
        with node.client("auditor") as c:
            return not list(c.audit_log(key=key))

    wait_for(dropped, "the exported records are dropped")
    with node.client("auditor") as c:
        answer = c.audit_verify()
        assert answer.ok, answer
        (chain,) = answer.chains
        assert chain.records < first_kept
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The drop was itself an audited write of the node's own.
    with node.client("auditor") as c:
        drops = [r for r in c.audit_log(principal="crdtstore") if r.method == "AuditRetention"]
    assert drops and any(op.kind == "delete" for op in drops[0].operations)


def test_the_audit_right_or_admin_is_needed(node: Node, tmp_path: Path) -> None:
    calls: dict[str, Callable[[Client], object]] = {
        "AuditLog": lambda c: list(c.audit_log()),
        "AuditVerify": lambda c: c.audit_verify(),
        "AuditExport": lambda c: list(c.audit_export()),
        "AuditExported": lambda c: c.audit_exported(since_ms=0, through_ms=1),
    }
    for rpc, call in calls.items():
        with node.client("writer") as c, pytest.raises(ClientError) as denied:
            call(c)
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED, rpc
        for who in ("auditor", "admin"):
            with node.client(who) as c:
                call(c)
    assert node.cli("audit", "verify", who="writer").returncode == 2
    assert node.cli("audit", "log", who="writer").returncode == 1
    assert node.cli("audit", "verify", who="admin").returncode == 0


def test_verify_names_a_configured_peer_that_never_reported_its_heads(tmp_path: Path) -> None:
    """Found in review: verify said ok with ``"peers": []`` while a configured peer had never been compared."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    with ServerProcess(tmp_path / "data", region="eu", extra_args=("--peer", f"zz={nowhere}")) as server:
        with Client(server.addr, timeout_s=10) as c:
            c.set("k", "v")
        env = dict(os.environ, CRDTSTORE_ADDR=server.addr)
        command = [sys.executable, "-m", "crdtstore", "audit", "verify"]
        human = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
        as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert human.returncode == 0, human.stderr  # a partitioned peer does not make verify fail
    assert human.stdout.startswith("ok: ") and "agree" not in human.stdout
    assert human.stdout.rstrip().endswith("every link intact; no heads reported by peer zz: not compared")
    assert as_json.returncode == 0
    (peer,) = json.loads(as_json.stdout)["peers"]
    assert (peer["peer"], peer["compared"], peer["origin"]) == ("zz", False, "")
    assert peer["problem"] == "no heads reported by peer zz: not compared"


@pytest.mark.slow
def test_two_regions_show_the_same_log_compare_heads_and_replicate_a_drop(tmp_path: Path) -> None:
    """Across regions: the same records in the same order, heads compared, retention's drop and floor replicated."""
    config = tmp_path / "node.toml"
    config.write_text("[storage]\naudit_bytes_max = 1\n[replication]\naudit_heads_ms = 300\n")
    with RegionProcesses(tmp_path / "regions", ["eu", "us"], extra_args=("--config", str(config))) as cluster:
        eu, us = cluster.clients["eu"], cluster.clients["us"]
        for i in range(20):
            (eu if i % 2 else us).set(f"both/{i % 3}", f"v{i}")
        eu.incr("both/n", 1)
        cluster.wait_converged()

        def records(c: Client) -> list[tuple[str, int, bytes]]:
            return [(r.origin, r.seq, r.hash) for r in c.audit_log(page_size=6)]

        wait_for(lambda: records(eu) == records(us), "both regions hold every record")
        assert {o for o, _, _ in records(eu)} == {eu.status()["origin"], us.status()["origin"]}
        assert [r.region for r in eu.audit_log(region="us")] == ["us"] * 10

        def peers_agree() -> bool:
            answer = eu.audit_verify()
            return answer.ok and len({p.origin for p in answer.peers}) == 2

        wait_for(peers_agree, "eu's peer us reported both heads, and they agree")

        export = ["audit", "export", "--since", "0", "--out", str(tmp_path / "eu.jsonl")]
        proc = subprocess.run(
            [sys.executable, "-m", "crdtstore", "--addr", cluster.servers["eu"].addr, *export],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        us_origin = us.status()["origin"]

        def us_trimmed_in_both() -> bool:
            return all(min(r.seq for r in c.audit_log(region="us")) > 1 for c in (eu, us))

        wait_for(us_trimmed_in_both, "eu's drop of us's chain reached us")
        for c in (eu, us):
            answer = c.audit_verify()
            assert answer.ok, answer
        assert {ch.origin for ch in us.audit_verify().chains} >= {us_origin}

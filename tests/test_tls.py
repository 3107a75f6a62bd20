"""TLS and mutual TLS between regions and for clients, from certificate paths in the configuration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crdtstore.auth.certificates import Authority, Issued
from crdtstore.client import Client, ClientError, ClientTls
from crdtstore.replica.wire import SYNC_METHOD
from crdtstore.testing.regions import RegionProcesses
from crdtstore.v1 import replication_pb2 as rpb


def _write(issued: Issued, directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (as its common name and a DNS name, plus localhost and 127.0.0.1)."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(issued.cert_pem)
    key_path.write_bytes(issued.key_pem)
    return cert_path, key_path


def _authority(directory: Path, name: str) -> tuple[Authority, Path]:
    authority = Authority.create(name, days=1)
    path = directory / f"{name}.pem"
    path.write_bytes(authority.cert_pem)
    return authority, path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_path = _authority(directory, "crdtstore-ca")
    local = ["localhost", "127.0.0.1"]
    issued = {name: _write(ca.issue(name, local, days=1), directory, name) for name in ("a", "b", "operator")}
    stranger_ca, _ = _authority(directory, "stranger-ca")
    issued["stranger"] = _write(stranger_ca.issue("stranger", local, days=1), directory, "stranger")
    return {"ca": ca_path, "issued": issued}


@pytest.fixture(scope="module")
def mtls_regions(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Any]) -> Iterator[RegionProcesses]:
    """Two regions that require mutual TLS, shared by the tests of this module: none of them changes them."""
    tmp_path = tmp_path_factory.mktemp("mtls")
    env: dict[str, dict[str, str]] = {}
    for name in ("a", "b"):
        cert, key = pki["issued"][name]
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki["ca"]}"\nrequire_client_cert = true\n')
        env[name] = {"CRDTSTORE_CONFIG": str(config)}
    cert, key = pki["issued"]["operator"]
    tls = ClientTls.from_files(ca=str(pki["ca"]), cert=str(cert), key=str(key))
    with RegionProcesses(tmp_path / "regions", ["a", "b"], env=env, client_tls=tls) as regions:
        yield regions


@pytest.mark.processes
def test_regions_replicate_over_mutual_tls(mtls_regions: RegionProcesses) -> None:
    token = mtls_regions.clients["a"].set("secret", "kept").token
    assert mtls_regions.clients["b"].get("secret", after=token).value == b"kept"
    mtls_regions.wait_connected()
    assert "(mutual TLS)" in (mtls_regions.root / "a.log").read_text()


@pytest.mark.processes
def test_callers_without_a_certificate_from_the_authority_are_refused(
    mtls_regions: RegionProcesses, pki: dict[str, Any]
) -> None:
    addr = mtls_regions.servers["a"].addr
    stranger_cert, stranger_key = pki["issued"]["stranger"]
    refused = [
        Client(addr, timeout_s=3, retries_max=0),  # plaintext
        Client(addr, timeout_s=3, retries_max=0, tls=ClientTls.from_files(ca=str(pki["ca"]))),  # no certificate
        Client(
            addr,
            timeout_s=3,
            retries_max=0,
            tls=ClientTls.from_files(ca=str(pki["ca"]), cert=str(stranger_cert), key=str(stranger_key)),
        ),
    ]
    for client in refused:
        with client, pytest.raises(ClientError) as err:
            client.get("secret")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.processes
def test_a_peer_must_present_a_certificate_naming_its_region(
    mtls_regions: RegionProcesses, pki: dict[str, Any]
) -> None:
    # The operator's certificate is valid, but it does not name region b: it cannot sync as b.
    cert, key = pki["issued"]["operator"]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(), private_key=key.read_bytes(), certificate_chain=cert.read_bytes()
    )
    hello = rpb.SyncMessage(hello=rpb.SyncHello(region="b", vector=b"", protocol=1))
    with grpc.secure_channel(mtls_regions.servers["a"].addr, credentials) as channel:
        sync: Any = channel.stream_stream(SYNC_METHOD, request_serializer=rpb.SyncMessage.SerializeToString)
        with pytest.raises(grpc.RpcError) as err:
            list(sync(iter([hello]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not name region 'b'" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('cert = "{cert}"', "go together"),
        ('cert = "{cert}"\nkey = "{key}"\nrequire_client_cert = true', "needs tls.ca"),
        ('ca = "{ca}"', "need tls.cert"),
        ('cert = "{missing}"\nkey = "{key}"', "cannot read"),
        ('cert = "{toml}"\nkey = "{key}"', "not a PEM file"),
    ],
)
def test_tls_settings_are_checked_at_start(tmp_path: Path, pki: dict[str, Any], table: str, message: str) -> None:
    from crdtstore.node.config import ConfigError, NodeConfig

    cert, key = pki["issued"]["a"]
    config = tmp_path / "node.toml"
    text = table.format(cert=cert, key=key, ca=pki["ca"], missing=tmp_path / "nope.pem", toml=config)
    config.write_text("[tls]\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        NodeConfig.load(config_file=str(config), environ={})


@pytest.mark.processes
def test_with_access_control_a_peer_certificate_authenticates_and_clients_still_need_tokens(
    tmp_path: Path, pki: dict[str, Any]
) -> None:
    """Mutual TLS and [auth] together: peers replicate on their certificates alone, clients need a token."""
    from crdtstore.testing.auth import AuthKit

    kit = AuthKit.create(tmp_path / "keys")
    env: dict[str, dict[str, str]] = {}
    for name in ("a", "b"):
        cert, key = pki["issued"][name]
        config = tmp_path / f"{name}.toml"
        tls = f'[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki["ca"]}"\nrequire_client_cert = true\n'
        config.write_text(tls + kit.config_text())
        env[name] = {"CRDTSTORE_CONFIG": str(config)}  # and no peer token
    cert, key = pki["issued"]["operator"]
    tls_files = ClientTls.from_files(ca=str(pki["ca"]), cert=str(cert), key=str(key))
    admin = kit.token("operator", ["admin"])
    with RegionProcesses(tmp_path / "regions", ["a", "b"], env=env, client_tls=tls_files, client_token=admin) as r:
        written = r.clients["a"].set("secret", "kept").token
        assert r.clients["b"].get("secret", after=written).value == b"kept"
        r.wait_connected()
        no_token = Client(r.servers["b"].addr, timeout_s=5, retries_max=0, tls=tls_files)
        with no_token, pytest.raises(ClientError) as err:
            no_token.get("secret")
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED

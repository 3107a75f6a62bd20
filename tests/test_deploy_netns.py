"""The compose file's three regions, as ``crdtstore serve`` processes on three separate network hosts.

No container engine runs here, so the deployment is proven the other way:
``deploy/make-secrets.sh`` makes the certificates and token keys as the
README says, ``crdtstore.testing.deploy`` renders each region of
``deploy/compose.yaml`` (its environment and the one ``deploy/crdtstore.toml``
with the container's paths pointing at those files), and each region runs in
a Linux network namespace of its own, with its own address on a bridge the
test makes (``simulations/netns.py``); region names resolve there as they do
between compose's containers. Then: regions peer over mutual TLS, clients
need a certificate and a token, writes in every region converge everywhere,
``/metrics`` and the plaintext health port answer on every host, and one
host's link cut and brought back converges. The slow variant loses one
region's disk and starts it empty, as the runbook says to: it comes back under
a new incarnation with everything, from its peers.

Root only (namespaces); skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest

from crdtstore.client import Client, ClientError, ClientTls
from crdtstore.testing.deploy import DEPLOY_DIR, RenderedRegion, render_compose
from crdtstore.testing.regions import snapshot
from simulations.netns import NamespacedRegions, netns_unavailable

pytestmark = pytest.mark.processes

_REASON = netns_unavailable()
_WAIT_S = 30.0
# The hosts are on the test's own bridge: never through a proxy the environment may name.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


_ADMIN = ("--subject", "operator", "--role", "admin", "--ttl", "10m")


def _tool_env() -> dict[str, str]:
    """This interpreter's ``crdtstore`` first on PATH, as the README's install puts it there."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {_WAIT_S:g} s: {what}")
        time.sleep(0.1)


def _logged(log: Path, text: str) -> bool:
    return text in log.read_text(encoding="utf-8")


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


class Deployment:
    """The rendered regions running in their namespaces, with clients that hold the operator's credentials."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secrets = root / "secrets"
        subprocess.run(
            ["bash", str(DEPLOY_DIR / "make-secrets.sh"), str(self.secrets)],
            check=True,
            capture_output=True,
            timeout=120,
            env=_tool_env(),
        )
        self.regions: dict[str, RenderedRegion] = render_compose(root / "rendered", self.secrets)
        signing_key = self.secrets / "auth" / "signing.pem"
        self.token = subprocess.run(
            [sys.executable, "-m", "crdtstore", "token", "issue", "--signing-key", str(signing_key), *_ADMIN],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        operator = self.secrets / "operator"
        self.tls_files = (operator / "ca.crt", operator / "tls.crt", operator / "tls.key")
        self.hosts = NamespacedRegions(
            root / "hosts",
            list(self.regions),
            server_args=dict.fromkeys(self.regions, ()),  # everything comes from the rendered environment
            server_env={name: region.env for name, region in self.regions.items()},
            host_names=True,
        )
        self.clients: dict[str, Client] = {}

    def tls(self, region: str, *, certificate: bool = True) -> ClientTls:
        ca, cert, key = self.tls_files
        if not certificate:
            return ClientTls.from_files(ca=str(ca), server_name=region)
        return ClientTls.from_files(ca=str(ca), cert=str(cert), key=str(key), server_name=region)

    def __enter__(self) -> Deployment:
        self.hosts.__enter__()
        try:
            for name in self.regions:
                addr = self.hosts.servers[name].addr
                self.clients[name] = Client(addr, timeout_s=10, tls=self.tls(name), token=self.token)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients.values():
            client.close()
        self.hosts.close()

    def cli_inside(self, region: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The command line run inside ``region``'s namespace, against its node: it works with the link down."""
        ca, cert, key = self.tls_files
        command = [
            *("ip", "netns", "exec", self.hosts.namespaces[region]),
            *(sys.executable, "-m", "crdtstore", "--addr", self.hosts.servers[region].addr, "--timeout", "10"),
            *("--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key), "--tls-server-name", region),
            *("--token", self.token, *args),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def converged(self) -> bool:
        views = [snapshot(client) for client in self.clients.values()]
        return all(view == views[0] for view in views)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with Deployment(tmp_path) as running:
        yield running


@pytest.mark.skipif(bool(_REASON), reason=f"the deployment runs on separate network namespaces: {_REASON}")
def test_the_compose_regions_converge_on_separate_hosts_over_mutual_tls_with_tokens(deployment: Deployment) -> None:
    names = list(deployment.regions)
    assert len(names) == 3
    for name in names:
        assert deployment.regions[name].env["CRDTSTORE_REGION"] == name
        log = deployment.hosts.servers[name].log_path
        _wait_for(f"{name} serves with mutual TLS", partial(_logged, log, "(mutual TLS)"))

    # Writes in every region reach every region.
    for name, client in deployment.clients.items():
        client.set(f"written-in/{name}", name)
        client.sadd("visited", name)
        client.incr("writes")
    _wait_for("every region holds every region's writes", deployment.converged)
    for client in deployment.clients.values():
        assert client.get("visited").value == frozenset(names)
        assert client.get("writes").value == len(names)

    # Every host serves /metrics and the plaintext health port; that port serves nothing else.
    for name, region in deployment.regions.items():
        host = deployment.hosts.addresses[name]
        url = f"http://{host}:{_port(region.env['CRDTSTORE_METRICS_LISTEN'])}/metrics"
        with _NO_PROXY.open(url, timeout=10) as response:
            assert response.status == 200
            assert "crdtstore_" in response.read().decode("utf-8")
        health_port = _port(_health_listen(region))
        with Client(f"{host}:{health_port}", timeout_s=10, retries_max=0) as probe:
            assert probe.health() == "SERVING"
            with pytest.raises(ClientError) as err:
                probe.get("visited")
            assert err.value.code == grpc.StatusCode.UNIMPLEMENTED

    # Clients need both a certificate from the authority and a token.
    first = names[0]
    addr = deployment.hosts.servers[first].addr
    with Client(addr, timeout_s=5, retries_max=0, tls=deployment.tls(first)) as no_token:
        with pytest.raises(ClientError) as err:
            no_token.get("visited")
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(
        addr, timeout_s=5, retries_max=0, tls=deployment.tls(first, certificate=False), token=deployment.token
    ) as no_cert:
        with pytest.raises(ClientError) as err:
            no_cert.get("visited")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE

    # One host's link goes down: both sides keep taking writes; brought back, everything converges.
    cut = names[-1]
    deployment.hosts.unplug(cut)
    deployment.clients[first].set("during-cut/outside", first)
    inside = deployment.cli_inside(cut, "set", f"during-cut/{cut}", cut)
    assert inside.returncode == 0, inside.stderr
    missing = deployment.cli_inside(cut, "get", "during-cut/outside", "--json")
    assert missing.returncode == 0, missing.stderr
    assert '"type": null' in missing.stdout, "the cut host saw a write made outside while its link was down"
    deployment.hosts.plug(cut)
    _wait_for("every region converges after the link is back", deployment.converged)
    for client in deployment.clients.values():
        assert client.get(f"during-cut/{cut}").value == cut.encode()
        assert client.get("during-cut/outside").value == first.encode()


def _health_listen(region: RenderedRegion) -> str:
    import tomllib

    return str(tomllib.loads(region.config.read_text(encoding="utf-8"))["health_listen"])


@pytest.mark.slow
@pytest.mark.skipif(bool(_REASON), reason=f"the deployment runs on separate network namespaces: {_REASON}")
def test_a_region_that_lost_its_disk_comes_back_whole_from_its_peers(deployment: Deployment) -> None:
    """The runbook's "Lost region disk and restore", started empty: a new incarnation, everything repaired."""
    names = list(deployment.regions)
    lost = names[0]
    for name, client in deployment.clients.items():
        for i in range(50):
            client.sadd(f"before/{i % 7}", f"{name}-{i}")
        client.incr("before/count", 3)
    _wait_for("every region holds every write before the loss", deployment.converged)
    origin_before = deployment.clients[lost].status()["origin"]

    server = deployment.hosts.servers[lost]
    server.kill()  # the host is gone, and its disk with it
    shutil.rmtree(server.data_dir)
    server.start()  # an empty volume, the same configuration

    status = deployment.clients[lost].status()
    assert status["origin"] != origin_before
    assert status["origin"].startswith(f"{lost}#")
    deployment.clients[lost].set("after/written-in", lost)  # it takes writes at once
    _wait_for("the emptied region is repaired and its new writes reach everyone", deployment.converged)
    for client in deployment.clients.values():
        assert client.get("before/count").value == 3 * len(names)
        assert client.get("after/written-in").value == lost.encode()
        assert client.status()["conflicting_events"] == 0

"""Regions in their own Linux network namespaces, partitioned by packet-drop rules (root only).

With ``--netns`` the chaos runner puts each region's node in a namespace of
its own, joined by veth pairs to a bridge in the host namespace; the host
holds the bridge's ``.254`` address, so the runner's clients reach every
region directly. No proxy stands on the links: partitions lose real packets.

The drop rules are policy-routing rules, since the machines this runs on may
have neither iptables nor nft (and their kernels may lack tc's actions). Inside
a region's namespace the ``local`` table's rule is moved from preference 0 to
100, so that a rule ``from <peer address> blackhole`` at preference 10 is
consulted first: every packet arriving from that peer is dropped silently,
before the kernel would deliver it. Cutting a-b puts that rule in both
namespaces; a one-way cut (what the sender sends vanishes) only in the
receiver's. The rules live in namespaces the run created and only match the
addresses of its regions; the host's own routing is untouched but for the
bridge and its /24.

Everything is named after the runner's process id (``cc<pid>-...``) and torn
down on exit, also after a failure.

The deployment test (``tests/test_deploy_netns.py``) runs the shipped
configuration on the same network: each region's own command-line arguments
and environment (``server_args``, ``server_env``), region names that resolve
to the namespaces' addresses inside them (``host_names``: a hosts file in
``/etc/netns/<namespace>/``, which ``ip netns exec`` mounts over
``/etc/hosts``), and a host's whole link taken down and brought back
(``unplug``, ``plug``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from crdtstore.testing.process import ServerProcess

__all__ = ["NamespacedRegions", "netns_unavailable"]

PORT = 7420  # every namespace has its own ports, so every region can use the same one
_SUBNET_PREFIX = "10.213"
_DROP_PREFERENCE = 10
_LOCAL_PREFERENCE = 100
_IP_TIMEOUT_S = 10.0
_NETNS_ETC = Path("/etc/netns")


def netns_unavailable() -> str:
    """Why namespaces cannot be used here, or "" when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip(8) from iproute2 is not installed"
    # Root in a container may still lack CAP_NET_ADMIN: try.
    probe = f"cc{os.getpid() % 100000}-probe"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe, check=False)
    return ""


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _free_subnet(start: int) -> str:
    """A 10.213.X /24 that no address or route of the host uses yet."""
    used = _ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show")
    for step in range(250):
        candidate = f"{_SUBNET_PREFIX}.{(start + step) % 250 + 1}"
        if f"{candidate}." not in used:
            return candidate
    raise RuntimeError(f"no free {_SUBNET_PREFIX}.X.0/24 subnet for the namespaces")


class NamespacedRegions:
    """The chaos runner's ``Cluster`` over network namespaces: same names, ``servers``, cut, heal."""

    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        *,
        server_args: Mapping[str, Sequence[str]] | None = None,
        server_env: Mapping[str, Mapping[str, str]] | None = None,
        host_names: bool = False,
    ) -> None:
        """``server_args`` replace a region's default arguments (its peers and ``--insecure-no-auth``)."""
        reason = netns_unavailable()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(root)
        self.names = list(names)
        tag = f"cc{os.getpid() % 100000}"
        self.bridge = f"{tag}br"
        self.namespaces = {name: f"{tag}-{name}" for name in self.names}
        self._host_ends = {name: f"{tag}v{i}" for i, name in enumerate(self.names)}
        self._subnet = _free_subnet(os.getpid())
        self.addresses = {name: f"{self._subnet}.{i + 1}" for i, name in enumerate(self.names)}
        self.servers: dict[str, ServerProcess] = {}
        self._dropped: set[tuple[str, str]] = set()  # (sender, receiver): the receiver drops the sender's packets
        self._created: list[str] = []  # namespaces, for teardown
        self._server_args = server_args
        self._server_env = server_env or {}
        self._host_names = host_names
        self._etc_dirs: list[Path] = []  # /etc/netns/<namespace> made here, for teardown

    def __enter__(self) -> NamespacedRegions:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._build_network()
            for name in self.names:
                self.servers[name] = self._server(name)
            for name in self.names:
                self.servers[name].start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _build_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self._subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for name in self.names:
            ns, host_end = self.namespaces[name], self._host_ends[name]
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", host_end, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # Drop rules must come before the local table, or delivered packets never meet them.
            _ip("-n", ns, "rule", "add", "pref", str(_LOCAL_PREFERENCE), "lookup", "local")
            _ip("-n", ns, "rule", "del", "pref", "0", "lookup", "local")
            if self._host_names:
                self._write_hosts(ns)

    def _write_hosts(self, ns: str) -> None:
        """Every region's name resolves to its address inside ``ns`` (``ip netns exec`` mounts the file)."""
        if not _NETNS_ETC.exists():
            _NETNS_ETC.mkdir()
            self._etc_dirs.append(_NETNS_ETC)  # removed last, after the namespaces' own
        etc = _NETNS_ETC / ns
        # parents: another run (a test worker) may have removed an empty /etc/netns since the check above.
        etc.mkdir(parents=True, exist_ok=False)
        self._etc_dirs.append(etc)
        lines = ["127.0.0.1 localhost", *(f"{self.addresses[name]} {name}" for name in self.names)]
        (etc / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _server(self, name: str) -> ServerProcess:
        peers: list[str] = []
        for other in self.names:
            if other != name:
                peers += ["--peer", f"{other}={self.addresses[other]}:{PORT}"]
        # The namespaces' addresses are not loopback: a node refuses them without access control unless
        # told it is on purpose (the namespaces' bridge reaches nothing else).
        args = (*peers, "--insecure-no-auth") if self._server_args is None else tuple(self._server_args[name])
        server = ServerProcess(
            self.root / name,
            region=name,
            extra_args=args,
            env=self._server_env.get(name),
            host=self.addresses[name],
            command_prefix=("ip", "netns", "exec", self.namespaces[name]),
        )
        server.port = PORT
        return server

    # -- the network -------------------------------------------------------------------

    def _drop(self, sender: str, receiver: str) -> None:
        if (sender, receiver) in self._dropped:
            return
        ns = self.namespaces[receiver]
        _ip("-n", ns, "rule", "add", "pref", str(_DROP_PREFERENCE), "from", self.addresses[sender], "blackhole")
        self._dropped.add((sender, receiver))

    def _undrop(self, sender: str, receiver: str) -> None:
        if (sender, receiver) not in self._dropped:
            return
        ns = self.namespaces[receiver]
        _ip("-n", ns, "rule", "del", "pref", str(_DROP_PREFERENCE), "from", self.addresses[sender], "blackhole")
        self._dropped.discard((sender, receiver))

    def cut(self, a: str, b: str) -> None:
        self._drop(a, b)
        self._drop(b, a)

    def cut_one_way(self, sender: str, receiver: str) -> None:
        """What ``sender`` sends to ``receiver`` is lost; the other way still works."""
        self._drop(sender, receiver)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Heal the link a-b, or every link."""
        for sender, receiver in sorted(self._dropped):
            if a is None or b is None or {sender, receiver} == {a, b}:
                self._undrop(sender, receiver)

    def unplug(self, name: str) -> None:
        """Take ``name``'s host off the network: its link to the bridge goes down, for peers and the host alike."""
        _ip("link", "set", self._host_ends[name], "down")

    def plug(self, name: str) -> None:
        """Bring ``name``'s link back up."""
        _ip("link", "set", self._host_ends[name], "up")

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        for server in self.servers.values():
            try:
                if server.proc is not None and server.proc.poll() is None:
                    server.stop(timeout_s=15)
            except Exception:
                server.kill()
        for ns in self._created:
            _ip("netns", "del", ns, check=False)  # takes the veth pair with it
        self._created.clear()
        _ip("link", "del", self.bridge, check=False)
        for etc in reversed(self._etc_dirs):
            if etc == _NETNS_ETC:  # another run (a test worker) may have made its own namespaces' in it since
                with contextlib.suppress(OSError):
                    etc.rmdir()
            else:
                shutil.rmtree(etc, ignore_errors=True)
        self._etc_dirs.clear()

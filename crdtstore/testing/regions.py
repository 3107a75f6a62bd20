"""Several real ``crdtstore serve`` processes on loopback, peered in a mesh through cuttable proxies.

Each region runs as a ``ServerProcess`` on a port chosen up front (peers must
know each other's addresses before they start). Between every pair of regions
stands a ``LinkProxy`` on the address the dialling region (the one whose name
sorts first) uses, so a test can cut and heal any link while the processes
keep running, kill -9 and restart any region, and check convergence by
reading every region through the real client.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from crdtstore.client import Client, ClientTls, Entry
from crdtstore.testing.process import ServerProcess
from crdtstore.tools.proxy import DOWNSTREAM, UPSTREAM, CutMode, LinkProxy, ProxyThread

__all__ = ["RegionProcesses", "free_port", "snapshot"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the operating system's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def snapshot(client: Client) -> list[str]:
    """Everything a region shows, in a form that compares equal exactly when two regions agree."""
    return [_entry_text(entry) for entry in client.scan("", page_size=1000)]


def _entry_text(entry: Entry) -> str:
    value = entry.value
    shown: object
    if isinstance(value, bytes):
        shown = value.hex()
    elif isinstance(value, frozenset):
        shown = sorted(value)
    else:
        shown = value
    siblings = [(s.value.hex(), s.region) for s in entry.siblings]
    conflicts = [
        (c.type, sorted(c.value) if isinstance(c.value, frozenset) else repr(c.value)) for c in entry.conflicts
    ]
    return json.dumps([entry.key, entry.type, shown, siblings, conflicts], sort_keys=True)


class RegionProcesses:
    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        *,
        extra_args: tuple[str, ...] = (),
        start: Sequence[str] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
        client_tls: ClientTls | None = None,
        client_token: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.names = list(names)
        self.ports = {name: free_port() for name in self.names}
        self.proxies_thread = ProxyThread()
        self.links: dict[frozenset[str], LinkProxy] = {}
        self.servers: dict[str, ServerProcess] = {}
        self.clients: dict[str, Client] = {}
        self._extra_args = extra_args
        self._to_start = list(self.names if start is None else start)
        self._env = env or {}
        self._client_tls = client_tls
        self._client_token = client_token  # what the clients send, where the regions require tokens

    def __enter__(self) -> RegionProcesses:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proxies_thread.__enter__()
        try:
            for a, b in itertools.combinations(sorted(self.names), 2):
                self.links[frozenset((a, b))] = self.proxies_thread.start_proxy("127.0.0.1", self.ports[b])
            for name in self.names:
                self.servers[name] = self._server(name)
            for name in self._to_start:
                self._start_on_a_free_port(name)
        except BaseException:
            self.close()
            raise
        return self

    def _start_on_a_free_port(self, name: str, attempts: int = 3) -> None:
        """Start ``name``; if its port was taken since it was chosen (another process won the race), choose again.

        Only a region's own port moves; peers dial it through its proxy, which is retargeted.
        """
        for attempt in range(attempts):
            try:
                self.start(name)
                return
            except RuntimeError:
                if attempt == attempts - 1 or "in use" not in self.servers[name].log_path.read_text():
                    raise
            self.servers[name].kill()  # the process that could not listen: release what it held
            self.ports[name] = free_port()
            self.servers[name] = self._server(name)
            for pair, proxy in self.links.items():
                if name in pair and max(pair) == name:
                    proxy.target_port = self.ports[name]  # read afresh for each new connection

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _server(self, name: str) -> ServerProcess:
        peers: list[str] = []
        for other in self.names:
            if other == name:
                continue
            # The region whose name sorts first dials, through the pair's proxy;
            # the other side's address is never dialled and only names the peer.
            dials = name < other
            port = self.links[frozenset((name, other))].port if dials else self.ports[other]
            peers += ["--peer", f"{other}=127.0.0.1:{port}"]
        server = ServerProcess(
            self.root / name, region=name, extra_args=(*peers, *self._extra_args), env=self._env.get(name)
        )
        server.port = self.ports[name]
        return server

    # -- processes -------------------------------------------------------------------

    def start(self, name: str) -> None:
        self.servers[name].start()
        self.clients[name] = Client(
            self.servers[name].addr, timeout_s=10, tls=self._client_tls, token=self._client_token
        )

    def kill(self, name: str) -> None:
        self.servers[name].kill()

    def restart(self, name: str) -> None:
        self.servers[name].restart()

    def stop(self, name: str) -> int:
        return self.servers[name].stop()

    def pause(self, name: str) -> None:
        self.servers[name].pause()

    def resume(self, name: str) -> None:
        self.servers[name].resume()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        for server in self.servers.values():
            try:
                if server.proc is not None and server.proc.poll() is None:
                    server.stop(timeout_s=15)
            except Exception:
                server.kill()
        self.proxies_thread.close()

    # -- the network -------------------------------------------------------------------

    def cut(self, a: str, b: str, mode: CutMode = "blackhole") -> None:
        self.proxies_thread.cut(self.links[frozenset((a, b))], mode)

    def cut_one_way(self, sender: str, receiver: str) -> None:
        """What ``sender`` sends to ``receiver`` vanishes; what ``receiver`` sends still arrives."""
        # The region whose name sorts first dials, so its bytes flow upstream through the pair's proxy.
        direction = UPSTREAM if sender < receiver else DOWNSTREAM
        self.proxies_thread.cut(self.links[frozenset((sender, receiver))], "blackhole", direction=direction)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Heal the link a-b, or every link."""
        if a is not None and b is not None:
            self.proxies_thread.heal(self.links[frozenset((a, b))])
            return
        for link in self.links.values():
            self.proxies_thread.heal(link)

    def isolate(self, name: str, mode: CutMode = "blackhole") -> None:
        for other in self.names:
            if other != name:
                self.cut(name, other, mode)

    # -- checks -----------------------------------------------------------------------

    def snapshots(self, names: Sequence[str] | None = None) -> dict[str, list[str]]:
        return {name: snapshot(self.clients[name]) for name in (names or self.names)}

    def wait_converged(self, timeout_s: float = 60.0, names: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Poll until every region (of ``names``) shows the same data and the same vector; returns the snapshots.

        Raises ``AssertionError`` with the differing regions if they do not agree in time.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            views = self.snapshots(names)
            tokens = {name: self.clients[name].status()["token"] for name in views}
            if len(set(map(json.dumps, views.values()))) == 1 and len(set(tokens.values())) == 1:
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"regions did not converge in {timeout_s} s: {_difference(views)}")
            time.sleep(0.1)

    def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Poll until every running region reports every running peer connected."""
        deadline = time.monotonic() + timeout_s
        running = set(self.clients)
        while True:
            missing = [
                f"{name}-{peer['region']}"
                for name in sorted(running)
                for peer in self.clients[name].status()["peers"]
                if peer["region"] in running and not peer["connected"]
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"links still down after {timeout_s} s: {missing}")
            time.sleep(0.05)


def _difference(views: dict[str, list[str]]) -> str:
    first_name, first = next(iter(views.items()))
    parts = []
    for name, view in views.items():
        missing = sorted(set(first) - set(view))[:3]
        extra = sorted(set(view) - set(first))[:3]
        if missing or extra:
            parts.append(f"{name} vs {first_name}: lacks {missing}, has {extra}")
    return "; ".join(parts) or "same data, different vectors"

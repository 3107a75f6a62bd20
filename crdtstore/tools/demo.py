"""``crdtstore demo``: a local multi-region cluster in one command.

Starts ``--regions`` real ``crdtstore serve`` processes on loopback, each with
its own data directory (under a temporary folder that is removed afterwards,
or under ``--data-dir``, which is kept), peered in a full mesh. Region *i*
listens on ``--base-port + i``, so the first region is on the address the
``crdtstore`` command talks to by default. With ``--latency-ms N`` every
inter-region link goes through an in-process proxy that delays each
direction by N ms, so replication lag looks like it does between real regions.

Each region serves Prometheus metrics on loopback, region *i* at
``http://HOST:(--metrics-base-port + i)/metrics``; by default the ports right
after the regions' own (7423, 7424, 7425 for three regions from 7420; see
docs/observability.md).

With ``--auth`` the regions require tokens: the demo makes a signing key
pair (under the data directory, in ``auth/``), a token the regions present to
each other, and prints an admin token to use with ``--token`` (or
``CRDTSTORE_TOKEN``).

It runs until Ctrl-C (or SIGTERM), then stops every region cleanly. If a
region dies on its own, the demo says so and stops the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from crdtstore.node.config import ConfigError, parse_listen
from crdtstore.node.logs import log_tail
from crdtstore.tools.proxy import LinkProxy

__all__ = ["REGION_NAMES", "add_demo_arguments", "demo_from_args", "region_names"]

REGION_NAMES = ("eu-west", "us-east", "ap-south", "sa-east", "eu-north", "us-west", "ap-east")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


def region_names(count: int) -> list[str]:
    if count <= len(REGION_NAMES):
        return list(REGION_NAMES[:count])
    return [f"region-{i + 1}" for i in range(count)]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", type=int, default=3, metavar="N", help="how many regions (default 3, 1-16)")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="keep each region's data in DIR/REGION (default: a temporary folder)"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="one-way delay on every inter-region link"
    )
    parser.add_argument(
        "--base-port", type=int, default=7420, metavar="PORT", help="region i listens on PORT+i (default 7420)"
    )
    parser.add_argument(
        "--metrics-base-port",
        type=int,
        metavar="PORT",
        help="region i serves Prometheus metrics at http://HOST:PORT+i/metrics (default: the ports right after "
        "the regions', --base-port + N)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="require tokens: make a signing key, and print an admin token to use with --token",
    )


def demo_from_args(args: argparse.Namespace) -> int:
    """Exit codes: 0 after Ctrl-C and a clean stop, 1 when a region fails, 2 for bad arguments."""
    # A region that is still starting refuses the proxies' first connections;
    # replication retries, so that is not worth a line on the terminal.
    logging.getLogger("crdtstore.tools.proxy").setLevel(logging.ERROR)
    problem = _check_arguments(args)
    if problem:
        print(f"crdtstore demo: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


def _check_arguments(args: argparse.Namespace) -> str | None:
    if not 1 <= args.regions <= 16:
        return f"--regions must be from 1 to 16, not {args.regions}"
    if args.latency_ms < 0:
        return f"--latency-ms must not be negative, not {args.latency_ms}"
    if not 1 <= args.base_port <= 65535 - 2 * args.regions:
        return f"--base-port {args.base_port} leaves no room for {args.regions} ports"
    if args.metrics_base_port is None:
        args.metrics_base_port = args.base_port + args.regions
    if not 1 <= args.metrics_base_port <= 65535 - args.regions:
        return f"--metrics-base-port {args.metrics_base_port} leaves no room for {args.regions} ports"
    serving = set(range(args.base_port, args.base_port + args.regions))
    if serving & set(range(args.metrics_base_port, args.metrics_base_port + args.regions)):
        return "--metrics-base-port and --base-port give overlapping ports; choose ports further apart"
    try:
        parse_listen(f"{args.host}:{args.base_port}")
    except ConfigError as exc:
        return str(exc)
    for i in range(args.regions):
        for port in (args.base_port + i, args.metrics_base_port + i):
            problem = _probe(args.host, port)
            if problem:
                return problem
    return None


def _probe(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None."""
    with socket.socket() as probe:
        # As the servers themselves bind: a port a stopped demo left in TIME_WAIT is free to listen on
        # (found by a newcomer: a demo run again within a minute refused every port).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot use {host}:{port}: {exc.strerror}; choose another --base-port or --metrics-base-port"
    return None


class _Region:
    def __init__(self, name: str, port: int, data_dir: Path, metrics_port: int) -> None:
        self.name = name
        self.port = port
        self.metrics_port = metrics_port
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"


async def _run(args: argparse.Namespace) -> int:
    names = region_names(args.regions)
    temporary = args.data_dir is None
    root = Path(tempfile.mkdtemp(prefix="crdtstore-demo-")) if temporary else Path(args.data_dir)
    regions = [
        _Region(name, args.base_port + i, root / name, args.metrics_base_port + i) for i, name in enumerate(names)
    ]
    proxies: list[LinkProxy] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # The region whose name sorts first dials each pair; only its peer
        # address carries traffic, so one proxy per pair is enough.
        peer_addr: dict[tuple[str, str], str] = {}
        for a, b in itertools.combinations(regions, 2):
            for src, dst in ((a, b), (b, a)):
                peer_addr[(src.name, dst.name)] = f"{args.host}:{dst.port}"
            if args.latency_ms > 0:
                dialer, target = (a, b) if a.name < b.name else (b, a)
                proxy = LinkProxy(
                    args.host, target.port, delay_ms=args.latency_ms, name=f"{dialer.name}->{target.name}"
                )
                await proxy.start()
                proxies.append(proxy)
                peer_addr[(dialer.name, target.name)] = f"127.0.0.1:{proxy.port}"
        configs, admin_token = _auth_setup(root / "auth", [r.name for r in regions]) if args.auth else ({}, None)
        for region in regions:
            peers = [f"{other.name}={peer_addr[(region.name, other.name)]}" for other in regions if other is not region]
            await _start(region, args.host, peers, configs.get(region.name))
        _announce(regions, args, root, temporary, admin_token)
        waits = [asyncio.ensure_future(r.proc.wait()) for r in regions if r.proc is not None]
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopping, *waits}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for w in waits:
            w.cancel()
        failed = [r for r in regions if r.proc is not None and r.proc.returncode is not None]
        for region in failed:
            print(
                f"crdtstore demo: region {region.name} exited with {region.proc.returncode if region.proc else '?'}; "
                f"the end of its log ({region.log_path}{', removed at exit' if temporary else ''}):\n"
                f"{log_tail(region.log_path, 20)}",
                file=sys.stderr,
            )
        print("crdtstore demo: stopping every region", file=sys.stderr)
        return 1 if failed else 0
    except _StartError as exc:
        print(f"crdtstore demo: {exc}", file=sys.stderr)
        return 1
    finally:
        await _stop_all(regions)
        for proxy in proxies:
            await proxy.close()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


class _StartError(Exception):
    pass


# How long the demo's tokens last: longer than anyone keeps a demo running.
_DEMO_TOKEN_TTL_S = 7 * 24 * 3600


def _auth_setup(directory: Path, regions: list[str]) -> tuple[dict[str, Path], str]:
    """A signing key (kept if the directory has one) and each region's configuration; returns them and an admin
    token."""
    from crdtstore.auth.tokens import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, issue_token, keygen  # noqa: PLC0415

    if not (directory / PRIVATE_KEY_FILE).exists():
        keygen(directory)
    signing_key = directory / PRIVATE_KEY_FILE
    configs: dict[str, Path] = {}
    for region in regions:
        # What the region presents to the others: a peer token names its region as subject. The demo gives it the
        # built-in admin role, which every region knows from its first start; a deployment gives its peers a role
        # holding only replicate (docs/auth.md).
        peer_token = directory / f"peer-{region}.token"
        peer_token.write_text(issue_token(signing_key, region, ["admin"], ttl_s=_DEMO_TOKEN_TTL_S), encoding="utf-8")
        peer_token.chmod(0o600)
        configs[region] = config = directory / f"node-{region}.toml"
        config.write_text(
            f'[auth]\ntoken_public_keys = ["{directory / PUBLIC_KEY_FILE}"]\npeer_token_file = "{peer_token}"\n',
            encoding="utf-8",
        )
    return configs, issue_token(signing_key, "demo-admin", ["admin"], ttl_s=_DEMO_TOKEN_TTL_S)


async def _start(region: _Region, host: str, peers: list[str], config: Path | None = None) -> None:
    cmd = [
        sys.executable,
        "-m",
        "crdtstore",
        "serve",
        "--region",
        region.name,
        "--data-dir",
        str(region.data_dir),
        "--listen",
        f"{host}:{region.port}",
        "--metrics-listen",
        f"{host}:{region.metrics_port}",
        *itertools.chain.from_iterable(("--peer", p) for p in peers),
        *(("--config", str(config)) if config is not None else ()),
    ]
    with region.log_path.open("ab") as log:
        region.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the regions in order
        )
    assert region.proc.stdout is not None
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while True:
                line = await region.proc.stdout.readline()
                if not line:
                    code = await region.proc.wait()
                    raise _StartError(f"region {region.name} exited with {code} at start; see {region.log_path}")
                if b"listening on" in line:
                    return
    except TimeoutError:
        raise _StartError(f"region {region.name} did not start within {_START_TIMEOUT_S:.0f} s") from None


def _announce(
    regions: list[_Region], args: argparse.Namespace, root: Path, temporary: bool, admin_token: str | None
) -> None:
    where = f"{root} (removed at exit)" if temporary else str(root)
    latency = f", {args.latency_ms:g} ms one-way delay on every link" if args.latency_ms > 0 else ""
    print(f"crdtstore demo: {len(regions)} regions in a mesh{latency}; data and logs in {where}")
    for region in regions:
        print(f"  {region.name:<10} {args.host}:{region.port}")
    print("Prometheus metrics:")
    for region in regions:
        print(f"  {region.name:<10} http://{args.host}:{region.metrics_port}/metrics")
    first, last = regions[0], regions[-1]
    if admin_token is not None:
        print(f"access control is on; the signing key is {root / 'auth' / 'signing.pem'}")
        print(f"admin token: {admin_token}")
        print(f"  export CRDTSTORE_TOKEN={admin_token}")
    print("try:")
    print(f"  crdtstore --addr {args.host}:{first.port} set greeting hello")
    print(f"  crdtstore --addr {args.host}:{last.port} get greeting")
    print(f"  crdtstore --addr {args.host}:{first.port} status")
    print("Ctrl-C stops every region.", flush=True)


async def _stop_all(regions: list[_Region]) -> None:
    running = [r for r in regions if r.proc is not None and r.proc.returncode is None]
    for region in running:
        assert region.proc is not None
        with contextlib.suppress(ProcessLookupError):
            region.proc.send_signal(signal.SIGTERM)
    for region in running:
        assert region.proc is not None
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await region.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                region.proc.kill()
            await region.proc.wait()
    for region in regions:
        if region.proc is not None and region.proc.stdout is not None:
            region.proc.stdout.feed_eof()

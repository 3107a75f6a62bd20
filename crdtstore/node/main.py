"""``crdtstore serve``: open the store, serve gRPC, drain cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from crdtstore.crdt import HybridLogicalClock
from crdtstore.node.access import AccessControl
from crdtstore.node.audit import StreamRefusals
from crdtstore.node.audit_retention import AuditRetention
from crdtstore.node.config import ConfigError, NodeConfig, is_loopback, parse_listen
from crdtstore.node.feed import FeedRetention
from crdtstore.node.logs import configure_logging
from crdtstore.node.metrics import MetricsServer, NodeMetrics
from crdtstore.node.replication import Replicator
from crdtstore.node.service import NodeState, add_services
from crdtstore.node.telemetry import start_metrics
from crdtstore.node.tracing import start_tracing, stop_tracing
from crdtstore.node.writer import GroupCommitWriter
from crdtstore.storage import LmdbStore, StorageConfig, StorageError, WriteRequest
from crdtstore.storage.audit import RequestInfo

__all__ = ["add_serve_arguments", "run_node", "serve_from_args"]

log = logging.getLogger("crdtstore.node")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="a TOML configuration file (or CRDTSTORE_CONFIG)")
    parser.add_argument("--data-dir", metavar="DIR", help="where the store lives (default ./crdtstore-data)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:7420)")
    parser.add_argument("--region", metavar="NAME", help="this node's region name (default 'local')")
    parser.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1 alone, in plaintext, here: for probes that cannot speak TLS (or "
        "CRDTSTORE_HEALTH_LISTEN; default: none)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (or metrics_listen, CRDTSTORE_METRICS_LISTEN; "
        "off by default)",
    )
    parser.add_argument(
        "--peer",
        metavar="NAME=HOST:PORT",
        action="append",
        default=[],
        help="another region to replicate with; repeat for each (replaces [peers] of the config file)",
    )
    parser.add_argument(
        "--rejoin",
        action="store_true",
        help="the data directory was restored from a backup or may otherwise be older than this region's newest "
        "events: mint under a new incarnation, so no event id is used twice (a new or emptied directory takes "
        "one by itself; always use this after a restore)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback --listen address without access control ([auth]), on purpose: anyone who "
        "reaches the port can read and change every key",
    )


# For chaos tests only: shift this node's physical clock, as a bad NTP source would.
CLOCK_OFFSET_ENV = "CRDTSTORE_CHAOS_CLOCK_OFFSET_MS"


def _clock_offset_ms() -> int:
    raw = os.environ.get(CLOCK_OFFSET_ENV, "0")
    try:
        offset = int(raw)
    except ValueError:
        raise StartupError(f"{CLOCK_OFFSET_ENV}={raw!r} is not a whole number of milliseconds") from None
    if offset:
        log.warning("this node's clock is shifted by %d ms (%s): for chaos tests only", offset, CLOCK_OFFSET_ENV)
    return offset


def _server_credentials(config: NodeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials when TLS is configured; None for plaintext."""
    if not config.tls.enabled:
        return None
    cert, key, ca = config.tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=config.tls.require_client_cert
    )


@contextlib.contextmanager
def _stderr_held() -> Iterator[list[bytes]]:
    """Hold what is written to file descriptor 2 meanwhile; the list receives it at the end.

    gRPC's C core logs a failed bind straight to descriptor 2 (not through
    Python's logging) before the call returns, and its line, with advice about
    GRPC_VERBOSITY, would come before the node's own message. Holding the
    descriptor for the one call keeps every other C-core log as it is.
    """
    held: list[bytes] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield held
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                held.append(sink.read())
    finally:
        os.close(saved)


_BIND_FAILED = "Failed to add port to server: "


def _bind_failure(core_log: bytes) -> str:
    """The reason the C core logged for a failed bind, or ''."""
    for line in reversed(core_log.decode("utf-8", errors="replace").splitlines()):
        _, found, reason = line.partition(_BIND_FAILED)
        if found:
            return reason.strip()
    return ""


def _listen(server: grpc.aio.Server, config: NodeConfig) -> int:
    """Bind the configured address; ``StartupError`` with one clear line when it cannot be bound."""
    return _bind(server, config.listen, _server_credentials(config))


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    with _stderr_held() as held:
        try:
            if credentials is None:
                bound = server.add_insecure_port(listen)
            else:
                bound = server.add_secure_port(listen, credentials)
        except RuntimeError:  # grpc's own words say only "Failed to bind"; the core's log says why
            bound = 0
    core_log = b"".join(held)
    _, port = parse_listen(listen)
    if bound and (not port or bound == port):
        if core_log:  # the bind worked: whatever the core said meanwhile belongs on stderr
            os.write(2, core_log)
        return bound
    reason = _bind_failure(core_log)
    if "in use" in reason.lower():
        raise StartupError(f"cannot listen on {listen}: the address is already in use (is a node running there?)")
    detail = f" ({reason})" if reason else ""
    raise StartupError(f"cannot listen on {listen}: is the port in use or the address wrong?{detail}")


async def _serve_metrics(node: NodeState, server: grpc.aio.Server) -> MetricsServer | None:
    """Start ``/metrics`` when metrics are on; ``StartupError`` (the node's port and store closed) if it cannot."""
    if node.metrics is None:
        return None
    try:
        return start_metrics(node, node.metrics)
    except OSError as exc:
        await server.stop(grace=None)
        node.store.close()
        listen = node.config.metrics_listen
        raise StartupError(f"cannot serve metrics on {listen}: {exc.strerror or exc} (is the port in use?)") from None


def _metrics_note(config: NodeConfig, server: MetricsServer | None) -> str:
    """Where ``/metrics`` is served, for the ready line ("" when metrics are off)."""
    if server is None:
        return ""
    host, _ = parse_listen(config.metrics_listen)
    return f", metrics on http://{host}:{server.port}/metrics"


class StartupError(Exception):
    """The node could not start for a reason outside its configuration (a port in use, say)."""


def serve_from_args(args: argparse.Namespace) -> int:
    """Exit codes: 0 after a clean shutdown, 1 when the node cannot run, 2 for a bad configuration."""
    log_fields = configure_logging()  # JSON lines unless stderr is a terminal (crdtstore.node.logs)
    try:
        config = NodeConfig.load(
            config_file=args.config,
            flags={
                "data_dir": args.data_dir,
                "listen": args.listen,
                "region": args.region,
                "health_listen": args.health_listen,
                "metrics_listen": args.metrics_listen,
            },
            peer_flags=args.peer,
            rejoin=args.rejoin,
            insecure_no_auth=args.insecure_no_auth,
        )
    except ConfigError as exc:
        print(f"crdtstore serve: {exc}", file=sys.stderr)
        return 2
    log_fields.region = config.region
    # `kill -USR1 PID` writes every thread's stack to stderr (the log), even when the event loop is stuck.
    with contextlib.suppress(AttributeError, ValueError, RuntimeError):  # no SIGUSR1 (Windows), not main thread
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return asyncio.run(run_node(config))
    except ConfigError as exc:  # found only when the node starts: a key file that does not load
        print(f"crdtstore serve: {exc}", file=sys.stderr)
        return 2
    except (StartupError, StorageError) as exc:
        print(f"crdtstore serve: {exc}", file=sys.stderr)
        return 1


def _access_control(config: NodeConfig, store: LmdbStore) -> AccessControl:
    """The node's access control; its public keys load here (``ConfigError`` naming a file that does not)."""
    try:
        return AccessControl(config.auth, store)
    except ConfigError:
        store.close()
        raise


def _log_access(config: NodeConfig, access: AccessControl, host: str) -> None:
    if access.enabled:
        keys, algorithms = len(config.auth.token_public_keys), ", ".join(config.auth.algorithms)
        log.info("access control on: %d token key(s), algorithms %s", keys, algorithms)
        if not config.tls.enabled:
            remote = [a for a in [host, *(parse_listen(p)[0] for p in config.peers.values())] if not is_loopback(a)]
            if remote:
                log.warning(
                    "access control is on without TLS, and %s is not a loopback address: tokens, the peers' "
                    "included, cross the network in clear text for anyone on the path to read and replay; "
                    "configure [tls] (docs/auth.md)",
                    remote[0],
                )
    elif config.insecure_no_auth and not is_loopback(host):
        log.warning("access control is OFF on %s (--insecure-no-auth): anyone who reaches it may do anything", host)


def _health_port(config: NodeConfig, servicer: health.aio.HealthServicer) -> grpc.aio.Server | None:
    """A server bound to ``health_listen`` with the node's health service alone, in plaintext, or None.

    Probes that cannot speak TLS (Kubernetes' gRPC probe) ask the same health
    service there, which says SERVING, or NOT_SERVING while the node drains;
    no other service is reachable on it.
    """
    if not config.health_listen:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    _bind(server, config.health_listen, None)
    log.info("health service (grpc.health.v1 only, plaintext) on %s", config.health_listen)
    return server


async def run_node(  # noqa: PLR0915 (the node's whole start and stop, in order)
    config: NodeConfig, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain and close."""
    storage = StorageConfig(
        path=config.data_dir, region=config.region, options=config.storage, new_incarnation=config.rejoin
    )
    offset_ms = _clock_offset_ms()
    traced = start_tracing(config.region)  # only with OTEL_EXPORTER_OTLP_ENDPOINT set and the otel extra installed
    metrics = NodeMetrics() if config.metrics_listen else None  # None: metrics off, every hook skipped
    store = LmdbStore(storage)
    access = _access_control(config, store)

    def wall_ms() -> int:
        return time.time_ns() // 1_000_000 + offset_ms

    clock = HybridLogicalClock(wall_ms, max_offset_ms=config.server.max_clock_offset_ms, floor=store.hlc_mark)
    writer = GroupCommitWriter(
        store,
        clock,
        batch_requests_max=config.server.batch_requests_max,
        pending_requests_max=config.server.pending_requests_max,
        metrics=metrics,
    )
    replicator = Replicator(config, store, writer, clock, wall_ms=wall_ms, metrics=metrics)
    writer.on_commit = replicator.local_committed
    replicator.access = access
    node = NodeState(config, store, writer, replicator, access, metrics=metrics)
    if store.audit_enabled:
        replicator.stream_refusals = StreamRefusals(node.refusals)
    message_max = config.message_bytes_max
    server = grpc.aio.server(
        options=[
            *replicator.server_options(),
            ("grpc.max_receive_message_length", message_max),
            # A page stops after passing scan_page_bytes_max, so it may carry one key more.
            (
                "grpc.max_send_message_length",
                message_max + config.server.scan_page_bytes_max + config.storage.key_state_bytes_max,
            ),
            ("grpc.so_reuseport", 0),
        ]
    )
    services = add_services(server, node)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    # Before the port opens: a SIGTERM that arrives as soon as a client can connect drains
    # the node like any other, instead of killing it with the signal's default action.
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _stop_signal(stop))
    host, _ = parse_listen(config.listen)
    try:
        bound = _listen(server, config)
        health_server = _health_port(config, health_servicer)
    except StartupError:
        store.close()
        raise

    metrics_server = await _serve_metrics(node, server)

    writer.start()
    if gap := store.audit_unrecorded_from():
        # Auditing is back on after events were minted without records: one record says so, and the
        # chain goes on from it (before any request: the next record must follow this one).
        await writer.submit(WriteRequest((), info=RequestInfo(method="start", resume_chain=True)))
        if store.audit_unrecorded_from():
            log.error(
                "auditing is on again, but the record covering the events minted while it was off (from %d) could "
                "not be written: crdtstore audit verify will report the gap",
                gap,
            )
        else:
            log.warning("auditing is on again: the events minted while it was off (from %d) have one record", gap)
    await server.start()
    if health_server is not None:
        await health_server.start()
    replicator.start()
    retention = FeedRetention(node).start()
    audit_retention = node.audit_retention = AuditRetention(node).start()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    security = "mutual TLS" if config.tls.require_client_cert else "TLS" if config.tls.enabled else "plaintext"
    log.info(
        "region %s serving (%s) on %s:%d, data in %s, minting under %s",
        config.region,
        security,
        host,
        bound,
        config.data_dir,
        store.origin,
    )
    _log_access(config, access, host)
    for name, address in sorted(config.peers.items()):
        log.info("peer %s at %s", name, address)
    # The line the demo and the test harness wait for (stdout, not a log line): the addresses bound.
    print(
        f"crdtstore: region {config.region} listening on {host}:{bound}{_metrics_note(config, metrics_server)}",
        flush=True,
    )

    if ready is not None:
        ready.set()
    await stop.wait()

    log.info("draining: refusing new requests, finishing the ones in flight")
    node.drain()
    with _ShutdownWatch(config.server.drain_grace_s + _SHUTDOWN_SLACK_S) as watch:
        await health_servicer.enter_graceful_shutdown()
        watch.step("ending replication streams")
        await replicator.close()  # replication streams are long-lived: end them, not wait for them
        watch.step(f"stopping the server (grace {config.server.drain_grace_s:g} s)")
        await server.stop(grace=config.server.drain_grace_s)
        if health_server is not None:
            await health_server.stop(grace=None)
        watch.step("stopping retention")
        await retention.close()
        await audit_retention.close()
        watch.step("committing the writer's queue")
        await writer.close()
        if metrics_server is not None:  # before the store closes: a scrape reads it
            metrics_server.close()
        watch.step("closing the store (once the reads under way have finished)")
        await asyncio.to_thread(store.close)
    if traced is not None:
        stop_tracing()  # flushes the spans not yet exported
    log.info("stopped cleanly")
    return 0


_SHUTDOWN_SLACK_S = 10.0


def _stop_signal(stop: asyncio.Event) -> Callable[[], None]:
    """The first SIGTERM or SIGINT drains the node; a second one ends it at once (Ctrl-C twice).

    Exiting without the drain is as safe as a kill -9: every acknowledged
    write is on disk; requests in flight get no answer and are retried.
    """
    signals = 0

    def received() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
            return
        log.error("a second stop signal: exiting now, without finishing the drain; every thread's stack follows")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    return received


class _ShutdownWatch:
    """Names each step of a drain in the log, and what is stuck when a drain overruns.

    A drain should end within the server's grace period and a few seconds; past
    ``limit_s`` the step it is in and every pending task's stack go to the log at
    error level (once), and every thread's stack to stderr, so a node that does
    not stop says why before a supervisor kills it.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.current = "starting"
        self.started = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> _ShutdownWatch:
        self._timer = asyncio.get_running_loop().call_later(self.limit_s, self._overran)
        # Every thread's stack too, from faulthandler's own thread: it fires even
        # when the event loop itself is blocked.
        faulthandler.dump_traceback_later(self.limit_s + 1.0, exit=False, file=sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        faulthandler.cancel_dump_traceback_later()
        if self._timer is not None:
            self._timer.cancel()

    def step(self, what: str) -> None:
        self.current = what
        log.info("draining: %s (%.2f s in)", what, time.monotonic() - self.started)

    def _overran(self) -> None:
        stacks = []
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=8)
            where = " <- ".join(
                f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in frames
            )
            stacks.append(f"  {task.get_name()}: {where or 'no frames'}")
        log.error(
            "draining has taken %.0f s, stuck at: %s; pending tasks:\n%s",
            time.monotonic() - self.started,
            self.current,
            "\n".join(stacks),
        )

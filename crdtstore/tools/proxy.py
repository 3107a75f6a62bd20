"""A TCP link proxy that can delay, partition and heal the link it stands on.

Regions talk to each other over TCP. To test what happens when the link between
two regions is slow or broken, a ``LinkProxy`` is put between them: the caller
connects to the proxy's port instead of the peer's, and the proxy forwards
bytes both ways. It is used

* by tests, to partition regions (``cut``) and heal them (``heal``) while the
  nodes keep running, and
* by ``crdtstore demo --latency-ms N``, so that loopback links between local
  nodes behave like links between distant regions (``delay_ms``).

Each accepted connection gets its own connection to the target. Each direction
of a connection is a timestamped queue: a chunk read at time ``t`` is written at
``t + delay`` (a one-way delay, not a serialised one: chunks read 1 ms apart are
delivered 1 ms apart), in order. At most ``buffer_bytes_max`` bytes wait in one
direction's queue; while it is full the proxy stops reading, so TCP flow control
pushes back on the sender.

Faults (``cut(mode)``):

* ``"drop"``: open connections are closed (peers normally see end of stream)
  and new connections are accepted and closed at once;
* ``"reset"``: the same, but connections are aborted with a TCP reset (peers see
  ``ECONNRESET``);
* ``"blackhole"``: connections stay open but every byte, both ways, silently
  vanishes, as in a partition where packets are lost; new connections are
  accepted and black-holed (they never reach the target).

``cut("blackhole", direction=UPSTREAM)`` (or ``DOWNSTREAM``) is a one-way
partition: only bytes flowing that way vanish, the other way keeps forwarding,
and new connections still reach the target. ``UPSTREAM`` is from the side that
connects to the proxy towards the target.

``heal()`` makes new connections forward again and closes the black-holed ones,
so their peers notice and reconnect.

A ``LinkProxy`` belongs to the event loop it was started on. Synchronous tests
use ``ProxyThread``, which runs the proxies on a loop in a daemon thread::

    with ProxyThread() as proxies:
        link = proxies.start_proxy("127.0.0.1", node_port, delay_ms=40)
        ...  # point the peer at ("127.0.0.1", link.port)
        proxies.cut(link, "blackhole")
        ...
        proxies.heal(link)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

__all__ = ["DOWNSTREAM", "UPSTREAM", "CutMode", "LinkProxy", "ProxyThread"]

log = logging.getLogger("crdtstore.tools.proxy")

CutMode = Literal["drop", "reset", "blackhole"]
_CUT_MODES: frozenset[str] = frozenset({"drop", "reset", "blackhole"})

# How a connection's sockets are closed: "close" flushes what is buffered and
# sends FIN, "drop" discards the buffer and closes, "reset" sends RST.
_CloseMode = Literal["close", "drop", "reset"]

_READ_CHUNK = 64 * 1024
_DEFAULT_BUFFER_BYTES_MAX = 4 * 1024 * 1024
# struct linger {l_onoff = 1, l_linger = 0}: close() sends RST instead of FIN.
_LINGER_RESET = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
# Closing connections only waits this long for the operating system to confirm.
_CLOSE_WAIT_S = 5.0

# Keys of LinkProxy.bytes_forwarded, and the directions a one-way cut takes.
UPSTREAM = "client_to_target"
DOWNSTREAM = "target_to_client"
_BOTH_WAYS: frozenset[str] = frozenset({UPSTREAM, DOWNSTREAM})

_T = TypeVar("_T")


def _close_writer(writer: asyncio.StreamWriter, mode: _CloseMode) -> None:
    """Close one side of a connection; safe to call again, and a later call may escalate."""
    transport = writer.transport
    if mode == "close":
        writer.close()
        return
    if mode == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing left to reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


async def _wait_writer_closed(writer: asyncio.StreamWriter) -> None:
    # wait_closed re-raises the error the connection died with; it is already logged.
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class _Pipe:
    """One direction of a proxied connection.

    ``pump_in`` reads from the source into a queue of ``(deliver_at, chunk)``;
    ``pump_out`` writes each chunk to the sink once its time has come. An empty
    chunk marks end of stream and is passed on as a half-close.
    """

    def __init__(
        self,
        proxy: LinkProxy,
        conn: _Connection,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        self._proxy = proxy
        self._conn = conn
        self._source = source
        self._sink = sink
        self._direction = direction
        self._queue: deque[tuple[float, bytes]] = deque()
        # Bytes read and not yet written, including the chunk pump_out is writing.
        self._queued_bytes = 0
        self._data_ready = asyncio.Event()
        self._room_ready = asyncio.Event()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _room(self) -> int:
        return self._proxy.buffer_bytes_max - self._queued_bytes

    @property
    def direction(self) -> str:
        return self._direction

    def discard(self) -> None:
        """Forget every queued chunk (the link was black-holed: they are lost in flight)."""
        while self._queue:
            _, chunk = self._queue.popleft()
            self._queued_bytes -= len(chunk)
            self._proxy.bytes_discarded += len(chunk)
        self._room_ready.set()

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._room() <= 0:
                self._room_ready.clear()
                await self._room_ready.wait()
            chunk = await self._source.read(min(_READ_CHUNK, self._room()))
            if self._direction in self._conn.lost:
                if not chunk:
                    return
                self._proxy.bytes_discarded += len(chunk)
                continue
            self._queue.append((loop.time() + self._proxy.delay_ms / 1000.0, chunk))
            self._queued_bytes += len(chunk)
            self._data_ready.set()
            if not chunk:
                return

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._data_ready.clear()
                await self._data_ready.wait()
            deliver_at, chunk = self._queue[0]
            if deliver_at > loop.time():
                # Left in the queue while it waits, so that discard() can drop it.
                await asyncio.sleep(deliver_at - loop.time())
                continue
            self._queue.popleft()
            try:
                if not chunk:
                    if self._sink.can_write_eof():
                        self._sink.write_eof()
                    return
                self._sink.write(chunk)
                self._proxy.bytes_forwarded[self._direction] += len(chunk)
                await self._sink.drain()
            finally:
                self._queued_bytes -= len(chunk)
                self._room_ready.set()


class _Connection:
    """A client connection accepted by the proxy and, unless refused or black-holed, its target connection."""

    def __init__(
        self,
        proxy: LinkProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        refuse: _CloseMode | None,
        lost: frozenset[str],
    ) -> None:
        self._proxy = proxy
        self._client_reader = reader
        self._client_writer = writer
        self._target_writer: asyncio.StreamWriter | None = None
        self._pipes: list[_Pipe] = []
        self._refuse = refuse
        self._close_mode: _CloseMode = refuse or "close"
        # The directions whose bytes vanish: both for a black-holed connection, one for a one-way cut.
        self.lost: frozenset[str] = lost
        self.shutting_down = False
        self.task: asyncio.Task[None] | None = None
        peer = writer.get_extra_info("peername")
        self.label = f"{proxy.name or 'proxy'} {peer}"

    def _writers(self) -> list[asyncio.StreamWriter]:
        writers = [self._client_writer]
        if self._target_writer is not None:
            writers.append(self._target_writer)
        return writers

    @property
    def queued_bytes(self) -> int:
        return sum(pipe.queued_bytes for pipe in self._pipes)

    @property
    def blackholed(self) -> bool:
        return self.lost == _BOTH_WAYS

    def blackhole(self, directions: frozenset[str] = _BOTH_WAYS) -> None:
        self.lost |= directions
        for pipe in self._pipes:
            if pipe.direction in directions:
                pipe.discard()

    def shutdown(self, mode: _CloseMode) -> None:
        """Close the connection now; ``run`` finishes by closing its sockets."""
        self._close_mode = mode
        self.shutting_down = True
        self.close_now()
        if self.task is not None:
            self.task.cancel()

    def close_now(self) -> None:
        for writer in self._writers():
            _close_writer(writer, self._close_mode)

    async def wait_closed(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                for writer in self._writers():
                    await _wait_writer_closed(writer)

    async def run(self) -> None:
        try:
            if self._refuse is not None:
                log.debug("%s: refused (link cut, mode %s)", self.label, self._refuse)
            elif self.blackholed:
                log.debug("%s: black-holed", self.label)
                await self._swallow()
            else:
                await self._forward()
        finally:
            self.close_now()
            await self.wait_closed()

    async def _swallow(self) -> None:
        """Read and drop everything the client sends, then stay open until closed by ``heal`` or ``close``."""
        with contextlib.suppress(OSError):
            while chunk := await self._client_reader.read(_READ_CHUNK):
                self._proxy.bytes_discarded += len(chunk)
        await asyncio.Event().wait()

    async def _forward(self) -> None:
        proxy = self._proxy
        try:
            target_reader, self._target_writer = await asyncio.open_connection(proxy.target_host, proxy.target_port)
        except OSError as exc:
            log.warning("%s: cannot connect to %s:%d: %s", self.label, proxy.target_host, proxy.target_port, exc)
            self._close_mode = "reset"
            return
        self._pipes = [
            _Pipe(proxy, self, self._client_reader, self._target_writer, UPSTREAM),
            _Pipe(proxy, self, target_reader, self._client_writer, DOWNSTREAM),
        ]
        try:
            async with asyncio.TaskGroup() as tasks:
                for pipe in self._pipes:
                    tasks.create_task(pipe.pump_in())
                    tasks.create_task(pipe.pump_out())
        except* OSError as errors:
            log.debug("%s: connection failed: %s", self.label, errors.exceptions[0])
            self._close_mode = "reset"
        else:
            log.debug("%s: closed by both ends", self.label)


class LinkProxy:
    """Forwards TCP connections from ``listen_host:listen_port`` to ``target_host:target_port``.

    All methods must be called on the event loop the proxy was started on
    (``ProxyThread`` does that for synchronous code).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay_ms: float = 0.0,
        name: str = "",
        buffer_bytes_max: int = _DEFAULT_BUFFER_BYTES_MAX,
    ) -> None:
        if buffer_bytes_max <= 0:
            raise ValueError(f"buffer_bytes_max must be positive, not {buffer_bytes_max}")
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = listen_port
        self.name = name
        self.buffer_bytes_max = buffer_bytes_max
        self.delay_ms = 0.0
        self.set_delay(delay_ms)
        # Bytes written on to the other end, keyed by UPSTREAM and DOWNSTREAM.
        self.bytes_forwarded: dict[str, int] = {UPSTREAM: 0, DOWNSTREAM: 0}
        # Bytes read and then lost in a black hole.
        self.bytes_discarded = 0
        self.connections_accepted = 0
        self._cut_mode: CutMode | None = None
        self._lost: frozenset[str] = frozenset()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        state = f"cut={self._cut_mode}" if self._cut_mode else "up"
        if self._lost and self._lost != _BOTH_WAYS:
            state += f" one-way {next(iter(self._lost))}"
        return (
            f"<LinkProxy {self.name!r} {self.listen_host}:{self.port} -> "
            f"{self.target_host}:{self.target_port} {state} delay_ms={self.delay_ms}>"
        )

    @property
    def is_cut(self) -> bool:
        return self._cut_mode is not None

    @property
    def cut_mode(self) -> CutMode | None:
        return self._cut_mode

    @property
    def lost_directions(self) -> frozenset[str]:
        """The directions whose bytes vanish: both while black-holed, one during a one-way cut."""
        return self._lost

    @property
    def bytes_queued(self) -> int:
        """Bytes read and waiting to be delivered, over every connection and direction."""
        return sum(conn.queued_bytes for conn in self._connections)

    async def start(self) -> None:
        """Start listening; ``port`` is then the port actually bound."""
        if self._server is not None or self._closing:
            raise RuntimeError(f"{self!r} was already started")
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%r: listening", self)

    async def close(self) -> None:
        """Stop listening and close every connection. Safe to call more than once."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._server is not None:
                self._server.close()
            connections = list(self._connections)
            for conn in connections:
                conn.shutdown("drop")
            tasks = [conn.task for conn in connections if conn.task is not None]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=_CLOSE_WAIT_S)
                if pending:
                    log.warning("%r: %d connections did not finish closing", self, len(pending))
            # A task cancelled before it ran never reached its own cleanup.
            for conn in connections:
                conn.close_now()
                await conn.wait_closed()
            if self._server is not None:
                await self._server.wait_closed()
            log.info("%r: closed", self)
        finally:
            self._closed.set()

    def cut(self, mode: CutMode = "drop", *, direction: str | None = None) -> None:
        """Break the link: see the module docstring for what each mode does.

        ``direction`` (``UPSTREAM`` or ``DOWNSTREAM``, with ``"blackhole"`` only)
        cuts one way; a later cut both ways, or a heal, supersedes it.
        """
        if mode not in _CUT_MODES:
            raise ValueError(f"unknown cut mode {mode!r}; expected one of {sorted(_CUT_MODES)}")
        if direction is not None and (mode != "blackhole" or direction not in _BOTH_WAYS):
            raise ValueError(
                f"a one-way cut is a blackhole towards {UPSTREAM!r} or {DOWNSTREAM!r}, "
                f"not {mode!r} towards {direction!r}"
            )
        self._cut_mode = mode
        if mode == "blackhole":
            self._lost |= _BOTH_WAYS if direction is None else frozenset({direction})
        else:
            self._lost = frozenset()
        log.info("%r: cut", self)
        for conn in list(self._connections):
            if mode == "blackhole":
                conn.blackhole(self._lost)
            else:
                conn.shutdown(mode)

    def heal(self) -> None:
        """Forward new connections again; black-holed connections are reset so their peers reconnect."""
        self._cut_mode = None
        self._lost = frozenset()
        log.info("%r: healed", self)
        for conn in list(self._connections):
            if conn.lost:
                conn.shutdown("reset")

    def set_delay(self, delay_ms: float) -> None:
        """Set the one-way delay for chunks read from now on."""
        if delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, not {delay_ms}")
        self.delay_ms = float(delay_ms)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback rather than a coroutine, so that the proxy owns (and
        # can cancel and await) the task serving each connection.
        self.connections_accepted += 1
        mode = self._cut_mode
        refuse: _CloseMode | None = None
        if self._closing:
            refuse = "drop"
        elif mode in ("drop", "reset"):
            refuse = mode
        conn = _Connection(self, reader, writer, refuse=refuse, lost=self._lost if refuse is None else frozenset())
        self._connections.add(conn)
        conn.task = asyncio.create_task(conn.run(), name=f"proxy {conn.label}")
        conn.task.add_done_callback(lambda _: self._connection_done(conn))

    def _connection_done(self, conn: _Connection) -> None:
        conn.close_now()
        self._connections.discard(conn)
        task = conn.task
        if task is not None and not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: proxying failed", conn.label, exc_info=exc)

    async def settle(self) -> None:
        """Wait until the connections that ``cut``, ``heal`` or ``close`` are shutting down are closed."""
        closing = [conn.task for conn in self._connections if conn.shutting_down and conn.task is not None]
        if closing:
            await asyncio.wait(closing, timeout=_CLOSE_WAIT_S)


class ProxyThread:
    """Runs ``LinkProxy`` objects on an event loop in a daemon thread, for synchronous code.

    Every call waits at most ``timeout_s`` for the loop to do what was asked.
    """

    def __init__(self, *, timeout_s: float = 10.0, name: str = "crdtstore-proxy") -> None:
        self.timeout_s = timeout_s
        self._proxies: list[LinkProxy] = []
        self._closed = False
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the proxy thread did not start")

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._close_proxies()

    async def _close_proxies(self) -> None:
        proxies, self._proxies = self._proxies, []
        for proxy in proxies:
            try:
                await proxy.close()
            except Exception:
                log.exception("%r: close failed", proxy)

    def _call(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        if self._closed or self._loop is None or self._loop.is_closed():
            raise RuntimeError("the proxy thread is closed")
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def start_proxy(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay_ms: float = 0.0,
        name: str = "",
        buffer_bytes_max: int = _DEFAULT_BUFFER_BYTES_MAX,
    ) -> LinkProxy:
        """Start a ``LinkProxy`` on the thread's loop; its ``port`` is bound when this returns."""

        async def start() -> LinkProxy:
            proxy = LinkProxy(
                target_host,
                target_port,
                listen_host=listen_host,
                listen_port=listen_port,
                delay_ms=delay_ms,
                name=name,
                buffer_bytes_max=buffer_bytes_max,
            )
            await proxy.start()
            self._proxies.append(proxy)
            return proxy

        return self._call(start)

    def cut(self, proxy: LinkProxy, mode: CutMode = "drop", *, direction: str | None = None) -> None:
        """``proxy.cut(mode, direction=direction)``; returns once connections being closed are closed."""

        async def cut() -> None:
            proxy.cut(mode, direction=direction)
            await proxy.settle()

        self._call(cut)

    def heal(self, proxy: LinkProxy) -> None:
        """``proxy.heal()``; returns once black-holed connections are closed."""

        async def heal() -> None:
            proxy.heal()
            await proxy.settle()

        self._call(heal)

    def set_delay(self, proxy: LinkProxy, delay_ms: float) -> None:
        """``proxy.set_delay(delay_ms)``."""

        async def set_delay() -> None:
            proxy.set_delay(delay_ms)

        self._call(set_delay)

    def close(self) -> None:
        """Close every proxy, stop the loop and join the thread. Safe to call more than once."""
        if self._closed:
            return
        try:
            self._call(self._close_proxies)
        except Exception:
            log.exception("closing the proxies failed")
        finally:
            self._closed = True
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                    loop.call_soon_threadsafe(stop.set)
            self._thread.join(self.timeout_s)
            if self._thread.is_alive():
                log.warning("the proxy thread did not stop within %.1f s", self.timeout_s)

"""The link proxy: forwarding, delay, backpressure, cuts, heals and clean shutdown.

The target is a small local echo server. No test asserts on how long anything
took: waits poll for a state to be reached, under one overall time limit per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

from crdtstore.tools.proxy import DOWNSTREAM, UPSTREAM, CutMode, LinkProxy, ProxyThread

TEST_TIMEOUT_S = 10.0
LONG_DELAY_MS = 60_000.0  # far longer than any test runs: data so delayed is never delivered


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one async test under a time limit, then collect garbage so unclosed sockets warn inside the test."""

    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await main()

    asyncio.run(bounded())
    gc.collect()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (the test's time limit bounds the wait)."""
    while not condition():
        await asyncio.sleep(0.005)


class EchoServer:
    """Echoes every byte back on the connection it came on; records what it received."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in self._writers:  # those whose task was cancelled before it started
            writer.close()
        await self._server.wait_closed()

    def push(self, data: bytes) -> None:
        """Send ``data`` unprompted on every open connection."""
        for writer in self._writers:
            writer.write(data)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.create_task(self._echo(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def started(proxy: LinkProxy) -> AsyncIterator[LinkProxy]:
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()  # never wait to flush: some tests leave data the peer will not read
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_to_end(reader: asyncio.StreamReader) -> bytes | str:
    """Everything up to end of stream, or ``"reset"`` if the connection was reset."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return "reset"


async def new_connection_outcome(port: int) -> bytes | str:
    """What a new connection reads before it ends, or ``"reset"``.

    The reset may already be reported by the connect call, if it arrives first.
    """
    try:
        async with connected(port) as (reader, _):
            return await read_to_end(reader)
    except ConnectionResetError:
        return "reset"


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    """True if no byte is readable for a moment. Only for data that can no longer arrive at all."""
    try:
        async with asyncio.timeout(0.05):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


# -- forwarding ---------------------------------------------------------------


def test_bytes_pass_through_both_ways() -> None:
    payload = os.urandom(1 << 20)

    async def main() -> None:
        async with EchoServer() as echo, started(LinkProxy("127.0.0.1", echo.port, name="t")) as proxy:
            assert proxy.port not in (0, echo.port)
            async with connected(proxy.port) as (reader, writer):

                async def send() -> None:
                    writer.write(payload)
                    await writer.drain()
                    writer.write_eof()

                _, echoed = await asyncio.gather(send(), read_to_end(reader))
            assert echoed == payload  # all of it, in order, and the half-close came back as end of stream
            assert bytes(echo.received) == payload
            assert proxy.bytes_forwarded == {UPSTREAM: len(payload), DOWNSTREAM: len(payload)}
            assert proxy.connections_accepted == 1
            assert echo.accepted == 1

    run(main)


def test_small_buffer_still_forwards_everything() -> None:
    payload = os.urandom(256 * 1024)

    async def main() -> None:
        async with (
            EchoServer() as echo,
            started(LinkProxy("127.0.0.1", echo.port, buffer_bytes_max=1000, delay_ms=1)) as proxy,
            connected(proxy.port) as (reader, writer),
        ):

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            _, echoed = await asyncio.gather(send(), read_to_end(reader))
            assert echoed == payload

    run(main)


def test_full_queue_stops_reading() -> None:
    limit = 4096

    async def main() -> None:
        async with (
            EchoServer() as echo,
            started(LinkProxy("127.0.0.1", echo.port, buffer_bytes_max=limit, delay_ms=LONG_DELAY_MS)) as proxy,
            connected(proxy.port) as (_, writer),
        ):
            # Far more than the kernel's socket buffers hold: without backpressure the proxy would queue it all.
            writer.write(bytes(32 << 20))
            await eventually(lambda: proxy.bytes_queued >= limit)
            await asyncio.sleep(0.1)  # room for a proxy that ignores its limit to read on
            assert proxy.bytes_queued == limit
            assert proxy.bytes_forwarded[UPSTREAM] == 0
            assert echo.received == b""

    run(main)


# -- delay ----------------------------------------------------------------------


def test_delayed_chunks_arrive_in_order() -> None:
    chunks = [b"one|", b"two|", b"three|", b"four|"]

    async def main() -> None:
        async with (
            EchoServer() as echo,
            started(LinkProxy("127.0.0.1", echo.port, delay_ms=20)) as proxy,
            connected(proxy.port) as (reader, writer),
        ):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.002)
            expected = b"".join(chunks)
            assert await reader.readexactly(len(expected)) == expected
            writer.write_eof()
            assert await read_to_end(reader) == b""  # end of stream is delayed and delivered after the data
            assert proxy.bytes_forwarded == {UPSTREAM: len(expected), DOWNSTREAM: len(expected)}

    run(main)


def test_set_delay_holds_new_data_back() -> None:
    async def main() -> None:
        async with (
            EchoServer() as echo,
            started(LinkProxy("127.0.0.1", echo.port)) as proxy,
            connected(proxy.port) as (reader, writer),
        ):
            writer.write(b"now")
            assert await reader.readexactly(3) == b"now"
            proxy.set_delay(LONG_DELAY_MS)
            writer.write(b"held")
            await eventually(lambda: proxy.bytes_queued == 4)  # the proxy has read it ...
            assert await nothing_arrives(reader)  # ... and is holding it
            assert echo.received == b"now"
            assert proxy.bytes_forwarded == {UPSTREAM: 3, DOWNSTREAM: 3}
            await proxy.close()  # closing does not wait for delayed data
            assert await read_to_end(reader) == b""

    run(main)


def test_bad_arguments_are_refused() -> None:
    proxy = LinkProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="delay_ms"):
        proxy.set_delay(-1)
    with pytest.raises(ValueError, match="cut mode"):
        proxy.cut("sideways")  # type: ignore[arg-type]
    assert not proxy.is_cut
    with pytest.raises(ValueError, match="one-way"):
        proxy.cut("drop", direction=UPSTREAM)
    with pytest.raises(ValueError, match="one-way"):
        proxy.cut("blackhole", direction="sideways")
    assert not proxy.is_cut
    with pytest.raises(ValueError, match="buffer_bytes_max"):
        LinkProxy("127.0.0.1", 1, buffer_bytes_max=0)


# -- faults ---------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "seen_by_peer"), [("reset", "reset"), ("drop", b"")])
def test_cut_closes_connections_and_refuses_new_ones_until_healed(mode: CutMode, seen_by_peer: bytes | str) -> None:
    async def main() -> None:
        async with EchoServer() as echo, started(LinkProxy("127.0.0.1", echo.port)) as proxy:
            async with connected(proxy.port) as (reader, writer):
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                proxy.cut(mode)
                assert proxy.is_cut
                assert await read_to_end(reader) == seen_by_peer
            await eventually(lambda: echo.open_connections == 0)  # the target's side was closed too

            assert await new_connection_outcome(proxy.port) == seen_by_peer  # accepted, then closed at once
            assert proxy.connections_accepted == 2
            assert echo.accepted == 1

            proxy.heal()
            assert proxy.cut_mode is None  # (mypy would keep ``is_cut`` narrowed to True from above)
            async with connected(proxy.port) as (reader, writer):
                writer.write(b"again")
                assert await reader.readexactly(5) == b"again"
            assert echo.accepted == 2

    run(main)


def test_blackhole_discards_silently_until_healed() -> None:
    async def main() -> None:
        async with EchoServer() as echo, started(LinkProxy("127.0.0.1", echo.port)) as proxy:
            async with connected(proxy.port) as (reader, writer):
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"

                proxy.cut("blackhole")
                writer.write(b"lost-up")
                echo.push(b"lost-down")
                await eventually(lambda: proxy.bytes_discarded == len(b"lost-up") + len(b"lost-down"))
                assert await nothing_arrives(reader)  # and the connection is still open

                # A new connection is accepted but goes nowhere.
                async with connected(proxy.port) as (reader2, writer2):
                    await eventually(lambda: proxy.connections_accepted == 2)
                    writer2.write(b"x")
                    await eventually(lambda: proxy.bytes_discarded == len(b"lost-uplost-down") + 1)
                    assert await nothing_arrives(reader2)

                    proxy.heal()  # black-holed connections are reset so that their peers reconnect
                    assert await read_to_end(reader2) == "reset"
                assert await read_to_end(reader) == "reset"

            async with connected(proxy.port) as (reader, writer):
                writer.write(b"back")
                assert await reader.readexactly(4) == b"back"
            assert echo.accepted == 2  # the black-holed new connection never reached the target
            assert echo.received == b"pingback"
            assert proxy.bytes_forwarded == {UPSTREAM: 8, DOWNSTREAM: 8}

    run(main)


def test_one_way_cut_loses_one_direction_only_until_healed() -> None:
    async def main() -> None:
        async with EchoServer() as echo, started(LinkProxy("127.0.0.1", echo.port)) as proxy:
            async with connected(proxy.port) as (reader, writer):
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"

                proxy.cut("blackhole", direction=UPSTREAM)
                assert proxy.lost_directions == {UPSTREAM}
                writer.write(b"lost")
                await eventually(lambda: proxy.bytes_discarded == 4)
                echo.push(b"still")  # the other way keeps forwarding
                assert await reader.readexactly(5) == b"still"

                # A new connection reaches the target, and loses the same direction.
                async with connected(proxy.port) as (reader2, writer2):
                    await eventually(lambda: echo.accepted == 2)
                    writer2.write(b"x")
                    await eventually(lambda: proxy.bytes_discarded == 5)
                    echo.push(b"both")
                    assert await reader2.readexactly(4) == b"both"
                    assert await reader.readexactly(4) == b"both"

                    proxy.heal()  # connections that lost bytes are reset, so their peers reconnect
                    assert proxy.lost_directions == frozenset()
                    assert await read_to_end(reader2) == "reset"
                assert await read_to_end(reader) == "reset"
            assert echo.received == b"ping"

            proxy.cut("blackhole", direction=DOWNSTREAM)
            proxy.cut("blackhole")  # a cut both ways supersedes the one-way cut
            assert proxy.lost_directions == {UPSTREAM, DOWNSTREAM}
            proxy.heal()

    run(main)


def test_blackhole_loses_data_in_flight() -> None:
    async def main() -> None:
        async with (
            EchoServer() as echo,
            started(LinkProxy("127.0.0.1", echo.port, delay_ms=LONG_DELAY_MS)) as proxy,
            connected(proxy.port) as (reader, writer),
        ):
            writer.write(b"in flight")
            await eventually(lambda: proxy.bytes_queued == 9)
            proxy.cut("blackhole")
            assert proxy.bytes_queued == 0  # dropped at once, not held until its delivery time
            assert proxy.bytes_discarded == 9
            proxy.set_delay(0)
            proxy.heal()
            assert await read_to_end(reader) == "reset"
            await eventually(lambda: echo.open_connections == 0)
            assert echo.received == b""  # the lost bytes did not turn up later

    run(main)


def test_blackhole_then_reset_closes_black_holed_connections() -> None:
    async def main() -> None:
        async with (
            EchoServer() as echo,
            started(LinkProxy("127.0.0.1", echo.port)) as proxy,
            connected(proxy.port) as (reader, writer),
        ):
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            proxy.cut("blackhole")
            proxy.cut("reset")
            assert proxy.cut_mode == "reset"
            assert await read_to_end(reader) == "reset"

    run(main)


# -- shutdown -------------------------------------------------------------------


def test_close_is_idempotent_and_leaves_nothing_open() -> None:
    async def main() -> None:
        async with EchoServer() as echo:
            proxy = LinkProxy("127.0.0.1", echo.port)
            await proxy.close()  # never started: nothing to do
            proxy = LinkProxy("127.0.0.1", echo.port)
            await proxy.start()
            async with connected(proxy.port) as (reader, writer):
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                await asyncio.gather(proxy.close(), proxy.close())
                await proxy.close()
                assert await read_to_end(reader) == b""
            await eventually(lambda: echo.open_connections == 0)
            assert proxy.bytes_queued == 0
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
            with pytest.raises(RuntimeError, match="already started"):
                await proxy.start()

    run(main)


def test_target_down_closes_the_client_connection() -> None:
    async def main() -> None:
        with socket.socket() as placeholder:  # a port that nothing listens on
            placeholder.bind(("127.0.0.1", 0))
            dead_port = placeholder.getsockname()[1]
            async with started(LinkProxy("127.0.0.1", dead_port)) as proxy, connected(proxy.port) as (reader, _):
                assert await read_to_end(reader) == "reset"

    run(main)


# -- from synchronous code --------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoThreadServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


@contextlib.contextmanager
def echo_thread_server() -> Iterator[int]:
    server = _EchoThreadServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return _recv_exactly(sock, len(payload))


def _new_connection_outcome(port: int) -> bytes | str:
    """Like ``new_connection_outcome``, with a blocking socket."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return sock.recv(1)
    except ConnectionResetError:
        return "reset"


def test_proxy_thread_from_synchronous_code() -> None:
    thread_name = "crdtstore-proxy-test"
    with echo_thread_server() as echo_port, ProxyThread(name=thread_name, timeout_s=5) as proxies:
        proxy = proxies.start_proxy("127.0.0.1", echo_port, delay_ms=5, name="sync")
        assert proxy.port != 0
        assert _echo_once(proxy.port, b"hello") == b"hello"

        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert _recv_exactly(sock, 4) == b"ping"
            proxies.cut(proxy, "reset")
            assert proxy.is_cut
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        assert _new_connection_outcome(proxy.port) == "reset"

        proxies.heal(proxy)
        proxies.set_delay(proxy, 0)
        assert proxy.delay_ms == 0
        assert _echo_once(proxy.port, b"healed") == b"healed"

        proxies.close()
        proxies.close()
        assert thread_name not in {t.name for t in threading.enumerate()}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        with pytest.raises(RuntimeError, match="closed"):
            proxies.start_proxy("127.0.0.1", echo_port)
    gc.collect()

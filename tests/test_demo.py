"""``crdtstore demo``: the README's run command, end to end."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from crdtstore.client import Client, ClientError
from crdtstore.operations import Increment

pytestmark = pytest.mark.processes


def _free_run(count: int) -> int:
    """A base port with ``count`` free ports from it."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def _read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float = 60) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # raw reads: select() cannot see what a buffered reader already holds
    out = b""
    deadline = time.monotonic() + timeout_s
    while marker.encode() not in out:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"the demo did not print {marker!r} in time; so far: {out!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"the demo exited with {proc.wait()}: {out!r}")
        out += chunk
    return out.decode()


def _start_demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crdtstore", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _assert_stops_cleanly(proc: subprocess.Popen[str]) -> None:
    """Exit status 0 after Ctrl-C; otherwise the demo's stderr says which region failed, and where its log is."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, f"the demo exited with {proc.returncode}:\n{err}"


def _finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.parametrize("latency", ["0", "20"])
def test_demo_runs_regions_that_replicate_and_stops_cleanly_on_ctrl_c(latency: str, tmp_path: Path) -> None:
    base = _free_run(6)  # the regions' ports, then their metrics ports
    proc = _start_demo("--regions", "3", "--base-port", str(base), "--latency-ms", latency)
    try:
        banner = _read_until(proc, "Ctrl-C stops every region")
        addrs = re.findall(r"^\s+(\S+)\s+(127\.0\.0\.1:\d+)$", banner, flags=re.MULTILINE)
        assert [name for name, _ in addrs] == ["eu-west", "us-east", "ap-south"]
        assert [addr for _, addr in addrs] == [f"127.0.0.1:{base + i}" for i in range(3)]
        folder = re.search(r"data and logs in (\S+) \(removed at exit\)", banner)
        assert folder is not None
        with Client(addrs[0][1], timeout_s=20) as first, Client(addrs[2][1], timeout_s=20) as last:
            token = first.set("greeting", "hello").token
            assert last.get("greeting", after=token).value == b"hello"
            assert first.sadd("cart", "apple").token
            # Answered only once all three regions have it durable.
            assert not first.mutate([Increment("visits", 1)], durability="replicated:3").replayed
            status = last.status()
            assert {p["region"] for p in status["peers"]} == {"eu-west", "us-east"}
        # Metrics on loopback, on the ports after the regions' own.
        assert f"http://127.0.0.1:{base + 3}/metrics" in banner
        with urllib.request.urlopen(f"http://127.0.0.1:{base + 3}/metrics", timeout=20) as response:
            scraped = response.read().decode()
        assert 'crdtstore_requests_total{code="OK",rpc="Mutate"}' in scraped
        proc.send_signal(signal.SIGINT)
        _assert_stops_cleanly(proc)
        assert not Path(folder.group(1)).exists(), "the temporary data is removed"
    finally:
        _finish(proc)


def test_demo_refuses_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        proc = subprocess.run(
            [sys.executable, "-m", "crdtstore", "demo", "--regions", "2", "--base-port", str(port)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}" in proc.stderr and "--base-port" in proc.stderr


def test_regression_a_port_a_stopped_demo_left_in_time_wait_is_free_to_use() -> None:
    """Found by a newcomer: a demo run again within a minute of the last refused its ports."""
    from crdtstore.tools.demo import _probe

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's and the metrics servers do
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server's side closes first: its port waits in TIME_WAIT
            client.recv(1)
    assert _probe("127.0.0.1", port) is None


def test_demo_with_auth_requires_the_token_it_prints() -> None:
    base = _free_run(4)
    proc = _start_demo("--regions", "2", "--base-port", str(base), "--auth")
    try:
        banner = _read_until(proc, "Ctrl-C stops every region")
        found = re.search(r"^admin token: (\S+)$", banner, flags=re.MULTILINE)
        assert found is not None, banner
        first, second = f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"
        with Client(first, timeout_s=20, retries_max=0) as anonymous:
            with pytest.raises(ClientError) as info:
                anonymous.get("greeting")
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with (
            Client(first, timeout_s=20, token=found.group(1)) as a,
            Client(second, timeout_s=20, token=found.group(1)) as b,
        ):
            token = a.set("greeting", "hello").token
            assert b.get("greeting", after=token).value == b"hello", "the regions replicate with their peer token"
        proc.send_signal(signal.SIGINT)
        _assert_stops_cleanly(proc)
    finally:
        _finish(proc)


def test_a_region_that_dies_ends_the_demo_with_the_end_of_its_log() -> None:
    """Its data and logs are removed at exit: what the region logged last is printed before they go."""
    base = _free_run(4)
    proc = _start_demo("--regions", "2", "--base-port", str(base))
    try:
        _read_until(proc, "Ctrl-C stops every region")
        listen = f"127.0.0.1:{base + 1}"
        pids = [pid for pid, argv in _processes() if "serve" in argv and listen in argv]
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "region us-east exited with -9; the end of its log" in err and "removed at exit" in err
        assert "region us-east serving" in err, err
    finally:
        _finish(proc)


def _processes() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process this user may read, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            found.append((int(entry.name), [arg.decode(errors="replace") for arg in argv]))
    return found

"""Real ``crdtstore serve`` processes for end-to-end tests, crash tests and benchmarks.

A ``ServerProcess`` starts a node on a loopback port the operating system
chooses (``--listen 127.0.0.1:0``; the node prints the port it bound), waits
until it answers, and can be stopped politely (SIGTERM), killed (SIGKILL) or
restarted on the same data directory and port, or paused (SIGSTOP) and
resumed (SIGCONT).

``host`` and ``command_prefix`` run it elsewhere than loopback: the chaos
runner starts nodes inside network namespaces with
``command_prefix=("ip", "netns", "exec", name)`` and the namespace's address.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from crdtstore.node.logs import log_tail

__all__ = ["ServerProcess", "StopTimeout"]

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_METRICS = re.compile(r"metrics on http://(\S+):(\d+)/metrics")


class StopTimeout(subprocess.TimeoutExpired):
    """A node did not exit after SIGTERM in time; says so with the end of its log, where the node names the
    step of its drain that is stuck."""

    def __init__(self, cmd: Sequence[str], timeout: float, log_tail: str) -> None:
        super().__init__(cmd, timeout)
        self.log_tail = log_tail

    def __str__(self) -> str:
        return f"{super().__str__()} after SIGTERM; the end of its log:\n{self.log_tail}"


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        region: str = "local",
        extra_args: tuple[str, ...] = (),
        start_timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.command_prefix = command_prefix
        self.paused = False
        self.region = region
        self.extra_args = extra_args
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.metrics_port = 0  # where it serves /metrics, when started with --metrics-listen
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = [
            *self.command_prefix,
            sys.executable,
            "-m",
            "crdtstore",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"{self.host}:{self.port}",
            "--region",
            self.region,
            *self.extra_args,
        ]
        with self.log_path.open("a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + self.start_timeout_s
        assert self.proc.stdout is not None
        while True:
            # Wait for output with a timeout, so a node that hangs before
            # printing cannot hang the caller.
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.kill()
                raise RuntimeError(
                    f"crdtstore serve did not start within {self.start_timeout_s} s; see {self.log_path}"
                )
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"crdtstore serve exited with {self.proc.wait()}; see {self.log_path}")
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                metrics = _METRICS.search(line)
                self.metrics_port = int(metrics.group(2)) if metrics else 0
                break
        self._wait_ready(deadline)
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Wait until the port accepts connections (plain TCP, so it works with TLS too)."""
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"crdtstore serve does not accept connections; see {self.log_path}") from None
                time.sleep(0.02)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: drain and exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.resume()  # a stopped process would only see the SIGTERM once continued
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            # The node writes every thread's stack to its log on SIGUSR1: the error shows where it is stuck.
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
            raise StopTimeout(list(exc.cmd), timeout_s, self.log_tail(120)) from None
        self._close_pipe()
        return code

    def log_tail(self, lines: int = 60) -> str:
        """The end of the node's log (its stderr), for an error that needs to say what the node did."""
        return log_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL: no draining, no cleanup; what was not fsynced is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.paused = False
        self._close_pipe()

    def pause(self) -> None:
        """SIGSTOP: the process freezes where it is (a long GC pause, a stalled VM); its connections stay open."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause``; does nothing otherwise."""
        if self.paused and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout_s=15)
            except subprocess.TimeoutExpired:
                self.kill()

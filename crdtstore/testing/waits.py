"""Waiting in a test for something another process does (a region catching up, a stream ending)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_for"]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` until it holds; ``AssertionError`` naming ``what`` after ``timeout_s``.

    The bound only ends a test whose condition never comes; nothing is asserted about how soon it does.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)

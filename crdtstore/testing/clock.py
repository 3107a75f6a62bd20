"""A physical time source for tests and the simulator, moved by hand."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Milliseconds that change only when told to; may be stepped backwards."""

    __slots__ = ("now_ms",)

    def __init__(self, now_ms: int = 1_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def set(self, now_ms: int) -> None:
        self.now_ms = now_ms

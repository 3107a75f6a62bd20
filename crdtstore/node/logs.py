"""The node's logs: JSON lines for machines, readable lines for people, and the request's context on each.

``configure_logging`` sets the root logger once per process (``crdtstore
serve`` calls it first thing). The format is chosen by where the logs go:
JSON lines (``python-json-logger``) when stderr is not a terminal (a file, a
pipe, journald, a container runtime), human-readable text on a terminal;
``CRDTSTORE_LOG_FORMAT=json`` or ``text`` overrides that.

Every record gets what is known where it was logged (``ContextFields``):

* ``region``: the node's region (once the configuration is read);
* ``request_id``: the request being served (``crdtstore.node.requests``),
  the same id the client got in ``x-request-id`` and the audit record keeps;
* ``principal``: the authenticated caller, with access control on;
* ``trace_id``: the OpenTelemetry trace, when tracing is on
  (``crdtstore.node.tracing``).

A JSON line looks like::

    {"time": "2026-12-05T05:41:00.749Z", "level": "INFO", "logger": "crdtstore.node",
     "message": "...", "region": "eu-west", "request_id": "9f0c...", "principal": "alice"}

Fields that are not known are left out rather than written empty.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from crdtstore.node.requests import current_principal, current_request_id

__all__ = ["FORMAT_ENV", "ContextFields", "configure_logging", "log_tail", "set_trace_id_source"]

FORMAT_ENV = "CRDTSTORE_LOG_FORMAT"
_CONTEXT = ("region", "request_id", "principal", "trace_id")

# Tracing (an optional extra) installs a function that gives the current trace id, or "".
_trace_id: Callable[[], str] = lambda: ""  # noqa: E731


def set_trace_id_source(source: Callable[[], str]) -> None:
    global _trace_id  # noqa: PLW0603 (one process-wide hook, set once when tracing starts)
    _trace_id = source


class ContextFields(logging.Filter):
    """Adds the region, request id, principal and trace id, where known, to every record."""

    def __init__(self, region: str = "") -> None:
        super().__init__()
        self.region = region

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (
            ("region", self.region),
            ("request_id", current_request_id()),
            ("principal", current_principal()),
            ("trace_id", _trace_id()),
        ):
            if value and not hasattr(record, name):
                setattr(record, name, value)
        return True


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


class _Text(logging.Formatter):
    """``time LEVEL logger: message [region request=... principal=... trace=...]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{label}{getattr(record, name)}"
            for name, label in (
                ("region", ""),
                ("request_id", "request="),
                ("principal", "principal="),
                ("trace_id", "trace="),
            )
            if getattr(record, name, "")
        ]
        if not context:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{first} [{' '.join(context)}]{newline}{rest}"


def _wants_json(stream: TextIO, environ: dict[str, str] | os._Environ[str]) -> bool:
    chosen = environ.get(FORMAT_ENV, "").strip().lower()
    if chosen in ("json", "text"):
        return chosen == "json"
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def configure_logging(
    stream: TextIO | None = None, *, level: int = logging.INFO, environ: dict[str, str] | None = None
) -> ContextFields:
    """Route the root logger to ``stream`` (stderr) as JSON or text; the filter whose ``region`` to set later."""
    stream = sys.stderr if stream is None else stream
    env: Any = os.environ if environ is None else environ
    handler = logging.StreamHandler(stream)
    fields = ContextFields()
    handler.addFilter(fields)
    if _wants_json(stream, env):
        handler.setFormatter(
            _Json(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return fields


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a node's log file, for a message that must say what the node did last."""
    try:
        with path.open(errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})\n"

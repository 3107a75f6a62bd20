"""Structured logs: JSON lines off a terminal, text on one, with the request's context on each line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.node import requests
from crdtstore.node.logs import configure_logging, set_trace_id_source


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    set_trace_id_source(lambda: "")


def test_json_lines_when_not_on_a_terminal_with_the_request_context() -> None:
    out = io.StringIO()
    fields = configure_logging(out, environ={})
    fields.region = "eu-west"
    log = logging.getLogger("crdtstore.test")
    log.info("outside any request")
    token = requests._request_id.set("req-123")
    requests.set_principal("alice")
    set_trace_id_source(lambda: "4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        log.warning("inside %s", "a request")
    finally:
        requests._request_id.reset(token)
        requests.set_principal("")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "outside any request" and first["level"] == "INFO"
    assert first["region"] == "eu-west" and first["logger"] == "crdtstore.test"
    assert "request_id" not in first and "principal" not in first  # unknown fields are left out
    assert first["time"].endswith("Z")
    assert second == {
        "time": second["time"],
        "level": "WARNING",
        "logger": "crdtstore.test",
        "message": "inside a request",
        "region": "eu-west",
        "request_id": "req-123",
        "principal": "alice",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


def test_text_on_a_terminal_and_the_environment_can_choose() -> None:
    terminal = _Terminal()
    configure_logging(terminal, environ={}).region = "us-east"
    logging.getLogger("crdtstore.test").info("hello")
    line = terminal.getvalue().strip()
    assert line.endswith("INFO crdtstore.test: hello [us-east]")
    forced = _Terminal()
    configure_logging(forced, environ={"CRDTSTORE_LOG_FORMAT": "json"})
    logging.getLogger("crdtstore.test").info("hello")
    assert json.loads(forced.getvalue())["message"] == "hello"


def test_a_client_request_id_is_taken_only_when_fit_for_a_log_line() -> None:
    assert requests.request_id_from([("x-request-id", "abc-123")]) == "abc-123"
    for bad in ("", "with\nnewline", "é", "x" * 129):
        made = requests.request_id_from([("x-request-id", bad)])
        assert made != bad and len(made) == 32
    assert len(requests.request_id_from(None)) == 32
    assert requests.request_id_from(None) != requests.request_id_from(None)


def test_the_node_has_no_print_but_its_ready_line_and_startup_errors() -> None:
    """Logs go through logging; the only prints are the ready line the harness reads and errors before logging."""
    from pathlib import Path

    import crdtstore.node

    node_dir = Path(crdtstore.node.__file__).parent
    prints = {
        path.name: sum(line.strip().startswith("print(") for line in path.read_text(encoding="utf-8").splitlines())
        for path in node_dir.glob("*.py")
    }
    assert {name: n for name, n in prints.items() if n} == {"main.py": 4}


@pytest.mark.processes
def test_a_refused_request_is_logged_with_its_request_id_and_principal(tmp_path: Path) -> None:
    """The runbook's "Unauthorized attempts": the caller is found in the logs by the id it was given."""
    import grpc

    from crdtstore.testing.auth import AuthKit
    from crdtstore.testing.process import ServerProcess
    from crdtstore.v1 import kv_pb2 as pb

    kit = AuthKit.create(tmp_path / "keys")
    config = kit.write_config(tmp_path / "node.toml")
    with ServerProcess(tmp_path / "node", region="eu-west", extra_args=("--config", str(config))) as server:
        token = kit.token("mallory", ["no-such-role"])
        with grpc.insecure_channel(server.addr) as channel:
            get = channel.unary_unary(
                "/crdtstore.v1.KV/Get",
                request_serializer=pb.GetRequest.SerializeToString,
                response_deserializer=pb.GetResponse.FromString,
            )
            metadata = (("authorization", f"Bearer {token}"), ("x-request-id", "find-me-42"))
            with pytest.raises(grpc.RpcError) as err:
                get(pb.GetRequest(key="secret"), metadata=metadata, timeout=20)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("request_id") == "find-me-42"]
    assert refused, lines
    assert refused[0]["principal"] == "mallory" and refused[0]["region"] == "eu-west"
    assert refused[0]["message"].startswith("refused Get")

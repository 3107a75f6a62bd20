"""Bad input against a real node, through the raw generated stub: the right status, nothing applied, still serving.

Each refused batch starts with valid operations on keys of its own (a
register, a counter and a set under a per-case prefix) and ends with the bad
part, so "nothing of a rejected batch was applied" is checked by reading those
keys afterwards. After every case the node must still answer a Get and accept
a write. Limits are checked from both sides: one past the limit is refused,
the limit itself is accepted.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from crdtstore.testing.process import ServerProcess
from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc

# ServerProcess.start() leaks its handle on the server's log file; see
# test_node_e2e.test_server_process_leaves_no_file_open. Only that warning is ignored.
pytestmark = [
    pytest.mark.processes,
    pytest.mark.filterwarnings("ignore:unclosed file <_io.TextIOWrapper name='[^']*[.]log' mode='a':ResourceWarning"),
]

RPC_TIMEOUT_S = 30.0
BIG_BATCH_TIMEOUT_S = 30.0
KiB = 1024
MiB = 1024 * 1024
# The server takes messages up to its batch limit (16 MiB) plus 1 MiB of framing.
SERVER_RECEIVE_MAX = 17 * MiB


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("bad-input") / "data", region="eu")
    try:
        proc.start()
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[Any]:
    # The raw generated stub; the channel sends any size (gRPC's client default) and receives any size.
    with grpc.insecure_channel(server.addr, options=[("grpc.max_receive_message_length", -1)]) as channel:
        yield kv_pb2_grpc.KVStub(channel)


def set_op(key: str, value: bytes = b"v") -> pb.Operation:
    return pb.Operation(key=key, set=pb.SetRegister(value=value))


def incr_op(key: str, amount: int = 1) -> pb.Operation:
    return pb.Operation(key=key, increment=pb.Increment(amount=amount))


def add_op(key: str, *members: str) -> pb.Operation:
    return pb.Operation(key=key, add=pb.AddMembers(members=members))


def remove_op(key: str, *members: str) -> pb.Operation:
    return pb.Operation(key=key, remove=pb.RemoveMembers(members=members))


def valid_prefix(prefix: str) -> list[pb.Operation]:
    """Valid operations that open every refused batch; none of them may be applied."""
    return [set_op(f"{prefix}/reg", b"must-not-land"), incr_op(f"{prefix}/ctr", 5), add_op(f"{prefix}/set", "m")]


def mutate(stub: Any, ops: list[pb.Operation], idempotency_key: bytes = b"") -> pb.MutateResponse:
    resp: pb.MutateResponse = stub.Mutate(
        pb.MutateRequest(operations=ops, idempotency_key=idempotency_key), timeout=RPC_TIMEOUT_S
    )
    return resp


def get(stub: Any, key: str) -> pb.KeyValue:
    resp: pb.GetResponse = stub.Get(pb.GetRequest(key=key), timeout=RPC_TIMEOUT_S)
    return resp.entry


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status the call ends with (OK when it succeeds) and its details."""
    try:
        call()
    except grpc.RpcError as exc:
        err: Any = exc
        code: grpc.StatusCode = err.code()
        details: str = err.details() or ""
        return code, details
    return grpc.StatusCode.OK, "the call succeeded"


def assert_absent(stub: Any, prefix: str) -> None:
    for suffix in ("reg", "ctr", "set"):
        got = get(stub, f"{prefix}/{suffix}")
        assert got.value.type == pb.VALUE_TYPE_UNSPECIFIED, f"{prefix}/{suffix} of a refused batch was applied"


def assert_still_serving(stub: Any, prefix: str) -> None:
    """A Get and a write both work after the bad input."""
    key = f"{prefix}/alive"
    before = get(stub, key).value.counter
    mutate(stub, [incr_op(key)])
    assert get(stub, key).value.counter == before + 1


# -- the refused batches -------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """A batch: valid operations under the case's prefix, then ``bad``; refused with ``code``."""

    bad: Callable[[str], list[pb.Operation]]
    code: grpc.StatusCode
    idempotency_key: bytes = b""
    # Written before the batch (on keys under the prefix too), e.g. to give a key its type.
    setup: Callable[[str], list[pb.Operation]] = lambda prefix: []
    mentions: str = ""


INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

REFUSED: dict[str, Refused] = {
    "empty key": Refused(lambda p: [set_op("")], INVALID, mentions="empty"),
    "key of 1025 bytes": Refused(lambda p: [set_op("k" * 1025)], INVALID, mentions="1025"),
    "key of 1026 UTF-8 bytes in 513 characters": Refused(lambda p: [incr_op("é" * 513)], INVALID, mentions="1026"),
    "value of 1 MiB + 1": Refused(lambda p: [set_op(f"{p}/big", b"x" * (MiB + 1))], INVALID, mentions=str(MiB + 1)),
    "operation with no op set": Refused(lambda p: [pb.Operation(key=f"{p}/noop")], INVALID),
    "set member of 1025 bytes": Refused(lambda p: [add_op(f"{p}/members", "m" * 1025)], INVALID),
    "add with no members": Refused(lambda p: [add_op(f"{p}/members")], INVALID),
    "remove with no members": Refused(lambda p: [remove_op(f"{p}/members")], INVALID),
    "10,001 operations": Refused(
        lambda p: [incr_op(f"{p}/many/{i % 50}") for i in range(10_001 - 3)], INVALID, mentions="10001"
    ),
    "idempotency key of 129 bytes": Refused(lambda p: [], INVALID, idempotency_key=b"i" * 129, mentions="129"),
    "batch over 16 MiB in a message under the receive limit": Refused(
        lambda p: [set_op(f"{p}/big/{i:02d}", b"x" * MiB) for i in range(16)],
        INVALID,
        mentions="carries",
    ),
    "message bigger than the receive limit": Refused(
        lambda p: [set_op(f"{p}/huge", b"x" * (SERVER_RECEIVE_MAX + MiB))], grpc.StatusCode.RESOURCE_EXHAUSTED
    ),
    "incr on a set key": Refused(
        lambda p: [incr_op(f"{p}/typed")], PRECONDITION, setup=lambda p: [add_op(f"{p}/typed", "a")]
    ),
    "set register on a counter key": Refused(
        lambda p: [set_op(f"{p}/typed")], PRECONDITION, setup=lambda p: [incr_op(f"{p}/typed", 7)]
    ),
    "add members to a register key": Refused(
        lambda p: [add_op(f"{p}/typed", "x")], PRECONDITION, setup=lambda p: [set_op(f"{p}/typed", b"orig")]
    ),
    "remove members from a counter key": Refused(
        lambda p: [remove_op(f"{p}/typed", "x")], PRECONDITION, setup=lambda p: [incr_op(f"{p}/typed", 7)]
    ),
    "two types for one new key in one batch": Refused(
        lambda p: [set_op(f"{p}/fresh"), incr_op(f"{p}/fresh")], PRECONDITION
    ),
    # The valid operations themselves fix the types, then the same batch uses them wrongly.
    "wrong type for a key written earlier in the batch": Refused(lambda p: [incr_op(f"{p}/set")], PRECONDITION),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_batch_applies_nothing(stub: Any, name: str) -> None:
    case = REFUSED[name]
    prefix = "case/" + name.replace(" ", "-")
    setup_ops = case.setup(prefix)
    if setup_ops:
        mutate(stub, setup_ops)
    before = {op.key: get(stub, op.key) for op in setup_ops}

    ops = [*valid_prefix(prefix), *case.bad(prefix)]
    code, details = code_of(lambda: mutate(stub, ops, case.idempotency_key))
    assert code == case.code, f"{code.name}: {details}"
    assert details
    if case.code != grpc.StatusCode.RESOURCE_EXHAUSTED:  # that one is gRPC's own answer, before the server's code
        assert "Traceback" not in details
    assert case.mentions in details

    assert_absent(stub, prefix)
    for key in sorted({op.key for op in case.bad(prefix)}):
        if 0 < len(key.encode()) <= KiB and key not in before:
            assert get(stub, key).value.type == pb.VALUE_TYPE_UNSPECIFIED, f"{key} of a refused batch was applied"
    for key, entry in before.items():
        assert get(stub, key) == entry, f"{key} changed"
    assert_still_serving(stub, prefix)


def test_empty_batch(stub: Any) -> None:
    code, details = code_of(lambda: mutate(stub, []))
    assert code == INVALID, details
    code, details = code_of(lambda: mutate(stub, [], idempotency_key=b"empty-batch"))
    assert code == INVALID, details
    assert_still_serving(stub, "case/empty-batch")


def test_idempotency_key_reused_for_another_batch(stub: Any) -> None:
    prefix = "case/idem-reuse"
    first = mutate(stub, [incr_op(f"{prefix}/first", 2)], idempotency_key=b"reused-key")
    assert first.replayed is False

    code, details = code_of(lambda: mutate(stub, [*valid_prefix(prefix)], idempotency_key=b"reused-key"))
    assert code == INVALID, details
    assert_absent(stub, prefix)
    code, details = code_of(lambda: mutate(stub, [incr_op(f"{prefix}/first", 3)], idempotency_key=b"reused-key"))
    assert code == INVALID, details
    assert get(stub, f"{prefix}/first").value.counter == 2

    again = mutate(stub, [incr_op(f"{prefix}/first", 2)], idempotency_key=b"reused-key")
    assert again.replayed is True
    assert again.token == first.token
    assert get(stub, f"{prefix}/first").value.counter == 2
    assert_still_serving(stub, prefix)


# -- the limits themselves are accepted ------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    ops: Callable[[str], list[pb.Operation]]
    check: Callable[[Any, str], None]
    idempotency_key: bytes = b""


def _check_register(key: str, value: bytes) -> Callable[[Any, str], None]:
    def check(stub: Any, prefix: str) -> None:
        got = get(stub, key.format(p=prefix))
        assert got.value.type == pb.VALUE_TYPE_REGISTER
        assert got.value.register == value

    return check


def _check_counter(key: str, value: int) -> Callable[[Any, str], None]:
    def check(stub: Any, prefix: str) -> None:
        got = get(stub, key.format(p=prefix))
        assert (got.value.type, got.value.counter) == (pb.VALUE_TYPE_COUNTER, value)

    return check


ACCEPTED: dict[str, Accepted] = {
    "key of 1024 bytes": Accepted(
        lambda p: [set_op("K" * 1024, b"at-limit")], _check_register("K" * 1024, b"at-limit")
    ),
    "key of 1024 UTF-8 bytes in 512 characters": Accepted(
        lambda p: [incr_op("é" * 512, 4)], _check_counter("é" * 512, 4)
    ),
    "value of 1 MiB": Accepted(lambda p: [set_op(f"{p}/value", b"y" * MiB)], _check_register("{p}/value", b"y" * MiB)),
    "idempotency key of 128 bytes": Accepted(
        lambda p: [incr_op(f"{p}/idem", 9)], _check_counter("{p}/idem", 9), idempotency_key=b"k" * 128
    ),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_limit_itself_is_accepted(stub: Any, name: str) -> None:
    case = ACCEPTED[name]
    prefix = "ok/" + name.replace(" ", "-")
    resp = mutate(stub, case.ops(prefix), case.idempotency_key)
    assert resp.replayed is False
    case.check(stub, prefix)
    if case.idempotency_key:
        assert mutate(stub, case.ops(prefix), case.idempotency_key).replayed is True
        case.check(stub, prefix)


@pytest.mark.parametrize("keys", [1, 10_000], ids=["one key", "distinct keys"])
def test_batch_of_10000_operations_is_accepted(tmp_path: Path, keys: int) -> None:
    """A batch at the operation limit, on a store that has been written to before, as every real store has.

    On a server of its own: if the batch is slow it holds the node's one writer
    thread, and the module's server must not inherit that. The deadline is
    generous (a batch of 10,000 small operations is a few MB of work) and there
    only so that the test ends by itself.
    """
    proc = ServerProcess(tmp_path / "data", region="eu")
    try:
        proc.start()
        with grpc.insecure_channel(proc.addr) as channel:
            own: Any = kv_pb2_grpc.KVStub(channel)
            mutate(own, [set_op("earlier-write")])
            if keys == 1:
                ops = [incr_op("limit/ctr", 1) for _ in range(10_000)]
            else:
                ops = [set_op(f"limit/{i:05d}", str(i).encode()) for i in range(10_000)]
            answers: list[pb.MutateResponse] = []
            code, details = code_of(
                lambda: answers.append(own.Mutate(pb.MutateRequest(operations=ops), timeout=BIG_BATCH_TIMEOUT_S))
            )
            assert code == grpc.StatusCode.OK, f"a batch of 10,000 operations on {keys} key(s): {code.name} {details}"
            assert answers[0].replayed is False
            if keys == 1:
                assert get(own, "limit/ctr").value.counter == 10_000
            else:
                assert get(own, "limit/00000").value.register == b"0"
                assert get(own, "limit/09999").value.register == b"9999"
            assert_still_serving(own, "after-big-batch")
    finally:
        proc.kill()


# -- reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", INVALID),
        ("k" * 1025, INVALID),
        ("é" * 513, INVALID),
        ("k" * 1024, None),
        ("é" * 512, None),
    ],
    ids=["empty", "1025 bytes", "1026 UTF-8 bytes", "1024 bytes", "1024 UTF-8 bytes"],
)
def test_get_key_limits(stub: Any, key: str, code: grpc.StatusCode | None) -> None:
    if code is None:
        get(stub, key)  # answers (the key may or may not exist)
    else:
        got, details = code_of(lambda: get(stub, key))
        assert got == code, details
    assert_still_serving(stub, "case/get-" + str(len(key)))


@pytest.mark.parametrize(
    "token",
    ["abc", "é", "!!!!", "a b c d"],
    ids=["bad padding", "not ASCII", "outside the alphabet", "spaces"],
)
def test_bad_scan_page_token(stub: Any, token: str) -> None:
    mutate(stub, [set_op(f"scan-token/{i}") for i in range(3)])
    code, details = code_of(lambda: stub.Scan(pb.ScanRequest(prefix="scan-token/", page_token=token), timeout=30))
    assert code == INVALID, f"page_token {token!r}: {code.name} ({details})"
    assert "page_token" in details
    assert_still_serving(stub, "case/scan-token")


def test_issued_scan_token_still_works(stub: Any) -> None:
    mutate(stub, [set_op(f"scan-ok/{i}") for i in range(5)])
    first = stub.Scan(pb.ScanRequest(prefix="scan-ok/", limit=2), timeout=30)
    assert [e.key for e in first.entries] == ["scan-ok/0", "scan-ok/1"]
    rest = stub.Scan(pb.ScanRequest(prefix="scan-ok/", limit=10, page_token=first.next_page_token), timeout=30)
    assert [e.key for e in rest.entries] == ["scan-ok/2", "scan-ok/3", "scan-ok/4"]
    assert rest.next_page_token == ""


# -- bytes that are not a valid request ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("/crdtstore.v1.KV/Mutate", b"\xff\xff\xff\xff"),
        ("/crdtstore.v1.KV/Get", b"\x0a\x02\xff\xfe"),  # key: invalid UTF-8 in a string field
    ],
    ids=["Mutate corrupt wire format", "Get key not UTF-8"],
)
def test_undecodable_request_is_invalid_argument(server: ServerProcess, stub: Any, method: str, payload: bytes) -> None:
    """The contract: a malformed request is INVALID_ARGUMENT."""
    with grpc.insecure_channel(server.addr) as channel:
        raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        code, details = code_of(lambda: raw(payload, timeout=RPC_TIMEOUT_S))
    assert code == INVALID, f"{code.name}: {details}"
    assert_still_serving(stub, "case/undecodable")


def test_unknown_method_is_unimplemented(server: ServerProcess, stub: Any) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/crdtstore.v1.KV/Nope", request_serializer=None, response_deserializer=None
        )
        code, _ = code_of(lambda: raw(b"", timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert_still_serving(stub, "case/unimplemented")


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

GARBAGE: dict[str, bytes] = {
    "HTTP/1.1 GET": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "HTTP/1.1 POST with a body": b"POST /crdtstore.v1.KV/Get HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "random bytes": random.Random(1234).randbytes(4096),
    "random bytes after the HTTP/2 preface": _H2_PREFACE + random.Random(5678).randbytes(4096),
    "HTTP/2 frame header claiming a huge frame": _H2_PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
    "half of the HTTP/2 preface": _H2_PREFACE[:10],
    "nothing": b"",
    "TLS client hello": bytes.fromhex("16030100a5010000a10303") + random.Random(9).randbytes(160),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_on_the_port(server: ServerProcess, stub: Any, name: str) -> None:
    host, port = server.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(GARBAGE[name])
        sock.settimeout(0.5)  # quiet this long: the server answered what it would
        received = 0
        try:
            for _ in range(64):  # read what the server answers, boundedly, until it closes or goes quiet
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
        except (TimeoutError, ConnectionError):
            pass
    assert_still_serving(stub, "case/garbage-" + name.replace(" ", "-"))


def test_many_garbage_connections_at_once(server: ServerProcess, stub: Any) -> None:
    host, port = server.addr.rsplit(":", 1)
    rng = random.Random(42)
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(32)]
    try:
        for sock in socks:
            sock.sendall(rng.randbytes(rng.randrange(1, 2048)))
        assert_still_serving(stub, "case/garbage-many")
    finally:
        for sock in socks:
            sock.close()
    assert_still_serving(stub, "case/garbage-many-after")

"""What one register write costs, piece by piece: where the write path's time per operation goes.

Each piece of a durable register write, timed alone over 8,000 operations (the
best of five runs), in microseconds per operation: turning the protobuf into
an operation, validating it, fingerprinting it for idempotency, stamping it
with the hybrid logical clock, encoding the key's record, encoding its share
of the request's delta (with the delta's context), and one LMDB get and put
(no fsync). Their sum is the least a write costs in this Python, before gRPC,
the group commit and the fsync; the README's Benchmarks section sets it
beside the 5.1 us per operation that 0.25x of raw LMDB puts would leave.
Run it from the repository root::

    python -m benchmarks.write_pieces

It prints a table and figures nothing into the suite: it explains the node
group's batch figures, it does not replace them.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable

import lmdb

from crdtstore.crdt import CausalContext, Dot, HybridLogicalClock, encode_register_write, encode_register_writes
from crdtstore.node.service import operations_from_pb
from crdtstore.operations import Limits, SetRegister, fingerprint, validate
from crdtstore.storage.keys import lmdb_key
from crdtstore.storage.records import plain_record
from crdtstore.v1 import kv_pb2 as pb

OPERATIONS = 8_000
REPEATS = 5
VALUE = b"x" * 100


def pieces() -> dict[str, Callable[[], object]]:
    request = pb.MutateRequest(
        operations=[pb.Operation(key=f"key-{i:012d}", set=pb.SetRegister(value=VALUE)) for i in range(OPERATIONS)],
        idempotency_key=uuid.uuid4().bytes,
    )
    parsed = pb.MutateRequest.FromString(request.SerializeToString())
    ops = operations_from_pb(parsed)
    clock = HybridLogicalClock(lambda: time.time_ns() // 1_000_000)
    dots = [Dot("us#0123456789ab", 1_000 + i) for i in range(OPERATIONS)]
    keys = [op.key for op in ops if isinstance(op, SetRegister)]
    writes = [(key, dot, clock.now(), VALUE) for key, dot in zip(keys, dots, strict=True)]
    env = lmdb.open(tempfile.mkdtemp(prefix="crdtstore-write-pieces-"), map_size=1 << 30, sync=False, max_dbs=2)
    data = env.open_db(b"data")
    record = b"\x00" + encode_register_write(dots[0], writes[0][2], VALUE)

    def get_and_put() -> None:
        with env.begin(write=True) as txn:
            for op in ops:
                key = lmdb_key(op.key)
                txn.get(key, db=data)
                txn.put(key, record, db=data)

    return {
        "protobuf -> operations": lambda: operations_from_pb(parsed),
        "validate": lambda: validate(ops, parsed.idempotency_key, Limits()),
        "fingerprint (idempotency)": lambda: fingerprint(ops),
        "HLC stamp": lambda: [clock.now() for _ in range(OPERATIONS)],
        "encode the key's record": lambda: [plain_record(k, encode_register_write(d, t, v)) for k, d, t, v in writes],
        "its share of the delta and context": lambda: encode_register_writes(writes, CausalContext.from_dots(dots)),
        "LMDB get + put, no fsync": get_and_put,
    }


def best_us(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best / OPERATIONS * 1e6


def main() -> None:
    total = 0.0
    print(f"one register write, piece by piece (us per operation, best of {REPEATS} runs of {OPERATIONS:,})")
    for name, run in pieces().items():
        us = best_us(run)
        total += us
        print(f"  {name:<38} {us:5.2f}")
    print(f"  {'sum':<38} {total:5.2f}")


if __name__ == "__main__":
    main()

"""A do-nothing gRPC server of the KV service: the network and gRPC baseline of ``benchmarks.node``.

It implements ``crdtstore.v1.KV`` with ``grpc.aio`` and the generated
servicer, so requests are received and parsed into the very same protobuf
messages as by a node, and it answers with messages of the same shape and
size as a node's, without doing any work:

* ``Mutate`` returns ``MutateResponse(token=CausalToken(vector=<N zero bytes>))``,
  ``N`` being the size of a token the node under test returned (``--token-bytes``);
* ``Get`` returns a fixed ``GetResponse``: the serialized bytes of an answer the
  node gave for an existing key (``--get-response HEX``), parsed once at start;
* ``Scan`` returns an empty ``ScanResponse``.

Run by ``benchmarks.node`` as ``python benchmarks/echo_server.py --listen 127.0.0.1:0 ...``;
it prints ``listening on HOST:PORT`` once it serves, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from crdtstore.v1 import kv_pb2 as pb
from crdtstore.v1 import kv_pb2_grpc as pb_grpc

# The node's own message limits (crdtstore/node/main.py): 16 MiB of batch plus 1 MiB of framing.
_MESSAGE_MAX = 17 * 1024 * 1024


class EchoKV(pb_grpc.KVServicer):
    def __init__(self, mutate_response: pb.MutateResponse, get_response: pb.GetResponse) -> None:
        self._mutate_response = mutate_response
        self._get_response = get_response

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetResponse:
        return self._get_response

    async def Mutate(self, request: pb.MutateRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.MutateResponse:
        return self._mutate_response

    async def Scan(self, request: pb.ScanRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ScanResponse:
        return pb.ScanResponse()


async def serve(listen: str, mutate_response: pb.MutateResponse, get_response: pb.GetResponse) -> int:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MESSAGE_MAX),
            ("grpc.max_send_message_length", _MESSAGE_MAX),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_KVServicer_to_server(EchoKV(mutate_response, get_response), server)
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rpartition(":")[0]
    print(f"echo: listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--token-bytes", type=int, default=8, help="size of the token Mutate answers with")
    parser.add_argument("--get-response", default="", metavar="HEX", help="serialized GetResponse to answer Get with")
    args = parser.parse_args(argv)
    mutate_response = pb.MutateResponse(token=pb.CausalToken(vector=bytes(args.token_bytes)))
    get_response = pb.GetResponse.FromString(bytes.fromhex(args.get_response))
    return asyncio.run(serve(args.listen, mutate_response, get_response))


if __name__ == "__main__":
    sys.exit(main())

"""The node's side of the Admin RPCs Backup, Digest and BucketKeys: protobuf <-> ``crdtstore.storage.backup``.

The Admin servicer (``crdtstore.node.service``) checks the caller's
``admin`` right and hands each request here. The blocking LMDB work runs on
threads: the copy on its own thread writing into a pipe, each chunk read
from the pipe on a worker, so the event loop never waits on the disk and the
node holds at most one chunk per backup in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

import crdtstore
from crdtstore.crdt import CodecError, VersionVector, decode_as, encode
from crdtstore.node.requests import abort as _abort
from crdtstore.node.values import key_value_pb
from crdtstore.storage import LmdbStore, StorageError
from crdtstore.storage.backup import (
    DIGEST_BYTES,
    BackupFacts,
    BucketKey,
    bucket_keys,
    check_buckets,
    copy_chunks,
    store_facts,
)
from crdtstore.tokens import describe_behind, events_behind
from crdtstore.v1 import kv_pb2 as pb

__all__ = ["BackupService"]

CHUNK_BYTES_DEFAULT = 1024 * 1024
CHUNK_BYTES_MAX = 4 * 1024 * 1024
BUCKET_PAGE_DEFAULT = 256
BUCKET_PAGE_MAX = 10_000
# A set listed by BucketKeys with more members than this is shown without them (its digest and dots still are).
BUCKET_KEY_MEMBERS_MAX = 256
# Backups at once on one node: each holds a read transaction (which keeps the map from growing) and a thread.
BACKUPS_MAX = 1


def _digests_pb(digests: tuple[int, ...]) -> list[bytes]:
    return [d.to_bytes(DIGEST_BYTES, "big") for d in digests]


def summary_pb(facts: BackupFacts, sha256: bytes, size: int) -> pb.BackupSummary:
    return pb.BackupSummary(
        region=facts.region,
        origin=facts.origin,
        version=crdtstore.__version__,
        storage_format=facts.storage_format,
        token=pb.CausalToken(vector=encode(facts.context.vv)),
        hlc_wall_ms=facts.hlc.wall_ms,
        hlc_logical=facts.hlc.logical,
        keys=facts.keys,
        bucket_digests=_digests_pb(facts.bucket_digests),
        data_sha256=sha256,
        data_bytes=size,
    )


def _bucket_key_pb(item: BucketKey) -> pb.BucketKey:
    return pb.BucketKey(
        entry=key_value_pb(item.key, item.state, item.omitted_members),
        digest=item.digest.to_bytes(DIGEST_BYTES, "big"),
        bucket=item.bucket,
        dots=[pb.DotSummary(origin=d.origin, count=d.count, max_counter=d.max_counter) for d in item.dots],
    )


class BackupService:
    """Backup, Digest and BucketKeys over one store; ``wait_seen`` waits until the node has seen a vector."""

    def __init__(
        self,
        store: LmdbStore,
        wait_seen: Callable[[VersionVector, float], Awaitable[bool]],
        page_bytes_max: int = 4 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.wait_seen = wait_seen
        self.page_bytes_max = page_bytes_max  # a BucketKeys page's states, encoded ([server] scan_page_bytes_max)
        self._running = threading.BoundedSemaphore(BACKUPS_MAX)

    async def backup(
        self, request: pb.BackupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BackupChunk]:
        chunk_bytes = request.chunk_bytes or CHUNK_BYTES_DEFAULT
        if chunk_bytes > CHUNK_BYTES_MAX:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk_bytes {chunk_bytes} is above the most one message may carry ({CHUNK_BYTES_MAX}); "
                f"use 0 for the default",
            )
        if not self._running.acquire(blocking=False):
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "a backup of this node is already running; wait for it to finish and try again",
            )
        chunks = copy_chunks(self.store, chunk_bytes)
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                # Shielded: if the call is cancelled, the read under way finishes before the generator is closed.
                pending = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
                try:
                    item = await asyncio.shield(pending)
                except StorageError as exc:
                    await _abort(context, grpc.StatusCode.INTERNAL, f"{exc}; nothing usable was sent: run it again")
                if item is None:
                    break
                if isinstance(item, bytes):
                    yield pb.BackupChunk(data=item)
                else:
                    facts, sha256, size = item
                    yield pb.BackupChunk(summary=summary_pb(facts, sha256, size))
        finally:
            try:
                # The receiver may have gone away mid-copy: closing the generator ends the copy and its transaction.
                # Shielded again, and until it is done: a second cancellation (the server stopping) must not leave
                # the copy running while the generator is closed under it.
                while pending is not None and not pending.done():
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(pending)
                await asyncio.to_thread(chunks.close)
            finally:  # even if cancelled again meanwhile: else every later backup would be refused as running
                self._running.release()

    async def digest(self, request: pb.DigestRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DigestResponse:
        if request.after.vector:
            try:
                after = decode_as(request.after.vector, VersionVector)
            except CodecError:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the after token is not one crdtstore issued")
            remaining = context.time_remaining()
            wait_s = 30.0 if remaining is None else max(0.0, remaining - min(0.5, remaining / 10))
            if not await self.wait_seen(after, wait_s):
                behind = events_behind(self.store.context.vv, after)
                lag = f": it is {describe_behind(behind)}" if behind else ""
                await _abort(
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"region {self.store.region} has not yet seen the token{lag}; replication has not brought it "
                    f"that far yet",
                )
        facts = await asyncio.to_thread(store_facts, self.store)
        return pb.DigestResponse(
            region=facts.region,
            token=pb.CausalToken(vector=encode(facts.context.vv)),
            bucket_digests=_digests_pb(facts.bucket_digests),
            keys=facts.keys,
        )

    async def bucket_keys(
        self, request: pb.BucketKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BucketKeysResponse:
        try:
            buckets = check_buckets(list(request.buckets))
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not buckets:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "name at least one bucket")
        page_size = request.page_size or BUCKET_PAGE_DEFAULT
        if page_size > BUCKET_PAGE_MAX:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size {page_size} is above {BUCKET_PAGE_MAX}")
        try:
            after = base64.urlsafe_b64decode(request.page_token.encode("ascii")) if request.page_token else b""
        except (binascii.Error, ValueError, UnicodeEncodeError):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one BucketKeys returned")
        items, last, context_read = await asyncio.to_thread(
            bucket_keys, self.store, buckets, after, page_size, BUCKET_KEY_MEMBERS_MAX, bytes_max=self.page_bytes_max
        )
        return pb.BucketKeysResponse(
            keys=[_bucket_key_pb(item) for item in items],
            next_page_token=base64.urlsafe_b64encode(last).decode("ascii") if last else "",
            token=pb.CausalToken(vector=encode(context_read.vv)),
        )

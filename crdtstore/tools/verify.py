"""``crdtstore verify``: prove that regions agree, key by key, or name each key on which they differ.

Regions are compared at a common causal point when they can be brought to
one: the tool reads each region's vector, joins them into one token, and
asks every region for its bucket digests once it has seen that token (the
Admin RPC ``Digest`` with ``after``, which waits within the deadline). If
writes go on meanwhile, the regions answer at vectors past the token that
differ; the tool joins those and asks again, until every region answers at
the same vector or the deadline passes. Then:

* equal digests in every bucket: the regions hold the same state (but for a
  128-bit hash collision); ``agree``, exit 0;
* some buckets differ, at one vector: ``drift``, exit 1, with every key of
  those buckets whose digest differs between regions (or that some region
  lacks), each region's value and dot summary (``BucketKeys``, paged, the
  regions' pages merged in key order, so memory holds a page per region);
* at different vectors (writes never paused long enough): the comparison is
  reported as made "at different points" (the differing keys listed, or
  that the digests were equal there), and exit 2 either way: the regions
  could not be brought to a common point, so neither a difference nor an
  equality there proves anything;
* a region that cannot be reached, or that has not seen the token within
  the deadline: exit 2.

A region's own periodic check of itself against its peers is the node's
convergence SLI (``crdtstore_convergence_agreed{peer}``,
``crdtstore_convergence_last_agreed_timestamp_seconds{peer}``,
``crdtstore_convergence_checks_total{peer,result}``); this tool is the
operator's check on demand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from crdtstore.client import Client, ClientError, _entry_from_proto
from crdtstore.crdt import VersionVector, decode_as, encode
from crdtstore.storage.keys import lmdb_key
from crdtstore.v1 import kv_pb2

__all__ = ["AGREE", "DRIFT", "NO_COMMON_POINT", "Comparison", "compare_regions"]

AGREE, DRIFT, NO_COMMON_POINT = 0, 1, 2
_RESULTS = {AGREE: "agree", DRIFT: "drift", NO_COMMON_POINT: "no_common_point"}


@dataclass
class Comparison:
    """What ``compare_regions`` found; ``exit_code`` is the command's exit status."""

    exit_code: int
    common_point: bool
    regions: dict[str, dict[str, Any]]  # address -> {"region", "vector"}
    vector: dict[str, int] | None = None  # the common vector compared at, when there was one
    differing_buckets: list[int] = field(default_factory=list)
    diverging: list[dict[str, Any]] = field(default_factory=list)
    diverging_omitted: int = 0
    message: str = ""
    bytes_received: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "result": _RESULTS[self.exit_code],
            "common_point": self.common_point,
            "vector": self.vector,
            "regions": self.regions,
            "differing_buckets": len(self.differing_buckets),
            "diverging": self.diverging,
            "diverging_omitted": self.diverging_omitted,
            "message": self.message,
            "bytes_received": self.bytes_received,
            "seconds": round(self.seconds, 3),
        }


def _vector(token: kv_pb2.CausalToken) -> VersionVector:
    return decode_as(bytes(token.vector), VersionVector)


def _join(vectors: Sequence[VersionVector]) -> VersionVector:
    joined = VersionVector()
    for v in vectors:
        joined = joined.join(v)
    return joined


class _Fetch:
    """The digests and keys of each region, counting the bytes received."""

    def __init__(self, clients: dict[str, Client], page_size: int) -> None:
        self.clients = clients
        self.page_size = page_size
        self.bytes_received = 0
        self._lock = threading.Lock()

    def digest(self, addr: str, after: VersionVector | None, timeout_s: float) -> kv_pb2.DigestResponse:
        resp = self.clients[addr].digest(after=encode(after) if after else None, timeout_s=timeout_s)
        with self._lock:
            self.bytes_received += resp.ByteSize()
        return resp

    def digests(
        self, addrs: list[str], after: VersionVector | None, deadline: float
    ) -> dict[str, kv_pb2.DigestResponse]:
        """Every region's digests, asked at once (each region reads its own store meanwhile)."""
        timeout_s = max(0.1, deadline - time.monotonic())
        with ThreadPoolExecutor(max_workers=len(addrs)) as pool:
            futures = {addr: pool.submit(self.digest, addr, after, timeout_s) for addr in addrs}
            return {addr: future.result() for addr, future in futures.items()}

    def keys(self, addr: str, buckets: list[int]) -> Iterator[kv_pb2.BucketKey]:
        token = ""
        while True:
            resp = self.clients[addr].bucket_keys(buckets, page_size=self.page_size, page_token=token)
            self.bytes_received += resp.ByteSize()
            yield from resp.keys
            token = resp.next_page_token
            if not token:
                return


def _at_common_point(
    fetch: _Fetch, addrs: list[str], deadline: float
) -> tuple[dict[str, kv_pb2.DigestResponse], bool, str]:
    """Digests of every region, at one vector if it can be had before ``deadline``; (answers, common?, why not)."""
    answers = fetch.digests(addrs, None, deadline)
    while True:
        vectors = {addr: _vector(a.token) for addr, a in answers.items()}
        if len(set(vectors.values())) == 1:
            return answers, True, ""
        if time.monotonic() >= deadline:
            return answers, False, "writes went on: the regions answered at different vectors until the deadline"
        target = _join(list(vectors.values()))
        try:
            answers = fetch.digests(addrs, target, deadline)
        except ClientError as err:
            if err.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            return answers, False, f"a region did not reach the regions' joined vector in time: {err.message}"


def _dots_json(item: kv_pb2.BucketKey) -> list[dict[str, Any]]:
    return [{"origin": d.origin, "count": d.count, "max_counter": d.max_counter} for d in item.dots]


def _key_json(item: kv_pb2.BucketKey | None) -> dict[str, Any]:
    if item is None:
        return {"present": False}
    # Imported here: the command line imports this module.
    from crdtstore.cli import entry_json  # noqa: PLC0415

    out: dict[str, Any] = {"present": True, **entry_json(_entry_from_proto(item.entry))}
    out.pop("key", None)
    out["dots"] = _dots_json(item)
    out["digest"] = bytes(item.digest).hex()
    return out


def _diverging_keys(
    fetch: _Fetch, addrs: list[str], names: dict[str, str], buckets: list[int], keys_max: int
) -> tuple[list[dict[str, Any]], int]:
    """The keys of ``buckets`` on which the regions differ: each region's pages merged in key order."""
    streams = {addr: fetch.keys(addr, buckets) for addr in addrs}
    heads: dict[str, kv_pb2.BucketKey | None] = {addr: next(s, None) for addr, s in streams.items()}
    out: list[dict[str, Any]] = []
    omitted = 0
    while any(h is not None for h in heads.values()):
        order = {addr: lmdb_key(h.entry.key) for addr, h in heads.items() if h is not None}
        first = min(order.values())
        at = {addr: heads[addr] if order.get(addr) == first else None for addr in addrs}
        digests = {bytes(item.digest) if item is not None else None for item in at.values()}
        if len(digests) > 1:
            if len(out) < keys_max:
                key = next(item for item in at.values() if item is not None).entry.key
                out.append({"key": key, "regions": {names[addr]: _key_json(item) for addr, item in at.items()}})
            else:
                omitted += 1
        for addr, item in at.items():
            if item is not None:
                heads[addr] = next(streams[addr], None)
    return out, omitted


def compare_regions(
    clients: dict[str, Client], *, deadline_s: float = 30.0, page_size: int = 0, keys_max: int = 1000
) -> Comparison:
    """Compare the regions behind ``clients`` (address -> client); see the module docstring."""
    started = time.monotonic()
    addrs = list(clients)
    fetch = _Fetch(clients, page_size)
    try:
        answers, common, why = _at_common_point(fetch, addrs, started + deadline_s)
    except ClientError as err:
        return Comparison(
            NO_COMMON_POINT,
            False,
            {},
            message=f"a region could not be asked for its digests ({err.code.name}): {err.message}",
            bytes_received=fetch.bytes_received,
            seconds=time.monotonic() - started,
        )
    regions = {
        addr: {"region": a.region, "vector": dict(sorted(_vector(a.token).items()))} for addr, a in answers.items()
    }
    names = {addr: f"{a.region}@{addr}" for addr, a in answers.items()}
    digests = {addr: list(a.bucket_digests) for addr, a in answers.items()}
    buckets = len(next(iter(digests.values())))
    differing = [b for b in range(buckets) if len({bytes(d[b]) for d in digests.values()}) > 1]
    result = Comparison(
        # Equal digests at different points prove nothing about a common point: a health check on the
        # exit code must see a region that could not be brought there (found in review).
        AGREE if common else NO_COMMON_POINT,
        common,
        regions,
        vector=dict(sorted(_vector(answers[addrs[0]].token).items())) if common else None,
        differing_buckets=differing,
        message="" if common else f"compared at different points: {why}",
    )
    if differing:
        try:
            result.diverging, result.diverging_omitted = _diverging_keys(fetch, addrs, names, differing, keys_max)
        except ClientError as err:
            result.message = f"a region could not list its keys ({err.code.name}): {err.message}"
        else:
            if not result.diverging and not result.diverging_omitted:
                result.message = (
                    f"{len(differing)} bucket(s) differed, but their keys, read after the digests, no longer "
                    f"do (changed meanwhile?): run verify again. {result.message}"
                ).strip()
        result.exit_code = DRIFT if common else NO_COMMON_POINT
    result.bytes_received = fetch.bytes_received
    result.seconds = time.monotonic() - started
    return result


def render(result: Comparison) -> str:
    """The human form of a comparison."""
    lines: list[str] = []
    where = "at different points" if not result.common_point else f"at {json.dumps(result.vector, sort_keys=True)}"
    if result.exit_code == AGREE:
        lines.append(f"agree {where} ({len(result.regions)} regions)")
    elif not result.regions:
        lines.append(f"could not compare: {result.message}")
    else:
        verdict = "drift" if result.exit_code == DRIFT else "no common point"
        count = len(result.diverging) + result.diverging_omitted
        lines.append(f"{verdict}: {count} key(s) differ in {len(result.differing_buckets)} bucket(s), {where}")
        for item in result.diverging:
            lines.append(f"key {json.dumps(item['key'])}")
            for region, seen in item["regions"].items():
                if not seen["present"]:
                    lines.append(f"  {region}: (missing)")
                    continue
                shown = {k: v for k, v in seen.items() if k not in ("present", "dots", "digest")}
                dots = ", ".join(f"{d['origin']}: {d['count']} up to {d['max_counter']}" for d in seen["dots"])
                lines.append(f"  {region}: {json.dumps(shown, sort_keys=True)} dots [{dots}]")
        if result.diverging_omitted:
            lines.append(f"... and {result.diverging_omitted} more key(s) (raise --keys-max to list them)")
    if result.message and result.exit_code != AGREE:
        lines.append(result.message)
    if result.exit_code == AGREE and not result.common_point:
        lines.append(result.message)
    return "\n".join(lines)

"""Repair: the digests of the key buckets, and state transfers, spooled from one read and joined at once.

A peer below what was trimmed from the log is repaired by state transfer: the
sender spools its whole state from one read (``spool_snapshot``, with each
bucket's digest), the peer says which buckets differ, and only their keys
travel, in pages the receiver stages in ``incoming`` (``stage_snapshot``) and
joins in one transaction once the last one arrives (``finish_snapshot``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import lmdb
import msgpack

from crdtstore.crdt import CausalContext, CodecError, KeyState, VersionVector, decode_as, encode
from crdtstore.replica.wire import DIGEST_BUCKETS
from crdtstore.storage.environment import _META_HORIZON, StoreEnvironment
from crdtstore.storage.errors import StaleTransfer, StoreFull
from crdtstore.storage.keys import (
    _digests,
    bucket_of,
    lmdb_key,
)


class StateTransfer(StoreEnvironment):
    """Sending (``spool_snapshot``, ``bucket_digests``) and receiving (``stage_snapshot`` and on) state transfers."""

    def spool_snapshot(self, path: Path) -> tuple[CausalContext, int, list[int]]:
        """Write every key's state, from one consistent read, to the file ``path``.

        Returns the context of the read, the number of keys, and the digest
        of each of ``DIGEST_BUCKETS`` key buckets (see ``bucket_digests``),
        computed from the same read. The file is a stream of msgpack
        ``[key, state]`` pairs, for a repair to send at the peer's pace.
        Reading into a local file keeps the read transaction (which pins LMDB
        pages and holds off map growth) as short as a sequential copy.
        """
        packer = msgpack.Packer(use_bin_type=True)
        count = 0
        with self._gate.read(), self.env.begin() as txn, Path(path).open("wb") as out:
            context = self._context_in(txn)

            def spooled() -> Iterator[tuple[bytes, str, bytes]]:
                nonlocal count
                for pair in self._records(txn).pairs():
                    out.write(packer.pack([pair[1], pair[2]]))
                    count += 1
                    yield pair

            digests = _digests(spooled())
            out.flush()
        return context, count, digests

    def bucket_digests(self) -> list[int]:
        """Per bucket of keys, the XOR of a 128-bit hash of each (key, encoded state) in it.

        Two stores have equal digests for a bucket exactly when (but for a
        hash collision) they hold the same keys with the same states in it: the
        encoding is canonical, so equal states are equal bytes.
        """
        with self._gate.read(), self.env.begin() as txn:
            return _digests(self._records(txn).pairs())

    def stage_snapshot(self, source: str, transfer: int, keys: Sequence[tuple[str, bytes]]) -> None:
        """Keep one page of state transfer number ``transfer`` from ``source`` until it is complete.

        Pages of different transfers never mix, even if a late page of an
        abandoned transfer arrives after a new one began.
        """
        prefix = _transfer_prefix(source, transfer)
        while True:
            try:
                with self.env.begin(write=True, db=self.incoming) as txn:
                    for key, body in keys:
                        txn.put(prefix + lmdb_key(key), msgpack.packb([key, body], use_bin_type=True))
                return
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def discard_snapshot(self, source: str) -> None:
        """Forget every state transfer from ``source`` that will not be completed."""
        prefix = source.encode("utf-8") + b"\x00"
        with self.env.begin(write=True, db=self.incoming) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                found = cursor.delete()

    def finish_snapshot(
        self,
        source: str,
        transfer: int,
        context: CausalContext,
        buckets: frozenset[int] | None = None,
        expected: Sequence[int] | None = None,
    ) -> int:
        """Join the staged state transfer ``transfer`` from ``source``, read at ``context``, in one transaction.

        Every key of the transfer is joined into this node's state, and every
        key of this node that the transfer lacks is joined with nothing, so
        what the sender had removed (its context covers it) goes here too,
        while what the sender never saw stays. That is the full state join,
        key by key. With ``buckets``, the transfer covers only those key
        buckets (the others were equal on both sides when compared), and only
        this node's keys in them are visited; ``expected`` (the sender's
        digests) must still match this node's in every other bucket, or the
        transfer is refused with ``StaleTransfer``. This node's context becomes the join of both; the events
        it now has without their log entries move the log horizon, so a peer
        that needs them from here is repaired in turn. Returns the keys changed.
        """
        prefix = _transfer_prefix(source, transfer)
        while True:
            try:
                return self._finish_snapshot(prefix, context, buckets, expected)
            except lmdb.MapFullError:
                if not self._grow():
                    raise StoreFull(self._full_message()) from None

    def _finish_snapshot(
        self, prefix: bytes, remote: CausalContext, buckets: frozenset[int] | None, expected: Sequence[int] | None
    ) -> int:
        changed = 0
        with self.env.begin(write=True) as txn:
            local = self._context_in(txn)
            # Read before anything is joined: the skipped buckets' check and the own keys to visit.
            own = list(self._records(txn).pairs())
            if buckets is not None and len(buckets) < DIGEST_BUCKETS:
                _check_buckets_unchanged(own, buckets, expected)
            staged: set[bytes] = set()
            cursor = txn.cursor(db=self.incoming)
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                key, body = msgpack.unpackb(bytes(cursor.value()))
                if buckets is not None and bucket_of(key) not in buckets:
                    raise CodecError(f"a transferred key {key[:40]!r} is outside the buckets of the transfer")
                theirs = decode_as(body, KeyState)
                if not all(remote.contains(dot) for dot in theirs.dots()):
                    raise CodecError(f"a transferred key {key[:40]!r} holds an event outside the transfer's context")
                db_key = lmdb_key(key)
                staged.add(db_key)
                changed += self._join_key(txn, db_key, key, theirs, local=local, remote=remote)
                found = cursor.delete()
            for db_key, key, _ in own:
                if db_key in staged or (buckets is not None and bucket_of(key) not in buckets):
                    continue
                changed += self._join_key(txn, db_key, key, KeyState(), local=local, remote=remote)
            context = local.join(remote)
            # Events this node now has without their log entries: a peer
            # below them must be repaired from here too.
            gained = {r: n for r, n in remote.vv.items() if n > local.vv.get(r)}
            horizon = self._horizon.join(VersionVector(gained))
            self._put_context(txn, context)
            txn.put(_META_HORIZON, encode(horizon), db=self.meta)
        self._context = context
        self._horizon = horizon
        return changed

    def _join_key(
        self,
        txn: lmdb.Transaction,
        db_key: bytes,
        key: str,
        theirs: KeyState,
        *,
        local: CausalContext,
        remote: CausalContext,
    ) -> int:
        records = self._records(txn)
        found, stored = records.load(key)
        current = found or KeyState()
        joined = current.join(theirs, local, remote)
        if joined == current:
            return 0
        records.store(key, joined, stored, allocate=self._set_ids(txn))
        return 1


def _check_buckets_unchanged(
    own: Iterable[tuple[bytes, str, bytes]], covered: frozenset[int], expected: Sequence[int] | None
) -> None:
    """The buckets a transfer skips must still equal the sender's, or joining its context would be wrong.

    They were skipped because this node's state in them equalled the
    sender's when compared. If this node has changed them since (an entry
    arrived), it may now hold events the sender's context says were
    removed, and the join would keep them while claiming the removal:
    the transfer is refused, and the next round compares again.
    """
    if expected is None or len(expected) != DIGEST_BUCKETS:
        raise StaleTransfer("a transfer that covers only some buckets needs the sender's digests")
    digests = _digests(own)
    changed = [i for i in range(DIGEST_BUCKETS) if i not in covered and digests[i] != expected[i]]
    if changed:
        raise StaleTransfer(f"{len(changed)} bucket(s) changed here since they were compared")


def _transfer_prefix(source: str, transfer: int) -> bytes:
    return source.encode("utf-8") + b"\x00" + transfer.to_bytes(8, "big")

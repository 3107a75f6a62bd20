"""A change-feed consumer that keeps a SQLite table equal to a prefix of the store, exactly once.

The rows and the stream's token are written in one SQLite transaction,
committed only where the stream hands out a token that may be kept (the end
of a request's group of changes, the end of a snapshot, a progress message).
A consumer killed at any point restarts from the token it committed, in this
region or any other: what it had applied past that token was rolled back with
the transaction, and comes again; what it committed is never sent again. That
is exactly-once end to end, with no deduplication table.

    with Client("127.0.0.1:7420") as kv:
        SqliteProjection("orders.db", "orders/").follow(kv, addresses=["eu:7420", "us:7420"])

The README's example is this loop, shortened. The tests run this one under
partitions and kill -9 (``tests/test_watch_e2e.py``); with ``record_dots``
it also keeps each delivered event's dot with a uniqueness constraint, so a
change delivered twice would fail the transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from crdtstore.client import Change, Client, Entry, ResetBegin, WatchItem

__all__ = ["SqliteProjection", "row_value"]


def row_value(entry: Entry) -> str:
    """A key's visible value as the projection stores it (JSON): registers as text or hex, sets sorted."""
    value = entry.value
    shown: object
    if isinstance(value, bytes):
        try:
            shown = value.decode("utf-8")
        except UnicodeDecodeError:
            shown = {"hex": value.hex()}
    elif isinstance(value, frozenset):
        shown = sorted(value)
    else:
        shown = value
    return json.dumps({"type": entry.type, "value": shown}, sort_keys=True)


class SqliteProjection:
    def __init__(self, path: str | Path, prefix: str, *, record_dots: bool = False) -> None:
        self.prefix = prefix
        self.record_dots = record_dots
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS feed (id INTEGER PRIMARY KEY CHECK (id = 1), token BLOB)")
        if record_dots:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS dots "
                "(origin TEXT, counter INTEGER, key TEXT, PRIMARY KEY (origin, counter, key))"
            )
        self.db.commit()

    @property
    def token(self) -> bytes | None:
        row = self.db.execute("SELECT token FROM feed WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def rows(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM rows"))

    def apply(self, item: WatchItem) -> bytes | None:
        """Apply one item inside the open transaction; commit it with the token when one may be kept (returned)."""
        if isinstance(item, ResetBegin):
            # The snapshot replaces everything under the prefix; until its end is committed, nothing of it shows.
            self.db.execute("DELETE FROM rows WHERE substr(key, 1, ?) = ?", (len(self.prefix), self.prefix))
            if self.record_dots:
                self.db.execute("DELETE FROM dots")  # after a reset an event may come again
            return None
        if isinstance(item, Change):
            if item.entry.exists:
                self.db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?)", (item.key, row_value(item.entry)))
            else:
                self.db.execute("DELETE FROM rows WHERE key = ?", (item.key,))
            if self.record_dots and item.counter:
                self.db.execute("INSERT INTO dots VALUES (?, ?, ?)", (item.origin, item.counter, item.key))
            if not item.group_end:
                return None
        token = item.token
        self.db.execute("INSERT OR REPLACE INTO feed VALUES (1, ?)", (token,))
        self.db.commit()
        return token

    def follow(
        self,
        client: Client,
        *,
        addresses: Sequence[str] | None = None,
        progress_interval_ms: int = 0,
        stop: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Apply the prefix's changes from the committed token on; returns once ``stop(token)`` says so."""
        items = client.watch(
            self.prefix, after=self.token, addresses=addresses, progress_interval_ms=progress_interval_ms
        )
        with contextlib.closing(items):  # ends the stream when this returns
            for item in items:
                token = self.apply(item)
                if token is not None and stop is not None and stop(token):
                    return

    def close(self) -> None:
        self.db.rollback()  # what was not committed with a token is left for the next run to receive again
        self.db.close()

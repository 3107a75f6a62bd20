"""Hybrid logical clock timestamps: the TIMESTAMP value.

    TIMESTAMP  [wall_ms, logical]    both non-negative

A register entry holds its timestamp's two integers inline (see ``dotfun``).
TIMESTAMP has no fast reader: nothing reads many of them.
"""

from __future__ import annotations

from typing import Any

from crdtstore.crdt.codec.base import Layout, Tag, array, uint
from crdtstore.crdt.hlc import Timestamp


def write_timestamp(obj: Timestamp) -> list[Any]:
    return [obj.wall_ms, obj.logical]


def read_timestamp(body: Any) -> Timestamp:
    wall, logical = array(body, "timestamp", 2)
    return Timestamp(uint(wall, "wall_ms"), uint(logical, "logical"))


LAYOUTS = [Layout(Tag.TIMESTAMP, Timestamp, write_timestamp, read_timestamp, None)]

"""Backup, restore and cross-region verification (docs/backup.md).

* ``manifest``  a backup directory's manifest, and checking a backup from its own bytes
* ``take``      ``crdtstore backup``: streaming a node's backup into a directory
* ``restore``   ``crdtstore restore``: laying a checked backup down as a new data directory
* ``rpc``       the node's side of the Admin RPCs Backup, Digest and BucketKeys

The storage side (the compacting copy of one read transaction, the facts read
with it, the keys of a bucket) is ``crdtstore.storage.backup``; the
comparison of regions is ``crdtstore.tools.verify``.
"""

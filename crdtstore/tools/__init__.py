"""Tools that run beside nodes and that the node itself never imports.

* ``crdtstore.tools.demo``: ``crdtstore demo``, several real regions on one machine.
* ``crdtstore.tools.proxy``: a TCP link proxy that delays, cuts and heals a
  link between regions (the demo's ``--latency-ms``, the tests' and chaos
  runs' partitions, the replication benchmark).
"""

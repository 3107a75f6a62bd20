"""Access control: who is calling (tokens), and what they may do (roles of grants on key prefixes).

``policy`` is the pure decision; ``tokens`` signs and verifies JWTs with
PyJWT. The node's adapter, which reads roles and revocations from the store's
system keyspace and checks every RPC, is ``crdtstore.node.access``.
"""

"""The replication protocol as a state machine without I/O (see ``core``)."""

"""crdtstore: a leaderless, multi-region, durable key-value store whose values are CRDTs."""

__version__ = "0.1.0"

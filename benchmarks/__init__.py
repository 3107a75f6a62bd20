"""Benchmarks of crdtstore (run them as modules, e.g. ``python -m benchmarks.micro``)."""

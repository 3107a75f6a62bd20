"""Benchmarks of crdtstore.

``python -m benchmarks run [--quick] [--only NAME,...] --out DIR`` runs every group and writes
``results.json``, ``REPORT.md`` and plots (``benchmarks/suite.py``); each group also runs on its own
and prints its detailed tables, e.g. ``python -m benchmarks.micro``.
"""

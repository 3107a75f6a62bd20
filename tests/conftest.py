"""Hypothesis profiles.

* ``ci`` (the default): 500 examples per property, no deadline (the machine is
  shared and noisy; speed is measured in ``benchmarks/``, never asserted here).
* ``thorough``: 10,000 examples per property, for a long local run:
  ``HYPOTHESIS_PROFILE=thorough pytest tests/test_laws.py``.
* ``dev``: 50 examples, for a quick edit-and-run loop.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=500, **_common)  # type: ignore[arg-type]
settings.register_profile("thorough", max_examples=10_000, **_common)  # type: ignore[arg-type]
settings.register_profile("dev", max_examples=50, **_common)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""How the suite is split, and the Hypothesis profiles.

Markers (registered in ``pyproject.toml``; ``--strict-markers`` is on):

* ``processes``: the test starts real OS processes (``crdtstore serve`` nodes,
  the CLI, the demo, another interpreter). Such tests run in the default run.
* ``slow``: a long variant of something the default run already checks in a
  short form (many kill -9 cycles, a long chaos run, a many-seed simulator
  sweep). Skipped, with a visible reason in the summary, unless the run asks
  for them: ``--run-slow``, or a ``-m`` expression that names ``slow``.
* ``hypothesis``: added by Hypothesis's own plugin to every ``@given`` test;
  this file adds it to the stateful (``RuleBasedStateMachine``) tests too, so
  ``-m hypothesis`` selects every property.

The runs:

* ``pytest`` (the README's command): every part, slow variants skipped,
  Hypothesis profile ``default``. Within 5 minutes on a 2-core machine
  (about 2.5 minutes here).
* ``pytest -m "not slow and not processes"``: the fast edit-and-run loop.
* ``.ci/run`` runs the README's command and then the long runs:
  ``HYPOTHESIS_PROFILE=ci pytest -m hypothesis`` (every property again, with
  500 examples) and ``pytest -m slow`` (the long variants).

Every run is spread over pytest-xdist workers (``-n auto`` in
``pyproject.toml``: one per core, at most four, see
``pytest_xdist_auto_num_workers``), a file's tests in one worker. Tests must
not share anything outside their own temporary directories and ports: names of
network namespaces carry the worker's pid. ``pytest -n 0`` runs in one process.

Hypothesis profiles (``HYPOTHESIS_PROFILE`` picks one; ``default`` otherwise).
None has a deadline: the machine is shared and noisy, and speed is measured in
``benchmarks/``, never asserted here.

* ``default``: 100 examples per property.
* ``ci``: 500 examples per property, the long pass of ``.ci/run``.
* ``thorough``: 10,000 examples per property, for a long local run:
  ``HYPOTHESIS_PROFILE=thorough pytest -m hypothesis`` (about an hour and a
  half here, most of it ``tests/test_laws.py``).
* ``dev``: 50 examples, for a quick edit-and-run loop.

Tests that set ``max_examples`` themselves (their examples open real LMDB
environments) give it as it is under ``ci`` and scale it to the loaded profile
(``crdtstore.testing.strategies.examples``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine

_common = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("default", max_examples=100, **_common)  # type: ignore[arg-type]
settings.register_profile("ci", max_examples=500, **_common)  # type: ignore[arg-type]
settings.register_profile("thorough", max_examples=10_000, **_common)  # type: ignore[arg-type]
settings.register_profile("dev", max_examples=50, **_common)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (the long kill -9, chaos and simulator runs)",
    )


@pytest.hookimpl(optionalhook=True)  # the suite still runs where pytest-xdist is not installed (-p no:xdist)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker per core, at most four: each worker may run several node processes at once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def _slow_requested(config: pytest.Config) -> bool:
    markexpr = str(config.getoption("markexpr") or "")
    return bool(config.getoption("--run-slow")) or "slow" in markexpr


# Runs before pytest's own -m selection (a conftest hook is called before the builtin plugins' hooks).
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = _slow_requested(config)
    skip_slow = pytest.mark.skip(reason="slow: a long variant; run with --run-slow or -m slow (.ci/run does)")
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and issubclass(cls, RuleBasedStateMachine.TestCase):
            item.add_marker("hypothesis")
        if not run_slow and item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)

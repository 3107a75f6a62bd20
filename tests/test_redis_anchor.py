"""The redis_anchor group runs and records what it says; nothing here looks at how fast anything was.

``python -m benchmarks run --smoke --only redis_anchor`` runs once for the module (a few seconds: one
``crdtstore serve``, one ``redis-server``). The group needs ``redis-server`` (Debian's package; ``.ci/run``
installs it) and the Python package ``redis`` (the ``bench`` extra): where either is missing it records a skip,
and that record is what is checked instead. How it skips (no redis-server, one that does not start) and that it
stops both servers when a measurement fails are checked with a stand-in executable or a stand-in client.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest

from benchmarks import redis_anchor
from benchmarks.__main__ import main
from benchmarks.figures import rate_problems
from crdtstore.testing.process import ServerProcess

Results = tuple[Path, dict[str, Any]]
SMOKE = redis_anchor.make_config(True, smoke=True)
GROUP = redis_anchor.GROUP


def _smoke_run(out: Path) -> dict[str, Any]:
    """``python -m benchmarks run --smoke --only redis_anchor --out OUT``, which must exit 0; its results.json."""
    assert main(["run", "--smoke", "--only", GROUP, "--out", str(out)]) == 0
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> Results:
    out = tmp_path_factory.mktemp(GROUP)
    return out, _smoke_run(out)


def _quiet(_: str) -> None:
    pass


class _StandInRedis:
    """What the group asks of redis.asyncio.Redis before it measures anything."""

    def __init__(self, **_: object) -> None:
        pass

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def _stand_in_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_anchor, "redis_client_module", lambda: types.SimpleNamespace(Redis=_StandInRedis))


@pytest.mark.processes  # a crdtstore node and a redis-server
def test_the_group_measures_crdtstore_beside_redis_or_records_why_not(suite_run: Results) -> None:
    out, results = suite_run
    group = results["groups"][GROUP]
    assert group["ok"], group["error"]
    assert set(results["placement"]) == {GROUP}
    report = (out / "REPORT.md").read_text()
    assert "## redis_anchor:" in report
    executable, reason = redis_anchor.redis_unavailable()
    if executable is None:
        assert results["figures"] == []
        assert group["detail"]["skipped"] == [{"what": GROUP, "reason": reason}]
        assert f"skipped: {reason}" in report
        return
    figures = results["figures"]
    assert group["detail"]["skipped"] == []
    measured = sorted(
        (f["params"]["kind"], f["params"].get("in_flight", 0), f["params"].get("ops_per_request", 0))
        for f in figures
        if f["params"]["kind"] in ("write", "batch")
    )
    writes = [("write", n, 1) for n in redis_anchor.WRITE_IN_FLIGHT]
    assert measured == sorted([*[("batch", 1, ops) for ops in redis_anchor.BATCH_OPS], *writes])
    for kind in ("add", "member", "remove"):
        sizes = sorted(f["params"]["set_size"] for f in figures if f["params"]["kind"] == kind)
        # Removes need a member to remove: not in the empty set.
        assert sizes == [n for n in SMOKE.set_sizes if n or kind != "remove"], kind
    assert rate_problems(figures) == []
    for f in figures:
        assert f["median"] > 0, f["name"]
        assert f["baseline"]["name"].startswith("Redis"), f["name"]
        assert f["baseline"]["median"] > 0, f["name"]
        assert f["params"]["crdtstore_requests_timed"] >= 1, f["name"]
        assert f["other_baselines"] == [], "one baseline: Redis doing the same (SISMEMBER for membership)"
    assert "appendfsync always" in report
    assert "KV.Contains" in report


def test_a_missing_redis_server_is_a_recorded_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_client(monkeypatch)
    detail, figures = redis_anchor.collect(SMOKE, _quiet, search_path=str(tmp_path))
    assert figures == []
    [skip] = detail["skipped"]
    assert skip["what"] == GROUP
    assert skip["reason"].startswith("redis-server not found on PATH")
    assert detail["report_notes"] == [f"skipped: {skip['reason']}"]


def test_a_missing_redis_package_is_a_recorded_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ModuleNotFoundError("No module named 'redis'")

    monkeypatch.setattr(redis_anchor, "redis_client_module", missing)
    detail, figures = redis_anchor.collect(SMOKE, _quiet)
    assert figures == []
    assert "the Python package redis is not importable" in detail["skipped"][0]["reason"]


@pytest.mark.processes  # the stand-in redis-server runs (and fails) as a subprocess
def test_a_redis_server_that_does_not_start_is_a_recorded_skip_in_the_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "redis-server"
    stand_in.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 1\n")
    stand_in.chmod(0o755)
    _stand_in_client(monkeypatch)
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "out"
    results = _smoke_run(out)
    group = results["groups"][GROUP]
    assert group["ok"]
    assert results["figures"] == []
    [skip] = group["detail"]["skipped"]
    assert skip["reason"].startswith("redis-server did not start: exited with 1")
    assert f"skipped: {skip['reason']}" in (out / "REPORT.md").read_text()


@pytest.mark.processes  # a crdtstore node and a redis-server
def test_both_servers_are_stopped_when_a_measurement_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    _stand_in_client(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the data kept after the failure goes with tmp_path
    started: list[int] = []
    start_redis = redis_anchor.RedisServer.start

    def record_redis(self: redis_anchor.RedisServer) -> None:
        start_redis(self)
        started.append(self.pid)

    class RecordedNode(ServerProcess):
        def start(self) -> ServerProcess:
            super().start()
            assert self.proc is not None
            started.append(self.proc.pid)
            return self

    async def fails(self: redis_anchor.Bench, in_flight: int) -> None:
        raise RuntimeError("a measurement failed")

    monkeypatch.setattr(redis_anchor.RedisServer, "start", record_redis)
    monkeypatch.setattr(redis_anchor, "ServerProcess", RecordedNode)
    monkeypatch.setattr(redis_anchor.Bench, "writes", fails)
    with pytest.raises(RuntimeError, match="a measurement failed"):
        redis_anchor.collect(SMOKE, _quiet)
    assert len(started) == 2
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

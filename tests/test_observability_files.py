"""The shipped rules, alerts and dashboard: valid, unit-tested, linked to the runbook, naming real metrics.

``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks
and unit-tests the rules; these tests skip with the reason where it is
absent. The metric names the rules and the dashboard use are checked against
what a node's registry exports (every family, with its ``_total``,
``_bucket``, ``_count`` and ``_sum`` series).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crdtstore.node.metrics import NodeMetrics, NodeSnapshot, PeerSnapshot, StorageSnapshot

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "crdtstore.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

_METRIC = re.compile(r"\b(crdtstore_[a-z0-9_]+)\b")
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian's prometheus package has it)"
)


def exported_names() -> set[str]:
    """Every series name a node can export, from its registry's families (whatever their children)."""
    metrics = NodeMetrics()
    storage = StorageSnapshot(1, 2, 1, 1, 4096, 1, 1, 1)
    snapshot = NodeSnapshot(peers={"b": PeerSnapshot(True, 0, 0, 0)}, storage=lambda: storage)
    metrics.attach(lambda: snapshot, None)
    names: set[str] = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_links_to_a_runbook_section_that_exists() -> None:
    headings = [line[3:] for line in RUNBOOK.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]
    anchors = {github_anchor(h) for h in headings}
    assert "a-region-partitioned-away" in anchors and "clock-skew-and-fencing" in anchors  # the slug rule itself
    assert alerts()
    for alert in alerts():
        runbook = alert["annotations"].get("runbook", "")
        page, _, anchor = runbook.partition("#")
        assert page == "docs/runbook.md", f"{alert['alert']}: runbook {runbook!r}"
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in docs/runbook.md"
        assert alert["labels"]["severity"] in {"page", "ticket"}, alert["alert"]


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    missing = {a["alert"] for a in alerts()} - fired
    assert not missing, f"alerts without a promtool unit test that fires them: {sorted(missing)}"


def test_rules_name_only_metrics_the_node_exports() -> None:
    exported = exported_names()
    used = {name for rule in rules() for name in _METRIC.findall(rule["expr"])}
    assert used, "the rules name crdtstore metrics"
    assert used <= exported, f"not exported by a node: {sorted(used - exported)}"


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_the_dashboard_names_only_metrics_the_node_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] for panel in dashboard["panels"])
    used = {name for expr in _dashboard_exprs() for name in _METRIC.findall(expr)}
    exported = exported_names()
    assert used <= exported, f"not exported by a node: {sorted(used - exported)}"
    # The on-call view: latency, errors, lag per peer, convergence.
    for needed in (
        "crdtstore_request_duration_seconds_bucket",
        "crdtstore_requests_total",
        "crdtstore_replication_lag_seconds_bucket",
        "crdtstore_convergence_agreed",
    ):
        assert needed in used, needed


def test_a_name_the_node_does_not_export_is_caught() -> None:
    """The check above can fail: a misspelt name is not among the exported ones."""
    assert "crdtstore_request_duration_second_bucket" not in exported_names()
    assert "crdtstore_requests_total" in exported_names()


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert RULE_TESTS
    result = subprocess.run(
        ["promtool", "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

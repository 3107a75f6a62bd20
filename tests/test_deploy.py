"""The deployment files of ``deploy/``: valid for their tools, consistent with each other and with the node.

No container engine or cluster runs here. The validators run where they are
installed (``.ci/run`` installs them: hadolint, docker-compose, kubernetes-validate;
promtool and systemd-analyze come from Debian) and skip, saying which, where
not. The rest needs nothing: the three platforms name the same regions, each
lists every other as a peer, probes ask the port the configuration serves
health on, every stop grace period covers the node's drain, the
configuration loads as the node would load it, and every alert's runbook
link lands on a section of ``docs/runbook.md``. ``crdtstore cert`` is tested
here too: it makes the certificates the deployment mounts.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from crdtstore.auth.certificates import Authority, CertificateError, issue_files, make_authority_files
from crdtstore.cli import main
from crdtstore.node.config import NodeConfig
from crdtstore.testing.deploy import DEPLOY_DIR, compose_regions, load_compose, render_compose

ROOT = DEPLOY_DIR.parent
KUBERNETES_VERSION = "1.37.0"  # the newest whose schemas kubernetes-validate ships
RUNBOOK_SECTIONS = [
    "Node down",
    "Write failures",
    "Write latency",
    "Read freshness",
    "Replication lag",
    "A region partitioned away",
    "Clock skew and fencing",
    "Full disk or map",
    "Lost region disk and restore",
    "Divergence found by verify",
    "Audit chain breaks",
    "Unauthorized attempts",
    "Hot key",
    "Slow change-feed consumer",
]


def _node_toml() -> dict[str, Any]:
    return tomllib.loads((DEPLOY_DIR / "crdtstore.toml").read_text(encoding="utf-8"))


def _drain_s() -> float:
    return float(_node_toml()["server"]["drain_grace_s"])


def _health_port() -> int:
    return int(str(_node_toml()["health_listen"]).rpartition(":")[2])


def _kubernetes_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((DEPLOY_DIR / "kubernetes").glob("*.yaml")):
        with path.open(encoding="utf-8") as file:
            documents.extend(doc for doc in yaml.safe_load_all(file) if doc)
    return documents


def _statefulsets() -> dict[str, dict[str, Any]]:
    """Region -> its StatefulSet's container."""
    out: dict[str, dict[str, Any]] = {}
    for doc in _kubernetes_documents():
        if doc["kind"] == "StatefulSet":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            env = {item["name"]: item["value"] for item in container["env"]}
            out[env["CRDTSTORE_REGION"]] = doc
    return out


def _container(statefulset: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = statefulset["spec"]["template"]["spec"]["containers"][0]
    return container


def _peer_names(peers: str) -> set[str]:
    return {item.split("=", 1)[0] for item in peers.split(",") if item}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here (.ci/run installs it and runs it)")
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


# -- the validators ----------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    done = _run(_tool("hadolint"), "deploy/Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_passes_docker_compose_config() -> None:
    done = _run(_tool("docker-compose"), "-f", "deploy/compose.yaml", "config", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_kubernetes_manifest_passes_strict_validation() -> None:
    manifests = sorted(str(p.relative_to(ROOT)) for p in (DEPLOY_DIR / "kubernetes").glob("*.yaml"))
    validate = _tool("kubernetes-validate")
    done = _run(validate, "--strict", "--kubernetes-version", KUBERNETES_VERSION, *manifests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scrape_configuration_passes_promtool() -> None:
    if not (DEPLOY_DIR / "prometheus" / "rules.yml").exists():
        pytest.skip("deploy/prometheus/rules.yml (the alerting rules) is not here yet")
    done = _run(_tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """Verified as shipped but for ExecStart, which points at this checkout's crdtstore (verify checks it exists)."""
    analyze = _tool("systemd-analyze")
    unit = (DEPLOY_DIR / "systemd" / "crdtstore@.service").read_text(encoding="utf-8")
    installed = Path(sys.executable).parent / "crdtstore"
    assert "\nExecStart=/opt/crdtstore/bin/crdtstore serve\n" in unit
    (tmp_path / "crdtstore@.service").write_text(unit.replace("/opt/crdtstore/bin/crdtstore", str(installed)))
    done = _run(analyze, "verify", "--man=no", str(tmp_path / "crdtstore@eu-west.service"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "crdtstore@" not in done.stdout + done.stderr, done.stdout + done.stderr  # no warning about the unit


# -- the files agree with each other and with the node -----------------------------------


def test_every_platform_runs_the_same_regions_each_peered_with_every_other() -> None:
    compose = load_compose()
    regions = compose_regions(compose)
    assert len(regions) == 3
    statefulsets = _statefulsets()
    assert set(statefulsets) == set(regions)
    for name in regions:
        others = set(regions) - {name}
        assert _peer_names(compose["services"][name]["environment"]["CRDTSTORE_PEERS"]) == others
        env = {item["name"]: item["value"] for item in _container(statefulsets[name])["env"]}
        assert _peer_names(env["CRDTSTORE_PEERS"]) == others
    prometheus = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    metrics_ports = {
        compose["services"][n]["environment"]["CRDTSTORE_METRICS_LISTEN"].rpartition(":")[2] for n in regions
    }
    assert targets == {f"{name}:{port}" for name in regions for port in metrics_ports}


def test_probes_and_health_checks_ask_the_health_port_and_readiness_needs_no_peer() -> None:
    port = _health_port()
    for name, statefulset in _statefulsets().items():
        container = _container(statefulset)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == port
    dockerfile = (DEPLOY_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert f'"127.0.0.1:{port}"' in dockerfile.split("HEALTHCHECK", 1)[1]
    services = [d for d in _kubernetes_documents() if d["kind"] == "Service"]
    assert services
    for service in services:
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True


def test_every_stop_grace_period_covers_the_drain() -> None:
    drain = _drain_s()
    for name, statefulset in _statefulsets().items():
        assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain, name
    compose = load_compose()
    for name in compose_regions(compose):
        grace = compose["services"][name]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > drain, name
    unit = (DEPLOY_DIR / "systemd" / "crdtstore@.service").read_text(encoding="utf-8")
    match = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert match is not None
    assert int(match.group(1)) > drain
    assert "STOPSIGNAL SIGTERM" in (DEPLOY_DIR / "Dockerfile").read_text(encoding="utf-8")


def test_kubernetes_pods_run_unprivileged_with_limits_and_a_volume() -> None:
    for name, statefulset in _statefulsets().items():
        spec = statefulset["spec"]
        assert spec["replicas"] == 1, name
        container = _container(statefulset)
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert set(container["resources"]) == {"requests", "limits"}
        claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[claims[0]] == _node_toml()["data_dir"]
    assert any(d["kind"] == "PodDisruptionBudget" for d in _kubernetes_documents())


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/make-secrets.sh makes, as the README says to run it."""
    out = tmp_path_factory.mktemp("deploy") / "secrets"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", str(DEPLOY_DIR / "make-secrets.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_make_secrets_makes_a_certificate_naming_each_region(secrets: Path) -> None:
    for region in compose_regions(load_compose()):
        cert = x509.load_pem_x509_certificate((secrets / region / "tls.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert region in names.get_values_for_type(x509.DNSName)
        assert stat.S_IMODE((secrets / region / "tls.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((secrets / "auth" / "signing.pem").stat().st_mode) == 0o600
    assert (secrets / "auth" / "signing.pub.pem").exists()


def test_the_rendered_compose_configuration_loads_as_the_node_loads_it(secrets: Path, tmp_path: Path) -> None:
    rendered = render_compose(tmp_path, secrets)
    for name, region in rendered.items():
        config = NodeConfig.load(environ=region.env)
        assert config.region == name
        assert config.tls.require_client_cert
        assert config.auth.enabled
        assert set(config.peers) == set(rendered) - {name}
        assert config.health_listen
        assert Path(config.tls.cert).is_relative_to(secrets)


# -- the runbook -------------------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def _runbook_headings() -> list[str]:
    text = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    return re.findall(r"^## (.+?)\s*$", text, re.MULTILINE)


def test_the_runbook_has_a_section_for_every_failure_mode_with_symptom_signal_commands_and_fix() -> None:
    text = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    headings = _runbook_headings()
    for section in RUNBOOK_SECTIONS:
        assert section in headings, section
        body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Symptom.**", "**Shown by.**", "**Confirm.**", "**Fix.**"):
            assert part in body, (section, part)
    assert any("adding a region" in h.lower() for h in headings)
    assert any("removing a region" in h.lower() for h in headings)


def test_every_alert_links_to_a_section_of_the_runbook() -> None:
    path = DEPLOY_DIR / "prometheus" / "rules.yml"
    if not path.exists():
        pytest.skip("deploy/prometheus/rules.yml (the alerting rules) is not here yet")
    anchors = {_anchor(h) for h in _runbook_headings()}
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    for alert in alerts:
        link = alert["annotations"]["runbook"]
        page, _, anchor = link.partition("#")
        assert page == "docs/runbook.md", alert["alert"]
        assert anchor in anchors, (alert["alert"], anchor)


def test_every_metric_the_runbook_names_is_one_the_observability_guide_documents() -> None:
    guide = ROOT / "docs" / "observability.md"
    if not guide.exists():
        pytest.skip("docs/observability.md (the metrics' reference) is not here yet")
    documented = guide.read_text(encoding="utf-8") + (DEPLOY_DIR / "prometheus" / "rules.yml").read_text("utf-8")
    named = set(re.findall(r"crdtstore[_:][a-z0-9_:]+", (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")))
    assert named
    for name in sorted(named):
        family = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in documented or family.removesuffix("_total") in documented, name


# -- crdtstore cert ----------------------------------------------------------------------


def test_cert_commands_make_an_authority_and_certificates_it_signs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cert", "ca", "--out", str(tmp_path / "ca")]) == 0
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    args = ["cert", "issue", "--ca", str(tmp_path / "ca"), "--name", "eu-west", "--out", str(tmp_path / "eu")]
    assert main([*args, "--host", "10.0.0.1", "--host", "eu-west.example"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "eu" / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["eu-west", "eu-west.example"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    authority = Authority.load(tmp_path / "ca")
    cert.verify_directly_issued_by(authority.certificate)
    assert (tmp_path / "eu" / "ca.crt").read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
    capsys.readouterr()
    # Nothing is overwritten, and the message says so.
    assert main(args) == 1
    assert "exists already" in capsys.readouterr().err


def test_cert_issue_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="cannot read the authority's certificate"):
        issue_files(tmp_path / "nowhere", tmp_path / "out", "eu-west")
    make_authority_files(tmp_path / "ca")
    with pytest.raises(CertificateError, match="neither a host name nor an IP address"):
        issue_files(tmp_path / "ca", tmp_path / "out", "eu-west", ["two words"])
    with pytest.raises(CertificateError, match="at least 1 day"):
        issue_files(tmp_path / "ca", tmp_path / "out", "eu-west", days=0)
    other = tmp_path / "other"
    make_authority_files(other)
    (tmp_path / "ca" / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(CertificateError, match="is not the key of"):
        Authority.load(tmp_path / "ca")


# -- the health port ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [("nowhere", "health_listen: listen address 'nowhere' is not HOST:PORT"), ("127.0.0.1:7420", "another port")],
)
def test_a_bad_health_listen_is_refused_naming_it(value: str, message: str) -> None:
    from crdtstore.node.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        NodeConfig.load(environ={"CRDTSTORE_HEALTH_LISTEN": value})


@pytest.mark.processes
def test_the_health_port_serves_health_alone_and_the_health_command_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crdtstore.client import Client, ClientError
    from crdtstore.testing.process import ServerProcess
    from crdtstore.testing.regions import free_port

    port = free_port()
    with ServerProcess(tmp_path / "node", extra_args=("--health-listen", f"127.0.0.1:{port}")):
        assert main(["--addr", f"127.0.0.1:{port}", "health"]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        with Client(f"127.0.0.1:{port}", timeout_s=5, retries_max=0) as probe:
            with pytest.raises(ClientError) as err:
                probe.get("anything")
            assert err.value.code.name == "UNIMPLEMENTED"
    # Stopped: the probe fails, with the reason on stderr.
    assert main(["--addr", f"127.0.0.1:{port}", "--timeout", "2", "health"]) == 1
    assert "cannot reach" in capsys.readouterr().err

"""The deployment files' configuration, rendered to run as plain processes (tests of ``deploy/``).

``deploy/compose.yaml`` gives each region an environment and a set of mounts:
the one ``deploy/crdtstore.toml``, the region's certificate directory, the
token public key, a data volume. ``render_compose`` reads it and produces,
per region, the same environment and the same TOML file with every path
inside the container replaced by where that mount's source is on this host:
the secrets that ``deploy/make-secrets.sh`` wrote, the data directory a test
chose. Nothing else changes, so a node started with it runs the shipped
configuration, not a copy of it.

Needs PyYAML (the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEPLOY_DIR", "RenderedRegion", "compose_regions", "load_compose", "render_compose"]

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
_SECRETS = "./secrets"


@dataclass(frozen=True)
class RenderedRegion:
    name: str
    env: dict[str, str]  # the service's environment, CRDTSTORE_CONFIG pointing at the rendered file
    config: Path  # the rendered TOML file
    mounts: dict[str, Path]  # path inside the container -> path on this host


def load_compose(path: Path = DEPLOY_DIR / "compose.yaml") -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = yaml.safe_load(file)
    return loaded


def compose_regions(compose: Mapping[str, Any]) -> list[str]:
    """The services that are regions (they name one in CRDTSTORE_REGION), in the file's order."""
    return [
        name for name, service in compose["services"].items() if "CRDTSTORE_REGION" in service.get("environment", {})
    ]


def _mounts(service: Mapping[str, Any], deploy_dir: Path, secrets: Path, data_dir: Path) -> dict[str, Path]:
    """Each mount's path in the container -> its source here (``./secrets`` -> ``secrets``, volumes -> data_dir)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith(_SECRETS):
            mounts[target] = secrets / source.removeprefix(_SECRETS).lstrip("/")
        elif source.startswith("."):
            mounts[target] = (deploy_dir / source).resolve()
        else:  # a named volume: the region's data
            mounts[target] = data_dir
    return mounts


def _rewrite(text: str, mounts: Mapping[str, Path]) -> str:
    """Replace each quoted container path by its host path (the longest mount first)."""
    for target in sorted(mounts, key=len, reverse=True):
        text = text.replace(f'"{target}', f'"{mounts[target]}')
    return text


def render_compose(
    out: Path, secrets: Path, *, compose_file: Path = DEPLOY_DIR / "compose.yaml"
) -> dict[str, RenderedRegion]:
    """Every region of the compose file, rendered under ``out`` with the secrets in ``secrets``."""
    compose = load_compose(compose_file)
    rendered: dict[str, RenderedRegion] = {}
    for name in compose_regions(compose):
        service = compose["services"][name]
        env = {key: str(value) for key, value in service["environment"].items()}
        mounts = _mounts(service, compose_file.parent, secrets, out / name / "data")
        config_source = mounts.get(env["CRDTSTORE_CONFIG"])
        if config_source is None:
            raise ValueError(f"{name}: CRDTSTORE_CONFIG {env['CRDTSTORE_CONFIG']} is not a file the service mounts")
        config = out / name / "crdtstore.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(_rewrite(config_source.read_text(encoding="utf-8"), mounts), encoding="utf-8")
        rendered[name] = RenderedRegion(name, {**env, "CRDTSTORE_CONFIG": str(config)}, config, mounts)
    return rendered

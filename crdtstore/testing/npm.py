"""Installing a Node.js package's locked dependencies with ``npm ci``, for the drivers tests and benchmarks run.

A folder with a ``package.json`` and a committed ``package-lock.json`` (the
benchmark's ``benchmarks/peers_js``, the test client ``tests/js_client``) gets
exactly the locked versions in its ``node_modules``. Nothing is installed when
they are there already, so a machine without a registry still runs what it
has. When they cannot be installed (no ``npm``, no registry) the caller gets the
reason, to record as a skip.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["install_locked", "missing_packages"]

NPM_CI_TIMEOUT_S = 300.0


def missing_packages(js_dir: Path) -> list[str]:
    """The packages of ``package-lock.json`` that ``node_modules`` lacks, or holds at another version."""
    lock = json.loads((js_dir / "package-lock.json").read_text())
    missing: list[str] = []
    for where, entry in lock.get("packages", {}).items():
        if not where.startswith("node_modules/"):
            continue
        try:
            installed = json.loads((js_dir / where / "package.json").read_text()).get("version")
        except (OSError, ValueError):
            installed = None
        if installed != entry.get("version"):
            missing.append(where.removeprefix("node_modules/"))
    return missing


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:])


def install_locked(
    js_dir: Path,
    npm: str | None,
    log: Callable[[str], None] = lambda _: None,
    timeout_s: float = NPM_CI_TIMEOUT_S,
) -> str | None:
    """Install the locked packages with ``npm ci`` unless they are there; the reason it could not, or None."""
    missing = missing_packages(js_dir)
    if not missing:
        return None
    if npm is None:
        return f"npm not found on PATH, and {js_dir.name}/node_modules lacks {len(missing)} locked package(s)"
    command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"]
    log(f"{len(missing)} locked package(s) missing ({', '.join(missing[:3])}...): {' '.join(command)}")
    began = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=js_dir,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"npm ci did not finish in {timeout_s:.0f} s (no registry?)"
    except OSError as exc:
        return f"npm ci could not start: {exc}"
    if done.returncode != 0:
        return f"npm ci failed (exit {done.returncode}): {_tail(done.stderr or done.stdout) or 'no output'}"
    log(f"npm ci took {time.perf_counter() - began:.1f} s")
    still = missing_packages(js_dir)
    if still:
        return f"npm ci succeeded but node_modules still lacks {', '.join(still[:5])}"
    return None

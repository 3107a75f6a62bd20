"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_starts_with_the_run_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert lines[0].startswith("pip install -e . && crdtstore demo")
    assert lines[1] == "pip install -e '.[test]' && pytest"


@pytest.mark.processes
def test_the_core_example_runs() -> None:
    (core,) = [b for b in _python_blocks() if "crdtstore.crdt" in b]
    subprocess.run([sys.executable, "-c", core], check=True, timeout=60)


@pytest.mark.processes
@pytest.mark.parametrize("block", [b for b in _python_blocks() if "crdtstore.client" in b])
def test_the_client_example_runs_against_a_node(block: str, tmp_path: Path) -> None:
    from crdtstore.testing.process import ServerProcess

    with ServerProcess(tmp_path / "data") as server:
        code = block.replace('"127.0.0.1:7420"', repr(server.addr))
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)


def test_the_token_capture_runs_against_a_node(tmp_path: Path) -> None:
    """The shell lines that keep a write's token in a variable and read after it, on one node for all regions."""
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL) if "token=$(" in b]
    lines = block.splitlines()
    script = "\n".join(lines[: next(i for i, line in enumerate(lines) if "--after" in line) + 1])
    assert '--after "$token"' in script
    from crdtstore.testing.process import ServerProcess

    with ServerProcess(tmp_path / "data") as server:
        script = re.sub(r"127\.0\.0\.1:742\d", server.addr, script)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n"

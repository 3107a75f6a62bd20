"""The pure core does no I/O: nothing under crdtstore/crdt imports these."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"asyncio", "grpc", "lmdb", "os", "pathlib", "socket", "io", "time", "threading", "subprocess"}
CORE = Path(__file__).resolve().parent.parent / "crdtstore" / "crdt"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


MODULES = sorted(CORE.glob("*.py"))


def test_the_core_has_modules() -> None:
    assert len(MODULES) >= 8


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_imports_in_the_core(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_the_core_imports_nothing_from_outer_layers(path: Path) -> None:
    inner = {n for n in _imports(path) if n == "crdtstore"}
    text = path.read_text()
    assert "from crdtstore.crdt" in text or not inner
    for line in text.splitlines():
        if line.startswith(("from crdtstore", "import crdtstore")):
            assert line.startswith(("from crdtstore.crdt", "import crdtstore.crdt")), line

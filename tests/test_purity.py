"""The pure layers do no I/O and import nothing from outer layers.

``crdtstore/crdt`` (the data types) and ``crdtstore/replica`` (the
replication protocol) are what the node, the simulator and the benchmarks
share; they import no I/O module, and nothing of crdtstore beyond the layers
below them (``crdt`` nothing but itself; ``replica`` the ``crdt`` layer and
itself, and the generated protobuf of its wire). Every import counts, at module level or inside a
function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"asyncio", "grpc", "lmdb", "os", "pathlib", "socket", "io", "time", "threading", "subprocess"}
PACKAGE = Path(__file__).resolve().parent.parent / "crdtstore"
# Each pure layer and the crdtstore packages it may import.
# ``replica`` also the generated protobuf messages of the replication stream (``crdtstore.v1``), which
# its wire module translates: encoding, not I/O.
LAYERS = {"crdt": ("crdtstore.crdt",), "replica": ("crdtstore.crdt", "crdtstore.replica", "crdtstore.v1")}


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (relative imports resolved to their package)."""
    parts = path.parent.relative_to(PACKAGE).parts if path.is_relative_to(PACKAGE) else (path.parent.name,)
    package = ".".join(("crdtstore", *parts))
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add(package)  # a relative import stays inside its own package
            elif node.module:
                names.add(node.module)
    return names


def _module_id(p: str | Path) -> str:
    return p if isinstance(p, str) else str(p.relative_to(PACKAGE))


# Every module of each layer, in subpackages too (the codec is a package of its own).
MODULES = [(layer, path) for layer in LAYERS for path in sorted((PACKAGE / layer).rglob("*.py"))]


def test_the_pure_layers_have_modules() -> None:
    assert sum(layer == "crdt" for layer, _ in MODULES) >= 8
    assert any(layer == "replica" for layer, _ in MODULES)


@pytest.mark.parametrize(
    ("layer", "path"), MODULES, ids=lambda p: p if isinstance(p, str) else str(p.relative_to(PACKAGE))
)
def test_no_io_imports_in_the_pure_layers(layer: str, path: Path) -> None:
    roots = {name.split(".")[0] for name in _imported_modules(path)}
    assert not (roots & FORBIDDEN), f"{layer}/{path.name} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize(
    ("layer", "path"), MODULES, ids=lambda p: p if isinstance(p, str) else str(p.relative_to(PACKAGE))
)
def test_the_pure_layers_import_nothing_from_outer_layers(layer: str, path: Path) -> None:
    allowed = LAYERS[layer]
    for name in _imported_modules(path):
        if name == "crdtstore" or name.startswith("crdtstore."):
            assert name.startswith(allowed), f"{layer}/{path.name} imports {name}"


def test_an_import_inside_a_function_is_seen(tmp_path: Path) -> None:
    module = tmp_path / "crdt" / "sneaky.py"
    module.parent.mkdir()
    module.write_text("def f():\n    import lmdb\n    from crdtstore.node import config\n    return lmdb, config\n")
    assert {"lmdb", "crdtstore.node"} <= _imported_modules(module)


@pytest.mark.parametrize("path", sorted((PACKAGE / "node").glob("*.py")), ids=lambda p: p.name)
def test_the_node_does_not_import_the_tools(path: Path) -> None:
    assert not any(name.startswith("crdtstore.tools") for name in _imported_modules(path)), path.name


def test_the_access_policy_is_pure() -> None:
    """The decision over roles and grants is a pure function: no I/O, nothing of crdtstore."""
    names = _imported_modules(PACKAGE / "auth" / "policy.py")
    assert not ({name.split(".")[0] for name in names} & FORBIDDEN), sorted(names)
    assert not [name for name in names if name.startswith("crdtstore")], sorted(names)

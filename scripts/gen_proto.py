"""Regenerate the Python code for proto/crdtstore/v1/*.proto into crdtstore/v1/.

    python scripts/gen_proto.py           # rewrite the generated files
    python scripts/gen_proto.py --check   # exit 1 if they differ from what is committed (CI)

The generated modules are committed so that a plain ``pip install .`` needs no
build step; CI runs ``--check`` so they never drift from the .proto files.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("crdtstore") / "v1"


def generate(out: Path) -> list[Path]:
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / PACKAGE_DIR).iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        target = ROOT / PACKAGE_DIR
        stale = []
        for path in generated:
            dest = target / path.name
            if not dest.exists() or not filecmp.cmp(path, dest, shallow=False):
                stale.append(dest)
                if not args.check:
                    shutil.copyfile(path, dest)
        if args.check and stale:
            names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
            print(f"generated code is out of date: {names}; run python scripts/gen_proto.py", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A client in another language: Node.js with @grpc/grpc-js and @grpc/proto-loader against a real node.

``tests/js_client/client.js`` loads the proto with ``keepCase: true`` and
checks a register, an increment retried with one idempotency key (it counts
once) and a scan that pages with ``page_token``. It also shows why the README
asks for ``keepCase``: with the loader's default camelCase names, the same
snake-case requests lose ``idempotency_key`` and ``page_token`` silently.

The locked npm packages are installed with ``npm ci`` the first time (into
``tests/js_client/node_modules``); the test is skipped, with the reason, only
when ``node`` or ``npm`` is missing or ``npm ci`` cannot install them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from crdtstore.testing.npm import install_locked
from crdtstore.testing.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js_client"
PROTO_DIR = ROOT / "proto"
CLIENT_TIMEOUT_S = 120.0

# ServerProcess leaks its log file's handle (see tests/test_node_e2e.py): ignore only that warning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:unclosed file <_io.TextIOWrapper name='[^']*[.]log' mode='a':ResourceWarning"
)


@pytest.mark.processes
def test_a_nodejs_client_with_keep_case(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) not found on PATH")
    reason = install_locked(JS_DIR, shutil.which("npm"))
    if reason is not None:
        pytest.skip(f"the Node.js client's packages could not be installed: {reason}")

    with ServerProcess(tmp_path / "data", region="eu") as server:
        done = subprocess.run(
            [node, str(JS_DIR / "client.js"), server.addr, str(PROTO_DIR), "js/"],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = json.loads(done.stdout)
    assert report["register"] == "686900ff"
    assert report["counter"] == 5  # sent twice with one idempotency key: counted once
    assert report["replayed"] == [False, True]
    assert report["scan"]["keys"] == 25
    assert report["scan"]["pages"] > 1
    # What the README warns of, shown: without keepCase the snake-case fields are dropped.
    assert report["camel_case_retry_counted"] == 2
    assert report["camel_case_second_page_is_the_first"] is True

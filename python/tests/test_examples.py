"""Every example in ``examples/`` runs against the live server and prints
what it should (the E2B one runs in compat/e2b with the e2b SDK)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "hello.py": r"^hello from sb-[0-9a-z]+\n$",
    "run_script.py": r"^mean=5\.0 stdev=2\.138\n$",
    "clone_and_build.py": r"^OK\n$",
    "agent_task.py": r"^step 1: tests exit 1\nstep 2: tests exit 0\ntask done\n$",
    "serve_app.py": r"^http://[^ ]+ -> <h1>made in a sandbox</h1>\n$",
}


@pytest.fixture
def live_env() -> None:
    missing = [n for n in ("LOCALE2B_BASE_URL", "LOCALE2B_API_KEY") if not os.environ.get(n)]
    if not missing:
        return
    reason = f"examples need a running locale2b server: {', '.join(missing)} not set"
    if os.environ.get("LOCALE2B_REQUIRE_E2E") == "1":
        pytest.fail(f"LOCALE2B_REQUIRE_E2E=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def test_every_example_is_covered() -> None:
    found = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert found == set(EXPECTED) | {"e2b_hello.py", "cli.sh"}, found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(live_env: None, name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.match(EXPECTED[name], done.stdout), done.stdout


def test_cli_example_runs(live_env: None) -> None:
    binary = os.environ.get("LOCALE2B_BIN") or str(
        EXAMPLES.parent / "target" / "release" / "locale2b"
    )
    if not os.access(binary, os.X_OK):
        if os.environ.get("LOCALE2B_REQUIRE_E2E") == "1":
            pytest.fail(f"no locale2b binary at {binary} (set LOCALE2B_BIN)")
        pytest.skip(f"no locale2b binary at {binary} (set LOCALE2B_BIN)")
    done = subprocess.run(
        ["bash", str(EXAMPLES / "cli.sh")],
        env={**os.environ, "LOCALE2B": binary},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "NUMBERS: 1 2 3 4 5 \n", done.stdout

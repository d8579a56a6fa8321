"""``examples/e2b_hello.py``, an unmodified e2b program, runs against the
server with only the three E2B variables set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "e2b_hello.py"


def test_the_e2b_example_runs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"):
        env[k] = os.environ[k]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "hello from an E2B sandbox on locale2b\n", done.stdout

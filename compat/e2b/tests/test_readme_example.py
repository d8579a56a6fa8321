"""E2B's own README example, run unmodified with only the three variables.

The example is not copied into this repository: the test takes the first
Python block of the README that ships inside the installed `e2b` package
(its wheel metadata) and runs it as a program.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import metadata

import pytest


def readme_example() -> str:
    readme = metadata("e2b").get_payload() or ""
    blocks = re.findall(r"```(?:py|python)\n(.*?)```", readme, flags=re.S)
    runnable = [b for b in blocks if "Sandbox.create" in b and "await" not in b]
    if not runnable:
        pytest.fail("the installed e2b package's README has no runnable Sandbox example")
    return runnable[0]


def test_the_sdk_readme_example_runs_unmodified(tmp_path):
    program = tmp_path / "example.py"
    program.write_text(readme_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"):
        env[k] = os.environ[k]
    done = subprocess.run(
        [sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Hello from E2B!" in done.stdout

"""Live tests of the provider's helpers against real guests, with no
network in the sandbox: the wheel to install and the repository to clone
are made here and written into the sandbox.

Needs a running server (``LOCALE2B_BASE_URL``, ``LOCALE2B_API_KEY``); skips
(or fails, with ``LOCALE2B_REQUIRE_E2E=1``) without one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from locale2b import FirecrackerWorkspaceProvider, SandboxInfo

pytestmark = [pytest.mark.live, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def live_env() -> None:
    missing = [n for n in ("LOCALE2B_BASE_URL", "LOCALE2B_API_KEY") if not os.environ.get(n)]
    if not missing:
        return
    reason = f"live provider tests need a running locale2b server: {', '.join(missing)} not set"
    if os.environ.get("LOCALE2B_REQUIRE_E2E") == "1":
        pytest.fail(f"LOCALE2B_REQUIRE_E2E=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def workspace(live_env: None) -> AsyncIterator[tuple[FirecrackerWorkspaceProvider, SandboxInfo]]:
    async with FirecrackerWorkspaceProvider(destroy_on_exit=True) as provider:
        ws = await provider.create_workspace("helpers-" + uuid.uuid4().hex[:10])
        try:
            yield provider, ws
        finally:
            await provider.destroy_workspace(ws.sandbox_id)


def make_wheel(directory: Path, name: str, version: str, source: str) -> Path:
    """A pure-Python wheel of one module, written by hand (no build tools)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: locale2b-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"},
    )


async def test_install_package_from_an_uploaded_wheel(
    workspace: tuple[FirecrackerWorkspaceProvider, SandboxInfo], tmp_path: Path
) -> None:
    provider, ws = workspace
    wheel = make_wheel(tmp_path, "l2bdemo", "1.2.3", "VALUE = 6 * 7\n")
    target = f"/workspace/{wheel.name}"
    await provider.write_file(ws.sandbox_id, target, wheel.read_bytes())
    installed = await provider.install_package(ws.sandbox_id, target)
    assert installed.exit_code == 0, installed
    used = await provider.run_python(ws.sandbox_id, "import l2bdemo; print(l2bdemo.VALUE)")
    assert (used.stdout, used.exit_code) == ("42\n", 0), used
    missing = await provider.install_package(ws.sandbox_id, "/workspace/none-0.1-py3-none-any.whl")
    assert missing.exit_code != 0, missing


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed on this host")
async def test_clone_a_bundled_repository_and_run_its_tests(
    workspace: tuple[FirecrackerWorkspaceProvider, SandboxInfo], tmp_path: Path
) -> None:
    provider, ws = workspace
    repo = tmp_path / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "test_calc.py").write_text(
        "import unittest\nimport calc\n\n"
        "class T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n"
    )
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "calc")
    bundle = tmp_path / "calc.bundle"
    git(repo, "bundle", "create", str(bundle), "main")
    await provider.write_file(ws.sandbox_id, "/workspace/calc.bundle", bundle.read_bytes())

    cloned = await provider.clone_repo(ws.sandbox_id, "/workspace/calc.bundle", "calc", branch="main")
    assert cloned.exit_code == 0, cloned
    passed = await provider.run_tests(
        ws.sandbox_id, command="python3 -m unittest -q", working_dir="/workspace/calc"
    )
    assert passed.exit_code == 0, passed
    assert "OK" in passed.stderr, passed

    # Break it: the same call now fails, and says so.
    await provider.write_file(
        ws.sandbox_id, "/workspace/calc/calc.py", "def add(a, b):\n    return a - b\n"
    )
    failed = await provider.run_tests(
        ws.sandbox_id, command="python3 -m unittest -q", working_dir="/workspace/calc"
    )
    assert failed.exit_code != 0, failed
    assert "FAILED" in failed.stderr, failed

"""Clone a repository into a sandbox and build and test it there.

Sandboxes have no network, so the repository travels as a git bundle
through the files API (with network, `clone_repo` takes any URL). The
repository is made here, so the example needs nothing but git on the host.
"""

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path

from locale2b import FirecrackerWorkspaceProvider

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "example", "GIT_AUTHOR_EMAIL": "example@example.invalid",
           "GIT_COMMITTER_NAME": "example", "GIT_COMMITTER_EMAIL": "example@example.invalid"}


def make_bundle(directory: Path) -> Path:
    repo = directory / "greeter"
    (repo / "greeter").mkdir(parents=True)
    (repo / "greeter" / "__init__.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    (repo / "test_greeter.py").write_text(
        "import unittest\nfrom greeter import greet\n\n"
        "class T(unittest.TestCase):\n"
        "    def test_greet(self):\n        self.assertEqual(greet('sandbox'), 'hello, sandbox')\n"
    )
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "greeter"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=GIT_ENV)
    bundle = directory / "greeter.bundle"
    subprocess.run(["git", "-C", str(repo), "bundle", "create", "-q", str(bundle), "main"], check=True)
    return bundle


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        async with FirecrackerWorkspaceProvider(destroy_on_exit=True) as provider:
            ws = await provider.create_workspace(memory_mb=256)
            sid = ws.sandbox_id
            await provider.write_file(sid, "/workspace/greeter.bundle", bundle.read_bytes())
            cloned = await provider.clone_repo(sid, "/workspace/greeter.bundle", "greeter")
            assert cloned.exit_code == 0, cloned.stderr
            built = await provider.run_command(sid, "python3 -m compileall -q greeter", working_dir="/workspace/greeter")
            assert built.exit_code == 0, built.stderr
            tested = await provider.run_tests(sid, command="python3 -m unittest -v", working_dir="/workspace/greeter")
            print(tested.stderr.strip().splitlines()[-1])  # "OK"
            if tested.exit_code != 0:
                raise SystemExit(tested.stderr)


asyncio.run(main())

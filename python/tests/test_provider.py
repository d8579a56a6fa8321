"""Unit tests of FirecrackerWorkspaceProvider and AsyncLocale2bClient against
a fake server."""

from __future__ import annotations

import base64
import json
import shlex

import httpx
import pytest

from conftest import BASE, KEY, FakeServer, reply
from locale2b import (
    AsyncLocale2bClient,
    FirecrackerWorkspaceProvider,
    Locale2bError,
    Locale2bNotFoundError,
)

pytestmark = pytest.mark.anyio

SANDBOX = {"sandbox_id": "sb-1", "status": "running", "memory_mb": 512, "vcpu_count": 1}
OK_EXEC = {"stdout": "ok\n", "stderr": "", "exit_code": 0, "error": None}


def routed(routes: dict[tuple[str, str], httpx.Response]):
    """A responder choosing the answer by (method, path); 404 otherwise."""

    def respond(request: httpx.Request) -> httpx.Response:
        answer = routes.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
        return answer

    return respond


def provider(server: FakeServer, **kwargs) -> FirecrackerWorkspaceProvider:
    return FirecrackerWorkspaceProvider(
        BASE, KEY, transport=httpx.MockTransport(server), **kwargs
    )


def exec_bodies(server: FakeServer) -> list[dict]:
    return [r.body for r in server.requests if r.path.endswith("/exec")]


async def test_async_client_sends_the_same_requests_as_the_sync_one():
    server = FakeServer(reply(200, OK_EXEC))
    async with AsyncLocale2bClient(BASE, KEY, transport=httpx.MockTransport(server)) as c:
        result = await c.exec_command("sb-1", "pwd")
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes/sb-1/exec")
    assert server.last.body == {"command": "pwd", "working_dir": "/workspace", "timeout_ms": 120000}
    assert server.last.headers["x-api-key"] == KEY
    assert server.last.headers["content-type"] == "application/json"
    assert result.stdout == "ok\n"


async def test_async_client_destroy_404_is_success_and_read_404_raises():
    server = FakeServer(reply(404, {"error": {"code": "not_found", "message": "gone"}}))
    async with AsyncLocale2bClient(BASE, KEY, transport=httpx.MockTransport(server)) as c:
        await c.destroy_sandbox("sb-1")
        with pytest.raises(Locale2bNotFoundError):
            await c.read_file("sb-1", "/nope")


async def test_create_workspace_uses_provider_defaults():
    server = FakeServer(reply(201, SANDBOX))
    async with provider(server, memory_mb=1024, template="python") as p:
        info = await p.create_workspace("session-1")
    assert info.sandbox_id == "sb-1"
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes")
    assert server.last.body == {
        "memory_mb": 1024,
        "vcpu_count": 1,
        "template": "python",
        "workspace_id": "session-1",
    }


async def test_create_workspace_arguments_override_defaults():
    server = FakeServer(reply(201, SANDBOX))
    async with provider(server) as p:
        await p.create_workspace(memory_mb=256, vcpu_count=2, template="t")
    assert server.last.body == {"memory_mb": 256, "vcpu_count": 2, "template": "t"}


async def test_lifecycle_calls():
    server = FakeServer(
        routed(
            {
                ("POST", "/sandboxes/sb-1/pause"): httpx.Response(204),
                ("POST", "/sandboxes/sb-1/resume"): httpx.Response(200, json=SANDBOX),
                ("DELETE", "/sandboxes/sb-1"): httpx.Response(204),
            }
        )
    )
    async with provider(server) as p:
        await p.pause_workspace("sb-1")
        info = await p.resume_workspace("sb-1")
        await p.destroy_workspace("sb-1")
    assert info.status == "running"
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/sandboxes/sb-1/pause"),
        ("POST", "/sandboxes/sb-1/resume"),
        ("DELETE", "/sandboxes/sb-1"),
    ]


async def test_files_roundtrip_through_base64():
    stored: dict[str, bytes] = {}

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/files/write"):
            body = json.loads(request.content)
            stored[body["path"]] = base64.b64decode(body["content"])
            return httpx.Response(200, json={"path": body["path"]})
        if request.url.path.endswith("/files/read"):
            data = stored[request.url.params["path"]]
            return httpx.Response(200, json={"content": base64.b64encode(data).decode()})
        if request.url.path.endswith("/files/list"):
            files = [
                {"path": p, "is_directory": False, "size": len(d)} for p, d in stored.items()
            ]
            return httpx.Response(200, json={"files": files})
        return httpx.Response(500)

    server = FakeServer(respond)
    async with provider(server) as p:
        await p.write_file("sb-1", "/workspace/t.txt", "text ✓\n")
        await p.write_file("sb-1", "/workspace/b.bin", b"\x00\xff")
        assert await p.read_text("sb-1", "/workspace/t.txt") == "text ✓\n"
        assert await p.read_file("sb-1", "/workspace/b.bin") == b"\x00\xff"
        entries = await p.list_files("sb-1")
    assert {(e.path, e.size) for e in entries} == {
        ("/workspace/t.txt", len("text ✓\n".encode())),
        ("/workspace/b.bin", 2),
    }


async def test_run_command_passes_arguments():
    server = FakeServer(reply(200, OK_EXEC))
    async with provider(server) as p:
        result = await p.run_command("sb-1", "make", working_dir="/src", timeout_ms=1000)
    assert server.last.body == {"command": "make", "working_dir": "/src", "timeout_ms": 1000}
    assert result.ok


async def test_run_python_writes_a_script_runs_it_and_removes_it():
    server = FakeServer(
        routed(
            {
                ("POST", "/sandboxes/sb-1/files/write"): httpx.Response(200, json={}),
                ("POST", "/sandboxes/sb-1/exec"): httpx.Response(200, json=OK_EXEC),
            }
        )
    )
    async with provider(server) as p:
        result = await p.run_python("sb-1", "print('ok')", args=["a b"])
    write, run = server.requests
    script = write.body["path"]
    assert script.startswith("/workspace/.locale2b-run-") and script.endswith(".py")
    assert base64.b64decode(write.body["content"]) == b"print('ok')"
    command = run.body["command"]
    assert command.startswith(shlex.join(["python3", script, "a b"]) + ";")
    assert f"rm -f {script}" in command
    assert command.endswith("exit $__rc")
    assert run.body["working_dir"] == "/workspace"
    assert result.stdout == "ok\n"


async def test_run_python_scripts_have_unique_names():
    server = FakeServer(reply(200, OK_EXEC))
    async with provider(server) as p:
        await p.run_python("sb-1", "1")
        await p.run_python("sb-1", "2")
    paths = [r.body["path"] for r in server.requests if r.path.endswith("/files/write")]
    assert len(set(paths)) == 2


async def test_install_package_quotes_names():
    server = FakeServer(reply(200, OK_EXEC))
    async with provider(server) as p:
        await p.install_package("sb-1", ["requests==2.31", "numpy>=1"], upgrade=True)
        await p.install_package("sb-1", "rich")
    first, second = exec_bodies(server)
    assert shlex.split(first["command"]) == [
        "python3", "-m", "pip", "install", "--disable-pip-version-check",
        "--upgrade", "requests==2.31", "numpy>=1",
    ]  # fmt: skip
    assert shlex.split(second["command"])[-1] == "rich"
    assert first["timeout_ms"] == 600_000


async def test_install_package_needs_a_name():
    server = FakeServer(reply(200, OK_EXEC))
    async with provider(server) as p:
        with pytest.raises(ValueError):
            await p.install_package("sb-1", [])
    assert server.requests == []


async def test_clone_repo_builds_git_command():
    server = FakeServer(reply(200, OK_EXEC))
    async with provider(server) as p:
        await p.clone_repo(
            "sb-1", "https://example.invalid/r.git", "dest dir", branch="main", depth=1
        )
        await p.clone_repo("sb-1", "/workspace/local-repo")
    first, second = exec_bodies(server)
    assert shlex.split(first["command"]) == [
        "git", "clone", "--depth", "1", "--branch", "main", "--",
        "https://example.invalid/r.git", "dest dir",
    ]  # fmt: skip
    assert first["working_dir"] == "/workspace"
    assert shlex.split(second["command"]) == ["git", "clone", "--", "/workspace/local-repo"]


async def test_run_tests_default_and_custom_command():
    server = FakeServer(reply(200, OK_EXEC))
    async with provider(server) as p:
        await p.run_tests("sb-1", "tests/", args=["-x"])
        await p.run_tests("sb-1", command="cargo test", working_dir="/workspace/proj")
    first, second = exec_bodies(server)
    assert shlex.split(first["command"]) == ["python3", "-m", "pytest", "-q", "tests/", "-x"]
    assert second["command"] == "cargo test"
    assert second["working_dir"] == "/workspace/proj"


async def test_destroy_on_exit_destroys_created_workspaces_only():
    server = FakeServer(
        routed(
            {
                ("POST", "/sandboxes"): httpx.Response(201, json=SANDBOX),
                ("DELETE", "/sandboxes/sb-1"): httpx.Response(204),
            }
        )
    )
    async with provider(server, destroy_on_exit=True) as p:
        await p.create_workspace("w")
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/sandboxes"),
        ("DELETE", "/sandboxes/sb-1"),
    ]


async def test_destroy_on_exit_skips_already_destroyed():
    server = FakeServer(
        routed(
            {
                ("POST", "/sandboxes"): httpx.Response(201, json=SANDBOX),
                ("DELETE", "/sandboxes/sb-1"): httpx.Response(204),
            }
        )
    )
    async with provider(server, destroy_on_exit=True) as p:
        info = await p.create_workspace()
        await p.destroy_workspace(info.sandbox_id)
    assert [r.method for r in server.requests].count("DELETE") == 1


async def test_destroy_on_exit_reports_failure_after_closing():
    server = FakeServer(
        routed(
            {
                ("POST", "/sandboxes"): httpx.Response(201, json=SANDBOX),
                ("DELETE", "/sandboxes/sb-1"): httpx.Response(
                    500, json={"error": {"code": "internal", "message": "boom"}}
                ),
            }
        )
    )
    p = provider(server, destroy_on_exit=True)
    await p.create_workspace()
    with pytest.raises(Locale2bError, match="boom"):
        await p.aclose()
    assert p.client._http.is_closed

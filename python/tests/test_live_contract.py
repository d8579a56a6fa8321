"""Live contract tests: CompyMac's exact calls against a real locale2b server.

Needs a running server (``locale2b serve``) and:

- ``LOCALE2B_BASE_URL``  e.g. ``http://127.0.0.1:8080``
- ``LOCALE2B_API_KEY``   the server's API key
- ``LOCALE2B_API_KEY_HEADER`` (optional) header name, default ``X-API-Key``
- ``LOCALE2B_REQUIRE_E2E=1`` (optional) turns "not configured" into a
  failure instead of a skip, for CI and the end-to-end harness.

The module boots at most three sandboxes (one shared by most tests, one for
the destroy sequence, one for the async provider): under TCG each takes
seconds. Every wait is bounded by the client's HTTP timeouts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from locale2b import (
    FirecrackerWorkspaceProvider,
    Locale2bClient,
    Locale2bNotFoundError,
    SandboxInfo,
)

pytestmark = pytest.mark.live

REQUIRED_ENV = ("LOCALE2B_BASE_URL", "LOCALE2B_API_KEY")


def session_id() -> str:
    """A workspace id shaped like CompyMac's session ids."""
    return "session-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def live_env() -> None:
    """Skips (or fails, with LOCALE2B_REQUIRE_E2E=1) when no server is configured."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if not missing:
        return
    reason = (
        f"live contract tests need a running locale2b server: {', '.join(missing)} "
        "not set (start `locale2b serve` and export LOCALE2B_BASE_URL and LOCALE2B_API_KEY)"
    )
    if os.environ.get("LOCALE2B_REQUIRE_E2E") == "1":
        pytest.fail(f"LOCALE2B_REQUIRE_E2E=1 but {reason}", pytrace=False)
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def client(live_env: None) -> Iterator[Locale2bClient]:
    """CompyMac's client code path: everything from the environment."""
    with Locale2bClient() as c:
        yield c


@pytest.fixture(scope="module")
def workspace_id() -> str:
    return session_id()


@pytest.fixture(scope="module")
def sandbox(client: Locale2bClient, workspace_id: str) -> Iterator[SandboxInfo]:
    """Sandbox #1, shared by the tests that do not destroy it."""
    info = client.create_sandbox(workspace_id=workspace_id)
    try:
        yield info
    finally:
        client.destroy_sandbox(info.sandbox_id)


# ---------------------------------------------------------------- service


def test_health_check(client: Locale2bClient) -> None:
    health = client.health_check()
    assert isinstance(health, dict)
    assert "status" in health, health
    assert isinstance(health.get("active_sandboxes"), int), health
    assert isinstance(health.get("memory_available_mb"), int), health


# ---------------------------------------------------------------- sandbox #1


def test_create_sandbox_returns_what_compymac_reads(
    sandbox: SandboxInfo, workspace_id: str
) -> None:
    assert sandbox.sandbox_id
    assert sandbox.workspace_id == workspace_id
    assert sandbox.memory_mb == 512
    assert sandbox.vcpu_count == 1
    assert isinstance(sandbox.status, str) and sandbox.status != "dead"


def test_list_sandboxes_contains_the_sandbox(
    client: Locale2bClient, sandbox: SandboxInfo
) -> None:
    listed = {s.sandbox_id: s for s in client.list_sandboxes()}
    assert sandbox.sandbox_id in listed
    assert listed[sandbox.sandbox_id].workspace_id == sandbox.workspace_id


def test_exec_pwd_in_workspace(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    result = client.exec_command(sandbox.sandbox_id, "pwd", working_dir="/workspace")
    assert result.stdout == "/workspace\n", result
    assert result.exit_code == 0, result
    assert result.error is None, result


def test_exec_honours_working_dir(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    result = client.exec_command(sandbox.sandbox_id, "pwd", working_dir="/tmp")
    assert (result.stdout, result.exit_code) == ("/tmp\n", 0), result


def test_exec_failing_command(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    result = client.exec_command(sandbox.sandbox_id, "ls /definitely-not-here")
    assert result.exit_code != 0, result
    assert "definitely-not-here" in result.stderr, result


def test_exec_separates_stdout_stderr_and_exit_code(
    client: Locale2bClient, sandbox: SandboxInfo
) -> None:
    result = client.exec_command(sandbox.sandbox_id, "echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3), result


def test_expose_list_and_close_a_port(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    """CompyMac's three port calls: the returned url serves the guest's app."""
    sid = sandbox.sandbox_id
    client.exec_command(sid, "mkdir -p /tmp/site && echo port-ok > /tmp/site/index.html")
    client.start_process(sid, "cd /tmp/site && exec python3 -m http.server 8123 --bind 127.0.0.1")
    # Bounded wait, in the guest, for the server to accept.
    probe = (
        "for i in $(seq 500); do (exec 3<>/dev/tcp/127.0.0.1/8123) 2>/dev/null && exit 0; "
        "sleep 0.1; done; exit 1"
    )
    assert client.exec_command(sid, f"bash -c '{probe}'", timeout_ms=60_000).exit_code == 0

    exposed = client.expose_port(sid, 8123)
    assert exposed.port == 8123 and exposed.already_exposed is False, exposed
    assert httpx.get(exposed.url, timeout=30).text == "port-ok\n"
    again = client.expose_port(sid, 8123)
    assert (again.url, again.already_exposed) == (exposed.url, True), again
    assert [p.port for p in client.list_exposed_ports(sid)] == [8123]

    client.close_port(sid, 8123)
    assert client.list_exposed_ports(sid) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(exposed.url, timeout=30)
    client.close_port(sid, 8123)  # 404 counts as success


def test_binary_file_roundtrip(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    data = bytes(range(256))
    client.write_file(sandbox.sandbox_id, "/workspace/bin.dat", data)
    assert client.read_file(sandbox.sandbox_id, "/workspace/bin.dat") == data
    size = client.exec_command(sandbox.sandbox_id, "wc -c < /workspace/bin.dat")
    assert size.stdout.strip() == "256", size


@pytest.mark.anyio
async def test_provider_writes_text_the_client_reads(
    client: Locale2bClient, sandbox: SandboxInfo, anyio_backend: str
) -> None:
    text = "hello from the provider ✓\n"
    async with FirecrackerWorkspaceProvider() as provider:
        await provider.write_file(sandbox.sandbox_id, "/workspace/hello.txt", text)
        assert await provider.read_text(sandbox.sandbox_id, "/workspace/hello.txt") == text
    assert client.read_file(sandbox.sandbox_id, "/workspace/hello.txt") == text.encode()
    cat = client.exec_command(sandbox.sandbox_id, "cat hello.txt")
    assert cat.stdout == text, cat


def test_list_files_shows_paths_kinds_and_sizes(
    client: Locale2bClient, sandbox: SandboxInfo
) -> None:
    sid = sandbox.sandbox_id
    made = client.exec_command(sid, "mkdir -p /workspace/listing/sub")
    assert made.exit_code == 0, made
    client.write_file(sid, "/workspace/listing/a.txt", b"abc")
    client.write_file(sid, "/workspace/listing/b.bin", bytes(1000))
    entries = {e.name: e for e in client.list_files(sid, "/workspace/listing")}
    assert set(entries) == {"a.txt", "b.bin", "sub"}, entries
    assert entries["a.txt"].path.endswith("listing/a.txt")
    assert (entries["a.txt"].is_directory, entries["a.txt"].size) == (False, 3)
    assert (entries["b.bin"].is_directory, entries["b.bin"].size) == (False, 1000)
    assert entries["sub"].is_directory is True
    top = {e.name for e in client.list_files(sid)}
    assert "listing" in top, top


def test_read_missing_file_is_not_found(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    with pytest.raises(Locale2bNotFoundError) as info:
        client.read_file(sandbox.sandbox_id, "/workspace/no-such-file.txt")
    assert info.value.status == 404


# ---------------------------------------------------------------- sandbox #2


def test_destroy_sequence(client: Locale2bClient) -> None:
    info = client.create_sandbox(workspace_id=session_id())
    try:
        first = client.exec_command(info.sandbox_id, "pwd")
        assert first.exit_code == 0, first
    finally:
        client.destroy_sandbox(info.sandbox_id)
    # CompyMac treats 404 on destroy as success: a second destroy must not raise.
    client.destroy_sandbox(info.sandbox_id)
    with pytest.raises(Locale2bNotFoundError) as err:
        client.exec_command(info.sandbox_id, "pwd")
    assert err.value.status == 404
    assert info.sandbox_id not in {s.sandbox_id for s in client.list_sandboxes()}


# ---------------------------------------------------------------- sandbox #3


@pytest.mark.anyio
async def test_async_provider_lifecycle(live_env: None, anyio_backend: str) -> None:
    async with FirecrackerWorkspaceProvider(destroy_on_exit=True) as provider:
        ws = await provider.create_workspace(session_id())
        try:
            printed = await provider.run_python(ws.sandbox_id, "print(sum(range(10)))")
            assert (printed.stdout, printed.exit_code) == ("45\n", 0), printed

            failed = await provider.run_python(ws.sandbox_id, "raise SystemExit(4)")
            assert failed.exit_code == 4, failed

            leftovers = await provider.list_files(ws.sandbox_id, "/workspace")
            assert not [e for e in leftovers if (e.name or "").startswith(".locale2b-run-")]

            echoed = await provider.run_command(ws.sandbox_id, "echo hi")
            assert (echoed.stdout, echoed.exit_code, echoed.error) == ("hi\n", 0, None)
        finally:
            await provider.destroy_workspace(ws.sandbox_id)
        with pytest.raises(Locale2bNotFoundError):
            await provider.run_command(ws.sandbox_id, "true")

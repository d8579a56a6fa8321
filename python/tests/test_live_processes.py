"""Live tests of background processes, streamed exec and PTYs against a real
locale2b server (same environment as ``test_live_contract.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from locale2b import FirecrackerWorkspaceProvider, Locale2bClient, Locale2bError, SandboxInfo

from test_live_contract import live_env, session_id  # noqa: F401  (fixtures)

pytestmark = pytest.mark.live

#: Every poll loop below gives up after this long.
WAIT_S = 120.0


@pytest.fixture(scope="module")
def client(live_env: None) -> Iterator[Locale2bClient]:  # noqa: F811
    with Locale2bClient() as c:
        yield c


@pytest.fixture(scope="module")
def sandbox(client: Locale2bClient) -> Iterator[SandboxInfo]:
    info = client.create_sandbox(memory_mb=256, workspace_id=session_id())
    try:
        yield info
    finally:
        client.destroy_sandbox(info.sandbox_id)


def read_until(client: Locale2bClient, sid: str, proc: int | str, cursor: int, needle: str) -> tuple[str, int]:
    """Polls output from ``cursor`` until ``needle`` appeared; returns (text, next cursor)."""
    seen = ""
    deadline = time.monotonic() + WAIT_S
    while needle not in seen:
        assert time.monotonic() < deadline, f"never saw {needle!r} in {seen!r}"
        out = client.read_output(sid, proc, cursor)
        assert out.dropped == 0, out
        seen += out.stdout + out.pty
        if out.next_cursor == cursor:
            time.sleep(0.05)
        cursor = out.next_cursor
    return seen, cursor


def test_background_shell_start_poll_type_kill(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    sid = sandbox.sandbox_id
    info = client.start_process(sid, "bash --norc", tag="py-shell")
    assert info.running and info.tag == "py-shell"
    client.write_stdin(sid, "py-shell", "cd /tmp; export X=1; echo $X\n")
    seen, cursor = read_until(client, sid, "py-shell", 0, "1\n")
    assert seen == "1\n"
    client.write_stdin(sid, info.pid, "echo $X$X $PWD\n")
    seen, cursor = read_until(client, sid, info.pid, cursor, "/tmp")
    assert seen == "11 /tmp\n"
    assert any(p.pid == info.pid for p in client.list_processes(sid))
    client.signal_process(sid, "py-shell", "SIGKILL")
    deadline = time.monotonic() + WAIT_S
    while client.get_process(sid, info.pid).running:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ended = client.get_process(sid, info.pid)
    assert ended.signal == 9 and ended.exit_code is None, ended.raw
    with pytest.raises(Locale2bError) as e:
        client.write_stdin(sid, info.pid, "late\n")
    assert e.value.status == 409
    client.kill_process(sid, info.pid)
    client.kill_process(sid, info.pid)  # 404 counts as success


def test_streamed_exec_delivers_events_in_order(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    events = list(client.exec_stream(sandbox.sandbox_id, "echo a; echo b >&2; echo c; exit 5"))
    kinds = [e.type for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    stdout = "".join(e.data or "" for e in events if e.type == "stdout")
    stderr = "".join(e.data or "" for e in events if e.type == "stderr")
    assert (stdout, stderr) == ("a\nc\n", "b\n")
    assert events[-1].exit_code == 5


def test_pty_session_tty_resize_interrupt(client: Locale2bClient, sandbox: SandboxInfo) -> None:
    sid = sandbox.sandbox_id
    info = client.start_process(sid, argv=["bash", "--norc", "-i"], pty=(24, 80), env={"PS1": "$ "})
    client.write_stdin(sid, info.pid, "tty\n")
    _, cursor = read_until(client, sid, info.pid, 0, "/dev/pts/")
    client.resize_pty(sid, info.pid, 31, 101)
    client.write_stdin(sid, info.pid, "stty size\n")
    _, cursor = read_until(client, sid, info.pid, cursor, "31 101")
    client.write_stdin(sid, info.pid, "sleep 100; echo never\n")
    deadline = time.monotonic() + WAIT_S
    while not client.exec_command(sid, "pgrep -x sleep || true").stdout.strip():
        assert time.monotonic() < deadline, "sleep never started"
        time.sleep(0.1)
    client.write_stdin(sid, info.pid, "\x03")
    client.write_stdin(sid, info.pid, "echo back-$((40+2))\n")
    seen, _ = read_until(client, sid, info.pid, cursor, "back-42")
    assert "\nnever" not in seen
    client.kill_process(sid, info.pid)


@pytest.mark.anyio
async def test_provider_shells_keep_state_between_calls(
    live_env: None, sandbox: SandboxInfo, anyio_backend: str  # noqa: F811
) -> None:
    sid = sandbox.sandbox_id
    async with FirecrackerWorkspaceProvider() as provider:
        bash_id = await provider.start_shell(sid)
        await provider.write_to_shell(sid, bash_id, "cd /etc && export Y=7\n")
        await provider.write_to_shell(sid, bash_id, "echo $Y $PWD\n")
        seen = ""
        deadline = time.monotonic() + WAIT_S
        while "7 /etc" not in seen:
            assert time.monotonic() < deadline, seen
            out = await provider.shell_output(sid, bash_id)
            seen += out.stdout
        # Only new output comes back the second time.
        await provider.write_to_shell(sid, bash_id, "echo second\n")
        later = ""
        while "second" not in later:
            assert time.monotonic() < deadline, later
            later += (await provider.shell_output(sid, bash_id)).stdout
        assert "7 /etc" not in later
        await provider.kill_shell(sid, bash_id)
        async for event in provider.client.exec_stream(sid, "echo async-stream"):
            if event.type == "stdout":
                assert event.data == "async-stream\n"

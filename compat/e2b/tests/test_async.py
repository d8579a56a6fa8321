"""The asynchronous `e2b.AsyncSandbox` API against locale2b, unchanged."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from e2b import AsyncSandbox, CommandExitException, FilesystemEventType, PtySize

pytestmark = pytest.mark.anyio


async def test_async_sandbox_commands_files_watch_and_pty(meta):
    sbx = await AsyncSandbox.create(metadata=meta, envs={"MODE": "async"}, timeout=300)
    try:
        out = []
        r = await sbx.commands.run(
            "echo $MODE; echo warn >&2", on_stdout=out.append, on_stderr=out.append
        )
        assert r.stdout == "async\n" and r.stderr == "warn\n"
        assert "".join(out).count("\n") == 2
        with pytest.raises(CommandExitException):
            await sbx.commands.run("exit 3")

        bg = await sbx.commands.run("sleep 600", background=True)
        assert bg.pid in {p.pid for p in await sbx.commands.list()}
        assert await sbx.commands.kill(bg.pid) is True

        base = f"/home/user/async-{uuid.uuid4().hex[:8]}"
        await sbx.files.make_dir(base)
        events = []
        got = asyncio.Event()

        def on_event(e):
            events.append(e)
            if any(x.name == "hello.txt" and x.type == FilesystemEventType.WRITE for x in events):
                got.set()

        watch = await sbx.files.watch_dir(base, on_event)
        await sbx.files.write(f"{base}/hello.txt", "hi there")
        await asyncio.wait_for(got.wait(), timeout=30)
        await watch.stop()
        assert await sbx.files.read(f"{base}/hello.txt") == "hi there"
        names = [e.name for e in await sbx.files.list(base)]
        assert names == ["hello.txt"]

        data = bytearray()
        seen = asyncio.Event()

        def on_pty(chunk):
            data.extend(chunk)
            if b"30 100" in data:
                seen.set()

        term = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=on_pty)
        await sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
        await sbx.pty.send_stdin(term.pid, b"stty size\n")
        await asyncio.wait_for(seen.wait(), timeout=30)
        await sbx.pty.send_stdin(term.pid, b"exit\n")
        done = await term.wait()
        assert done.exit_code == 0

        info = await sbx.get_info()
        assert info.metadata["run"] == meta["run"]
        await sbx.pause()
        back = await AsyncSandbox.connect(sbx.sandbox_id)
        assert await back.files.read(f"{base}/hello.txt") == "hi there"
    finally:
        await AsyncSandbox.kill(sbx.sandbox_id)

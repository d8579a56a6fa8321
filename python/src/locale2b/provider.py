"""``FirecrackerWorkspaceProvider``: the async workspace API of the plan (Phase 9).

A *workspace* here is a running sandbox, named by its ``sandbox_id``; the
``workspace_id`` given at creation names its persistent disk on the server.
Whatever the server runs (Firecracker or QEMU) is invisible at this level;
the class keeps the name the plan gave it.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Sequence

import httpx

from . import _api
from .aio import AsyncLocale2bClient
from .models import ExecResult, FileEntry, ProcessOutput, SandboxInfo

#: Default timeout for package installs and test runs (10 minutes).
LONG_TIMEOUT_MS = 600_000


class FirecrackerWorkspaceProvider:
    """Async workspaces backed by locale2b sandboxes.

    Use it as an async context manager; it closes its HTTP connections on exit
    and, with ``destroy_on_exit=True``, destroys the workspaces it created::

        async with FirecrackerWorkspaceProvider() as provider:
            ws = await provider.create_workspace(workspace_id="session-42")
            result = await provider.run_python(ws.sandbox_id, "print(6 * 7)")
            assert result.stdout == "42\\n"
            await provider.destroy_workspace(ws.sandbox_id)

    Connection arguments are those of :class:`~locale2b.Locale2bClient`
    (defaults from ``LOCALE2B_BASE_URL``, ``LOCALE2B_API_KEY``,
    ``LOCALE2B_API_KEY_HEADER``).

    Commands run through ``sh -c`` on the server; the convenience methods
    quote their arguments with :func:`shlex.quote`. They return an
    :class:`~locale2b.ExecResult` and do not raise on a non-zero exit code.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_header: str | None = None,
        *,
        memory_mb: int = _api.DEFAULT_MEMORY_MB,
        vcpu_count: int = _api.DEFAULT_VCPU_COUNT,
        template: str = _api.DEFAULT_TEMPLATE,
        destroy_on_exit: bool = False,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = AsyncLocale2bClient(
            base_url, api_key, api_key_header, timeout=timeout, transport=transport
        )
        self.memory_mb = memory_mb
        self.vcpu_count = vcpu_count
        self.template = template
        self.destroy_on_exit = destroy_on_exit
        self._created: list[str] = []
        #: Read position of each shell, by (sandbox_id, bash_id).
        self._shell_cursors: dict[tuple[str, str], int] = {}

    async def __aenter__(self) -> FirecrackerWorkspaceProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Destroys the workspaces this provider created (when
        ``destroy_on_exit``) and closes the HTTP client.

        A failure to destroy one workspace does not stop the others; the first
        error is raised after the client is closed.
        """
        first_error: BaseException | None = None
        try:
            if self.destroy_on_exit:
                for sandbox_id in list(self._created):
                    try:
                        await self.destroy_workspace(sandbox_id)
                    except Exception as exc:  # noqa: BLE001 - re-raised below
                        first_error = first_error or exc
        finally:
            await self.client.aclose()
        if first_error is not None:
            raise first_error

    # -- lifecycle

    async def create_workspace(
        self,
        workspace_id: str | None = None,
        *,
        memory_mb: int | None = None,
        vcpu_count: int | None = None,
        template: str | None = None,
    ) -> SandboxInfo:
        """Boots a sandbox for ``workspace_id`` (a fresh workspace when
        ``None`` or unknown, the existing disk otherwise)."""
        info = await self.client.create_sandbox(
            memory_mb=memory_mb if memory_mb is not None else self.memory_mb,
            vcpu_count=vcpu_count if vcpu_count is not None else self.vcpu_count,
            template=template if template is not None else self.template,
            workspace_id=workspace_id,
        )
        self._created.append(info.sandbox_id)
        return info

    async def pause_workspace(self, sandbox_id: str) -> None:
        """Snapshots the sandbox and frees its memory."""
        await self.client.pause_sandbox(sandbox_id)

    async def resume_workspace(self, sandbox_id: str) -> SandboxInfo:
        """Restores a paused sandbox."""
        return await self.client.resume_sandbox(sandbox_id)

    async def destroy_workspace(self, sandbox_id: str) -> None:
        """Destroys the sandbox; an unknown id counts as already destroyed."""
        await self.client.destroy_sandbox(sandbox_id)
        if sandbox_id in self._created:
            self._created.remove(sandbox_id)

    # -- long-running shells (CompyMac's bash_id semantics)

    async def start_shell(
        self,
        sandbox_id: str,
        bash_id: str | None = None,
        *,
        command: str = "bash --norc",
        working_dir: str = _api.DEFAULT_WORKING_DIR,
    ) -> str:
        """Starts a shell that keeps running between calls and returns its
        ``bash_id`` (a generated one when ``None``; it must start with a
        letter). Type into it with :meth:`write_to_shell`, read what it
        printed with :meth:`shell_output`, end it with :meth:`kill_shell`."""
        bash_id = bash_id or "bash-" + uuid.uuid4().hex[:10]
        await self.client.start_process(
            sandbox_id, command, cwd=working_dir, tag=bash_id, stdin=True
        )
        self._shell_cursors[(sandbox_id, bash_id)] = 0
        return bash_id

    async def write_to_shell(self, sandbox_id: str, bash_id: str, text: str) -> None:
        """Types ``text`` into the shell (add ``\n`` to run a line)."""
        await self.client.write_stdin(sandbox_id, bash_id, text)

    async def shell_output(self, sandbox_id: str, bash_id: str) -> ProcessOutput:
        """What the shell printed since the last call (stdout and stderr
        apart). ``dropped`` says how many bytes were lost in between (only
        when nobody read for a long while and the buffer filled);
        ``status`` says whether the shell still runs."""
        key = (sandbox_id, bash_id)
        out = await self.client.read_output(sandbox_id, bash_id, self._shell_cursors.get(key, 0))
        self._shell_cursors[key] = out.next_cursor
        return out

    async def kill_shell(self, sandbox_id: str, bash_id: str) -> None:
        """Kills the shell (and everything it started); an unknown one counts
        as killed."""
        await self.client.kill_process(sandbox_id, bash_id)
        self._shell_cursors.pop((sandbox_id, bash_id), None)

    # -- commands and files

    async def run_command(
        self,
        sandbox_id: str,
        command: str,
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = _api.DEFAULT_EXEC_TIMEOUT_MS,
    ) -> ExecResult:
        """Runs a shell command in the sandbox and waits for it."""
        return await self.client.exec_command(sandbox_id, command, working_dir, timeout_ms)

    async def write_file(self, sandbox_id: str, path: str, content: bytes | str) -> None:
        """Writes bytes (or UTF-8 text) to ``path`` in the sandbox."""
        await self.client.write_file(sandbox_id, path, content)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """Reads ``path`` from the sandbox (404 raises
        :class:`~locale2b.Locale2bNotFoundError`)."""
        return await self.client.read_file(sandbox_id, path)

    async def read_text(self, sandbox_id: str, path: str, encoding: str = "utf-8") -> str:
        """Reads ``path`` and decodes it."""
        return (await self.read_file(sandbox_id, path)).decode(encoding)

    async def list_files(
        self, sandbox_id: str, path: str = _api.DEFAULT_WORKING_DIR
    ) -> list[FileEntry]:
        """Lists directory ``path`` in the sandbox."""
        return await self.client.list_files(sandbox_id, path)

    # -- conveniences

    async def install_package(
        self,
        sandbox_id: str,
        packages: str | Sequence[str],
        *,
        upgrade: bool = False,
        extra_args: Sequence[str] = (),
        timeout_ms: int = LONG_TIMEOUT_MS,
    ) -> ExecResult:
        """``python3 -m pip install`` the given package(s) inside the sandbox.

        Sandboxes have no network by default, so installing from PyPI needs a
        server configured to give sandboxes network access; a wheel file
        written into the sandbox installs without it (pass its path).
        """
        names = [packages] if isinstance(packages, str) else list(packages)
        if not names:
            raise ValueError("install_package needs at least one package")
        argv = ["python3", "-m", "pip", "install", "--disable-pip-version-check"]
        if upgrade:
            argv.append("--upgrade")
        argv += list(extra_args) + names
        return await self.run_command(sandbox_id, shlex.join(argv), timeout_ms=timeout_ms)

    async def clone_repo(
        self,
        sandbox_id: str,
        url: str,
        dest: str | None = None,
        *,
        branch: str | None = None,
        depth: int | None = None,
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = LONG_TIMEOUT_MS,
    ) -> ExecResult:
        """``git clone`` ``url`` into ``dest`` (relative to ``working_dir``).

        Sandboxes have no network by default: cloning a remote URL works only
        when the server gives sandboxes network access. A repository already
        inside the sandbox (a path or ``file://`` URL) always works. The
        guest image must contain git.
        """
        argv = ["git", "clone"]
        if depth is not None:
            argv += ["--depth", str(depth)]
        if branch is not None:
            argv += ["--branch", branch]
        argv += ["--", url]
        if dest is not None:
            argv.append(dest)
        return await self.run_command(
            sandbox_id, shlex.join(argv), working_dir=working_dir, timeout_ms=timeout_ms
        )

    async def run_python(
        self,
        sandbox_id: str,
        code: str,
        *,
        args: Sequence[str] = (),
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = _api.DEFAULT_EXEC_TIMEOUT_MS,
    ) -> ExecResult:
        """Runs Python source with ``python3``.

        The code is written to ``/workspace/.locale2b-run-<random>.py``, run
        from ``working_dir`` and removed afterwards; the exit code is the
        script's.
        """
        script = f"/workspace/.locale2b-run-{uuid.uuid4().hex[:12]}.py"
        await self.write_file(sandbox_id, script, code)
        run = shlex.join(["python3", script, *args])
        command = f"{run}; __rc=$?; rm -f {shlex.quote(script)}; exit $__rc"
        return await self.run_command(
            sandbox_id, command, working_dir=working_dir, timeout_ms=timeout_ms
        )

    async def run_tests(
        self,
        sandbox_id: str,
        path: str | None = None,
        *,
        command: str | None = None,
        args: Sequence[str] = (),
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = LONG_TIMEOUT_MS,
    ) -> ExecResult:
        """Runs a test suite: ``command`` as given, or else
        ``python3 -m pytest -q [path] [args...]`` (pytest must be installed in
        the sandbox)."""
        if command is None:
            argv = ["python3", "-m", "pytest", "-q"]
            if path is not None:
                argv.append(path)
            command = shlex.join([*argv, *args])
        return await self.run_command(
            sandbox_id, command, working_dir=working_dir, timeout_ms=timeout_ms
        )

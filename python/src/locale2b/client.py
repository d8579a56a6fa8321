"""Synchronous client: the same HTTP calls CompyMac's locale2b client makes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx

from . import _api
from .config import ClientConfig
from .models import (
    ExecResult,
    ExposedPort,
    FileEntry,
    ProcessInfo,
    ProcessOutput,
    SandboxInfo,
    StreamEvent,
)

T = TypeVar("T")


def request_timeout(config: ClientConfig, call: _api.Call[Any]) -> httpx.Timeout:
    """The timeout for ``call``: the client's, with the read timeout raised
    (never lowered) when the call asks for a longer one."""
    base = config.timeout
    if call.read_timeout is None or (base.read is not None and call.read_timeout <= base.read):
        return base
    return httpx.Timeout(
        connect=base.connect, read=call.read_timeout, write=base.write, pool=base.pool
    )


class Locale2bClient:
    """Blocking client for a locale2b server.

    Every method is one HTTP request. Failures raise
    :class:`~locale2b.Locale2bError` (404 as
    :class:`~locale2b.Locale2bNotFoundError`), except where noted.

    Args:
        base_url: server URL; default ``LOCALE2B_BASE_URL``.
        api_key: API key; default ``LOCALE2B_API_KEY`` (no header if neither).
        api_key_header: header carrying the key; default
            ``LOCALE2B_API_KEY_HEADER`` or ``X-API-Key``.
        timeout: overrides the default (connect 10 s, read 60 s, write 10 s).
        transport: an httpx transport, for tests (``httpx.MockTransport``).

    Example::

        with Locale2bClient("http://127.0.0.1:8080", api_key="secret") as c:
            sb = c.create_sandbox(workspace_id="session-1")
            print(c.exec_command(sb.sandbox_id, "echo hi").stdout)
            c.destroy_sandbox(sb.sandbox_id)
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_header: str | None = None,
        *,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(base_url, api_key, api_key_header, timeout=timeout)
        self._http = httpx.Client(
            base_url=self.config.base_url,
            headers=self.config.headers(),
            timeout=self.config.timeout,
            transport=transport,
        )

    # -- plumbing

    def _send(self, call: _api.Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                timeout=request_timeout(self.config, call),
            )
        except httpx.HTTPError as exc:
            raise _api.transport_error(call, exc) from exc
        return _api.finish(call, response)

    def _stream(self, call: _api.Call[Any]) -> Iterator[StreamEvent]:
        try:
            with self._http.stream(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                timeout=request_timeout(self.config, call),
            ) as response:
                if not 200 <= response.status_code < 300:
                    response.read()
                    raise _api.error_from_response(response)
                for line in response.iter_lines():
                    event = _api.parse_stream_line(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise _api.transport_error(call, exc) from exc

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> Locale2bClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Locale2bClient(base_url={self.config.base_url!r})"

    # -- service

    def health_check(self) -> dict[str, Any]:
        """``GET /health``: the server's status object (``status``,
        ``active_sandboxes``, ``memory_available_mb``, ...)."""
        return self._send(_api.health_call())

    # -- sandboxes

    def create_sandbox(
        self,
        memory_mb: int = _api.DEFAULT_MEMORY_MB,
        vcpu_count: int = _api.DEFAULT_VCPU_COUNT,
        template: str = _api.DEFAULT_TEMPLATE,
        workspace_id: str | None = None,
    ) -> SandboxInfo:
        """``POST /sandboxes``: boots a sandbox; returns when it is ready.

        ``workspace_id`` is sent only when given; an existing workspace is
        reattached by the server, an unknown one is created.
        """
        return self._send(_api.create_call(memory_mb, vcpu_count, template, workspace_id))

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """``DELETE /sandboxes/{id}``. A sandbox that does not exist (404)
        counts as destroyed, so this is idempotent."""
        self._send(_api.destroy_call(sandbox_id))

    def list_sandboxes(self) -> list[SandboxInfo]:
        """``GET /sandboxes``: every sandbox the server knows."""
        return self._send(_api.list_call())

    def pause_sandbox(self, sandbox_id: str) -> None:
        """``POST /sandboxes/{id}/pause``: snapshots the VM and frees its RAM."""
        self._send(_api.pause_call(sandbox_id))

    def resume_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """``POST /sandboxes/{id}/resume``: restores a paused sandbox."""
        return self._send(_api.resume_call(sandbox_id))

    # -- commands

    def exec_command(
        self,
        sandbox_id: str,
        command: str,
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = _api.DEFAULT_EXEC_TIMEOUT_MS,
    ) -> ExecResult:
        """``POST /sandboxes/{id}/exec``: runs a shell command and waits.

        A non-zero exit code is not an exception: check ``exit_code`` and
        ``error``. A missing sandbox raises
        :class:`~locale2b.Locale2bNotFoundError`.
        """
        return self._send(_api.exec_call(sandbox_id, command, working_dir, timeout_ms))

    # -- files

    def write_file(self, sandbox_id: str, path: str, content: bytes | str) -> None:
        """``POST /sandboxes/{id}/files/write``: writes ``content`` (text is
        UTF-8 encoded) to ``path``; it travels base64-encoded."""
        self._send(_api.write_call(sandbox_id, path, content))

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        """``GET /sandboxes/{id}/files/read``: the file's bytes.

        Raises :class:`~locale2b.Locale2bNotFoundError` when the file (or the
        sandbox) does not exist.
        """
        return self._send(_api.read_call(sandbox_id, path))

    def list_files(
        self, sandbox_id: str, path: str = _api.DEFAULT_WORKING_DIR
    ) -> list[FileEntry]:
        """``GET /sandboxes/{id}/files/list``: entries of directory ``path``."""
        return self._send(_api.list_files_call(sandbox_id, path))

    # -- ports

    def expose_port(self, sandbox_id: str, port: int) -> ExposedPort:
        """``POST /sandboxes/{id}/ports/expose``: makes a guest port reachable."""
        return self._send(_api.expose_port_call(sandbox_id, port))

    def list_exposed_ports(self, sandbox_id: str) -> list[ExposedPort]:
        """``GET /sandboxes/{id}/ports``: the exposed ports."""
        return self._send(_api.list_ports_call(sandbox_id))

    def close_port(self, sandbox_id: str, port: int) -> None:
        """``DELETE /sandboxes/{id}/ports/{port}``; 404 counts as success."""
        self._send(_api.close_port_call(sandbox_id, port))

    # -- background processes

    def start_process(
        self,
        sandbox_id: str,
        command: str | None = None,
        *,
        argv: list[str] | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        tag: str | None = None,
        pty: tuple[int, int] | None = None,
        stdin: bool = True,
        timeout_ms: int | None = None,
    ) -> ProcessInfo:
        """``POST /sandboxes/{id}/processes``: starts a background process
        (a shell ``command``, or ``argv``) and returns at once. ``tag`` names
        it (use it instead of the pid); ``pty`` is ``(rows, cols)``."""
        return self._send(
            _api.start_process_call(
                sandbox_id,
                command,
                argv=argv,
                cwd=cwd,
                env=env,
                tag=tag,
                pty=pty,
                stdin=stdin,
                timeout_ms=timeout_ms,
            )
        )

    def list_processes(self, sandbox_id: str) -> list[ProcessInfo]:
        """``GET /sandboxes/{id}/processes``."""
        return self._send(_api.list_processes_call(sandbox_id))

    def get_process(self, sandbox_id: str, process: int | str) -> ProcessInfo:
        """``GET /sandboxes/{id}/processes/{pid or tag}``: status and exit code."""
        return self._send(_api.get_process_call(sandbox_id, process))

    def read_output(
        self, sandbox_id: str, process: int | str, cursor: int = 0, max_bytes: int | None = None
    ) -> ProcessOutput:
        """``GET …/output?cursor=N``: output since ``cursor``; pass the
        answer's ``next_cursor`` next time."""
        return self._send(_api.process_output_call(sandbox_id, process, cursor, max_bytes))

    def write_stdin(
        self, sandbox_id: str, process: int | str, data: bytes | str, close: bool = False
    ) -> None:
        """``POST …/stdin``: types ``data`` into the process (for a PTY,
        ``"\x03"`` is Ctrl-C); ``close`` closes stdin after."""
        self._send(_api.write_stdin_call(sandbox_id, process, data, close))

    def signal_process(self, sandbox_id: str, process: int | str, signal: str | int) -> None:
        """``POST …/signal``: ``SIGTERM``, ``SIGINT``, ``SIGKILL``, ... to its group."""
        self._send(_api.signal_process_call(sandbox_id, process, signal))

    def resize_pty(self, sandbox_id: str, process: int | str, rows: int, cols: int) -> None:
        """``POST …/resize``: a PTY process's terminal size."""
        self._send(_api.resize_pty_call(sandbox_id, process, rows, cols))

    def kill_process(self, sandbox_id: str, process: int | str) -> None:
        """``DELETE …/processes/{pid}``: kills and forgets it (404 is success)."""
        self._send(_api.remove_process_call(sandbox_id, process))

    def stream_output(
        self, sandbox_id: str, process: int | str, cursor: int = 0
    ) -> Iterator[StreamEvent]:
        """``GET …/stream``: output events as they come, until ``end``."""
        return self._stream(_api.stream_process_call(sandbox_id, process, cursor))

    def exec_stream(
        self,
        sandbox_id: str,
        command: str,
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = _api.DEFAULT_EXEC_TIMEOUT_MS,
    ) -> Iterator[StreamEvent]:
        """``POST …/exec`` with ``stream``: ``start``, ``stdout``/``stderr``
        events as the output comes, then ``end`` (with ``exit_code``)."""
        return self._stream(_api.exec_stream_call(sandbox_id, command, working_dir, timeout_ms))

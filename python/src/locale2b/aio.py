"""Asynchronous client: the same calls as :class:`~locale2b.Locale2bClient`,
on ``httpx.AsyncClient``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx

from . import _api
from .client import request_timeout
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


class AsyncLocale2bClient:
    """Non-blocking client for a locale2b server; one coroutine per HTTP call.

    Arguments and behaviour are those of :class:`~locale2b.Locale2bClient`;
    ``transport`` takes an ``httpx.AsyncBaseTransport``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_header: str | None = None,
        *,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(base_url, api_key, api_key_header, timeout=timeout)
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url,
            headers=self.config.headers(),
            timeout=self.config.timeout,
            transport=transport,
        )

    async def _send(self, call: _api.Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                timeout=request_timeout(self.config, call),
            )
        except httpx.HTTPError as exc:
            raise _api.transport_error(call, exc) from exc
        return _api.finish(call, response)

    async def _stream(self, call: _api.Call[Any]) -> AsyncIterator[StreamEvent]:
        try:
            async with self._http.stream(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                timeout=request_timeout(self.config, call),
            ) as response:
                if not 200 <= response.status_code < 300:
                    await response.aread()
                    raise _api.error_from_response(response)
                async for line in response.aiter_lines():
                    event = _api.parse_stream_line(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise _api.transport_error(call, exc) from exc

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLocale2bClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncLocale2bClient(base_url={self.config.base_url!r})"

    async def health_check(self) -> dict[str, Any]:
        """``GET /health``."""
        return await self._send(_api.health_call())

    async def create_sandbox(
        self,
        memory_mb: int = _api.DEFAULT_MEMORY_MB,
        vcpu_count: int = _api.DEFAULT_VCPU_COUNT,
        template: str = _api.DEFAULT_TEMPLATE,
        workspace_id: str | None = None,
    ) -> SandboxInfo:
        """``POST /sandboxes``."""
        return await self._send(_api.create_call(memory_mb, vcpu_count, template, workspace_id))

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """``DELETE /sandboxes/{id}``; 404 counts as success."""
        await self._send(_api.destroy_call(sandbox_id))

    async def list_sandboxes(self) -> list[SandboxInfo]:
        """``GET /sandboxes``."""
        return await self._send(_api.list_call())

    async def pause_sandbox(self, sandbox_id: str) -> None:
        """``POST /sandboxes/{id}/pause``."""
        await self._send(_api.pause_call(sandbox_id))

    async def resume_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """``POST /sandboxes/{id}/resume``."""
        return await self._send(_api.resume_call(sandbox_id))

    async def exec_command(
        self,
        sandbox_id: str,
        command: str,
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = _api.DEFAULT_EXEC_TIMEOUT_MS,
    ) -> ExecResult:
        """``POST /sandboxes/{id}/exec``."""
        return await self._send(_api.exec_call(sandbox_id, command, working_dir, timeout_ms))

    async def write_file(self, sandbox_id: str, path: str, content: bytes | str) -> None:
        """``POST /sandboxes/{id}/files/write`` (base64 content)."""
        await self._send(_api.write_call(sandbox_id, path, content))

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """``GET /sandboxes/{id}/files/read``: the file's bytes."""
        return await self._send(_api.read_call(sandbox_id, path))

    async def list_files(
        self, sandbox_id: str, path: str = _api.DEFAULT_WORKING_DIR
    ) -> list[FileEntry]:
        """``GET /sandboxes/{id}/files/list``."""
        return await self._send(_api.list_files_call(sandbox_id, path))

    async def expose_port(self, sandbox_id: str, port: int) -> ExposedPort:
        """``POST /sandboxes/{id}/ports/expose``."""
        return await self._send(_api.expose_port_call(sandbox_id, port))

    async def list_exposed_ports(self, sandbox_id: str) -> list[ExposedPort]:
        """``GET /sandboxes/{id}/ports``."""
        return await self._send(_api.list_ports_call(sandbox_id))

    async def close_port(self, sandbox_id: str, port: int) -> None:
        """``DELETE /sandboxes/{id}/ports/{port}``; 404 counts as success."""
        await self._send(_api.close_port_call(sandbox_id, port))

    async def start_process(
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
        """``POST /sandboxes/{id}/processes``."""
        return await self._send(
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

    async def list_processes(self, sandbox_id: str) -> list[ProcessInfo]:
        """``GET /sandboxes/{id}/processes``."""
        return await self._send(_api.list_processes_call(sandbox_id))

    async def get_process(self, sandbox_id: str, process: int | str) -> ProcessInfo:
        """``GET /sandboxes/{id}/processes/{pid or tag}``."""
        return await self._send(_api.get_process_call(sandbox_id, process))

    async def read_output(
        self, sandbox_id: str, process: int | str, cursor: int = 0, max_bytes: int | None = None
    ) -> ProcessOutput:
        """``GET …/output?cursor=N``."""
        return await self._send(_api.process_output_call(sandbox_id, process, cursor, max_bytes))

    async def write_stdin(
        self, sandbox_id: str, process: int | str, data: bytes | str, close: bool = False
    ) -> None:
        """``POST …/stdin``."""
        await self._send(_api.write_stdin_call(sandbox_id, process, data, close))

    async def signal_process(self, sandbox_id: str, process: int | str, signal: str | int) -> None:
        """``POST …/signal``."""
        await self._send(_api.signal_process_call(sandbox_id, process, signal))

    async def resize_pty(self, sandbox_id: str, process: int | str, rows: int, cols: int) -> None:
        """``POST …/resize``."""
        await self._send(_api.resize_pty_call(sandbox_id, process, rows, cols))

    async def kill_process(self, sandbox_id: str, process: int | str) -> None:
        """``DELETE …/processes/{pid}``; 404 is success."""
        await self._send(_api.remove_process_call(sandbox_id, process))

    def stream_output(
        self, sandbox_id: str, process: int | str, cursor: int = 0
    ) -> AsyncIterator[StreamEvent]:
        """``GET …/stream``: output events as they come, until ``end``."""
        return self._stream(_api.stream_process_call(sandbox_id, process, cursor))

    def exec_stream(
        self,
        sandbox_id: str,
        command: str,
        working_dir: str = _api.DEFAULT_WORKING_DIR,
        timeout_ms: int = _api.DEFAULT_EXEC_TIMEOUT_MS,
    ) -> AsyncIterator[StreamEvent]:
        """``POST …/exec`` with ``stream``: events as the output comes."""
        return self._stream(_api.exec_stream_call(sandbox_id, command, working_dir, timeout_ms))

"""Synchronous client: the same HTTP calls CompyMac's locale2b client makes."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from . import _api
from .config import ClientConfig
from .models import ExecResult, ExposedPort, FileEntry, SandboxInfo

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

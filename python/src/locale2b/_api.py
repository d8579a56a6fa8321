"""The HTTP calls, described once and shared by the sync and async clients.

Each public client method builds a :class:`Call` (method, path, body, query,
how to read the answer) with one of the ``*_call`` functions below; the
client only sends it. The shapes follow the CompyMac contract
(``docs/clients.md``) exactly.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import Locale2bError, Locale2bNotFoundError
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

DEFAULT_MEMORY_MB = 512
DEFAULT_VCPU_COUNT = 1
DEFAULT_TEMPLATE = "default"
DEFAULT_WORKING_DIR = "/workspace"
DEFAULT_EXEC_TIMEOUT_MS = 120_000
#: Extra seconds the client waits for an exec answer beyond the command's own
#: timeout, so the server can report the timeout itself.
EXEC_READ_MARGIN_S = 15.0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to turn its response into a value."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    #: 404 counts as success (destroy, close_port); ``parse`` is then skipped
    #: and ``not_found_value`` returned.
    not_found_ok: bool = False
    not_found_value: Any = None
    #: Read timeout for this request, when it must differ from the client's.
    read_timeout: float | None = None


def _seg(value: str | int) -> str:
    """Quotes one path segment (ids are plain, but never trust that)."""
    return quote(str(value), safe="")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise Locale2bError(
            f"server sent a non-JSON body for {response.request.method} "
            f"{response.request.url.path}",
            status=response.status_code,
            code="invalid_response",
        ) from exc


def _ignore(_: httpx.Response) -> None:
    return None


def error_from_response(response: httpx.Response) -> Locale2bError:
    """Builds the error for a non-2xx response.

    Reads ``{"error": {"code", "message", "details"?}}``; falls back to
    ``{"detail": ...}``, ``{"message": ...}`` or the start of the raw body.
    404 gives a :class:`Locale2bNotFoundError`.
    """
    status = response.status_code
    code = f"http_{status}"
    message = ""
    details: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or "")
            details = err.get("details")
        elif isinstance(err, str):
            message = err
        elif "detail" in body:
            message = str(body["detail"])
        elif "message" in body:
            message = str(body["message"])
    if not message:
        text = response.text.strip()
        message = text[:500] if text else (response.reason_phrase or "request failed")
    retry_after: float | None = None
    header = response.headers.get("Retry-After")
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    cls = Locale2bNotFoundError if status == 404 else Locale2bError
    return cls(message, status=status, code=code, details=details, retry_after=retry_after)


def finish(call: Call[T], response: httpx.Response) -> T:
    """Checks the status and parses the body of ``response`` to ``call``."""
    if response.status_code == 404 and call.not_found_ok:
        return call.not_found_value  # type: ignore[no-any-return]
    if not 200 <= response.status_code < 300:
        raise error_from_response(response)
    return call.parse(response)


def transport_error(call: Call[Any], exc: httpx.HTTPError) -> Locale2bError:
    """Wraps a connection or timeout failure (no usable response)."""
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport_error"
    return Locale2bError(
        f"{call.method} {call.path} failed: {exc.__class__.__name__}: {exc}",
        code=code,
    )


# ---------------------------------------------------------------- the calls


def health_call() -> Call[dict[str, Any]]:
    """GET /health → the JSON object as is."""

    def parse(r: httpx.Response) -> dict[str, Any]:
        body = _json(r)
        if not isinstance(body, dict):
            raise Locale2bError("health answer is not a JSON object", code="invalid_response")
        return body

    return Call("GET", "/health", parse)


def create_call(
    memory_mb: int, vcpu_count: int, template: str, workspace_id: str | None
) -> Call[SandboxInfo]:
    """POST /sandboxes with memory_mb, vcpu_count, template [, workspace_id]."""
    body: dict[str, Any] = {
        "memory_mb": memory_mb,
        "vcpu_count": vcpu_count,
        "template": template,
    }
    if workspace_id is not None:
        body["workspace_id"] = workspace_id
    return Call("POST", "/sandboxes", lambda r: SandboxInfo.from_json(_json(r)), json=body)


def destroy_call(sandbox_id: str) -> Call[None]:
    """DELETE /sandboxes/{id}; 404 counts as success."""
    return Call("DELETE", f"/sandboxes/{_seg(sandbox_id)}", _ignore, not_found_ok=True)


def list_call() -> Call[list[SandboxInfo]]:
    """GET /sandboxes → ``{"sandboxes": [...]}``."""

    def parse(r: httpx.Response) -> list[SandboxInfo]:
        body = _json(r)
        items = body.get("sandboxes") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise Locale2bError(
                "list answer has no 'sandboxes' array", code="invalid_response", details=body
            )
        return [SandboxInfo.from_json(item) for item in items]

    return Call("GET", "/sandboxes", parse)


def exec_call(
    sandbox_id: str, command: str, working_dir: str, timeout_ms: int
) -> Call[ExecResult]:
    """POST /sandboxes/{id}/exec with command, working_dir, timeout_ms.

    The read timeout of this one request is stretched to the command's timeout
    plus a margin when that is longer than the client's default, because the
    caller asked for a long command.
    """
    body = {"command": command, "working_dir": working_dir, "timeout_ms": timeout_ms}
    return Call(
        "POST",
        f"/sandboxes/{_seg(sandbox_id)}/exec",
        lambda r: ExecResult.from_json(_json(r)),
        json=body,
        read_timeout=timeout_ms / 1000.0 + EXEC_READ_MARGIN_S,
    )


def encode_content(content: bytes | str) -> str:
    """Base64 of ``content`` (text is UTF-8 encoded first)."""
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    return base64.b64encode(data).decode("ascii")


def write_call(sandbox_id: str, path: str, content: bytes | str) -> Call[None]:
    """POST /sandboxes/{id}/files/write with path and base64 content (no flag)."""
    body = {"path": path, "content": encode_content(content)}
    return Call("POST", f"/sandboxes/{_seg(sandbox_id)}/files/write", _ignore, json=body)


def read_call(sandbox_id: str, path: str) -> Call[bytes]:
    """GET /sandboxes/{id}/files/read?path=P → base64-decoded ``content``."""

    def parse(r: httpx.Response) -> bytes:
        body = _json(r)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise Locale2bError("read answer has no 'content' string", code="invalid_response")
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Locale2bError(
                "read answer 'content' is not valid base64", code="invalid_response"
            ) from exc

    return Call(
        "GET", f"/sandboxes/{_seg(sandbox_id)}/files/read", parse, params={"path": path}
    )


def list_files_call(sandbox_id: str, path: str) -> Call[list[FileEntry]]:
    """GET /sandboxes/{id}/files/list?path=P → ``{"files": [...]}``."""

    def parse(r: httpx.Response) -> list[FileEntry]:
        body = _json(r)
        items = body.get("files") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise Locale2bError(
                "list answer has no 'files' array", code="invalid_response", details=body
            )
        return [FileEntry.from_json(item) for item in items]

    return Call(
        "GET", f"/sandboxes/{_seg(sandbox_id)}/files/list", parse, params={"path": path}
    )


def pause_call(sandbox_id: str) -> Call[None]:
    """POST /sandboxes/{id}/pause; any 2xx."""
    return Call("POST", f"/sandboxes/{_seg(sandbox_id)}/pause", _ignore)


def resume_call(sandbox_id: str) -> Call[SandboxInfo]:
    """POST /sandboxes/{id}/resume → the sandbox object."""
    return Call(
        "POST",
        f"/sandboxes/{_seg(sandbox_id)}/resume",
        lambda r: SandboxInfo.from_json(_json(r)),
    )


def expose_port_call(sandbox_id: str, port: int) -> Call[ExposedPort]:
    """POST /sandboxes/{id}/ports/expose with ``{"port"}``."""
    return Call(
        "POST",
        f"/sandboxes/{_seg(sandbox_id)}/ports/expose",
        lambda r: ExposedPort.from_json(_json(r)),
        json={"port": port},
    )


def list_ports_call(sandbox_id: str) -> Call[list[ExposedPort]]:
    """GET /sandboxes/{id}/ports → ``{"ports": [...]}``."""

    def parse(r: httpx.Response) -> list[ExposedPort]:
        body = _json(r)
        items = body.get("ports") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise Locale2bError(
                "ports answer has no 'ports' array", code="invalid_response", details=body
            )
        return [ExposedPort.from_json(item) for item in items]

    return Call("GET", f"/sandboxes/{_seg(sandbox_id)}/ports", parse)


def close_port_call(sandbox_id: str, port: int) -> Call[None]:
    """DELETE /sandboxes/{id}/ports/{port}; 404 counts as success."""
    return Call(
        "DELETE",
        f"/sandboxes/{_seg(sandbox_id)}/ports/{_seg(port)}",
        _ignore,
        not_found_ok=True,
    )


# ---------------------------------------------------------------- processes


def _process_path(sandbox_id: str, process: int | str, tail: str = "") -> str:
    return f"/sandboxes/{_seg(sandbox_id)}/processes/{_seg(process)}{tail}"


def start_process_call(
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
) -> Call[ProcessInfo]:
    """POST /sandboxes/{id}/processes: starts a background process.

    ``pty`` is ``(rows, cols)``.
    """
    body: dict[str, Any] = {"stdin": stdin}
    if command is not None:
        body["command"] = command
    if argv:
        body["argv"] = list(argv)
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = dict(env)
    if tag is not None:
        body["tag"] = tag
    if pty is not None:
        body["pty"] = {"rows": pty[0], "cols": pty[1]}
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    return Call(
        "POST",
        f"/sandboxes/{_seg(sandbox_id)}/processes",
        lambda r: ProcessInfo.from_json(_json(r)),
        json=body,
    )


def list_processes_call(sandbox_id: str) -> Call[list[ProcessInfo]]:
    """GET /sandboxes/{id}/processes → ``{"processes": [...]}``."""

    def parse(r: httpx.Response) -> list[ProcessInfo]:
        body = _json(r)
        items = body.get("processes") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise Locale2bError(
                "answer has no 'processes' array", code="invalid_response", details=body
            )
        return [ProcessInfo.from_json(item) for item in items]

    return Call("GET", f"/sandboxes/{_seg(sandbox_id)}/processes", parse)


def get_process_call(sandbox_id: str, process: int | str) -> Call[ProcessInfo]:
    """GET /sandboxes/{id}/processes/{pid or tag}."""
    return Call(
        "GET", _process_path(sandbox_id, process), lambda r: ProcessInfo.from_json(_json(r))
    )


def process_output_call(
    sandbox_id: str, process: int | str, cursor: int, max_bytes: int | None = None
) -> Call[ProcessOutput]:
    """GET …/processes/{pid}/output?cursor=N (UTF-8 text)."""
    params = {"cursor": str(cursor)}
    if max_bytes is not None:
        params["max_bytes"] = str(max_bytes)
    return Call(
        "GET",
        _process_path(sandbox_id, process, "/output"),
        lambda r: ProcessOutput.from_json(_json(r)),
        params=params,
    )


def write_stdin_call(
    sandbox_id: str, process: int | str, data: bytes | str, close: bool = False
) -> Call[None]:
    """POST …/processes/{pid}/stdin (text as ``data``, bytes as ``data_b64``)."""
    body: dict[str, Any] = {"close": close}
    if isinstance(data, str):
        body["data"] = data
    else:
        body["data_b64"] = base64.b64encode(bytes(data)).decode("ascii")
    return Call("POST", _process_path(sandbox_id, process, "/stdin"), _ignore, json=body)


def signal_process_call(sandbox_id: str, process: int | str, signal: str | int) -> Call[None]:
    """POST …/processes/{pid}/signal (a name like ``SIGTERM`` or a number)."""
    return Call(
        "POST", _process_path(sandbox_id, process, "/signal"), _ignore, json={"signal": signal}
    )


def resize_pty_call(sandbox_id: str, process: int | str, rows: int, cols: int) -> Call[None]:
    """POST …/processes/{pid}/resize."""
    return Call(
        "POST",
        _process_path(sandbox_id, process, "/resize"),
        _ignore,
        json={"rows": rows, "cols": cols},
    )


def remove_process_call(sandbox_id: str, process: int | str) -> Call[None]:
    """DELETE …/processes/{pid}: kills and forgets it; 404 counts as success."""
    return Call("DELETE", _process_path(sandbox_id, process), _ignore, not_found_ok=True)


def exec_stream_call(
    sandbox_id: str, command: str, working_dir: str, timeout_ms: int
) -> Call[None]:
    """POST /sandboxes/{id}/exec with ``"stream": true``: NDJSON lines, read
    with :func:`parse_stream_line` (the client streams the body instead of
    calling ``parse``)."""
    body = {
        "command": command,
        "working_dir": working_dir,
        "timeout_ms": timeout_ms,
        "stream": True,
    }
    return Call(
        "POST",
        f"/sandboxes/{_seg(sandbox_id)}/exec",
        _ignore,
        json=body,
        read_timeout=timeout_ms / 1000.0 + EXEC_READ_MARGIN_S,
    )


def stream_process_call(sandbox_id: str, process: int | str, cursor: int) -> Call[None]:
    """GET …/processes/{pid}/stream?cursor=N: NDJSON lines until it ends."""
    return Call(
        "GET",
        _process_path(sandbox_id, process, "/stream"),
        _ignore,
        params={"cursor": str(cursor)},
        read_timeout=60.0,
    )


def parse_stream_line(line: str) -> StreamEvent | None:
    """One NDJSON line as an event (``None`` for a blank line)."""
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise Locale2bError(
            f"stream line is not JSON: {line[:200]!r}", code="invalid_response"
        ) from exc
    return StreamEvent.from_json(obj)

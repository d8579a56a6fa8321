"""Values returned by the client. Each keeps the full JSON object in ``raw``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import Locale2bError


def _require(obj: Any, key: str, what: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise Locale2bError(
            f"server response for {what} has no {key!r} field",
            code="invalid_response",
            details=obj,
        )
    return obj[key]


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as returned by create, list and resume."""

    sandbox_id: str
    status: str | None = None
    memory_mb: int | None = None
    vcpu_count: int | None = None
    workspace_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any) -> SandboxInfo:
        """Parses one sandbox object; ``sandbox_id`` is required."""
        sandbox_id = _require(obj, "sandbox_id", "sandbox")
        return cls(
            sandbox_id=str(sandbox_id),
            status=obj.get("status"),
            memory_mb=obj.get("memory_mb"),
            vcpu_count=obj.get("vcpu_count"),
            workspace_id=obj.get("workspace_id"),
            raw=obj,
        )


@dataclass(frozen=True)
class ExecResult:
    """Outcome of a command: output, exit code, and ``error`` (``None`` when fine).

    ``error`` is set by the server when the command could not run to
    completion (timed out, could not start); ``exit_code`` is then usually
    non-zero as well.
    """

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the command exited 0 and the server reported no error."""
        return self.exit_code == 0 and self.error is None

    @classmethod
    def from_json(cls, obj: Any) -> ExecResult:
        """Parses an exec response; ``exit_code`` is required."""
        exit_code = _require(obj, "exit_code", "exec")
        return cls(
            stdout=obj.get("stdout") or "",
            stderr=obj.get("stderr") or "",
            exit_code=int(exit_code) if exit_code is not None else -1,
            error=obj.get("error"),
            raw=obj,
        )


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing."""

    path: str
    is_directory: bool
    size: int
    name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any) -> FileEntry:
        """Parses one listing entry; ``path`` is required."""
        path = str(_require(obj, "path", "file list entry"))
        return cls(
            path=path,
            is_directory=bool(obj.get("is_directory", False)),
            size=int(obj.get("size") or 0),
            name=obj.get("name") or path.rstrip("/").rsplit("/", 1)[-1],
            raw=obj,
        )


@dataclass(frozen=True)
class ExposedPort:
    """A guest port reachable from the host at ``url``."""

    port: int
    url: str
    tunnel_pid: int | None = None
    already_exposed: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any) -> ExposedPort:
        """Parses one port object; ``port`` and ``url`` are required."""
        port = _require(obj, "port", "port")
        url = _require(obj, "url", "port")
        return cls(
            port=int(port),
            url=str(url),
            tunnel_pid=obj.get("tunnel_pid"),
            already_exposed=obj.get("already_exposed"),
            raw=obj,
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A background process (``POST/GET /sandboxes/{id}/processes``)."""

    pid: int
    status: str
    tag: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    stdin_open: bool = False
    output_end: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def running(self) -> bool:
        """True until the process exited."""
        return self.status == "running"

    @classmethod
    def from_json(cls, obj: Any) -> ProcessInfo:
        """Parses one process object; ``pid`` and ``status`` are required."""
        pid = _require(obj, "pid", "process")
        status = _require(obj, "status", "process")
        return cls(
            pid=int(pid),
            status=str(status),
            tag=obj.get("tag"),
            exit_code=obj.get("exit_code"),
            signal=obj.get("signal"),
            stdin_open=bool(obj.get("stdin_open", False)),
            output_end=int(obj.get("output_end") or 0),
            raw=obj,
        )


@dataclass(frozen=True)
class ProcessOutput:
    """Output of a process since a cursor.

    ``next_cursor`` is where the next read starts; ``dropped`` counts the
    bytes before the returned ones that the server no longer held (0: none
    lost).
    """

    stdout: str
    stderr: str
    next_cursor: int
    dropped: int = 0
    pty: str = ""
    status: str = "running"
    exit_code: int | None = None
    complete: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any) -> ProcessOutput:
        """Parses an output answer; ``next_cursor`` is required."""
        next_cursor = _require(obj, "next_cursor", "process output")
        return cls(
            stdout=obj.get("stdout") or "",
            stderr=obj.get("stderr") or "",
            next_cursor=int(next_cursor),
            dropped=int(obj.get("dropped") or 0),
            pty=obj.get("pty") or "",
            status=str(obj.get("status") or "running"),
            exit_code=obj.get("exit_code"),
            complete=bool(obj.get("complete", False)),
            raw=obj,
        )


@dataclass(frozen=True)
class StreamEvent:
    """One line of a live stream (streamed exec, process stream).

    ``type`` is ``start``, ``stdout``, ``stderr``, ``pty``, ``dropped``,
    ``keepalive``, ``end`` or ``error``.
    """

    type: str
    data: str | None = None
    cursor: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any) -> StreamEvent:
        """Parses one stream line; ``type`` is required."""
        kind = str(_require(obj, "type", "stream line"))
        return cls(
            type=kind,
            data=obj.get("data"),
            cursor=obj.get("cursor") if obj.get("cursor") is not None else obj.get("next_cursor"),
            pid=obj.get("pid"),
            exit_code=obj.get("exit_code"),
            raw=obj,
        )

"""Python client for locale2b, a self-hosted sandbox service.

- :class:`Locale2bClient`: blocking client; the exact HTTP calls CompyMac makes.
- :class:`AsyncLocale2bClient`: the same calls, async.
- :class:`FirecrackerWorkspaceProvider`: async workspace API with conveniences
  (``run_python``, ``install_package``, ``clone_repo``, ``run_tests``).
"""

from .aio import AsyncLocale2bClient
from .client import Locale2bClient
from .config import ClientConfig
from .errors import Locale2bConfigError, Locale2bError, Locale2bNotFoundError
from .models import (
    ExecResult,
    ExposedPort,
    FileEntry,
    ProcessInfo,
    ProcessOutput,
    SandboxInfo,
    StreamEvent,
)
from .provider import FirecrackerWorkspaceProvider

__all__ = [
    "AsyncLocale2bClient",
    "ClientConfig",
    "ExecResult",
    "ExposedPort",
    "FileEntry",
    "FirecrackerWorkspaceProvider",
    "Locale2bClient",
    "Locale2bConfigError",
    "Locale2bError",
    "Locale2bNotFoundError",
    "ProcessInfo",
    "ProcessOutput",
    "SandboxInfo",
    "StreamEvent",
]

__version__ = "0.1.0"

"""Errors raised by the locale2b client and provider."""

from __future__ import annotations

from typing import Any


class Locale2bError(Exception):
    """A call to the locale2b server failed.

    Attributes:
        status: HTTP status code, or ``None`` when no response was received
            (connection refused, timeout) or the response was unusable.
        code: machine-readable code from the server's error body
            (``{"error": {"code", "message", "details"?}}``), or one made up by
            the client: ``http_<status>`` when the body had none,
            ``transport_error``, ``invalid_response``.
        message: human-readable message.
        details: the ``details`` object of the error body, if any.
        retry_after: seconds from a ``Retry-After`` header (capacity errors).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{self.message} ({where}, code {self.code})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class Locale2bNotFoundError(Locale2bError):
    """The server answered 404: no such sandbox, file or port."""


class Locale2bConfigError(ValueError):
    """The client was not given enough to reach a server (no base URL...)."""

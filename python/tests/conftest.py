"""Shared test helpers: a recording fake server on httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

BASE = "http://locale2b.test:8080"
KEY = "test-key"


@dataclass
class Recorded:
    """One request as the fake server saw it."""

    method: str
    path: str
    raw_path: str  # as sent on the wire, percent-encoding kept
    params: dict[str, str]
    headers: httpx.Headers
    body: Any  # parsed JSON, or None when the request had no body


@dataclass
class FakeServer:
    """Answers every request with ``responder`` and records it."""

    responder: Callable[[httpx.Request], httpx.Response]
    requests: list[Recorded] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        raw = request.content
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.url.path,
                raw_path=request.url.raw_path.decode().split("?")[0],
                params=dict(request.url.params),
                headers=request.headers,
                body=json.loads(raw) if raw else None,
            )
        )
        return self.responder(request)

    @property
    def last(self) -> Recorded:
        assert self.requests, "no request was sent"
        return self.requests[-1]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None):
    """A responder that always gives ``status`` with JSON ``body``."""

    def respond(_: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return respond


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Unit tests must not see a developer's LOCALE2B_* settings."""
    if request.node.get_closest_marker("live"):
        return
    for name in ("LOCALE2B_BASE_URL", "LOCALE2B_API_KEY", "LOCALE2B_API_KEY_HEADER"):
        monkeypatch.delenv(name, raising=False)

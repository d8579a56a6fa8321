"""The official `e2b` SDK against a running locale2b server.

The suite reads LOCALE2B_BASE_URL and LOCALE2B_API_KEY (scripts/python-e2e.sh
starts a real server and sets them) and points the SDK at the server with
the three variables a user sets: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
Without a server every test is skipped, unless LOCALE2B_REQUIRE_E2E=1 makes
that an error.
"""

from __future__ import annotations

import os
import uuid

import pytest

BASE = os.environ.get("LOCALE2B_BASE_URL", "").rstrip("/")
KEY = os.environ.get("LOCALE2B_API_KEY", "")

if BASE:
    os.environ["E2B_API_URL"] = f"{BASE}/e2b"
    os.environ["E2B_SANDBOX_URL"] = BASE
    os.environ["E2B_API_KEY"] = KEY
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_DOMAIN", None)

# One id per run, in every sandbox's metadata, so list filters see only ours.
RUN = uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(config, items):
    if BASE:
        return
    if os.environ.get("LOCALE2B_REQUIRE_E2E") == "1":
        raise pytest.UsageError("LOCALE2B_REQUIRE_E2E=1 but LOCALE2B_BASE_URL is not set")
    skip = pytest.mark.skip(reason="needs a running locale2b server (LOCALE2B_BASE_URL)")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def sdk_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("e2b").split(".")[:3])


@pytest.fixture
def meta():
    """Metadata that marks a sandbox as this run's."""
    return {"suite": "e2b-compat", "run": RUN}

"""``GET /metrics`` against a real server, read with the official Prometheus
text-format parser (``prometheus_client``): it parses, needs the API key,
and its counters and histograms move as this test creates, runs, pauses,
resumes and destroys a sandbox. ``GET /sandboxes/{id}/metrics`` gives the
sandbox's figures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from locale2b import Locale2bClient
from test_live_contract import live_env  # noqa: F401  (fixture)

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def client(live_env: None) -> Iterator[Locale2bClient]:  # noqa: F811
    with Locale2bClient() as c:
        yield c


def _http() -> httpx.Client:
    base = os.environ["LOCALE2B_BASE_URL"].rstrip("/")
    header = os.environ.get("LOCALE2B_API_KEY_HEADER") or "X-API-Key"
    return httpx.Client(base_url=base, headers={header: os.environ["LOCALE2B_API_KEY"]}, timeout=60)


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    with _http() as h:
        r = h.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_the_key(live_env: None) -> None:  # noqa: F811
    base = os.environ["LOCALE2B_BASE_URL"].rstrip("/")
    r = httpx.get(f"{base}/metrics", timeout=30)
    assert r.status_code == 401


def test_counters_and_histograms_move_with_the_lifecycle(client: Locale2bClient) -> None:
    before = _samples()
    sb = client.create_sandbox(memory_mb=256)
    try:
        result = client.exec_command(sb.sandbox_id, "echo metered")
        assert result.stdout == "metered\n"
        during = _samples()
        assert _get(during, "locale2b_sandboxes", status="running") >= 1
        assert _get(during, "locale2b_memory_nominal_mb") >= 256
        with _http() as h:
            r = h.get(f"/sandboxes/{sb.sandbox_id}/metrics")
        assert r.status_code == 200, r.text
        m = r.json()
        assert m["sandbox_id"] == sb.sandbox_id
        assert m["memory_total_mb"] == 256
        assert 0 < m["memory_used_mb"] <= 256
        assert m["disk_total_mb"] and m["disk_used_mb"] is not None
        assert 0.0 <= m["cpu_used_pct"] <= 100.0
        client.pause_sandbox(sb.sandbox_id)
        client.resume_sandbox(sb.sandbox_id)
    finally:
        client.destroy_sandbox(sb.sandbox_id)
    after = _samples()
    for name in ("locale2b_creates_total", "locale2b_resumes_total", "locale2b_destroys_total"):
        assert _get(after, name) >= _get(before, name) + 1, name
    assert _get(after, "locale2b_pauses_total", reason="api") >= _get(before, "locale2b_pauses_total", reason="api") + 1
    for hist in ("locale2b_create_seconds", "locale2b_exec_seconds", "locale2b_pause_seconds", "locale2b_resume_seconds"):
        assert _get(after, f"{hist}_count") >= _get(before, f"{hist}_count") + 1, hist
        assert _get(after, f"{hist}_bucket", le="+Inf") == _get(after, f"{hist}_count"), hist
    with _http() as h:
        gone = h.get(f"/sandboxes/{sb.sandbox_id}/metrics")
    assert gone.status_code == 404

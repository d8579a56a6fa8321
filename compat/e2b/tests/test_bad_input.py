"""Bad input at the E2B surface gets clear, typed errors: never a hang, a
500 or a dropped connection. Raw HTTP here, since the SDK never sends these."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
from e2b import Sandbox

from conftest import BASE, KEY


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def frames(body: bytes):
    out = []
    while body:
        flags, n = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + n])))
        body = body[5 + n :]
    return out


@pytest.fixture(scope="module")
def secured():
    sbx = Sandbox.create(timeout=300)
    detail = httpx.get(f"{BASE}/e2b/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": KEY}).json()
    yield sbx.sandbox_id, detail["envdAccessToken"]
    sbx.kill()


def test_the_control_plane_answers_in_e2b_shape():
    r = httpx.get(f"{BASE}/e2b/sandboxes/sb-nosuchthing", headers={"X-API-KEY": KEY})
    assert r.status_code == 404
    assert r.json()["code"] == 404 and "not found" in r.json()["message"]
    r = httpx.get(f"{BASE}/e2b/v2/sandboxes", headers={"X-API-KEY": "e2b_0000"})
    assert r.status_code == 401 and r.json()["code"] == 401
    r = httpx.post(
        f"{BASE}/e2b/v2/sandboxes",
        headers={"X-API-KEY": KEY, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = httpx.post(
        f"{BASE}/e2b/v2/sandboxes",
        headers={"X-API-KEY": KEY},
        json={"templateID": "base", "mcp": {"x": {}}},
    )
    assert r.status_code == 400 and "MCP" in r.json()["message"]
    r = httpx.get(f"{BASE}/e2b/v2/sandboxes?limit=0", headers={"X-API-KEY": KEY})
    assert r.status_code == 400


def test_envd_refuses_unknown_sandboxes_and_bad_tokens(secured):
    sid, token = secured
    list_rpc = f"{BASE}/process.Process/List"
    unary = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    r = httpx.post(list_rpc, headers={**unary, "E2b-Sandbox-Id": "sb-nosuchthing"}, content=b"{}")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.post(list_rpc, headers={**unary, "E2b-Sandbox-Id": sid}, content=b"{}")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = httpx.post(
        list_rpc, headers={**unary, "E2b-Sandbox-Id": sid, "X-Access-Token": "wrong"}, content=b"{}"
    )
    assert r.status_code == 401
    ok = {**unary, "E2b-Sandbox-Id": sid, "X-Access-Token": token}
    r = httpx.post(list_rpc, headers=ok, content=b"{}")
    assert r.status_code == 200 and "processes" in r.json()
    r = httpx.get(f"{BASE}/health", headers={"E2b-Sandbox-Id": "sb-nosuchthing"})
    assert r.status_code == 502
    r = httpx.get(f"{BASE}/health", headers={"E2b-Sandbox-Id": sid, "X-Access-Token": token})
    assert r.status_code == 204
    r = httpx.get(
        f"{BASE}/files", params={"path": "/etc/hostname"},
        headers={"E2b-Sandbox-Id": sid, "X-Access-Token": "wrong"},
    )
    assert r.status_code == 401 and r.json()["code"] == 401


def test_malformed_connect_requests_get_connect_errors(secured):
    sid, token = secured
    auth = {"E2b-Sandbox-Id": sid, "X-Access-Token": token, "Connect-Protocol-Version": "1"}
    stream = {**auth, "Content-Type": "application/connect+json"}
    start = f"{BASE}/process.Process/Start"
    cases = [
        envelope(b"{")[:-1] + b"",  # an envelope that says 1 byte and is cut short
        b"\x00\x00\x00\x00\x09{",  # length beyond the body
        envelope(b"{}", flags=1),  # compressed: not supported
        envelope(b"not json"),
        envelope(json.dumps({"process": {"cmd": ""}}).encode()),
    ]
    for body in cases:
        r = httpx.post(start, headers=stream, content=body, timeout=30)
        assert r.status_code == 200, body
        got = frames(r.content)
        assert got[-1][0] == 2, got
        assert got[-1][1]["error"]["code"] == "invalid_argument", (body, got)
    r = httpx.post(f"{BASE}/process.Process/Explode", headers={**auth, "Content-Type": "application/json"},
                   content=b"{}")
    assert r.status_code == 501 and r.json()["code"] == "unimplemented"
    r = httpx.post(f"{BASE}/nosuch.Service/Method", headers={**auth, "Content-Type": "application/json"},
                   content=b"{}")
    assert r.json()["code"] == "unimplemented"
    r = httpx.post(f"{BASE}/process.Process/List", headers={**auth, "Content-Type": "application/proto"},
                   content=b"\x00")
    assert r.status_code == 415
    r = httpx.post(f"{BASE}/process.Process/SendSignal", headers={**auth, "Content-Type": "application/json"},
                   json={"process": {"pid": 1}, "signal": "SIGNAL_SIGHUP"})
    assert r.status_code == 501
    r = httpx.post(f"{BASE}/process.Process/SendInput", headers={**auth, "Content-Type": "application/json"},
                   json={"process": {"pid": 999999}, "input": {"stdin": "eA=="}})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    # The sandbox still works after all of that.
    r = httpx.post(f"{BASE}/process.Process/List", headers={**auth, "Content-Type": "application/json"},
                   content=b"{}")
    assert r.status_code == 200

"""Unit tests of Locale2bClient against a fake server: exact requests per the
CompyMac contract, and how answers and errors are read."""

from __future__ import annotations

import base64

import httpx
import pytest

from conftest import BASE, KEY, FakeServer, reply
from locale2b import (
    ExecResult,
    Locale2bClient,
    Locale2bConfigError,
    Locale2bError,
    Locale2bNotFoundError,
    SandboxInfo,
)

SANDBOX = {
    "sandbox_id": "sb-1",
    "status": "running",
    "memory_mb": 512,
    "vcpu_count": 1,
    "workspace_id": "session-abc",
    "template": "default",
}


def make(server: FakeServer, **kwargs) -> Locale2bClient:
    kwargs.setdefault("base_url", BASE)
    kwargs.setdefault("api_key", KEY)
    return Locale2bClient(transport=server.transport(), **kwargs)


# ---------------------------------------------------------------- connection


def test_every_request_sends_json_content_type_and_api_key():
    server = FakeServer(reply(200, {"status": "ok"}))
    make(server).health_check()
    assert server.last.headers["content-type"] == "application/json"
    assert server.last.headers["x-api-key"] == KEY


def test_config_comes_from_environment(monkeypatch):
    monkeypatch.setenv("LOCALE2B_BASE_URL", BASE + "/")
    monkeypatch.setenv("LOCALE2B_API_KEY", "env-key")
    monkeypatch.setenv("LOCALE2B_API_KEY_HEADER", "Authorization-Token")
    server = FakeServer(reply(200, {"status": "ok"}))
    client = Locale2bClient(transport=server.transport())
    client.health_check()
    assert client.config.base_url == BASE
    assert server.last.headers["authorization-token"] == "env-key"
    assert "x-api-key" not in server.last.headers


def test_arguments_override_environment(monkeypatch):
    monkeypatch.setenv("LOCALE2B_BASE_URL", "http://elsewhere:1")
    monkeypatch.setenv("LOCALE2B_API_KEY", "env-key")
    server = FakeServer(reply(200, {"status": "ok"}))
    client = make(server, api_key="arg-key")
    client.health_check()
    assert client.config.base_url == BASE
    assert server.last.headers["x-api-key"] == "arg-key"


def test_missing_base_url_is_a_config_error():
    with pytest.raises(Locale2bConfigError, match="LOCALE2B_BASE_URL"):
        Locale2bClient(api_key=KEY)


def test_non_http_base_url_is_rejected():
    with pytest.raises(Locale2bConfigError, match="http"):
        Locale2bClient(base_url="locale2b.test:8080")


def test_api_key_is_not_in_repr():
    client = Locale2bClient(base_url=BASE, api_key="very-secret")
    assert "very-secret" not in repr(client)
    assert "very-secret" not in repr(client.config)


def test_timeouts_match_compymac():
    client = Locale2bClient(base_url=BASE)
    timeout = client.config.timeout
    assert (timeout.connect, timeout.read, timeout.write) == (10.0, 60.0, 10.0)


def test_exec_read_timeout_covers_the_command_timeout():
    seen = {}

    def respond(request: httpx.Request) -> httpx.Response:
        seen["timeout"] = request.extensions["timeout"]
        return httpx.Response(200, json={"stdout": "", "stderr": "", "exit_code": 0})

    client = Locale2bClient(base_url=BASE, transport=httpx.MockTransport(respond))
    client.exec_command("sb-1", "sleep 100", timeout_ms=120_000)
    assert seen["timeout"]["read"] >= 120.0
    assert seen["timeout"]["connect"] == 10.0
    client.exec_command("sb-1", "true", timeout_ms=1_000)
    assert seen["timeout"]["read"] == 60.0


# ---------------------------------------------------------------- calls


def test_health_check():
    body = {"status": "ok", "active_sandboxes": 2, "memory_available_mb": 4096}
    server = FakeServer(reply(200, body))
    assert make(server).health_check() == body
    assert (server.last.method, server.last.path, server.last.body) == ("GET", "/health", None)


def test_create_sandbox_sends_defaults_without_workspace_id():
    server = FakeServer(reply(201, SANDBOX))
    info = make(server).create_sandbox()
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes")
    assert server.last.body == {"memory_mb": 512, "vcpu_count": 1, "template": "default"}
    assert info == SandboxInfo("sb-1", "running", 512, 1, "session-abc")
    assert info.raw["template"] == "default"


def test_create_sandbox_with_workspace_id():
    server = FakeServer(reply(200, SANDBOX))
    make(server).create_sandbox(
        memory_mb=1024, vcpu_count=2, template="python", workspace_id="session-abc"
    )
    assert server.last.body == {
        "memory_mb": 1024,
        "vcpu_count": 2,
        "template": "python",
        "workspace_id": "session-abc",
    }


def test_create_sandbox_without_sandbox_id_is_an_error():
    server = FakeServer(reply(200, {"status": "running"}))
    with pytest.raises(Locale2bError) as info:
        make(server).create_sandbox()
    assert info.value.code == "invalid_response"


def test_destroy_sandbox():
    server = FakeServer(reply(204))
    make(server).destroy_sandbox("sb-1")
    assert (server.last.method, server.last.path, server.last.body) == (
        "DELETE",
        "/sandboxes/sb-1",
        None,
    )


def test_destroy_sandbox_treats_404_as_success():
    server = FakeServer(reply(404, {"error": {"code": "not_found", "message": "gone"}}))
    assert make(server).destroy_sandbox("sb-1") is None
    assert server.last.method == "DELETE"


def test_destroy_sandbox_other_errors_raise():
    server = FakeServer(reply(500, {"error": {"code": "internal", "message": "boom"}}))
    with pytest.raises(Locale2bError) as info:
        make(server).destroy_sandbox("sb-1")
    assert (info.value.status, info.value.code) == (500, "internal")


def test_list_sandboxes_reads_the_sandboxes_key():
    server = FakeServer(reply(200, {"sandboxes": [SANDBOX, dict(SANDBOX, sandbox_id="sb-2")]}))
    result = make(server).list_sandboxes()
    assert (server.last.method, server.last.path) == ("GET", "/sandboxes")
    assert [s.sandbox_id for s in result] == ["sb-1", "sb-2"]


def test_list_sandboxes_rejects_a_bare_list():
    server = FakeServer(reply(200, [SANDBOX]))
    with pytest.raises(Locale2bError, match="sandboxes"):
        make(server).list_sandboxes()


def test_exec_command_defaults():
    server = FakeServer(
        reply(200, {"stdout": "/workspace\n", "stderr": "", "exit_code": 0, "error": None})
    )
    result = make(server).exec_command("sb-1", "pwd")
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes/sb-1/exec")
    assert server.last.body == {"command": "pwd", "working_dir": "/workspace", "timeout_ms": 120000}
    assert result == ExecResult("/workspace\n", "", 0, None)
    assert result.ok


def test_exec_command_explicit_arguments_and_failure():
    server = FakeServer(
        reply(200, {"stdout": "", "stderr": "no\n", "exit_code": 2, "error": "timed out"})
    )
    result = make(server).exec_command("sb-1", "ls x", working_dir="/tmp", timeout_ms=5000)
    assert server.last.body == {"command": "ls x", "working_dir": "/tmp", "timeout_ms": 5000}
    assert (result.exit_code, result.stderr, result.error, result.ok) == (
        2,
        "no\n",
        "timed out",
        False,
    )


def test_exec_command_on_missing_sandbox_raises_not_found():
    server = FakeServer(
        reply(404, {"error": {"code": "sandbox_not_found", "message": "sandbox sb-9 not found"}})
    )
    with pytest.raises(Locale2bNotFoundError) as info:
        make(server).exec_command("sb-9", "true")
    assert info.value.status == 404
    assert info.value.code == "sandbox_not_found"
    assert info.value.message == "sandbox sb-9 not found"


def test_write_file_sends_base64_of_bytes():
    data = bytes(range(256))
    server = FakeServer(reply(200, {"path": "/workspace/bin.dat", "size": 256}))
    make(server).write_file("sb-1", "/workspace/bin.dat", data)
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes/sb-1/files/write")
    assert server.last.body == {
        "path": "/workspace/bin.dat",
        "content": base64.b64encode(data).decode(),
    }


def test_write_file_encodes_text_as_utf8_then_base64():
    server = FakeServer(reply(204))
    make(server).write_file("sb-1", "/workspace/t.txt", "héllo\n")
    assert set(server.last.body) == {"path", "content"}
    assert base64.b64decode(server.last.body["content"]) == "héllo\n".encode()


def test_read_file_decodes_base64():
    data = bytes(range(256))
    server = FakeServer(reply(200, {"content": base64.b64encode(data).decode()}))
    assert make(server).read_file("sb-1", "/workspace/bin.dat") == data
    assert (server.last.method, server.last.path) == ("GET", "/sandboxes/sb-1/files/read")
    assert server.last.params == {"path": "/workspace/bin.dat"}


def test_read_file_rejects_invalid_base64():
    server = FakeServer(reply(200, {"content": "not base64!"}))
    with pytest.raises(Locale2bError) as info:
        make(server).read_file("sb-1", "/x")
    assert info.value.code == "invalid_response"


def test_read_file_not_found():
    server = FakeServer(
        reply(404, {"error": {"code": "file_not_found", "message": "no such file: /nope"}})
    )
    with pytest.raises(Locale2bNotFoundError) as info:
        make(server).read_file("sb-1", "/nope")
    assert info.value.code == "file_not_found"


def test_list_files():
    files = [
        {"path": "/workspace/a.txt", "is_directory": False, "size": 3, "name": "a.txt"},
        {"path": "/workspace/sub", "is_directory": True, "size": 4096},
    ]
    server = FakeServer(reply(200, {"files": files}))
    entries = make(server).list_files("sb-1")
    assert (server.last.method, server.last.path) == ("GET", "/sandboxes/sb-1/files/list")
    assert server.last.params == {"path": "/workspace"}
    assert [(e.path, e.is_directory, e.size, e.name) for e in entries] == [
        ("/workspace/a.txt", False, 3, "a.txt"),
        ("/workspace/sub", True, 4096, "sub"),
    ]


def test_list_files_other_path():
    server = FakeServer(reply(200, {"files": []}))
    assert make(server).list_files("sb-1", "/tmp") == []
    assert server.last.params == {"path": "/tmp"}


def test_pause_and_resume():
    server = FakeServer(reply(200, dict(SANDBOX, status="paused")))
    client = make(server)
    client.pause_sandbox("sb-1")
    assert (server.last.method, server.last.path, server.last.body) == (
        "POST",
        "/sandboxes/sb-1/pause",
        None,
    )
    info = client.resume_sandbox("sb-1")
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes/sb-1/resume")
    assert info.sandbox_id == "sb-1"


def test_expose_port():
    server = FakeServer(reply(200, {"port": 8000, "url": "http://127.0.0.1:41000"}))
    port = make(server).expose_port("sb-1", 8000)
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes/sb-1/ports/expose")
    assert server.last.body == {"port": 8000}
    assert (port.port, port.url) == (8000, "http://127.0.0.1:41000")


def test_expose_port_not_implemented_surfaces_501():
    server = FakeServer(
        reply(501, {"error": {"code": "not_implemented", "message": "ports are not supported"}})
    )
    with pytest.raises(Locale2bError) as info:
        make(server).expose_port("sb-1", 8000)
    assert (info.value.status, info.value.code) == (501, "not_implemented")
    assert not isinstance(info.value, Locale2bNotFoundError)


def test_list_exposed_ports_reads_ports_key():
    server = FakeServer(reply(200, {"ports": [{"port": 3000, "url": "http://h:1"}]}))
    ports = make(server).list_exposed_ports("sb-1")
    assert (server.last.method, server.last.path) == ("GET", "/sandboxes/sb-1/ports")
    assert [(p.port, p.url) for p in ports] == [(3000, "http://h:1")]


def test_close_port_and_404_is_success():
    server = FakeServer(reply(404, {"error": {"code": "not_found", "message": "x"}}))
    make(server).close_port("sb-1", 3000)
    assert (server.last.method, server.last.path) == ("DELETE", "/sandboxes/sb-1/ports/3000")


def test_ids_are_quoted_in_paths():
    server = FakeServer(reply(204))
    make(server).destroy_sandbox("a/b")
    assert server.last.raw_path == "/sandboxes/a%2Fb"


# ---------------------------------------------------------------- errors


def test_error_body_is_parsed():
    body = {"error": {"code": "at_capacity", "message": "no room", "details": {"max": 2}}}
    server = FakeServer(reply(503, body, headers={"Retry-After": "5"}))
    with pytest.raises(Locale2bError) as info:
        make(server).create_sandbox()
    err = info.value
    assert (err.status, err.code, err.message, err.details, err.retry_after) == (
        503,
        "at_capacity",
        "no room",
        {"max": 2},
        5.0,
    )
    assert "no room" in str(err) and "503" in str(err)


def test_error_without_json_body():
    server = FakeServer(lambda _: httpx.Response(502, text="bad gateway from proxy"))
    with pytest.raises(Locale2bError) as info:
        make(server).health_check()
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert "bad gateway" in info.value.message


def test_connection_failure_is_a_locale2b_error():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Locale2bClient(base_url=BASE, transport=httpx.MockTransport(refuse))
    with pytest.raises(Locale2bError) as info:
        client.health_check()
    assert info.value.status is None
    assert info.value.code == "transport_error"


def test_timeout_is_a_locale2b_error():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = Locale2bClient(base_url=BASE, transport=httpx.MockTransport(slow))
    with pytest.raises(Locale2bError) as info:
        client.exec_command("sb-1", "sleep 1")
    assert info.value.code == "timeout"


def test_client_is_a_context_manager():
    server = FakeServer(reply(200, {"status": "ok"}))
    with make(server) as client:
        client.health_check()
    with pytest.raises(RuntimeError):
        client.health_check()


# ---------------------------------------------------------------- processes

PROCESS = {"pid": 42, "status": "running", "tag": "sh", "stdin_open": True, "output_end": 0}


def test_start_process_sends_the_shape_the_server_takes():
    server = FakeServer(reply(201, PROCESS))
    with make(server) as c:
        info = c.start_process("sb-1", "bash", tag="sh", pty=(24, 80), env={"A": "1"})
    assert (server.last.method, server.last.path) == ("POST", "/sandboxes/sb-1/processes")
    assert server.last.body == {
        "command": "bash",
        "tag": "sh",
        "pty": {"rows": 24, "cols": 80},
        "env": {"A": "1"},
        "stdin": True,
    }
    assert info.pid == 42 and info.running


def test_read_output_passes_the_cursor_and_reads_next_cursor():
    answer = {"cursor": 10, "dropped": 4, "next_cursor": 13, "stdout": "abc", "stderr": "",
              "status": "exited", "exit_code": 0, "complete": True}
    server = FakeServer(reply(200, answer))
    with make(server) as c:
        out = c.read_output("sb-1", "sh", cursor=6)
    assert server.last.path == "/sandboxes/sb-1/processes/sh/output"
    assert server.last.params == {"cursor": "6"}
    assert (out.stdout, out.next_cursor, out.dropped, out.complete) == ("abc", 13, 4, True)


def test_stdin_text_and_bytes_and_signals():
    server = FakeServer(reply(200, {"pid": 42, "written": 3, "closed": False}))
    with make(server) as c:
        c.write_stdin("sb-1", 42, "ls\n")
        assert server.last.body == {"data": "ls\n", "close": False}
        c.write_stdin("sb-1", 42, b"\x03", close=True)
        assert server.last.body == {"data_b64": "Aw==", "close": True}
        c.signal_process("sb-1", 42, "SIGTERM")
        assert (server.last.path, server.last.body) == (
            "/sandboxes/sb-1/processes/42/signal",
            {"signal": "SIGTERM"},
        )
        c.resize_pty("sb-1", 42, 30, 100)
        assert server.last.body == {"rows": 30, "cols": 100}


def test_kill_process_treats_404_as_success():
    server = FakeServer(reply(404, {"error": {"code": "not_found", "message": "gone"}}))
    with make(server) as c:
        c.kill_process("sb-1", 42)
    assert (server.last.method, server.last.path) == ("DELETE", "/sandboxes/sb-1/processes/42")


def test_exec_stream_yields_ndjson_events():
    lines = [
        {"type": "start", "pid": 9},
        {"type": "stdout", "cursor": 0, "data": "hi\n"},
        {"type": "end", "next_cursor": 3, "exit_code": 0, "signal": None, "timed_out": False, "duration_ms": 1},
    ]
    body = "".join(__import__("json").dumps(l) + "\n" for l in lines)
    server = FakeServer(lambda _: httpx.Response(200, text=body, headers={"content-type": "application/x-ndjson"}))
    with make(server) as c:
        events = list(c.exec_stream("sb-1", "echo hi"))
    assert server.last.body["stream"] is True
    assert [e.type for e in events] == ["start", "stdout", "end"]
    assert events[1].data == "hi\n" and events[2].exit_code == 0


def test_exec_stream_error_status_raises_before_any_event():
    server = FakeServer(reply(400, {"error": {"code": "invalid_input", "message": "bad dir"}}))
    with make(server) as c:
        with pytest.raises(Locale2bError) as e:
            list(c.exec_stream("sb-1", "true"))
    assert (e.value.status, e.value.code) == (400, "invalid_input")

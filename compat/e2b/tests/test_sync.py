"""The synchronous `e2b.Sandbox` API against locale2b, unchanged.

Every test drives the official SDK; assertions check what the SDK returns
and, where it matters, what the guest really holds.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest
from e2b import (
    CommandExitException,
    FileType,
    FilesystemEventType,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)

from conftest import BASE, RUN, sdk_version


def wait_until(what, cond, timeout=30.0, every=0.2):
    """Polls ``cond`` until it is truthy; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def sbx():
    sandbox = Sandbox.create(
        metadata={"suite": "e2b-compat", "run": RUN, "role": "shared"},
        envs={"GREETING": "hello from envs"},
        timeout=600,
    )
    yield sandbox
    sandbox.kill()


def test_create_with_metadata_envs_timeout_and_get_info(sbx):
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.metadata["role"] == "shared"
    assert info.metadata["run"] == RUN
    assert info.template_id == "base"
    assert info.state == SandboxState.RUNNING
    lifetime = (info.end_at - info.started_at).total_seconds()
    assert 590 <= lifetime <= 610, lifetime
    r = sbx.commands.run("echo $GREETING; whoami; pwd; sudo -n whoami; python3 -c 'print(6*7)'")
    assert r.exit_code == 0
    assert r.stdout.splitlines() == ["hello from envs", "user", "/home/user", "root", "42"]
    assert not r.error  # None, or "" with SDKs that read proto3 defaults
    assert sbx.commands.run("echo $E2B_SANDBOX_ID").stdout.strip() == sbx.sandbox_id
    assert sbx.is_running()


def test_foreground_run_streams_to_callbacks(sbx):
    out, err = [], []
    r = sbx.commands.run(
        "for i in 1 2 3; do echo out-$i; echo err-$i >&2; sleep 0.1; done",
        on_stdout=out.append,
        on_stderr=err.append,
        envs={"X": "1"},
        cwd="/tmp",
    )
    assert "".join(out) == "out-1\nout-2\nout-3\n"
    assert "".join(err) == "err-1\nerr-2\nerr-3\n"
    assert r.stdout == "out-1\nout-2\nout-3\n"
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; exit 7")
    assert failed.value.exit_code == 7
    assert failed.value.stdout == "partial\n"
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run("id -un", user="root").stdout == "root\n"


def test_background_commands_wait_stdin_list_connect_kill(sbx):
    # stdin into a background `cat`, then close it and wait for the end.
    cat = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(cat.pid, "first line\n")
    cat.send_stdin("second line\n")
    sbx.commands.close_stdin(cat.pid)
    done = cat.wait()
    assert done.stdout == "first line\nsecond line\n"
    assert done.exit_code == 0

    sleeper = sbx.commands.run("sleep 600", background=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert sleeper.pid in listed
    assert listed[sleeper.pid].cmd == "/bin/bash"
    assert listed[sleeper.pid].args[-1] == "sleep 600"
    assert cat.pid not in listed, "an ended process is not listed"

    ticker = sbx.commands.run(
        "for i in $(seq 1 200); do echo tick-$i; sleep 0.1; done", background=True
    )
    ticker.disconnect()
    again = sbx.commands.connect(ticker.pid)
    seen = ""
    for stdout, _stderr, _pty in again:
        seen += stdout or ""
        if seen.count("tick-") >= 3:
            break
    assert "tick-" in seen
    assert sbx.commands.kill(ticker.pid) is True

    assert sleeper.kill() is True
    wait_until("the killed process to leave the list",
               lambda: sleeper.pid not in {p.pid for p in sbx.commands.list()})
    assert sbx.commands.kill(sleeper.pid) is False, "killing an ended process answers False"
    with pytest.raises(NotFoundException):
        sbx.commands.connect(999_999)


def test_a_command_timeout_kills_it(sbx):
    started = time.monotonic()
    with pytest.raises((TimeoutException, CommandExitException)):
        sbx.commands.run("sleep 30", timeout=2)
    assert time.monotonic() - started < 20
    wait_until("the timed-out command to be gone",
               lambda: not any(p.args[-1:] == ["sleep 30"] for p in sbx.commands.list()))


def test_pty_terminal_resize_and_input(sbx):
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(term.pid, b"tty; stty size\n")
    out = b""
    for _stdout, _stderr, pty in term:
        out += pty or b""
        if b"24 80" in out:
            break
    assert b"/dev/pts/" in out
    sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(term.pid, b"stty size\n")
    for _stdout, _stderr, pty in term:
        out += pty or b""
        if b"30 100" in out:
            break
    assert b"30 100" in out
    sbx.pty.send_stdin(term.pid, b"exit\n")
    result = term.wait()
    assert result.exit_code == 0


def test_files_every_call(sbx):
    base = f"/home/user/files-{uuid.uuid4().hex[:8]}"
    info = sbx.files.write(f"{base}/a.txt", "alpha\n")
    assert info.path == f"{base}/a.txt"
    assert sbx.files.read(f"{base}/a.txt") == "alpha\n"
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    sbx.files.write(f"{base}/blob.bin", blob)
    assert bytes(sbx.files.read(f"{base}/blob.bin", format="bytes")) == blob
    streamed = b"".join(sbx.files.read(f"{base}/blob.bin", format="stream"))
    assert streamed == blob
    written = sbx.files.write_files(
        [{"path": f"{base}/m/1.txt", "data": "one"}, {"path": f"{base}/m/2.txt", "data": b"two"}]
    )
    assert sorted(w.path for w in written) == [f"{base}/m/1.txt", f"{base}/m/2.txt"]
    # Written files belong to the user the SDK acts as.
    assert sbx.commands.run(f"stat -c %U {base}/m/1.txt {base}/m").stdout == "user\nuser\n"

    names = {e.name: e for e in sbx.files.list(base)}
    assert set(names) == {"a.txt", "blob.bin", "m"}
    assert names["m"].type == FileType.DIR
    assert names["blob.bin"].type == FileType.FILE
    assert names["blob.bin"].size == len(blob)
    deep = {e.path for e in sbx.files.list(base, depth=2)}
    assert f"{base}/m/2.txt" in deep

    assert sbx.files.exists(f"{base}/a.txt")
    assert not sbx.files.exists(f"{base}/nope")
    entry = sbx.files.get_info(f"{base}/a.txt")
    assert (entry.size, entry.owner, entry.permissions) == (6, "user", "-rw-r--r--")

    assert sbx.files.make_dir(f"{base}/new/deeper") is True
    assert sbx.files.make_dir(f"{base}/new/deeper") is False
    moved = sbx.files.rename(f"{base}/a.txt", f"{base}/new/b.txt")
    assert moved.path == f"{base}/new/b.txt"
    assert sbx.files.read(f"{base}/new/b.txt") == "alpha\n"
    sbx.files.remove(f"{base}/new")
    sbx.files.remove(f"{base}/never-there")  # removing nothing is fine
    assert not sbx.files.exists(f"{base}/new")
    with pytest.raises(NotFoundException):
        sbx.files.read(f"{base}/missing.txt")
    # Relative paths are from the user's home.
    sbx.files.write("relative.txt", "rel")
    assert sbx.commands.run("cat /home/user/relative.txt").stdout == "rel"


def test_watch_dir_reports_changes(sbx):
    base = f"/home/user/watch-{uuid.uuid4().hex[:8]}"
    sbx.files.make_dir(base)
    handle = sbx.files.watch_dir(base, recursive=True)
    sbx.files.write(f"{base}/created.txt", "x")
    sbx.commands.run(f"mkdir {base}/sub && echo y > {base}/sub/inner && rm {base}/created.txt")
    events = []

    def got_all():
        events.extend(handle.get_new_events())
        kinds = {(e.name, e.type) for e in events}
        return (
            ("created.txt", FilesystemEventType.CREATE) in kinds
            and ("sub/inner", FilesystemEventType.CREATE) in kinds
            and ("created.txt", FilesystemEventType.REMOVE) in kinds
        )

    wait_until("the watch events", got_all)
    handle.stop()


def test_signed_download_and_upload_urls(sbx):
    path = f"/home/user/signed-{uuid.uuid4().hex[:8]}.txt"
    sbx.files.write(path, "signed content")
    url = sbx.download_url(path)
    assert "signature=v1_" in url
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.read() == b"signed content"
    tampered = url.replace("signed-", "other-")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(tampered, timeout=30)
    assert denied.value.code == 401
    expired = sbx.download_url(path, use_signature_expiration=-10)
    with pytest.raises(urllib.error.HTTPError) as late:
        urllib.request.urlopen(expired, timeout=30)
    assert late.value.code == 401

    target = f"/home/user/uploaded-{uuid.uuid4().hex[:8]}.txt"
    up = sbx.upload_url(target)
    boundary = "locale2b-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\nuploaded via link\r\n--{boundary}--\r\n"
    ).encode()
    req = urllib.request.Request(
        up, data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    assert sbx.files.read(target) == "uploaded via link"


def test_metrics_are_a_current_sample(sbx):
    metrics = sbx.get_metrics()
    assert len(metrics) == 1
    m = metrics[0]
    assert m.cpu_count >= 1
    assert 0 < m.mem_used < m.mem_total
    assert 0 < m.disk_used < m.disk_total


def test_pause_then_connect_keeps_files_and_a_running_process(meta):
    sandbox = Sandbox.create(metadata=meta, timeout=600)
    try:
        sandbox.files.write("/home/user/kept.txt", "still here")
        proc = sandbox.commands.run("sleep 900", background=True)
        sandbox.pause()
        info = Sandbox.get_info(sandbox.sandbox_id)
        assert info.state == SandboxState.PAUSED
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        assert resumed.sandbox_id == sandbox.sandbox_id
        assert resumed.files.read("/home/user/kept.txt") == "still here"
        assert proc.pid in {p.pid for p in resumed.commands.list()}
        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    finally:
        Sandbox.kill(sandbox.sandbox_id)


def test_lifecycle_auto_resume_wakes_a_paused_sandbox_on_its_next_call(meta):
    sandbox = Sandbox.create(
        metadata=meta,
        timeout=600,
        lifecycle={"on_timeout": "pause", "auto_resume": True},
    )
    try:
        sandbox.files.write("/home/user/kept.txt", "still here")
        sandbox.pause()
        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED
        # No connect: the next envd call resumes the sandbox by itself.
        assert sandbox.files.read("/home/user/kept.txt") == "still here"
        assert sandbox.commands.run("echo awake").stdout == "awake\n"
        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    finally:
        Sandbox.kill(sandbox.sandbox_id)


def test_list_filters_by_metadata_and_kill(meta):
    tag = uuid.uuid4().hex[:8]
    a = Sandbox.create(metadata={**meta, "pick": f"a-{tag}"}, timeout=300)
    b = Sandbox.create(metadata={**meta, "pick": f"b-{tag}"}, timeout=300)
    try:
        found = Sandbox.list(query=SandboxQuery(metadata={"pick": f"a-{tag}"})).next_items()
        assert [s.sandbox_id for s in found] == [a.sandbox_id]
        assert found[0].metadata["pick"] == f"a-{tag}"
        ours = Sandbox.list(query=SandboxQuery(metadata={"run": RUN})).next_items()
        ids = {s.sandbox_id for s in ours}
        assert {a.sandbox_id, b.sandbox_id} <= ids
        pages = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), limit=1)
        paged = []
        while pages.has_next:
            paged.extend(s.sandbox_id for s in pages.next_items())
        assert set(paged) == ids
    finally:
        assert Sandbox.kill(a.sandbox_id) is True
        assert b.kill() is True
    assert Sandbox.kill(a.sandbox_id) is False
    gone = Sandbox.list(query=SandboxQuery(metadata={"pick": f"a-{tag}"})).next_items()
    assert gone == []


def test_set_timeout_ends_the_sandbox(meta):
    sandbox = Sandbox.create(metadata=meta, timeout=300)
    sandbox.set_timeout(3)
    end = sandbox.get_info().end_at
    assert end is not None

    def gone():
        try:
            Sandbox.get_info(sandbox.sandbox_id)
            return False
        except NotFoundException:
            return True

    wait_until("the sandbox to end at its timeout", gone, timeout=30)
    assert not sandbox.is_running()


def test_uploads_octet_stream_gzip_and_streamed_stdin(sbx):
    base = f"/home/user/up-{uuid.uuid4().hex[:8]}"
    payload = b"compressible " * 50_000
    sbx.files.write(f"{base}/gz.bin", payload, gzip=True)
    sbx.files.write(f"{base}/octet.bin", payload, use_octet_stream=True)
    for name in ("gz.bin", "octet.bin"):
        assert bytes(sbx.files.read(f"{base}/{name}", format="bytes")) == payload
    assert bytes(sbx.files.read(f"{base}/gz.bin", format="bytes", gzip=True)) == payload
    with pytest.raises(Exception) as refused:
        sbx.files.write(f"{base}/meta.txt", "x", metadata={"k": "v"})
    assert "metadata" in str(refused.value)
    assert not sbx.files.exists(f"{base}/meta.txt")
    if not hasattr(sbx.commands, "stream_input"):
        return  # stream_input came with SDK 2.5x
    cat = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(cat.pid, ["streamed ", b"input\n", "in order\n"])
    sbx.commands.close_stdin(cat.pid)
    assert cat.wait().stdout == "streamed input\nin order\n"


def test_watch_events_can_carry_the_entry(sbx):
    base = f"/home/user/watch-entry-{uuid.uuid4().hex[:8]}"
    sbx.files.make_dir(base)
    handle = sbx.files.watch_dir(base, include_entry=True)
    sbx.files.write(f"{base}/e.txt", "entry")
    events = []

    def created():
        events.extend(handle.get_new_events())
        return [e for e in events if e.name == "e.txt" and e.entry is not None]

    with_entry = wait_until("an event with its entry", created)
    assert with_entry[0].entry.path == f"{base}/e.txt"
    handle.stop()


def test_list_by_state_and_template_and_an_idempotent_create(meta):
    if sdk_version() < (2, 52, 0):
        pytest.skip("idempotency keys and the template filter came with SDK 2.52 (v2 create)")
    key = f"idem-{uuid.uuid4().hex[:12]}"
    first = Sandbox.create(metadata=meta, timeout=120, idempotency_key=key)
    try:
        again = Sandbox.create(metadata=meta, timeout=120, idempotency_key=key)
        assert again.sandbox_id == first.sandbox_id
        running = Sandbox.list(
            query=SandboxQuery(metadata={"run": RUN}, state=[SandboxState.RUNNING], template="base")
        ).next_items()
        assert first.sandbox_id in {s.sandbox_id for s in running}
        none = Sandbox.list(
            query=SandboxQuery(metadata={"run": RUN}, state=[SandboxState.PAUSED])
        ).next_items()
        assert first.sandbox_id not in {s.sandbox_id for s in none}
        other = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}, template="nodejs")).next_items()
        assert other == []
    finally:
        first.kill()


def test_network_rules_travel_to_the_server_and_bad_ones_are_refused_clearly(sbx, meta):
    # The egress rules reach the server's policy check: a bad entry is a 400
    # naming it, before anything boots.
    with pytest.raises(Exception) as bad:
        Sandbox.create(
            metadata=meta,
            timeout=60,
            network={"deny_out": ["0.0.0.0/0"], "allow_out": ["exa mple.com"]},
        )
    assert "exa mple.com" in str(bad.value), bad.value
    if not hasattr(sbx, "update_network"):
        pytest.skip("update_network came with later SDKs")
    # A sandbox created without a network cannot be given one (its VM has
    # no network device): a clear refusal, not a silent no-op.
    with pytest.raises(Exception) as refused:
        sbx.update_network({"deny_out": ["0.0.0.0/0"], "allow_out": ["1.1.1.1"]})
    assert "without a network" in str(refused.value), refused.value
    # Taking the internet away from it is what it already has.
    sbx.update_network({"allow_internet_access": False})
    assert sbx.commands.run("ls /sys/class/net").stdout.split() == ["lo"]


def _routed(host, token=None):
    """GET / through the server, routed by ``host``: (status, body)."""
    headers = {"Host": host}
    if token is not None:
        headers["e2b-traffic-access-token"] = token
    req = urllib.request.Request(f"{BASE}/", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _serve(sandbox, port):
    """Starts a web server in the guest whose page names the sandbox."""
    sandbox.commands.run(
        "mkdir -p /tmp/site && echo page-of-$E2B_SANDBOX_ID > /tmp/site/index.html"
    )
    sandbox.commands.run(f"cd /tmp/site && exec python3 -m http.server {port}", background=True)


def test_get_host_reaches_any_port_and_private_traffic_needs_the_token(sbx, meta):
    # E2B routes every port of a sandbox by name: no expose call first.
    _serve(sbx, 8123)
    host = sbx.get_host(8123)
    server_port = BASE.rsplit(":", 1)[1]
    assert host == f"8123-{sbx.sandbox_id}.localhost:{server_port}", host
    status, body = wait_until(
        "the guest's web server through get_host",
        lambda: (lambda r: r if r[0] == 200 else None)(_routed(host)),
        timeout=60,
    )
    assert body.strip() == f"page-of-{sbx.sandbox_id}", body
    # A port nothing listens on answers 502, and no token is asked for.
    status, body = _routed(sbx.get_host(8124))
    assert status == 502, (status, body)
    assert sbx.traffic_access_token is None

    # allow_public_traffic=False: every routed request needs the token.
    private = Sandbox.create(metadata=meta, timeout=120, network={"allow_public_traffic": False})
    try:
        token = private.traffic_access_token
        assert token and len(token) == 64, token
        # Still no network: no egress rules were asked for.
        assert private.commands.run("ls /sys/class/net").stdout.split() == ["lo"]
        _serve(private, 8123)
        host = private.get_host(8123)
        status, body = wait_until(
            "the private sandbox's web server with its token",
            lambda: (lambda r: r if r[0] == 200 else None)(_routed(host, token)),
            timeout=60,
        )
        assert body.strip() == f"page-of-{private.sandbox_id}", body
        for wrong in (None, "0" * 64):
            status, body = _routed(host, wrong)
            assert status == 403, (wrong, status, body)
            assert "e2b-traffic-access-token" in body, body
        # A client that connects later gets the same token and host.
        again = Sandbox.connect(private.sandbox_id)
        assert again.traffic_access_token == token
        assert again.get_host(8123) == host
    finally:
        private.kill()

"""Start a web app in a sandbox and open it from the host through an
exposed port (the sandbox itself has no network device)."""

import time

import httpx

from locale2b import Locale2bClient

with Locale2bClient() as client:
    sandbox = client.create_sandbox(memory_mb=256)
    sid = sandbox.sandbox_id
    try:
        client.exec_command(sid, "mkdir -p /tmp/site && echo '<h1>made in a sandbox</h1>' > /tmp/site/index.html")
        client.start_process(sid, "cd /tmp/site && exec python3 -m http.server 8000 --bind 127.0.0.1")
        port = client.expose_port(sid, 8000)
        # The server takes a moment to start under emulation: retry briefly.
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(port.url, timeout=10)
                if page.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{port.url} did not answer")
            time.sleep(0.2)
        print(f"{port.url} -> {page.text.strip()}")
        client.close_port(sid, 8000)
    finally:
        client.destroy_sandbox(sid)

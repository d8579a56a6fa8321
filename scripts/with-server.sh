#!/usr/bin/env bash
# Runs a command against a real locale2b server it starts for the purpose:
# qemu backend, a fresh base directory sharing the installed guest image,
# 127.0.0.1 on a free port, a random API key. The command gets
# LOCALE2B_BASE_URL and LOCALE2B_API_KEY; afterwards the server is stopped
# and any VMM process left behind is reported (exit 1) and killed.
#
#   scripts/with-server.sh python/run-tests.sh -q
#
# Environment: LOCALE2B_TEST_IMAGE_DIR (default: the installed image),
# LOCALE2B_SERVER_MAX_SANDBOXES (default 6), LOCALE2B_SERVER_LOG (a file the
# server's log is copied to at the end). Exit code: the command's, or 1
# for leftovers or a server that did not start.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
IMAGE_DIR="${LOCALE2B_TEST_IMAGE_DIR:-${LOCALE2B_BASE_DIR:-/var/lib/firecracker-workspaces}/images/default}"
[ -f "$IMAGE_DIR/vmlinux" ] || { echo "error: no guest image in $IMAGE_DIR (run: locale2b image build)" >&2; exit 1; }
BIN=./target/release/locale2b
[ -x "$BIN" ] || cargo build --release -p locale2b
# The client tests and examples run this same binary (examples/cli.sh).
export LOCALE2B_BIN="$PWD/target/release/locale2b"

base=$(mktemp -d /tmp/l2b-srv.XXXXXX)
mkdir -p "$base/images"
ln -s "$IMAGE_DIR" "$base/images/default"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# E2B's older SDKs accept only keys shaped e2b_<lowercase hex>.
key=e2b_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
LOCALE2B_BASE_DIR="$base" LOCALE2B_PORT="$port" LOCALE2B_HOST=127.0.0.1 LOCALE2B_API_KEY="$key" \
  LOCALE2B_VMM=qemu LOCALE2B_BOOT_TIMEOUT_SEC=120 LOCALE2B_LOG_LEVEL=info \
  LOCALE2B_MAX_SANDBOXES="${LOCALE2B_SERVER_MAX_SANDBOXES:-6}" \
  "$BIN" serve >"$base/server.log" 2>&1 &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  # The server leaves VMs running on purpose (they survive restarts); the
  # command destroys its own. Anything left here is a leak: report and kill it.
  leftovers=$(pgrep -f "$base/sandboxes" || true)
  if [ -n "$leftovers" ]; then
    echo "error: VMM processes left behind: $leftovers" >&2
    kill -9 $leftovers 2>/dev/null || true
    status=1
  fi
  if [ -n "${LOCALE2B_SERVER_LOG:-}" ]; then cp "$base/server.log" "$LOCALE2B_SERVER_LOG" 2>/dev/null || true; fi
  rm -rf "$base"
}
status=0
trap 'cleanup; exit $status' EXIT
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "error: server exited:" >&2; cat "$base/server.log" >&2; status=1; exit 1; fi
  sleep 0.1
done
export LOCALE2B_BASE_URL="http://127.0.0.1:$port" LOCALE2B_API_KEY="$key"
set +e
"$@"
status=$?
set -e
if [ "$status" -ne 0 ]; then echo "--- server log (tail) ---"; tail -40 "$base/server.log"; fi

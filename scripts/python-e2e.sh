#!/usr/bin/env bash
# Starts a real locale2b server (qemu backend, fresh base dir sharing the
# installed guest image) on 127.0.0.1, runs the Python client tests against
# it, stops it and checks that nothing was left running.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_DIR="${LOCALE2B_TEST_IMAGE_DIR:-${LOCALE2B_BASE_DIR:-/var/lib/firecracker-workspaces}/images/default}"
[ -f "$IMAGE_DIR/vmlinux" ] || { echo "error: no guest image in $IMAGE_DIR (run: locale2b image build)" >&2; exit 1; }
BIN=./target/release/locale2b
[ -x "$BIN" ] || cargo build --release -p locale2b

base=$(mktemp -d /tmp/l2b-py.XXXXXX)
mkdir -p "$base/images"
ln -s "$IMAGE_DIR" "$base/images/default"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
LOCALE2B_BASE_DIR="$base" LOCALE2B_PORT="$port" LOCALE2B_HOST=127.0.0.1 LOCALE2B_API_KEY="$key" \
  LOCALE2B_VMM=qemu LOCALE2B_BOOT_TIMEOUT_SEC=120 LOCALE2B_MAX_SANDBOXES=4 LOCALE2B_LOG_LEVEL=info \
  "$BIN" serve >"$base/server.log" 2>&1 &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  # The server leaves VMs running on purpose (they survive restarts); the
  # tests destroy theirs. Anything left here is a leak: report and kill it.
  leftovers=$(pgrep -f "$base/sandboxes" || true)
  if [ -n "$leftovers" ]; then
    echo "error: VMM processes left behind: $leftovers" >&2
    kill -9 $leftovers 2>/dev/null || true
    status=1
  fi
  rm -rf "$base"
}
status=0
trap 'cleanup; exit $status' EXIT
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "error: server exited:" >&2; cat "$base/server.log" >&2; status=1; exit 1; fi
  sleep 0.1
done
export LOCALE2B_BASE_URL="http://127.0.0.1:$port" LOCALE2B_API_KEY="$key" LOCALE2B_REQUIRE_E2E=1
set +e
./python/run-tests.sh -q
status=$?
set -e
if [ "$status" -ne 0 ]; then echo "--- server log (tail) ---"; tail -40 "$base/server.log"; fi

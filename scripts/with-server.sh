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
# server's log is copied to at the end), LOCALE2B_SERVER_USER (run the server
# as this unprivileged user, e.g. locale2b; its VMMs then run as it too, and
# the run fails if any VMM of this server ran as root). Exit code: the command's, or 1
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
run_as=()
if [ -n "${LOCALE2B_SERVER_USER:-}" ]; then
  # Unprivileged: the server gets its own copy of the binary and of the
  # image (hard links when on the same filesystem) inside a base dir it
  # owns, so nothing it needs sits behind a root-only directory.
  id -u "$LOCALE2B_SERVER_USER" >/dev/null 2>&1 || { echo "error: no user $LOCALE2B_SERVER_USER (scripts/setup.sh creates locale2b)" >&2; exit 1; }
  mkdir -p "$base/bin" "$base/images/default"
  cp "$BIN" "$base/bin/locale2b"
  for f in "$IMAGE_DIR"/*; do
    ln "$f" "$base/images/default/" 2>/dev/null || cp --reflink=auto "$f" "$base/images/default/"
  done
  chown -R "$LOCALE2B_SERVER_USER:" "$base"
  chown -h root: "$base/images/default"/* 2>/dev/null || true
  BIN="$base/bin/locale2b"
  run_as=(setpriv --reuid="$LOCALE2B_SERVER_USER" --regid="$LOCALE2B_SERVER_USER" --init-groups --)
else
  ln -s "$IMAGE_DIR" "$base/images/default"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# E2B's older SDKs accept only keys shaped e2b_<lowercase hex>.
key=e2b_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
LOCALE2B_BASE_DIR="$base" LOCALE2B_PORT="$port" LOCALE2B_HOST=127.0.0.1 LOCALE2B_API_KEY="$key" \
  LOCALE2B_VMM=qemu LOCALE2B_BOOT_TIMEOUT_SEC=120 LOCALE2B_LOG_LEVEL=info \
  LOCALE2B_MAX_SANDBOXES="${LOCALE2B_SERVER_MAX_SANDBOXES:-6}" \
  "${run_as[@]}" "$BIN" serve >"$base/server.log" 2>&1 &
server=$!
watcher=
if [ ${#run_as[@]} -gt 0 ]; then
  # Samples the owner and seccomp mode of this server's VMM processes
  # while it runs ("<pid> <user> seccomp=<0|1|2>" lines).
  ( while kill -0 "$server" 2>/dev/null; do
      for pid in $(pgrep -f "$base/sandboxes" || true); do
        s=$(awk '/^Seccomp:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        u=$(stat -c %U "/proc/$pid" 2>/dev/null) || continue
        echo "$pid $u seccomp=$s"
      done >>"$base/vmm-owners"
      sleep 0.5
    done ) &
  watcher=$!
fi
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  # The server leaves VMs running on purpose (they survive restarts); the
  # command destroys its own. Anything left here is a leak: report and kill it.
  [ -n "$watcher" ] && { kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true; }
  if [ -n "$watcher" ]; then
    owners=$(cut -d' ' -f2- "$base/vmm-owners" 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ' || true)
    echo "with-server: VMM process samples (count, owner, seccomp mode): ${owners:-none}"
    if grep -q '^[0-9]* root ' "$base/vmm-owners" 2>/dev/null; then
      echo "error: a VMM of the unprivileged server ran as root" >&2
      status=1
    fi
    # QEMU installs its filter while it starts: a VMM sampled in its first
    # moments has none yet. One never seen with it in 3 or more samples
    # (1.5 s) ran without it.
    unfiltered=$(awk '{n[$1]++} $3 == "seccomp=2" {ok[$1] = 1} END {for (p in n) if (!ok[p] && n[p] >= 3) print p}' "$base/vmm-owners" 2>/dev/null || true)
    if [ -n "$unfiltered" ]; then
      echo "error: VMM(s) $unfiltered ran without their seccomp filter (Seccomp: 2 in /proc/PID/status)" >&2
      status=1
    fi
    if [ ! -s "$base/vmm-owners" ]; then
      echo "error: no VMM of the unprivileged server was ever seen" >&2
      status=1
    fi
  fi
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
if [ -n "$watcher" ] && [ "$(stat -c %U "/proc/$server")" != "$LOCALE2B_SERVER_USER" ]; then
  echo "error: the server runs as $(stat -c %U "/proc/$server"), not $LOCALE2B_SERVER_USER" >&2; status=1; exit 1
fi
export LOCALE2B_BASE_URL="http://127.0.0.1:$port" LOCALE2B_API_KEY="$key"
set +e
"$@"
status=$?
set -e
if [ "$status" -ne 0 ]; then echo "--- server log (tail) ---"; tail -40 "$base/server.log"; fi

#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a sandbox running code:
# host packages, build, guest image (cached), server in the background, then
# a sandbox that runs Python. Re-running is cheap.
#   ./scripts/quickstart.sh            set up, start (or reuse) the server, demo
#   ./scripts/quickstart.sh --release  the same with optimized binaries
#                                      (cargo's release profile, ~3 min longer)
#   ./scripts/quickstart.sh --stop     stop the background server
# Without --release it builds cargo's `quick` profile (Cargo.toml): mostly
# unoptimized, 1.5 instead of 4.5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=quick
case "${1:-}" in
  --release) PROFILE=release ;;
  --stop|"") ;;
  *) echo "usage: $0 [--release|--stop]" >&2; exit 2 ;;
esac
export LOCALE2B_BASE_DIR="${LOCALE2B_BASE_DIR:-/var/lib/firecracker-workspaces}"
PORT="${LOCALE2B_PORT:-8080}"
HOST="${LOCALE2B_HOST:-127.0.0.1}"
URL="http://127.0.0.1:$PORT"
PID_FILE="$LOCALE2B_BASE_DIR/server.pid"
LOG_FILE="$LOCALE2B_BASE_DIR/server.log"
BIN="$PWD/target/$PROFILE/locale2b"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Wall time of each step, printed at the end (the 5-minute budget from
# `git clone` to a sandbox's output is checked against these).
now() { date +%s.%N; }
T0=$(now); T_STEP=$T0; TIMES=()
lap() { # name
  local t; t=$(now)
  TIMES+=("$(awk -v n="$1" -v a="$t" -v b="$T_STEP" 'BEGIN { printf "%-20s %6.1f s", n, a - b }')")
  T_STEP=$t
}

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PID_FILE")" && rm -f "$PID_FILE" && echo "server stopped (running sandboxes keep running; the next start re-attaches)"
  else
    echo "no server running"
  fi
  exit 0
fi

say "1/5 host setup (Debian packages, base dir)"
./scripts/setup.sh
lap "host setup"

say "2/5 build (cargo profile $PROFILE), with the guest image's kernel and Debian tree made alongside"
if ! command -v cargo >/dev/null; then
  echo "error: cargo is missing; install Rust (rustup) first" >&2; exit 1
fi
# The image stages that need no agent (Debian's kernel or the cached compiled
# one, and the mmdebstrap tree) run while cargo compiles the rest; the small
# image tool builds in seconds.
PREPARE_LOG="$LOCALE2B_BASE_DIR/image-prepare.log"
cargo build --profile "$PROFILE" -p locale2b-image --bin locale2b-image
"./target/$PROFILE/locale2b-image" prepare >"$PREPARE_LOG" 2>&1 &
prepare_pid=$!
trap 'kill "$prepare_pid" 2>/dev/null || true' EXIT
cargo build --profile "$PROFILE" -p locale2b -p locale2b-agent
lap "build (cargo)"

say "3/5 guest image (cached: seconds when nothing changed)"
if ! wait "$prepare_pid"; then
  echo "error: preparing the guest image failed; its log ($PREPARE_LOG) ends with:" >&2
  tail -20 "$PREPARE_LOG" >&2
  exit 1
fi
trap - EXIT
tail -1 "$PREPARE_LOG"
# Debian's prebuilt kernel until the minimal one is compiled (`auto`).
"$BIN" image build --agent "target/$PROFILE/locale2b-agent"
lap "guest image"

say "4/5 server"
"$BIN" doctor || true
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null && curl -fsS "$URL/health" >/dev/null 2>&1; then
  echo "server already running (pid $(cat "$PID_FILE"))"
else
  LOCALE2B_HOST="$HOST" LOCALE2B_PORT="$PORT" nohup "$BIN" serve >>"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 600); do
    curl -fsS "$URL/health" >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "error: the server exited; last log lines:" >&2; tail -20 "$LOG_FILE" >&2; exit 1
    fi
    sleep 0.1
  done
fi
KEY="${LOCALE2B_API_KEY:-$(cat "$LOCALE2B_BASE_DIR/api-key")}"
curl -fsS "$URL/health"; echo
lap "server start"

say "5/5 a sandbox runs a command"
auth=(-H "X-API-Key: $KEY" -H "Content-Type: application/json")
created=$(curl -fsS "${auth[@]}" -X POST "$URL/sandboxes" -d '{"memory_mb": 512, "vcpu_count": 1, "template": "default"}')
echo "created: $created"
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["sandbox_id"])' <<<"$created")
result=$(curl -fsS "${auth[@]}" -X POST "$URL/sandboxes/$id/exec" \
  -d '{"command": "python3 -c \"print('"'"'hello from a microVM'"'"')\"", "working_dir": "/workspace", "timeout_ms": 60000}')
echo "exec: $result"
python3 -c 'import json,sys; r=json.load(sys.stdin); print("\n    " + r["stdout"].strip() + "\n")' <<<"$result"
lap "sandbox + command"
curl -fsS "${auth[@]}" -X DELETE "$URL/sandboxes/$id" >/dev/null && echo "sandbox $id destroyed"

# .git/description is written first by `git clone` and never again: its age
# is the time since the clone when that was minutes ago.
end=$(now)
say "$(awk -v a="$end" -v b="$T0" 'BEGIN { printf "time to first sandbox: %.0f s (this script)", a - b }')"
printf '  %s\n' "${TIMES[@]}"
if [ -f .git/description ]; then
  since_clone=$(( ${end%.*} - $(stat -c %Y .git/description) ))
  if [ "$since_clone" -lt 3600 ]; then
    printf '  since `git clone`: %d min %02d s\n' $((since_clone / 60)) $((since_clone % 60))
  fi
fi
if python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["kernel"].get("source") != "debian")' \
    "$LOCALE2B_BASE_DIR/images/default/manifest.json" 2>/dev/null; then
  cat <<TXT

The guest image uses Debian's prebuilt kernel (no compile was needed). The
minimal kernel cold-boots about three times as fast; compile it once (a few minutes,
cached) and rebuild the image:
  ./scripts/setup.sh --kernel-build && $BIN image build --kernel build --agent target/$PROFILE/locale2b-agent
TXT
fi

# Swagger UI and ReDoc assets for /docs and /redoc, from the npm registry
# (optional: without them the pages load the same files from a CDN; the
# server looks for them on each request, so fetching them last is fine).
if command -v npm >/dev/null && [ ! -f "$LOCALE2B_BASE_DIR/ui/swagger-ui/swagger-ui-bundle.js" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent swagger-ui-dist redoc >/dev/null 2>&1); then
    mkdir -p "$LOCALE2B_BASE_DIR/ui/swagger-ui" "$LOCALE2B_BASE_DIR/ui/redoc"
    tar -xzf "$tmp"/swagger-ui-dist-*.tgz -C "$LOCALE2B_BASE_DIR/ui/swagger-ui" --strip-components=1
    tar -xzf "$tmp"/redoc-*.tgz -C "$tmp" package/bundles/redoc.standalone.js
    cp "$tmp/package/bundles/redoc.standalone.js" "$LOCALE2B_BASE_DIR/ui/redoc/"
  else
    echo "note: could not fetch the Swagger UI / ReDoc assets from npm; /docs and /redoc will load them from a CDN"
  fi
  rm -rf "$tmp"
fi

cat <<TXT

locale2b is running in the background ($BIN, cargo profile $PROFILE).
  API:        $URL   (listening on $HOST:$PORT)
  API key:    $LOCALE2B_BASE_DIR/api-key   (send it as X-API-Key or Authorization: Bearer)
  Swagger UI: $URL/docs      ReDoc: $URL/redoc      OpenAPI: $URL/openapi.json
  Log:        $LOG_FILE
  Stop:       ./scripts/quickstart.sh --stop
TXT
if [ "$PROFILE" = quick ]; then
  echo "  These are the quick (mostly unoptimized) binaries; ./scripts/quickstart.sh --release"
  echo "  builds and runs the optimized ones (the test suite and deployments use those)."
fi

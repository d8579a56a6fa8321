#!/usr/bin/env bash
# Crash-consistency soak: kills the real server with SIGKILL at every crash
# point of create, pause, resume and destroy, ROUNDS times (default 20),
# restarting it after each and checking that no sandbox is dead and no
# workspace data is lost (crates/cli/tests/crash_points.rs; `make test`
# runs one round). Needs the guest image (`make image`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-20}"
LOCALE2B_CRASH_ROUNDS="$ROUNDS" exec cargo test -p locale2b --test crash_points -- --nocapture

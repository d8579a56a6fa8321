#!/usr/bin/env bash
# The whole test suite: host setup, build, guest image (cached), Rust unit and
# end-to-end tests (real guests under QEMU), a 1-minute soak, a short fuzz
# run, 10,000+ malformed API requests (scripts/api-fuzz.sh), and the Python
# client tests against a real server. Prints one closing
# summary line and exits non-zero if anything failed or if the end-to-end
# tests could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export LOCALE2B_BASE_DIR="${LOCALE2B_BASE_DIR:-/var/lib/firecracker-workspaces}"
export LOCALE2B_REQUIRE_E2E=1
FUZZ_SECONDS="${LOCALE2B_FUZZ_SECONDS:-30}"
LOG_DIR="$ROOT/target/test-logs"
mkdir -p "$LOG_DIR"

passed=0; failed=0; skipped=0
step() { printf '\n==> %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
record() { # name status
  if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAILED: $1"; failed=$((failed + 1)); fi
}

step "host setup"
./scripts/setup.sh --kernel-build

if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest (crates.io)"
  cargo install --locked cargo-nextest
fi

step "build (release: CLI and guest agent)"
cargo build --release -p locale2b -p locale2b-agent

step "guest images (cached by input hash): compiled kernel, and Debian's kernel"
# The whole suite runs on the compiled minimal kernel (it boots fastest);
# the kernel-sensitive tests run again below on Debian's prebuilt kernel,
# which is what a first `image build` (the quickstart) uses.
DEBIAN_IMAGES="$LOCALE2B_BASE_DIR/images-debian-kernel"
./target/release/locale2b image build --kernel build --agent target/release/locale2b-agent
./target/release/locale2b image verify
./target/release/locale2b image build --kernel debian --images-dir "$DEBIAN_IMAGES" \
  --agent target/release/locale2b-agent
./target/release/locale2b image verify --dir "$DEBIAN_IMAGES/default"
export LOCALE2B_TEST_IMAGE_DIR="$LOCALE2B_BASE_DIR/images/default"

step "Rust tests (unit, integration, end-to-end with real guests)"
# Tests that cannot run here (e.g. the real-Firecracker variants without
# LOCALE2B_FIRECRACKER_BIN) write one line each to this file; the harness
# counts them as passed, so they are moved to "skipped" below.
export LOCALE2B_SKIP_LOG="$LOG_DIR/skipped.txt"
: >"$LOCALE2B_SKIP_LOG"
set +e
cargo nextest run --workspace --no-fail-fast --final-status-level fail 2>&1 | tee "$LOG_DIR/nextest.log"
rc=${PIPESTATUS[0]}
set -e
# Adds one nextest run's summary (log file, exit code) to the totals; the
# self-reported skips in $LOCALE2B_SKIP_LOG move from passed to skipped.
count_nextest() {
  local log=$1 rc=$2 summary n_pass n_fail n_skip n_selfskip
  summary=$(grep -E '^ *Summary \[' "$log" | tail -1 || true)
  echo "$summary"
  n_pass=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary"); n_pass=${n_pass:-0}
  n_fail=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary"); n_fail=${n_fail:-0}
  n_skip=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<<"$summary"); n_skip=${n_skip:-0}
  n_selfskip=$(grep -c . "$LOCALE2B_SKIP_LOG" || true)
  n_pass=$((n_pass - n_selfskip)); [ "$n_pass" -ge 0 ] || n_pass=0
  passed=$((passed + n_pass)); failed=$((failed + n_fail)); skipped=$((skipped + n_skip + n_selfskip))
  if [ "$rc" -ne 0 ] && [ "$n_fail" -eq 0 ]; then record "cargo nextest $log (exit $rc)" 1; fi
  if [ "$n_selfskip" -gt 0 ]; then
    echo "skipped (could not run here): $n_selfskip"
    sed 's/^/  /' "$LOCALE2B_SKIP_LOG"
  fi
}
count_nextest "$LOG_DIR/nextest.log" "$rc"

step "Rust tests on Debian's kernel (boot, snapshots, clones, image, every REST endpoint, egress networks)"
: >"$LOCALE2B_SKIP_LOG"
set +e
LOCALE2B_TEST_IMAGE_DIR="$DEBIAN_IMAGES/default" cargo nextest run --workspace --no-fail-fast \
  --final-status-level fail -E 'binary(qemu_boot) | binary(installed_image) | binary(e2e_real) | binary(e2e_network) | (binary(e2e_templates) & test(/clones_of_a_template_answer|a_stale_template/))' \
  2>&1 | tee "$LOG_DIR/nextest-debian-kernel.log"
rc=${PIPESTATUS[0]}
set -e
count_nextest "$LOG_DIR/nextest-debian-kernel.log" "$rc"

step "soak (1 minute, 2 clients, then leak checks)"
# Its own server on the guest image above; fails on any failed request, a
# leaked VMM, open-file growth, disk not returned or server RSS not flat.
set +e
./target/release/locale2b bench soak --minutes 1 --clients 2 --json "$LOG_DIR/soak.json" \
  --server-log "$LOG_DIR/soak-server.log" >"$LOG_DIR/soak.txt" 2>"$LOG_DIR/soak.log"
rc=$?
set -e
cat "$LOG_DIR/soak.txt"
[ "$rc" -eq 0 ] || tail -20 "$LOG_DIR/soak.log"
record "soak 1 min" "$rc"; [ "$rc" -eq 0 ] && passed=$((passed + 1))

step "doc tests"
set +e; cargo test --workspace --doc -q >"$LOG_DIR/doctest.log" 2>&1; rc=$?; set -e
record "doc tests" "$rc"; [ "$rc" -eq 0 ] && passed=$((passed + 1))

step "fuzz smoke (${FUZZ_SECONDS}s)"
set +e; ./scripts/fuzz.sh "$FUZZ_SECONDS" >"$LOG_DIR/fuzz.log" 2>&1; rc=$?; set -e
tail -3 "$LOG_DIR/fuzz.log"
record "fuzz frame_decoder ${FUZZ_SECONDS}s" "$rc"; [ "$rc" -eq 0 ] && passed=$((passed + 1))

API_FUZZ_EXAMPLES="${LOCALE2B_API_FUZZ_EXAMPLES:-80}"
step "API fuzz: malformed requests from the OpenAPI documents (schemathesis, ${API_FUZZ_EXAMPLES} per operation)"
set +e; ./scripts/api-fuzz.sh "$API_FUZZ_EXAMPLES" >"$LOG_DIR/api-fuzz.log" 2>&1; rc=$?; set -e
grep -E "operations,|api fuzz:|FAILED" "$LOG_DIR/api-fuzz.log" | tail -12 || true
record "api fuzz: 10,000+ generated requests, no 5xx, server still answering" "$rc"; [ "$rc" -eq 0 ] && passed=$((passed + 1))

step "Python client and E2B SDK tests against a real server running as the unprivileged user locale2b"
# The server runs as the unprivileged user setup.sh creates, as in a
# deployment; with-server.sh fails the run if any of its VMMs ran as root or
# without QEMU's seccomp filter.
set +e; LOCALE2B_SERVER_USER=locale2b ./scripts/python-e2e.sh 2>&1 | tee "$LOG_DIR/python.log"; rc=${PIPESTATUS[0]}; set -e
# pytest's closing lines (one per suite: the client's, then one per e2b
# release), with or without the ==== decoration (-q drops it); summed.
p_pass=0; p_fail=0; p_err=0; p_skip=0
count() { sed -nE "s/(^|.*[ ,])([0-9]+) $1.*/\\2/p" <<<"$2"; }
while IFS= read -r py; do
  n=$(count passed "$py"); p_pass=$((p_pass + ${n:-0}))
  n=$(count failed "$py"); p_fail=$((p_fail + ${n:-0}))
  n=$(count 'errors?' "$py"); p_err=$((p_err + ${n:-0}))
  n=$(count skipped "$py"); p_skip=$((p_skip + ${n:-0}))
done < <(grep -E '[0-9]+ (passed|failed|errors?|skipped).* in [0-9.]+s' "$LOG_DIR/python.log" || true)
passed=$((passed + p_pass)); failed=$((failed + p_fail + p_err)); skipped=$((skipped + p_skip))
if [ "$rc" -ne 0 ] && [ "$((p_fail + p_err))" -eq 0 ]; then record "python tests (exit $rc)" 1; fi

echo
echo "locale2b: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]

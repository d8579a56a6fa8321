#!/usr/bin/env bash
# Malformed-request fuzzing of the whole HTTP surface: schemathesis (PyPI)
# generates requests from docs/openapi.json and docs/e2b-openapi.json
# (valid and invalid bodies, paths, ids, queries and headers) and sends
# them to a real server with a real guest; no answer may be a 5xx, and the
# server must still answer afterwards.
#
#   scripts/api-fuzz.sh [EXAMPLES_PER_OPERATION]   # default 100
#
# It starts its own server (scripts/with-server.sh; as the unprivileged
# user locale2b unless LOCALE2B_SERVER_USER says otherwise, "" = root) with a quota of one
# sandbox per key and no rate limit. One sandbox is created first; then
#   1. every operation with generated ids (creates are refused by the quota,
#      so no VM boots; other ids do not exist),
#   2. every operation on the live sandbox (ids fixed to it; destroying it
#      and creating are left out), so malformed bodies reach a real guest.
# Passes when schemathesis found no failed check (JUnit reports in
# target/api-fuzz/) and no error in the documents, the server's
# locale2b_http_responses_total counted at least LOCALE2B_FUZZ_MIN_REQUESTS
# (default 10000) requests and no 5xx, and /health still answers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N="${1:-100}"
if [[ -z "${LOCALE2B_FUZZ_INSIDE:-}" ]]; then
  export LOCALE2B_FUZZ_INSIDE=1 LOCALE2B_KEY_MAX_SANDBOXES=1 LOCALE2B_RATE_LIMIT_PER_SEC=0 \
    LOCALE2B_SERVER_MAX_SANDBOXES=2 LOCALE2B_AUTH_FAILURES_PER_MIN=0 \
    LOCALE2B_SERVER_USER="${LOCALE2B_SERVER_USER-locale2b}"
  export LOCALE2B_SERVER_LOG="${LOCALE2B_SERVER_LOG:-$PWD/target/api-fuzz/server.log}"
  mkdir -p target/api-fuzz
  exec ./scripts/with-server.sh "$0" "$N"
fi
: "${LOCALE2B_BASE_URL:?}" "${LOCALE2B_API_KEY:?}"
URL=$LOCALE2B_BASE_URL
MIN="${LOCALE2B_FUZZ_MIN_REQUESTS:-10000}"
OUT="$ROOT/target/api-fuzz"
mkdir -p "$OUT"
# shellcheck source=venv.sh
. "$ROOT/scripts/venv.sh"
VENV="$ROOT/fuzz/api/.venv"
# Debian's Python, which setup.sh installs.
if [[ -z "${PYTHON:-}" && -x /usr/bin/python3 ]]; then export PYTHON=/usr/bin/python3; fi
ensure_venv "$VENV" "$ROOT/fuzz/api/requirements.txt" -r "$ROOT/fuzz/api/requirements.txt"
# schemathesis's CLI with a work-around for CPython 3.11 (see st.py).
ST=("$VENV/bin/python" "$ROOT/fuzz/api/st.py")

hdr=(-H "X-API-Key: $LOCALE2B_API_KEY")
class_total() { # class -> count from /metrics
  curl -fsS "${hdr[@]}" "$URL/metrics" | sed -nE "s/^locale2b_http_responses_total\\{class=\"$1\"\\} ([0-9]+)$/\\1/p"
}
all_total() { local t=0 c; for c in 1xx 2xx 3xx 4xx 5xx; do t=$((t + $(class_total $c))); done; echo $t; }

before=$(all_total); before5=$(class_total 5xx)
sb=$(curl -fsS "${hdr[@]}" -H 'Content-Type: application/json' -d '{"timeout_sec": 3600, "on_timeout": "pause", "auto_resume": true}' "$URL/sandboxes" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["sandbox_id"])')
# A lifetime the fuzz shortens pauses it, and the next call resumes it.
echo "live sandbox: $sb"

common=(--checks not_a_server_error --mode all --phases examples,coverage,fuzzing
  --max-examples "$N" --seed 20261207 --workers 2 --request-timeout 120
  --suppress-health-check all --no-shrink --continue-on-failure
  --warnings off "${hdr[@]}")
status=0
# The verdict of one run from its JUnit report: a failed check (a 5xx,
# ST101) or an error in our OpenAPI document fails it; an error inside
# the generator itself (Hypothesis on this Python) is reported, not the
# server's fault.
verdict() { # name
  "$VENV/bin/python" - "$OUT/$1.xml" "$1" <<'PY' || status=1
import sys, xml.etree.ElementTree as ET
path, name = sys.argv[1], sys.argv[2]
bad = tool = cases = 0
for tc in ET.parse(path).iter("testcase"):
    cases += 1
    for ch in tc:
        if ch.tag not in ("failure", "error"):
            continue
        msg = (ch.get("message") or "") + " " + (ch.text or "")
        if ch.tag == "failure" or "Schema Error" in msg:
            bad += 1
            # One line, so that a CI summary keeps the status and the curl.
            flat = " | ".join(l.strip() for l in msg.splitlines() if l.strip())
            print(f"FAILED: {name}: {tc.get('name')}: {flat[:1500]}")
        else:
            tool += 1
            print(f"note: {name}: {tc.get('name')}: generator error, not a server answer: {msg.strip().splitlines()[0][:200]}")
print(f"{name}: {cases} operations, {bad} failed, {tool} generator errors")
sys.exit(1 if bad else 0)
PY
}
run() { # name, st args...
  local name=$1; shift
  echo "==> $name"
  set +e
  "${ST[@]}" "$@" 2>&1 | tail -12
  set -e
  verdict "$name"
}

# Ids are generated, never learned from answers: a list answer would hand
# the live sandbox's id to DELETE (and then creates would boot VMs).
no_learning='
[phases.examples.extra-data-sources]
responses = false
[phases.coverage.extra-data-sources]
responses = false
[phases.fuzzing.extra-data-sources]
responses = false'
printf '%s\n' "$no_learning" >"$OUT/generated.toml"
st_run() { local name=$1; shift; run "$name" --config-file "$OUT/generated.toml" run "${common[@]}" --report junit --report-junit-path "$OUT/$name.xml" "$@"; }
# envd's GET /health answers 502 for a sandbox that is gone: E2B's SDK
# reads exactly that as "not running" (docs/e2b.md), so it is left out.
e2b_skip=(--exclude-path /health)
st_run native-generated-ids "$ROOT/docs/openapi.json" --url "$URL"
st_run e2b-generated-ids "$ROOT/docs/e2b-openapi.json" --url "$URL" "${e2b_skip[@]}"

cfg="$OUT/live.toml"
cat >"$cfg" <<TOML
[parameters]
"path.id" = "$sb"
"header.E2b-Sandbox-Id" = "$sb"
$no_learning
TOML
# Not destroyed, not replaced: the live phase keeps its one guest.
live_native=(--exclude-operation-id destroy_sandbox --exclude-operation-id create_sandbox)
live_e2b=(--exclude-method DELETE --exclude-path /e2b/sandboxes --exclude-path /e2b/v2/sandboxes)
st_live() { local name=$1; shift; run "$name" --config-file "$cfg" run "${common[@]}" --report junit --report-junit-path "$OUT/$name.xml" "$@"; }
st_live native-live-sandbox "$ROOT/docs/openapi.json" --url "$URL" "${live_native[@]}"
st_live e2b-live-sandbox "$ROOT/docs/e2b-openapi.json" --url "$URL" "${live_e2b[@]}" "${e2b_skip[@]}"

after=$(all_total); after5=$(class_total 5xx)
sent=$((after - before)); fives=$((after5 - before5))
curl -fsS "$URL/health" >/dev/null || { echo "FAILED: /health does not answer after the fuzz"; status=1; }
curl -fsS "${hdr[@]}" -X DELETE "$URL/sandboxes/$sb" >/dev/null 2>&1 || true
# Whatever the fuzz left (processes, forks refused, …): destroy every sandbox.
for id in $(curl -fsS "${hdr[@]}" "$URL/sandboxes" | python3 -c 'import json,sys; [print(s["sandbox_id"]) for s in json.load(sys.stdin)["sandboxes"]]'); do
  curl -fsS "${hdr[@]}" -X DELETE "$URL/sandboxes/$id" >/dev/null || true
done
# What the server logged about each 5xx (its request id ties the lines).
if [[ $fives -ne 0 && -f "${LOCALE2B_SERVER_LOG:-}" ]]; then
  grep -E 'request done status=5[0-9][0-9]' "$LOCALE2B_SERVER_LOG" | grep -oE 'request_id=[0-9a-f]+' | sort -u | head -5 |
    while read -r rid; do grep -F "$rid" "$LOCALE2B_SERVER_LOG" | cut -c1-700 | sed 's/^/server: /'; done
fi
echo "api fuzz: $sent requests answered, $fives with a 5xx (at least $MIN needed, 0 allowed)"
[[ $sent -ge $MIN ]] || { echo "FAILED: only $sent requests"; status=1; }
[[ $fives -eq 0 ]] || { echo "FAILED: $fives responses were 5xx"; status=1; }
exit $status

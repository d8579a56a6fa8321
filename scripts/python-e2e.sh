#!/usr/bin/env bash
# The Python client tests and the E2B SDK compatibility suite (every pinned
# e2b release) against one real server (scripts/with-server.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export LOCALE2B_REQUIRE_E2E=1
exec ./scripts/with-server.sh bash -c '
  status=0
  ./python/run-tests.sh -q || status=$?
  echo "==> the official e2b SDK (compat/e2b)"
  ./compat/e2b/run-tests.sh -q || status=$?
  exit $status'

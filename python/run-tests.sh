#!/usr/bin/env bash
# Runs the Python package's tests in python/.venv (created on first use).
#
#   python/run-tests.sh                      # all tests (live ones skip without a server)
#   python/run-tests.sh tests/test_live_contract.py -v
#
# Arguments go to pytest; paths are relative to the python/ directory.
# pip runs only when the venv is new or pyproject.toml changed (hash stamp).
# Exit code: pytest's, except that "no tests collected" (5) becomes 1.
# Environment: PYTHON (interpreter for the venv, default python3); the live
# tests read LOCALE2B_BASE_URL, LOCALE2B_API_KEY, LOCALE2B_API_KEY_HEADER and
# LOCALE2B_REQUIRE_E2E.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="$here/.venv"
# shellcheck source=../scripts/venv.sh
. "$here/../scripts/venv.sh"
ensure_venv "$venv" pyproject.toml -e ".[test]"

set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "run-tests.sh: pytest collected no tests; treating as failure" >&2
    rc=1
fi
exit $rc

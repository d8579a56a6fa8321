#!/usr/bin/env bash
# Runs the E2B compatibility suite with each pinned release of the official
# `e2b` package, each in its own venv (compat/e2b/.venv-<version>, made on
# first use and remade when its requirements change).
#
#   compat/e2b/run-tests.sh                 # every pinned release
#   compat/e2b/run-tests.sh 2.63.0 -k files # one release, pytest arguments
#
# Needs LOCALE2B_BASE_URL and LOCALE2B_API_KEY of a running server
# (scripts/python-e2e.sh starts one); without them every test is skipped.
# Exit code: non-zero if any release's run failed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=../../scripts/venv.sh
. "$here/../../scripts/venv.sh"
versions=()
for f in requirements/e2b-*.txt; do v="${f#requirements/e2b-}"; versions+=("${v%.txt}"); done
if [[ $# -gt 0 && -f "requirements/e2b-$1.txt" ]]; then versions=("$1"); shift; fi

status=0
for v in "${versions[@]}"; do
    req="requirements/e2b-$v.txt"
    venv="$here/.venv-$v"
    ensure_venv "$venv" "$req" -r "$req"
    echo "==> e2b $v"
    set +e
    "$venv/bin/python" -m pytest -p no:cacheprovider -rs tests "$@"
    rc=$?
    set -e
    if [[ $rc -eq 5 ]]; then rc=1; fi
    if [[ $rc -ne 0 ]]; then status=$rc; fi
done
exit $status

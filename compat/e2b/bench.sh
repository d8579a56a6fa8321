#!/usr/bin/env bash
# The E2B SDK benchmark (compat/e2b/bench.py) against a server of its own
# (scripts/with-server.sh), with the newest pinned e2b release.
#
#   compat/e2b/bench.sh                          # 20 sandboxes, 50 runs
#   compat/e2b/bench.sh --sandboxes 5 --json out.json
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
newest=$(ls "$here"/requirements/e2b-*.txt | sed -E 's/.*e2b-(.*)\.txt/\1/' | sort -V | tail -1)
# Make (or refresh) the venv without running the suite.
"$here/run-tests.sh" "$newest" --collect-only -q >/dev/null
exec ./scripts/with-server.sh bash -c '
  export E2B_API_URL="$LOCALE2B_BASE_URL/e2b" E2B_SANDBOX_URL="$LOCALE2B_BASE_URL" E2B_API_KEY="$LOCALE2B_API_KEY"
  unset E2B_DEBUG E2B_DOMAIN
  exec "$0" "$1" "${@:2}"' "$here/.venv-$newest/bin/python" "$here/bench.py" "$@"

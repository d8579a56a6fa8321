#!/usr/bin/env bash
# The command-line client: create, exec, copy, destroy.
# LOCALE2B (the binary, default `locale2b`), LOCALE2B_BASE_URL, LOCALE2B_API_KEY.
set -euo pipefail
l2b=${LOCALE2B:-locale2b}
id=$("$l2b" sandbox create --memory-mb 256)
trap '"$l2b" sandbox rm "$id" >/dev/null' EXIT
echo "numbers: $(seq 1 5 | tr '\n' ' ')" > /tmp/locale2b-example.txt
"$l2b" sandbox cp /tmp/locale2b-example.txt "$id":/workspace/ 2>/dev/null
"$l2b" sandbox exec "$id" -- sh -c 'tr a-z A-Z < /workspace/locale2b-example.txt'

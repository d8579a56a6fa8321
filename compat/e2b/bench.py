"""The E2B SDK's view of locale2b's speed: `Sandbox.create()` until the first
`commands.run("true")` result, over N sandboxes one after another, and
`commands.run("true")` alone in a running sandbox. Prints a table and writes
JSON. Run it with compat/e2b/bench.sh (which starts a server) or point it at
one with E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version


def nearest_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))
    return ordered[k]


def row(name: str, samples: list[float], note: str) -> dict:
    return {
        "name": name,
        "unit": "ms",
        "count": len(samples),
        "p50": round(nearest_rank(samples, 0.50), 1),
        "p95": round(nearest_rank(samples, 0.95), 1),
        "max": round(max(samples), 1),
        "mean": round(statistics.fmean(samples), 1),
        "note": note,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sandboxes", type=int, default=20, help="sandboxes created (default 20)")
    ap.add_argument("--runs", type=int, default=50, help="commands.run calls timed (default 50)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from e2b import Sandbox

    create_to_first = []
    for i in range(args.sandboxes):
        start = time.perf_counter()
        sbx = Sandbox.create(timeout=120)
        try:
            r = sbx.commands.run("true")
            create_to_first.append((time.perf_counter() - start) * 1000)
            assert r.exit_code == 0
        finally:
            sbx.kill()
        print(f"bench: sandbox {i + 1}/{args.sandboxes}", file=sys.stderr)

    run_alone = []
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.commands.run("true")  # warm-up
        for _ in range(args.runs):
            start = time.perf_counter()
            sbx.commands.run("true")
            run_alone.append((time.perf_counter() - start) * 1000)
        # What the guest alone spends on the SDK's command form (every
        # commands.run is `/bin/bash -l -c <cmd>`), timed inside it.
        probe = sbx.commands.run(
            "for i in $(seq 1 10); do s=$(date +%s%N); bash -l -c true; e=$(date +%s%N); "
            "echo $(( (e - s) / 1000 )); done"
        )
        in_guest = [int(x) / 1000 for x in probe.stdout.split()]
    finally:
        sbx.kill()

    rows = [
        row("sdk.create_to_first_run", create_to_first,
            "Sandbox.create() until commands.run('true') returned, new sandbox each time"),
        row("sdk.commands_run", run_alone, "commands.run('true') in a running sandbox"),
        row("guest.bash_login_true", in_guest,
            "`bash -l -c true` timed inside the guest: the part of a run that is the guest's own"),
    ]
    print(f"e2b {version('e2b')} against {os.environ.get('E2B_API_URL')} | "
          f"{platform.machine()} | python {platform.python_version()}")
    print("| metric | unit | count | p50 | p95 | max | note |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['unit']} | {r['count']} | {r['p50']} | {r['p95']} | {r['max']} | {r['note']} |")
    if args.json:
        doc = {
            "schema_version": 1,
            "sdk": f"e2b {version('e2b')}",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metrics": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"bench: wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

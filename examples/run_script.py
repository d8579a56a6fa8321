"""Write a Python script into a sandbox and run it with arguments."""

from locale2b import Locale2bClient

SCRIPT = """
import sys, statistics
numbers = [float(a) for a in sys.argv[1:]]
print(f"mean={statistics.mean(numbers)} stdev={statistics.stdev(numbers):.3f}")
"""

with Locale2bClient() as client:
    sandbox = client.create_sandbox(memory_mb=256)
    try:
        client.write_file(sandbox.sandbox_id, "/workspace/stats.py", SCRIPT)
        result = client.exec_command(sandbox.sandbox_id, "python3 stats.py 2 4 4 4 5 5 7 9")
        if result.exit_code != 0:
            raise SystemExit(result.stderr)
        print(result.stdout, end="")
    finally:
        client.destroy_sandbox(sandbox.sandbox_id)

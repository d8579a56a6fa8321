"""Create a sandbox, run a command in it, destroy it."""

from locale2b import Locale2bClient

with Locale2bClient() as client:  # LOCALE2B_BASE_URL, LOCALE2B_API_KEY
    sandbox = client.create_sandbox(memory_mb=256)
    try:
        result = client.exec_command(sandbox.sandbox_id, "echo hello from $(hostname)")
        print(result.stdout, end="")
    finally:
        client.destroy_sandbox(sandbox.sandbox_id)

"""An unmodified program for the official e2b SDK. Point it at locale2b
with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (see docs/e2b.md)."""

from e2b import Sandbox

sandbox = Sandbox.create()
try:
    sandbox.files.write("/home/user/hello.py", "print('hello from an E2B sandbox on locale2b')")
    run = sandbox.commands.run("python3 /home/user/hello.py")
    print(run.stdout, end="")
finally:
    sandbox.kill()

"""A multi-step agent task: write code, run its tests, see them fail, fix
the code, rerun. What a coding agent does, step by step, in one sandbox."""

import asyncio

from locale2b import FirecrackerWorkspaceProvider

TESTS = """
import unittest
from fizzbuzz import fizzbuzz

class T(unittest.TestCase):
    def test_numbers(self):
        self.assertEqual([fizzbuzz(i) for i in (1, 3, 5, 15)], ["1", "Fizz", "Buzz", "FizzBuzz"])
"""

FIRST_TRY = """
def fizzbuzz(n):
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    if n % 15 == 0:
        return "FizzBuzz"
    return str(n)
"""

FIXED = """
def fizzbuzz(n):
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)
"""


async def main() -> None:
    async with FirecrackerWorkspaceProvider(destroy_on_exit=True) as provider:
        ws = await provider.create_workspace(memory_mb=256)
        sid = ws.sandbox_id
        await provider.write_file(sid, "/workspace/test_fizzbuzz.py", TESTS)

        await provider.write_file(sid, "/workspace/fizzbuzz.py", FIRST_TRY)
        first = await provider.run_tests(sid, command="python3 -m unittest -q")
        print(f"step 1: tests exit {first.exit_code}")
        assert first.exit_code != 0, "the first try should fail"

        await provider.write_file(sid, "/workspace/fizzbuzz.py", FIXED)
        second = await provider.run_tests(sid, command="python3 -m unittest -q")
        print(f"step 2: tests exit {second.exit_code}")
        if second.exit_code != 0:
            raise SystemExit(second.stderr)
        print("task done")


asyncio.run(main())

"""Runs schemathesis's `st` command with one work-around.

Hypothesis describes lambdas by parsing their source with `ast.parse`; on
CPython 3.11 that sometimes fails deep in a recursion with "SystemError: AST
constructor recursion depth mismatch", which aborts the whole operation's
test. The description is only used in reprs, so a plain one is given
instead.
"""

import sys

import hypothesis.internal.lambda_sources as lambda_sources
from schemathesis.cli import schemathesis

lambda_sources.lambda_description = lambda f: "<lambda>"

if __name__ == "__main__":
    sys.exit(schemathesis())

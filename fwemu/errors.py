"""The one exception family fwemu raises for misuse, bad input files and environment problems.

Bad *network* input never raises: the core turns it into a verdict with a reason.
"""


class FwemuError(Exception):
    """Base class. `str(err)` is a complete one-line (or one-line-per-problem) user message."""

    exit_code = 2

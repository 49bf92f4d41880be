"""Errors a user can cause and fix (a bad option, a missing file or study): printed as one line, exit code 2.

Here, below both the evaluation and the search, so that library code raises them without importing a CLI.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad study file, missing data...): one line, exit code 2."""

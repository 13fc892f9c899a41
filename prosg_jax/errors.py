"""The one exception type the scripts report as a single line (no traceback)."""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix: a bad config value, a workdir mismatch, a NaN loss."""

"""Errors the user can fix. The CLI prints their message and exits with `exit_code`, no traceback."""


class UserError(Exception):
    """Bad input or an impossible request: the message names the problem and the fix."""

    exit_code = 2


class CancelledError(Exception):
    """The run was cancelled at a step boundary."""

"""Errors meant for the user: printed as one line by the CLI, never as a traceback."""


class UserError(Exception):
    """Bad input or configuration; the message names the file/key and the fix."""

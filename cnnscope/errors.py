"""The one error type the CLI turns into a clear message and exit code 2 (no traceback)."""


class CnnscopeError(Exception):
    """Bad input from the user: the message says what was wrong and what to do."""

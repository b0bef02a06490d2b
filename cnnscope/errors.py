"""The one error type the CLI turns into a clear message and exit code 2 (no traceback)."""


class CnnscopeError(Exception):
    """Bad input from the user: the message says what was wrong and what to do, in terms of arguments
    and values, never of CLI flags. `arguments` names the arguments the message speaks of, as the
    raising function calls them, so that a front end can say which of its own options they are."""

    def __init__(self, message="", *, arguments=()):
        super().__init__(message)
        self.arguments = tuple(arguments)


class CnnscopeWarning(UserWarning):
    """Something the user should know that does not stop the command (e.g. a run's model file changed
    since it was trained); the CLI prints it as one `warning:` line on stderr."""

"""The errors of bad input, which the CLI turns into a clear message and exit code 2 (no traceback).

Every one is a CnnscopeError, which is a ValueError: a library user may catch either. A few kinds
say which input was wrong, for code that handles them apart:

    SpecError    a model SPEC that cannot be resolved, imported or built as given
    TrustError   code cnnscope will not run unasked: a SPEC read from a file someone else may have
                 written (a checkpoint, a run's config, a README marker) that is no zoo model
    DataError    a dataset that cannot be read or used: missing or corrupt files, a failed download,
                 images or labels that do not fit
    RunError     a run folder or checkpoint that cannot be used as asked: missing, corrupt, in use,
                 another model's, or not resumable with these settings
"""


class CnnscopeError(ValueError):
    """Bad input from the user: the message says what was wrong and what to do, in terms of arguments
    and values, never of CLI flags. `arguments` names the arguments the message speaks of, as the
    raising function calls them, so that a front end can say which of its own options they are."""

    def __init__(self, message="", *, arguments=()):
        super().__init__(message)
        self.arguments = tuple(arguments)


class SpecError(CnnscopeError):
    """A model SPEC that cannot be resolved, imported or built as given."""


class TrustError(CnnscopeError):
    """A SPEC from a file someone else may have written that is no zoo model, refused unless trusted."""


class DataError(CnnscopeError):
    """A dataset that cannot be read or used."""


class RunError(CnnscopeError):
    """A run folder or checkpoint that cannot be used as asked."""


KINDS = {kind.__name__: kind for kind in (CnnscopeError, SpecError, TrustError, DataError, RunError)}


class CnnscopeWarning(UserWarning):
    """Something the user should know that does not stop the command (e.g. a run's model file changed
    since it was trained); the CLI prints it as one `warning:` line on stderr."""

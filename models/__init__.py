"""The cnnscope model zoo: compact CNN builders registered by name.

Depends on torch only (never on cnnscope), so a user can `from models import build` alone.

    >>> from models import build, list_models
    >>> net = build("basic", num_classes=10)
"""
# Importing the family modules registers their builders.
from . import compact, ectied, egrr, soft_sharing, tiny  # noqa: F401
from .registry import ModelEntry, build, get_entry, list_models, register  # noqa: F401

"""The cnnscope model zoo: compact CNN builders registered by name.

The folder models/ installs and imports as `cnnscope.zoo` (setup.py maps it), never as a top-level
`models`: users' repositories have their own `models/`. Depends on torch only (never on the rest of
cnnscope), so `from cnnscope.zoo import build` loads the zoo alone.

    >>> from cnnscope.zoo import build, list_models
    >>> net = build("basic", num_classes=10)
"""
# Importing the family modules registers their builders.
from . import compact, ectied, egrr, soft_sharing, tiny  # noqa: F401
from .registry import ModelEntry, build, get_entry, list_models, register  # noqa: F401

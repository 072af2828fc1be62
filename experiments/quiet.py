"""A quiet start for the main job: its first screen is the run's config and progress, not other libraries' noise.

Called once at the entry point (experiments/sweep.py), before anything imports transformers; never from library
code, and never silencing the project's own warnings (``lorakit``, ``experiments``, ``analysis``).

- torchao is optional (``quantize=nf4``), but transformers imports it whenever it is installed (its quantizer
  registry asks ``importlib.util.find_spec``), which costs seconds and prints "Failed to load ..." lines and torch's
  deprecation notices about torchao's enums. ``hide_optional`` makes it look absent (``sys.modules[name] = None``:
  find_spec answers None, an import raises ImportError); ``allow_optional`` undoes that where the feature is used.
- Third-party warnings that say nothing a user of this project can act on are filtered by message and module, one
  entry each, with the reason: a new warning still shows.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

OPTIONAL = ("torchao",)
# (module regex, message regex, why it is noise here)
THIRD_PARTY = (
    ("torch.utils._pytree", ".*is an Enum subclass and is now natively supported.*",
     "torchao's enums, registered the old way: nothing to do for a user"),
    ("transformers.*", ".*", "transformers' deprecation notices about its own internals, raised at import"),
)


def quiet_start() -> None:
    """Hide the optional packages and filter the third-party noise (module docstring)."""
    for name in OPTIONAL:
        hide_optional(name)
    for module, message, _why in THIRD_PARTY:
        warnings.filterwarnings("ignore", message=message, module=module, category=FutureWarning)
        warnings.filterwarnings("ignore", message=message, module=module, category=DeprecationWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its load reports list the new head as MISSING
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def hide_optional(name: str) -> None:
    if name not in sys.modules:
        sys.modules[name] = None  # type: ignore[assignment]


def allow_optional(name: str) -> None:
    """Make ``name`` importable again (where its feature is used); a no-op where it was never hidden."""
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]

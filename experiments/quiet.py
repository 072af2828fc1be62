"""A quiet start for the main job: its first screen is the run's config and progress, not other libraries' noise.

Called once at the entry point (experiments/sweep.py), before anything imports transformers; never from library
code, and never silencing the project's own warnings (``lorakit``, ``experiments``, ``analysis``).

- torchao is optional (``quantize=nf4``), but transformers imports it whenever it is installed (its quantizer
  registry asks ``importlib.util.find_spec``), which costs seconds and prints "Failed to load ..." lines and torch's
  deprecation notices about torchao's enums. ``hide_optional`` makes it look absent (``sys.modules[name] = None``:
  find_spec answers None, an import raises ImportError); ``allow_optional`` undoes that where the feature is used.
- Where torchao is used, its loggers' notices (native kernels built for another Python or GPU, no Triton) and torch's
  deprecation lines about torchao's enums are raised to errors only: both named loggers belong to those libraries,
  so nothing of this project's, and no warning from any other library, is hidden.
"""

from __future__ import annotations

import logging
import sys

OPTIONAL = ("torchao",)
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")  # say nothing a user of this project can act on (docstring)


def quiet_start() -> None:
    """Hide the optional packages and quieten the loggers that speak when one is used (module docstring)."""
    for name in OPTIONAL:
        hide_optional(name)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def hide_optional(name: str) -> None:
    if name not in sys.modules:
        sys.modules[name] = None  # type: ignore[assignment]


def allow_optional(name: str) -> None:
    """Make ``name`` importable again (where its feature is used); a no-op where it was never hidden."""
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]

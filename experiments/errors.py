"""The errors every layer of ``experiments`` raises, below everything that raises them (no import cycle)."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException, ValueError):
    """A bad input. Hydra prints a CompactHydraException as its message alone: one line, no traceback."""

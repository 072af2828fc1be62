"""What one config key accepts (a type, a range, choices, null): one description from which both the check and its
one-line message derive. experiments/schema.py holds the table of every key; a method declares its own keys with these
(``Method.accepts``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from experiments.errors import ConfigError


class _Checked:
    """``check``: one line naming the key, the value and what is accepted, from the subclass's ``accepts`` and
    ``describe``."""

    def check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(f"{key}={_show(value)} is not accepted: {key} must be {self.describe()}")


@dataclass(frozen=True)
class Accepts(_Checked):
    """The values of one key: a type, an optional closed or open range, choices, and whether null is allowed."""

    kind: type  # int, float, bool, str or dict
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False

    def describe(self) -> str:
        if self.choices:
            text = " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        elif self.kind is bool:
            text = "true | false"
        elif self.kind is dict:
            text = "a mapping {key: value} (e.g. {value:16})"
        else:
            noun = {int: "an integer", float: "a number", str: "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
            text = noun + (" " + " and ".join(bounds) if bounds else "")
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.choices:
            return value in self.choices and type(value) is type(next(c for c in self.choices if c == value))
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is dict:  # its entries are the method's to check
            return isinstance(value, Mapping)
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        if self.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
            return False
        if self.kind is str:
            return isinstance(value, str)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


@dataclass(frozen=True)
class OneOf(_Checked):
    """The values of a key that takes one of several kinds (``true | false | an integer ≥ 0``): accepted when any
    alternative accepts, described as their union."""

    alternatives: tuple[Accepts, ...]

    def describe(self) -> str:
        return " | ".join(a.describe() for a in self.alternatives)

    def accepts(self, value: Any) -> bool:
        return any(a.accepts(value) for a in self.alternatives)


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


POSITIVE_INT = Accepts(int, low=1)
NATURAL = Accepts(int, low=0)
POSITIVE = Accepts(float, low=0, low_open=True)
FLAG = Accepts(bool)

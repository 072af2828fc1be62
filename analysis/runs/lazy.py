"""Mappings whose values are read or computed when asked, one at a time, and never kept.

An analysis that walks ``for name, delta in deltas.items()`` then holds one module's tensor (and what it derives from
it) at a time, whatever the size of the model: the peak memory is O(one module), not O(model). safetensors'
``safe_open`` maps the file and copies out only the tensor asked for, so a 27 GB ΔW file costs one module's bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, in file order, from its header alone."""
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


class LazyTensors(Mapping):
    """{name: tensor} over safetensors files: ``sources`` maps each name to (file, key in that file); a value is read
    from disk on every access (``transform(tensor)`` applied) and not cached, so holding the mapping costs nothing."""

    def __init__(self, sources: Mapping[str, tuple[str, str]],
                 transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self._sources, self._transform = dict(sources), transform

    def __getitem__(self, name: str) -> torch.Tensor:
        file, key = self._sources[name]
        with safe_open(file, framework="pt") as f:
            return self._transform(f.get_tensor(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``, from the header: no tensor read."""
        file, key = self._sources[name]
        with safe_open(file, framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())


class Derived(Mapping):
    """{name: compute(name)} for ``names``, computed on every access and not cached (ΔW = scale·B·A of an adapter,
    the seed-noise floor of two runs): the same one-module-at-a-time reading as ``LazyTensors``."""

    def __init__(self, names, compute: Callable[[str], object]) -> None:
        self._names, self._compute = list(names), compute
        self._known = set(self._names)

    def __getitem__(self, name: str):
        if name not in self._known:
            raise KeyError(name)
        return self._compute(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

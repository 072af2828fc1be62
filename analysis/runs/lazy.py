"""Mappings whose values are read or computed when asked, one at a time, and never kept.

An analysis that walks ``for name, delta in deltas.items()`` then holds one module's tensor (and what it derives from
it) at a time, whatever the size of the model: the peak memory is O(one module), not O(model). A tensor is read from
the safetensors file with one positioned read of its bytes (the format: an 8-byte little-endian header length, a JSON
header of name → dtype, shape, byte offsets, then the data), not through a memory map of the whole file: a map of a
27 GB file counts against a process's address-space and data limits, and its touched pages against its resident set.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterator

import torch

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}  # fmt: skip


class SafetensorsError(ValueError):
    """A file that is not a complete safetensors file (truncated, foreign, or a header that does not parse)."""


def read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """({name: {"dtype", "shape", "data_offsets"}} in file order, the ``__metadata__``, where the data starts)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: shorter than a safetensors header")
        (size,) = struct.unpack("<Q", head)
        if size > os.fstat(f.fileno()).st_size - 8:
            raise SafetensorsError(f"{path}: header length {size} runs past the end of the file")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SafetensorsError(f"{path}: header is not JSON ({err})") from None
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + size


def read_tensor(path: str | Path, entry: dict, start: int) -> torch.Tensor:
    """The tensor a header ``entry`` describes: its bytes read at their offset, nothing else of the file."""
    begin, end = entry["data_offsets"]
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise SafetensorsError(f"{path}: dtype {entry['dtype']} is not read here; accepted: {', '.join(_DTYPES)}")
    buffer = bytearray(end - begin)
    with open(path, "rb", buffering=0) as f:
        f.seek(start + begin)
        if f.readinto(buffer) != len(buffer):
            raise SafetensorsError(f"{path}: truncated (a tensor's bytes run past the end of the file)")
    if not buffer:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, in file order, from its header alone."""
    return list(read_header(path)[0])


class LazyTensors(Mapping):
    """{name: tensor} over safetensors files: ``sources`` maps each name to (file, key in that file); a value is read
    from disk on every access (``transform(tensor)`` applied) and not cached, so holding the mapping costs nothing."""

    def __init__(self, sources: Mapping[str, tuple[str, str]],
                 transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        self._sources, self._transform = dict(sources), transform
        self._headers: dict[str, tuple[dict, int]] = {}  # file -> (its header, data start): names and offsets only

    def _entry(self, name: str) -> tuple[str, dict, int]:
        file, key = self._sources[name]
        if file not in self._headers:
            header, _, start = read_header(file)
            self._headers[file] = header, start
        header, start = self._headers[file]
        if key not in header:
            raise SafetensorsError(f"{file}: no tensor {key!r} (the file changed since it was listed)")
        return file, header[key], start

    def __getitem__(self, name: str) -> torch.Tensor:
        file, entry, start = self._entry(name)
        return self._transform(read_tensor(file, entry, start))

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``, from the header: no tensor read."""
        return tuple(self._entry(name)[1]["shape"])


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

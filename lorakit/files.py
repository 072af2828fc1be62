"""Adapter files: written atomically with the user's permissions and a checksum, read back with every fault named.

Every adapter lorakit writes (PEFT-format LoRA, Houlsby bottleneck) is a JSON config beside a safetensors file. The
weights carry, in the safetensors header's metadata, ``lorakit_sha256``: the SHA-256 of their tensors (``digest``).
PEFT and safetensors ignore unknown metadata, so PEFT still loads them; lorakit verifies the digest on load where
it is present, so altered bytes are caught, and files without it (PEFT's, older lorakit's) still load. The digest
covers the tensors' names, dtypes, shapes and bytes, not the file, because it must live inside the file it checks;
an altered header or metadata either fails to parse or changes the digest. Anything malformed — a truncated file,
invalid JSON, a non-finite size — is one ``LoRAError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import LoRAError

CHECKSUM_KEY = "lorakit_sha256"


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: each name, dtype, shape and raw bytes (little-endian, as stored)."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        sha.update(f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` to a safetensors file atomically, with ``metadata`` and the checksum."""
    tensors = {key: t.detach().contiguous().cpu() for key, t in tensors.items()}
    metadata = {**metadata, CHECKSUM_KEY: digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path, keep: Callable[[str], bool] = lambda key: True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file, the checksum verified where the file has one. ``keep`` selects
    the tensors returned (the checksum still reads them all). A file that is not a complete safetensors file, or whose
    tensors no longer match their checksum, is one ``LoRAError`` naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types (and OSError) for truncated or foreign files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LoRAError(f"{path} is not a readable safetensors file ({reason}): it is truncated or not an adapter's "
                        f"weights; restore it or save the adapter again") from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and digest(tensors) != expected:
        raise LoRAError(f"{path} does not match its checksum ({CHECKSUM_KEY}): its tensor bytes were altered after "
                        f"saving; restore it or save the adapter again")
    return {key: t for key, t in tensors.items() if keep(key)}, metadata


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; unreadable, truncated or non-object content is one ``LoRAError`` naming it."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LoRAError(f"{path} is not valid JSON ({err.msg}: line {err.lineno}, column {err.colno}); "
                        f"expected the adapter's config object") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LoRAError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(content, dict):
        raise LoRAError(f"{path} holds a JSON {type(content).__name__}, expected the adapter's config object")
    return content


def write_json(path: Path, content: Mapping) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8"))


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """``write(tmp)`` into a temporary file beside ``target``, then rename it onto ``target`` (``atomic_path``)."""
    with atomic_path(target) as tmp:
        write(str(tmp))


@contextmanager
def atomic_path(target: Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` (a file, or a folder with ``is_dir``) to write; on success it is
    renamed onto ``target``, replacing it: a reader sees the old one or the new one, never half of one. The one home
    of atomic writes: adapters, run files, caches, checkpoints and results all write through it.

    The file ends with mode 0666 less the umask (a folder 0777 less it), the permissions an ordinary ``open`` gives
    (``tempfile.mkstemp`` makes them owner-only, and so does safetensors' writer): the temporary file is created with
    them, which reads the umask without changing it, and they are set again after the write."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            if is_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        os.chmod(tmp, mode)
        if is_dir and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()

"""Mid-run checkpoints: a run killed or preempted resumes from its last checkpoint, not from step 0, and ends with
the metrics an uninterrupted run gives. Nothing is unpickled: a checkpoint in a sweep folder on a shared file system
is data, never code.

Every ``execution.checkpoint_every`` optimizer steps (and at the step after a preemption signal) the training state is
written atomically to the run folder's ``.checkpoint/state.safetensors`` through ``lorakit.files.save_tensors``, which
records the SHA-256 of the tensors: the trainable parameters, AdamW's moments, the data order's generator at the
epoch's start and torch's random states. Everything else — the step, the epoch and how many of its batches are done,
the schedule, AdamW's hyper-parameters, NumPy's and Python's random states, the metrics so far — is JSON in the file's
metadata, beside its own SHA-256 and the SHA-256 of the run's identity (experiments/identity.py).

``load`` trusts none of it: a file that is truncated, altered, of another run's identity, or an older ``state.pt``
(a pickle, never opened) is set aside to ``.checkpoint.rejected/`` with one warning line, and the run starts over from
step 0. A rerun of the same folder (locally, or SLURM's requeue) resumes from a sound one. The folder goes once the
run is COMPLETE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lorakit.config import LoRAError
from lorakit.files import load_tensors, save_tensors

FOLDER, STATE, IDENTITY = ".checkpoint", "state.safetensors", "identity.json"
PICKLED = "state.pt"  # what lorakit wrote before: refused unread
REJECTED = ".checkpoint.rejected"  # a sibling of FOLDER: the last checkpoint refused, kept for inspection
FORMAT = "1"
ARRAY_DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "int64", "int32", "int8", "uint8", "bool"))
log = logging.getLogger(__name__)


class Unusable(ValueError):
    """A checkpoint that cannot be resumed from; the message is the one-line reason."""


def save(folder: Path, model: nn.Module, optimizer, scheduler, progress: dict, generator: torch.Tensor,
         identity: dict) -> None:
    """Write the training state; ``progress`` holds the loop's counters and the metrics so far (plain Python)."""
    state = {
        "trainable": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "epoch_generator": generator,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(_encode(state, "", tensors))
    metadata = {"lorakit_checkpoint": FORMAT, "state": text, "state_sha256": _sha256(text),
                "identity_sha256": identity_digest(identity)}
    save_tensors(Path(folder) / STATE, tensors, metadata)
    _remove(Path(folder) / PICKLED)


def load(folder: Path, identity: dict, model: nn.Module, name: str, set_aside: bool = True) -> dict | None:
    """The state saved in ``folder``, verified; None when there is none, or when it is unusable: then it is moved to
    ``.checkpoint.rejected/`` (unless ``set_aside`` is False: a DDP process other than the first only reads) with one
    warning line, and the run starts from step 0."""
    folder = Path(folder)
    try:
        return _verified(folder, identity, model)
    except Unusable as err:
        log.warning("%s: checkpoint set aside, starting from step 0: %s", name, err)
        if set_aside:
            _set_aside(folder)
        return None


def _verified(folder: Path, identity: dict, model: nn.Module) -> dict | None:
    path = folder / STATE
    if not path.is_file():
        if (folder / PICKLED).exists():
            raise Unusable(f"{folder / PICKLED} is a pickled checkpoint (an older lorakit's, or planted); it was not "
                           f"opened, since unpickling can run code")
        return None
    try:
        tensors, metadata = load_tensors(path)
    except LoRAError as err:
        raise Unusable(str(err).split(":", 1)[0] + f" is damaged ({_reason(err)})") from None
    text = metadata.get("state")
    if metadata.get("lorakit_checkpoint") != FORMAT or text is None:
        raise Unusable(f"{path} is not a lorakit checkpoint (format {metadata.get('lorakit_checkpoint')!r})")
    if _sha256(text) != metadata.get("state_sha256"):
        raise Unusable(f"{path}: its counters and random states do not match their checksum")
    if metadata.get("identity_sha256") != identity_digest(identity):
        raise Unusable(f"{path} was written by a run of another identity")
    try:
        state = _decode(json.loads(text), tensors)
        parameters = dict(model.named_parameters())
        for key, value in state["trainable"].items():
            if key not in parameters or parameters[key].shape != value.shape:
                raise Unusable(f"{path} holds {key} {tuple(value.shape)}, which this model does not have")
        missing = [n for n, p in parameters.items() if p.requires_grad and n not in state["trainable"]]
        if missing:
            raise Unusable(f"{path} lacks trainable parameters, e.g. {missing[0]}")
        state["progress"]["step"], state["progress"]["epoch"]  # noqa: B018 - the counters every resume reads
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, Unusable):
            raise
        raise Unusable(f"{path} has a malformed state ({type(err).__name__}: {err})") from None
    return state


def restore(state: dict, model: nn.Module, optimizer, scheduler) -> None:
    """Put the trainable parameters, the optimizer and the schedule back (the random generators: ``restore_rng``)."""
    optimizer.load_state_dict(state["optimizer"])  # first: it checks the groups before anything changes
    scheduler.load_state_dict(state["scheduler"])
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            parameters[name].copy_(value)


def restore_rng(state: dict) -> None:
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_identity(folder: Path, identity: dict) -> None:
    from experiments.store import write_json

    write_json(Path(folder) / IDENTITY, identity)


def matches(folder: Path, identity: dict) -> bool:
    """Whether ``folder``'s identity.json names this identity (an unreadable one does not)."""
    path = Path(folder) / IDENTITY
    try:
        return path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(identity, default=str))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def identity_digest(identity: dict) -> str:
    return _sha256(json.dumps(identity, sort_keys=True, default=str))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _reason(err: Exception) -> str:
    text = str(err)
    return text[text.find("(") + 1 : text.find(")")] if "(" in text else text


# JSON with the tensors taken out: a tensor becomes {"__tensor__": key} (its bytes in the safetensors file), and the
# types JSON lacks are tagged so they come back as they were: tuples (random.getstate, AdamW's betas), dicts with
# non-text keys (the optimizer's per-parameter state), NumPy arrays (predictions; np.random.get_state's uint32 as
# text) and DataFrames (generations).
def _encode(value, key: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().clone()  # a copy: parameters may share storage with other tensors
        return {"__tensor__": key}
    if isinstance(value, np.ndarray) and value.dtype in ARRAY_DTYPES:  # a run's predictions: bytes, not text
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"__array__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, pd.DataFrame):  # a causal LM's generations
        return {"__frame__": _encode(value.to_dict(orient="split"), key, tensors)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint cannot hold {type(value).__name__} at {key}")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__array__" in value:
        return tensors[value["__array__"]].numpy()
    if "__frame__" in value:
        return pd.DataFrame(**_decode(value["__frame__"], tensors))
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _set_aside(folder: Path) -> None:
    rejected = folder.with_name(REJECTED)
    _remove(rejected)
    rejected.mkdir()
    for name in (STATE, PICKLED):
        if (folder / name).exists():
            os.replace(folder / name, rejected / name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()

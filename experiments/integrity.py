"""Is a finished run's folder still what the run wrote? Hydra-free, so the analyses and ``experiments.verify`` ask
the same question with the same rules.

When a run completes, ``COMPLETE`` is written with the SHA-256 of every file the run left for readers (``seal``):
config.yaml, metrics.json, delta_weights.safetensors, the adapters, predictions and generations — everything but
COMPLETE itself, hidden entries (``.hydra/``, ``.checkpoint*``), W&B's folder and logs, which go on changing after
the run. ``run_damage`` recomputes them. Runs completed before checksums existed have an empty ``COMPLETE``: their
files are checked for being whole instead — every JSON and YAML file parses (metrics.json with its ``run`` and
``best`` blocks), every safetensors file reads back with its embedded ``lorakit_sha256`` where present
(``lorakit.files.load_tensors``), every ``.npz`` reads without pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

from experiments.store import COMPLETE, FAILED, METRICS, SUPERSEDED
from lorakit.config import LoRAError
from lorakit.files import load_tensors

UNSEALED = {COMPLETE, FAILED, SUPERSEDED, "wandb"}  # markers, and what W&B rewrites after the run
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def sealed_files(run_dir: Path) -> list[str]:
    """The files ``seal`` covers, relative to the run folder, in name order."""
    run_dir = Path(run_dir)
    out = []
    for top in run_dir.iterdir():
        if top.name.startswith(".") or top.name in UNSEALED or top.suffix == ".log":
            continue
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        out += [p.relative_to(run_dir).as_posix() for p in paths if not p.name.startswith(".")]
    return sorted(out)


def seal(run_dir: Path) -> str:
    """COMPLETE's content: ``{"sha256": {relative path: digest}}`` of the run's files (written just before it)."""
    sums = {name: file_sha256(Path(run_dir) / name) for name in sealed_files(run_dir)}
    return json.dumps({"sha256": sums}, indent=1, sort_keys=True) + "\n"


def run_damage(run_dir: Path) -> str | None:
    """One line saying what is damaged in a finished run's folder, or None when it is whole. A folder without
    ``COMPLETE`` is None: unfinished is a status (FAILED, incomplete), not damage."""
    run_dir = Path(run_dir)
    marker = run_dir / COMPLETE
    if not marker.is_file():
        return None
    try:
        text = marker.read_text(encoding="utf-8")
        sums = json.loads(text)["sha256"] if text.strip() else {}
        if not isinstance(sums, dict):
            raise ValueError("sha256 is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        return f"{COMPLETE} is unreadable ({type(err).__name__}); it should list the run's checksums"
    for name, expected in sorted(sums.items()):
        path = run_dir / name
        if not path.is_file():
            return f"{name} is missing (listed in {COMPLETE})"
        if file_sha256(path) != expected:
            return f"{name} does not match its checksum in {COMPLETE}: altered or truncated after the run completed"
    if METRICS not in sums and not (run_dir / METRICS).is_file():
        return f"{METRICS} is missing"
    for name in sealed_files(run_dir):
        if name not in sums:  # a file written after the seal, or a run from before checksums: is it whole?
            reason = _unreadable(run_dir / name)
            if reason:
                return f"{name} {reason}"
    return _metrics_unusable(run_dir / METRICS)


def _unreadable(path: Path) -> str | None:
    try:
        if path.suffix == ".safetensors":
            load_tensors(path)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                for key in arrays.files:
                    arrays[key]
    except LoRAError as err:
        text = str(err)
        return "is damaged (" + (text[text.find("(") + 1 : text.find(")")] if "(" in text else text) + ")"
    except Exception as err:  # json, zipfile, numpy and OS errors alike: the file cannot be read back
        return f"is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})".replace(": )", ")")
    return None


def _metrics_unusable(path: Path) -> str | None:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        metrics["best"], metrics["run"]  # noqa: B018 - what every reader of a run takes from it
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        return f"{METRICS} is unreadable ({type(err).__name__})"
    return None

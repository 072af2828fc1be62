"""GLUE splits: read from a local folder or the hub, tokenized once per (task, tokenizer, max length, subset), batched
with dynamic padding.

Local layout (that of ../shared/glue): ``<dir>/<task>/<split>.parquet`` with the hub's columns (``nyu-mll/glue``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from experiments.errors import ConfigError
from experiments.store import atomic_path

CACHE_FORMAT = 1
log = logging.getLogger(__name__)


class DataError(ConfigError):
    """The data a run asks for is not there; the message says where it looked and how to point elsewhere."""


def read_glue(task: DictConfig, data_dir: str | None, hub: str) -> tuple[dict[str, pd.DataFrame], str]:
    """The task's train and eval splits as DataFrames, and where they came from (a folder or ``hub:<id>``).

    A local folder is used when ``data_dir`` holds ``<task>/``; otherwise the hub dataset ``hub``, which fails offline.
    """
    splits = [task.train_split, *task.eval_splits]
    folder = Path(data_dir) / task.name if data_dir else None
    if folder is not None and folder.is_dir():
        missing = [s for s in splits if not (folder / f"{s}.parquet").is_file()]
        if missing:
            raise DataError(
                f"{folder} lacks {', '.join(f'{s}.parquet' for s in missing)}; expected "
                f"{', '.join(f'{s}.parquet' for s in splits)} (the layout of ../shared/glue)"
            )
        frames = {s: pd.read_parquet(folder / f"{s}.parquet") for s in splits}
        source = str(folder.resolve())
    else:
        frames, source = _read_hub(task, data_dir, hub, splits), f"hub:{hub}"
    columns = [*task.text_columns, "label"]
    for split, frame in frames.items():
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DataError(f"{task.name} {split} split from {source} has no column(s) {absent}; has {list(frame.columns)}")
        _check_labels(task, split, source, frame["label"])
    return frames, source


def _check_labels(task: DictConfig, split: str, source: str, labels: pd.Series) -> None:
    """Classes 0 … num_labels − 1 (GLUE's test splits' −1, "no label", is not trained or evaluated on); finite scores."""
    values = labels.to_numpy()
    if task.num_labels == 1:
        bad = ~np.isfinite(values.astype(float))
        accepted = "finite similarity scores"
    else:
        bad = (values < 0) | (values >= task.num_labels) | (values != np.round(values))
        accepted = f"classes 0..{task.num_labels - 1}"
    if bad.any():
        raise DataError(f"{task.name} {split} split from {source} has {int(bad.sum())} label(s) outside {accepted}, "
                        f"e.g. {values[bad][0]!r}; fix the data or the task's num_labels")


def _read_hub(task: DictConfig, data_dir: str | None, hub: str, splits: list[str]) -> dict[str, pd.DataFrame]:
    import datasets

    where = f"no {task.name}/ folder in execution.data_dir={data_dir}" if data_dir else "execution.data_dir is unset"
    try:
        loaded = datasets.load_dataset(hub, task.name)
        return {s: loaded[s].to_pandas() for s in splits}
    except Exception as err:  # offline, unknown config, no network: all the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"no data for task {task.name!r}: {where}, and the hub dataset {hub} could not be loaded ({reason}); "
            f"point execution.data_dir=... or GLUE_DIR at a folder with {task.name}/{{{','.join(splits)}}}.parquet"
        ) from None


def subset(n: int, k: int | None, seed: int) -> np.ndarray:
    """Indices of k of n examples, chosen by seed, in their original order; all n when k is None or ≥ n."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


SELECTION = "selection"  # the split the reported epoch is chosen on (train.select_on=selection), held out of training
SELECTION_SUFFIX = "_selection"  # its metrics' suffix in metrics.json: accuracy_selection, eval_loss_selection, ...


def selection_metric(cfg: DictConfig) -> str:
    """The metrics.json key the reported epoch (``best``) and a learning-rate search are chosen by: the task's metric
    on the dev set (``train.select_on=dev``), or on the selection slice (``selection``: e.g. ``accuracy_selection``)."""
    return cfg.task.metric + (SELECTION_SUFFIX if cfg.train.select_on == "selection" else "")


def selection_slice(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training positions, selection positions) of a training subset of n examples: k of them, chosen by ``seed``
    from a stream of their own (not the subset's), held out and never trained on; both in their original order."""
    if k >= n:
        raise DataError(f"data.selection_examples={k} leaves nothing to train on: the training subset has {n} examples "
                        f"(train.max_train_samples); accepted: 0 <= data.selection_examples < {n}")
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 1]).permutation(n)[:k]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


@dataclass
class TokenizedSplit(Dataset):
    """Variable-length token sequences stored flat: example i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray
    type_ids: np.ndarray | None
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        item = {"input_ids": self.ids[lo:hi], "labels": self.labels[i]}
        if self.type_ids is not None:
            item["token_type_ids"] = self.type_ids[lo:hi]
        return item

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}ids": self.ids, f"{prefix}offsets": self.offsets, f"{prefix}labels": self.labels}
        if self.type_ids is not None:
            out[f"{prefix}type_ids"] = self.type_ids
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "TokenizedSplit":
        type_key = f"{prefix}type_ids"
        return cls(
            ids=arrays[f"{prefix}ids"],
            type_ids=arrays[type_key] if type_key in arrays else None,
            offsets=arrays[f"{prefix}offsets"],
            labels=arrays[f"{prefix}labels"],
        )


def tokenize(frame: pd.DataFrame, columns: list[str], tokenizer, max_length: int, regression: bool) -> TokenizedSplit:
    texts = [frame[c].fillna("").astype(str).tolist() for c in columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    ids = encoded["input_ids"]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = lambda seqs, dtype: np.fromiter((t for s in seqs for t in s), dtype=dtype, count=int(offsets[-1]))
    return TokenizedSplit(
        ids=flat(ids, np.int32),
        type_ids=flat(encoded["token_type_ids"], np.int8) if "token_type_ids" in encoded else None,
        offsets=offsets,
        labels=frame["label"].to_numpy(np.float32 if regression else np.int64),
    )


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    return f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{hashlib.sha1(vocab).hexdigest()[:16]}"


def _source_fingerprint(frames_source: str, splits: list[str]) -> str:
    if frames_source.startswith("hub:"):
        return frames_source
    stats = [(s, os.stat(Path(frames_source) / f"{s}.parquet")) for s in splits]
    return json.dumps([frames_source] + [(s, st.st_size, st.st_mtime_ns) for s, st in stats])


def load_tokenized(cfg: DictConfig, tokenizer) -> tuple[dict[str, TokenizedSplit], str]:
    """The run's splits, tokenized: from ``execution.cache_dir`` when this (task, tokenizer, max length, subset) was
    seen. With ``data.shuffle_labels`` the training labels are permuted (a fixed permutation: ``data.subset_seed``).
    With ``data.selection_examples`` = k > 0 a split ``SELECTION`` of k examples is taken out of the training subset
    (``selection_slice``), keeps its true labels, and the training split is the rest."""
    task, data, train = cfg.task, cfg.data, cfg.train
    held_out = int(data.get("selection_examples") or 0)
    read = [task.train_split, *task.eval_splits]
    splits = read + ([SELECTION] if held_out else [])
    frames, source = read_glue(task, cfg.execution.data_dir, data.hub)
    fields = {
        "format": CACHE_FORMAT,
        "task": task.name,
        "columns": list(task.text_columns),
        "source": _source_fingerprint(source, read),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": train.max_length,
        "max_train_samples": train.max_train_samples,
        "max_eval_samples": train.max_eval_samples,
        "subset_seed": data.subset_seed,
    }
    if held_out:  # only then, so the files cached before the key existed are still found
        fields["selection_examples"] = held_out
    key = json.dumps(fields, sort_keys=True)
    path = Path(cfg.execution.cache_dir) / f"{task.name}-{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"
    cached = _read_cache(path, splits)
    if cached is not None:
        return _shuffled(cfg, cached), source

    regression = task.num_labels == 1
    out = {}
    for split in read:
        limit = train.max_train_samples if split == task.train_split else train.max_eval_samples
        frame = frames[split].iloc[subset(len(frames[split]), limit, data.subset_seed)]
        if split == task.train_split and held_out:
            kept, selection = selection_slice(len(frame), held_out, data.subset_seed)
            out[SELECTION] = tokenize(frame.iloc[selection], list(task.text_columns), tokenizer, train.max_length,
                                      regression)
            frame = frame.iloc[kept]
        out[split] = tokenize(frame, list(task.text_columns), tokenizer, train.max_length, regression)
    # Parallel jobs may both get here; each renames a complete file of the same bytes into place.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: v for s in splits for k, v in out[s].arrays(f"{s}/").items()})
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(key)  # what the hashed name stands for
    return _shuffled(cfg, out), source


def _read_cache(path: Path, splits: list[str]) -> dict[str, TokenizedSplit] | None:
    """A cache entry's splits, or None when there is none; a damaged entry (truncated, foreign, holding pickled
    objects, inconsistent offsets) is never trusted: one warning line, and the caller tokenizes again and replaces it.
    Read without pickle: a cache folder may be shared."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            out = {s: TokenizedSplit.from_arrays({k: arrays[k] for k in arrays.files}, f"{s}/") for s in splits}
        for split, data in out.items():
            offsets = data.offsets
            if offsets.ndim != 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != len(data.ids) \
                    or len(data.labels) != len(offsets) - 1 \
                    or (data.type_ids is not None and len(data.type_ids) != len(data.ids)):
                raise ValueError(f"the {split} split's offsets, tokens and labels disagree")
    except Exception as err:  # zipfile, numpy, OS and key errors alike: the entry cannot be read back as written
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("tokenized cache entry %s is damaged (%s: %s); tokenizing again", path, type(err).__name__, reason)
        return None
    return out


def _shuffled(cfg: DictConfig, splits: dict[str, TokenizedSplit]) -> dict[str, TokenizedSplit]:
    """The training labels permuted when ``data.shuffle_labels``: the same sentences and label counts, no signal."""
    if not cfg.data.shuffle_labels:
        return splits
    train = splits[cfg.task.train_split]
    labels = train.labels[np.random.default_rng(cfg.data.subset_seed).permutation(len(train.labels))]
    return {**splits, cfg.task.train_split: TokenizedSplit(train.ids, train.type_ids, train.offsets, labels)}


IGNORE = -100  # the label torch's cross-entropy skips: a causal LM's prompt tokens and padding


class PadCollator:
    """Pads a batch to its longest sequence (dynamic padding), not to the max length. Labels are one per example
    (classification, stacked) or one per token (a causal LM's, padded with ``IGNORE``: padding is not learned)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        fills = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE}
        per_token = [k for k in fills if k in items[0] and (k != "labels" or np.ndim(items[0]["labels"]) == 1)]
        batch = {k: torch.full((len(items), width), fills[k], dtype=torch.long) for k in per_token + ["attention_mask"]}
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["attention_mask"][row, :n] = 1
            for key in per_token:
                batch[key][row, :n] = torch.from_numpy(item[key].astype(np.int64))
        if "labels" not in batch:
            batch["labels"] = torch.as_tensor(np.stack([item["labels"] for item in items]))
        return batch


class LengthGroupedBatches:
    """Random batches of similar length, so dynamic padding pads little (HF's ``group_by_length``).

    Each epoch: shuffle, cut into mega-batches of ``group`` batches, sort each by length, cut into batches, shuffle
    the batches. Every example is seen once an epoch, in an order fixed by the generator's seed.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, generator: torch.Generator, group: int = 50) -> None:
        self.lengths, self.batch_size, self.generator, self.group = lengths, batch_size, generator, group

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        span = self.group * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def train_loader(split: Dataset, batch_size: int, pad_id: int, seed: int, group_by_length: bool) -> DataLoader:
    """Shuffled by a generator seeded from the run's seed, so the order is the seed's and nothing else's. ``split``
    has ``lengths()`` (``TokenizedSplit``, a causal LM's ``LMSplit``)."""
    generator = torch.Generator().manual_seed(seed)
    collate = PadCollator(pad_id)
    if group_by_length:
        batches = LengthGroupedBatches(split.lengths(), batch_size, generator)
        return DataLoader(split, batch_sampler=batches, collate_fn=collate)
    return DataLoader(split, batch_size, shuffle=True, generator=generator, collate_fn=collate)


def eval_loader(split: TokenizedSplit, batch_size: int, pad_id: int) -> DataLoader:
    """Batches of similar length (sorted), which pads far less; metrics do not depend on the order."""
    order = np.argsort(split.lengths(), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return DataLoader(split, batch_sampler=batches, collate_fn=PadCollator(pad_id))

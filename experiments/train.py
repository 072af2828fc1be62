"""One run: fine-tune a pretrained encoder on a GLUE task (LoRA, full fine-tuning, or the head alone), evaluate
every epoch.

``train(cfg)`` reads top to bottom and knows nothing of Hydra's launcher or the run folder's markers: the sweep entry
(experiments/job.py) calls it, and tests call it directly.
"""

from __future__ import annotations

import logging
import math
import platform
import random
import resource
import sys
import time
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from tqdm.auto import tqdm

import lorakit
from experiments.config import ConfigError, lora_config, run_info, validate
from experiments.data import eval_loader, load_tokenized, train_loader
from experiments.metrics import glue_metrics
from experiments.models import load_model, load_tokenizer, resolve_model_path, untrained_pooler
from experiments.store import ADAPTER, DELTAS, atomic_path, find_init_adapter
from experiments.tracking import NullLogger
from lorakit.inject import matches_any_prefix


log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run diverged."""


def train(cfg: DictConfig, out_dir: Path | None = None, logger: NullLogger | None = None, name: str = "default") -> dict:
    """Fine-tune, evaluate after every epoch, and return the run's metrics (the metrics.json of docs/CONTRACTS.md).

    With ``out_dir`` (and ``save: true``) the adapter (LoRA) or ΔW of every encoder linear layer (full) is written
    there. ``logger`` receives per-step loss and learning rate, per-epoch metrics and a summary.
    """
    validate(cfg)
    logger = logger or NullLogger()
    started = time.perf_counter()
    task, hp, method = cfg.task, cfg.train, cfg.method.name
    lora = method == "lora"
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=auto or device=cpu")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    # bf16 autocast on a GPU (weights and optimizer stay fp32); fp32 throughout on a CPU.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Data: tokenized once per (task, tokenizer, max length, subset) and cached; batches padded to their longest.
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    splits, data_source = load_tokenized(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_batches = train_loader(splits[task.train_split], hp.batch_size, pad_id, cfg.seed, hp.group_by_length)
    eval_batches = {split: eval_loader(splits[split], 2 * hp.batch_size, pad_id) for split in task.eval_splits}

    # Model: the seed fixes the new head's and the adapters' initial values.
    seed_everything(cfg.seed)
    model = load_model(model_path, task.num_labels)
    pooler = untrained_pooler(model)
    if method != "full" and pooler and not matches_any_prefix(f"{pooler}.dense", cfg.model.head):
        log.warning("%s: the checkpoint's pooler (%s) looks untrained (bias all 0) and model.head=%s leaves it frozen; "
                    "the classifier reads it: add it, e.g. model.head=[pooler,classifier]", name, pooler,
                    list(cfg.model.head))  # fmt: skip
    init_adapter = None
    if lora:
        adapted = lorakit.inject_lora(model, lora_config(cfg))
        init_adapter = find_init_adapter(cfg.init_from, cfg.seed)
        if init_adapter is not None:  # the factors only: the head is new (another task, maybe another label count)
            lorakit.load_adapter(model, init_adapter, head=False)
            log.info("%s: LoRA factors initialised from %s", name, init_adapter)
    elif method == "head":  # the encoder frozen, only model.head trains: nothing adapted, no weights to keep
        adapted = []
        lorakit.freeze_except(model, cfg.model.head)
        if not any(p.requires_grad for p in model.parameters()):
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"model.head={list(cfg.model.head)} matches no module of the model; give module names "
                              f"or suffixes of {children} (e.g. classifier, pooler)")
    else:
        # ΔW of the encoder's attention and MLP layers: the task head and the pooler are not part of the analyses.
        adapted = lorakit.linear_module_names(model, head=(*cfg.model.head, "classifier", "pooler"))
        weights = {f"{n}.weight" for n in adapted}
        initial = {k: w.detach().clone() for k, w in model.state_dict().items() if k in weights}
    model.to(device)
    trainable_params, total_params = lorakit.count_parameters(model)
    # What the method itself trains, the task head left out: the paper's "# Trainable Parameters" (FT: all of them).
    method_params = {"lora": lorakit.count_lora_parameters(model), "head": 0}.get(method, trainable_params)

    # AdamW with linear warm-up then linear decay to 0 (Appendix D).
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.method.lr, weight_decay=hp.weight_decay)
    total_steps = hp.epochs * len(train_batches)
    scheduler = linear_schedule(optimizer, math.ceil(hp.warmup_ratio * total_steps), total_steps)

    show_progress = sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress)
    epochs, loss_curve, window = [], [], []
    step, train_seconds, train_examples = 0, 0.0, 0
    for epoch in range(1, hp.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        bar = tqdm(train_batches, f"{name} epoch {epoch}/{hp.epochs}", disable=not show_progress, leave=False)
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1} (epoch {epoch}); lower the learning rate")
            loss.backward()
            if hp.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # this step's
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_examples += len(batch["labels"])
            window.append(loss.item())
            if step % cfg.log_every == 0 or step == total_steps:
                point = {"step": step, "loss": float(np.mean(window)), "lr": lr}
                loss_curve.append(point)
                logger.log({"train/loss": point["loss"], "train/lr": point["lr"], "epoch": epoch}, step=step)
                bar.set_postfix(loss=f"{point['loss']:.4f}")
                window = []
        bar.close()
        train_seconds += time.perf_counter() - epoch_start

        results = {"epoch": epoch, **evaluate(model, eval_batches, task, device, autocast)}
        epochs.append(results)
        logger.log({**{f"eval/{k}": v for k, v in results.items() if k != "epoch"}, "epoch": epoch}, step=step)
        log.info("%s epoch %d: %s", name, epoch, ", ".join(f"{k}={v:.4f}" for k, v in results.items() if k != "epoch"))

    if out_dir is not None and cfg.save and method != "head":
        if lora:
            with atomic_path(Path(out_dir) / ADAPTER, is_dir=True) as tmp:
                lorakit.save_adapter(model, tmp, base_model_name_or_path=model_path)
        else:
            deltas = lorakit.weight_deltas(initial, model.state_dict(), adapted)
            with atomic_path(Path(out_dir) / DELTAS) as tmp:
                save_file({k: v.detach().float().cpu().contiguous() for k, v in deltas.items()}, str(tmp))

    best = max(epochs, key=lambda e: e[task.metric])  # the first epoch among equals
    metrics = {
        "run": run_info(cfg, name, model_path),
        "metric": task.metric,
        "epochs": epochs,
        "best": best,
        "last": epochs[-1],
        "loss_curve": loss_curve,
        "trainable_params": trainable_params,
        "method_params": method_params,
        "total_params": total_params,
        "adapted_modules": list(adapted),
        "init_from": str(init_adapter) if init_adapter else None,
        "wall_time_s": time.perf_counter() - started,
        "train_examples_per_s": train_examples / train_seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "seed": int(cfg.seed),
        "data": {"source": data_source, **{f"{s}_examples": len(splits[s]) for s in splits}},
        "versions": _versions(),
    }
    logger.summary({f"best/{k}": v for k, v in best.items()} | {"trainable_params": trainable_params})
    return metrics


@torch.no_grad()
def evaluate(model, loaders: dict, task: DictConfig, device: torch.device, autocast) -> dict[str, float]:
    """Loss and the task's GLUE metrics on every eval split (MNLI's mismatched one with suffix ``_mm``)."""
    model.eval()
    results = {}
    for split, loader in loaders.items():
        suffix = task.eval_splits[split]
        outputs, labels, loss_sum = [], [], 0.0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                out = model(**batch)
            loss_sum += out.loss.item() * len(batch["labels"])
            outputs.append(out.logits.float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
        outputs, labels = np.concatenate(outputs), np.concatenate(labels)
        results[f"eval_loss{suffix}"] = loss_sum / len(labels)
        results.update(glue_metrics(task.metrics, outputs, labels, suffix=suffix))
    return results


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr · s / warm-up for the first steps, then decaying linearly to 0 at the last step (HF's linear schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device, CUDA included


def _peak_memory_mb(device: torch.device) -> float:
    """GPU: torch's peak allocation; CPU: the process's peak resident set (includes earlier runs of the process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "lorakit", "datasets", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}

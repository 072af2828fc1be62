"""One run: fine-tune a pretrained model on a task with one method, evaluate every epoch, then probe the result.

``train(cfg)`` reads top to bottom and never asks which method or task family it runs: the method
(experiments/methods/) prepares the model, names its optimizer groups, counts its parameters, gives ΔW and saves its
files; the family (experiments/families/: GLUE classification, causal-LM generation) loads the model and the data and
evaluates each epoch. It knows nothing of Hydra's
launcher or the run folder's markers: the sweep entry (experiments/job.py) calls it, and tests call it directly.
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
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import lorakit
from lorakit.files import save_tensors
from experiments import checkpoint, disk, distributed, families, preemption, probes, records
from experiments.data import selection_metric
from experiments.errors import ConfigError
from experiments.identity import identity as run_identity
from experiments.schema import check_config as validate
from experiments.methods import get_method
from experiments.models import resolve_model_path, untrained_pooler
from experiments.store import DELTAS
from experiments.monitor import SpectralMonitor
from experiments.tracking import NullLogger, run_summary

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30  # without a progress bar (a log file, a batch job): one progress line this often


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run diverged."""


class Diverged(RuntimeError):
    """The training loss or an eval loss grew past ``train.divergence_factor`` times its first value."""


def train(cfg: DictConfig, out_dir: Path | None = None, logger: NullLogger | None = None, name: str = "default",
          checkpoints: Path | None = None, stop: preemption.Watch | None = None) -> dict:
    """Fine-tune, evaluate after every epoch, probe, and return the run's metrics (metrics.json, docs/CONTRACTS.md).

    With ``out_dir`` (and ``save: true``) the method's files and ΔW are written there. ``logger`` receives per-step
    loss and learning rate, per-epoch metrics and a summary. With ``checkpoints`` (a folder) the training state is
    saved there every ``execution.checkpoint_every`` steps, and a state found there is resumed from
    (experiments/checkpoint.py). With ``stop`` (experiments/preemption.py) a preemption signal ends the run at the
    next step, checkpointed there.
    """
    validate(cfg)
    method = get_method(cfg.method.name)
    logger = logger or NullLogger()
    started = time.perf_counter()
    task, hp, execution = cfg.task, cfg.train, cfg.execution
    device, autocast = _device(execution)
    distributed.check_batch(hp.batch_size)

    # Data: the task's family reads, tokenizes and batches it (padded to each batch's longest) and evaluates epochs.
    family = families.for_run(cfg)
    model_path = resolve_model_path(cfg.model)
    tokenizer = family.load_tokenizer(cfg, model_path)
    data = family.data(cfg, tokenizer)
    train_batches, evaluation = data.train, data.evaluation

    # Model: the seed fixes the new head's and the method's initial values. The forgetting probe's "before" is read
    # from the pretrained encoder, ahead of any change the method makes.
    seed_everything(cfg.seed)
    model = family.load_model(cfg, model_path)
    skill = probes.SentenceSkill.for_run(cfg, tokenizer, model_path)
    overhead: dict[str, float] = {}  # metrics.json: seconds beyond the training steps and evaluations, by what
    with probes.timed(overhead, "probe_forgetting_before"):  # cached: once per model, probe and data
        before = skill.before(model, device, model_path, execution.cache_dir) if skill else None
    adapted = method.prepare(model, cfg)
    _warn_if_untrained_pooler_is_frozen(model, cfg, name)
    model.to(device)
    trained = distributed.wrap(model, device)  # what the loop calls: DDP's wrapper over several processes
    trainable_params, total_params = lorakit.count_parameters(model)
    method_params = method.method_params(model, cfg)

    # AdamW with linear warm-up then linear decay to 0 (Appendix D); the method's groups (LoRA+: B at λ·lr).
    groups = method.parameter_groups(model, cfg)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
    total_steps = hp.epochs * len(train_batches)
    scheduler = linear_schedule(optimizer, math.ceil(hp.warmup_ratio * total_steps), total_steps)

    show_progress = sys.stderr.isatty() if execution.progress == "auto" else bool(execution.progress)
    progress = {"epoch": 1, "batches_done": 0, "step": 0, "epochs": [], "loss_curve": [], "window": [],
                "train_seconds": 0.0, "train_examples": 0}
    generator = _generator(train_batches)
    identity = run_identity(OmegaConf.to_container(cfg, resolve=True))
    resumed = checkpoint.load(checkpoints, identity, model, name, distributed.is_main()) if checkpoints else None
    if resumed:
        checkpoint.restore(resumed, model, optimizer, scheduler)
        progress = resumed["progress"]
        generator.set_state(resumed["epoch_generator"])
        log.info("%s: resumed from its checkpoint at step %d (epoch %d)", name, progress["step"], progress["epoch"])
    epochs, loss_curve, window = progress["epochs"], progress["loss_curve"], progress["window"]
    # The reported epoch (`best`): the first with the highest metric on the split train.select_on names, the dev set
    # itself or the selection slice held out of training; its predictions are the ones kept.
    select_key = selection_metric(cfg)
    chosen = progress.get("chosen")  # (epoch results, predictions) of the reported epoch so far
    step, train_seconds, train_examples = progress["step"], progress["train_seconds"], progress["train_examples"]
    initial = progress.get("initial_loss")  # the first step's loss, at the initial weights: divergence's reference
    last_line, rng_pending = time.perf_counter(), resumed is not None
    overhead["startup"] = round(last_line - started - overhead["probe_forgetting_before"], 3)
    monitor = SpectralMonitor.for_run(cfg, method, adapted, checkpoints, progress["step"])  # ΔW as it trains
    predictions = None  # the last evaluation's

    def evaluate(epoch: int) -> None:
        """Evaluate on every eval split; record the epoch, keep the reported one's predictions, log both."""
        nonlocal chosen, predictions
        scores, predictions = evaluation(model, device, autocast)
        results = {"epoch": epoch, **scores}
        epochs.append(results)
        _check_evaluation(epochs, hp.divergence_factor, initial)
        if chosen is None or results[select_key] > chosen[0][select_key]:
            chosen = (results, predictions)
        logger.log({**{f"eval/{k}": v for k, v in scores.items()}, "epoch": epoch}, step=step)
        log.info("%s epoch %d: %s", name, epoch, ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    for epoch in range(progress["epoch"], hp.epochs + 1):
        trained.train()
        epoch_start = time.perf_counter()
        epoch_generator = generator.get_state()  # the epoch's data order, before iterating draws it
        skip = progress["batches_done"] if epoch == progress["epoch"] else 0
        bar = tqdm(train_batches, f"{name} epoch {epoch}/{hp.epochs}", disable=not show_progress, leave=False)
        for index, batch in enumerate(bar):
            if index < skip:  # done before the checkpoint; the data order is the same
                continue
            if rng_pending:  # dropout's masks from here on as in the uninterrupted run
                checkpoint.restore_rng(resumed)
                rng_pending = False
            examples = len(batch["labels"])
            batch = distributed.shard(batch)
            if batch is None:  # a final batch too small to share: every process skips it
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = trained(**batch).loss
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1} (epoch {epoch}); lower the learning rate")
            initial = loss.item() if initial is None else initial
            loss.backward()
            if hp.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # this step's, of the first group
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_examples += examples
            window.append(loss.item())
            if step % execution.log_every == 0 or step == total_steps:
                point = {"step": step, "loss": float(np.mean(window)), "lr": lr}
                loss_curve.append(point)
                logger.log({"train/loss": point["loss"], "train/lr": point["lr"], "epoch": epoch}, step=step)
                bar.set_postfix(loss=f"{point['loss']:.4f}")
                window = []
                _check_divergence(loss_curve, hp.divergence_factor, initial)
            stopping = stop is not None and stop.requested is not None  # preempted: checkpoint here, then exit
            periodic = execution.checkpoint_every and step % execution.checkpoint_every == 0
            if checkpoints and (periodic or stopping) and distributed.is_main():
                progress = {"epoch": epoch, "batches_done": index + 1, "step": step, "epochs": epochs,
                            "loss_curve": loss_curve, "window": window, "train_examples": train_examples, "chosen": chosen,
                            "train_seconds": train_seconds + time.perf_counter() - epoch_start, "initial_loss": initial}
                checkpoint.save(checkpoints, model, optimizer, scheduler, progress, epoch_generator, identity)
            if stopping:
                stop.stop(f"{name}: preempted ({preemption.name(stop.requested)}) at step {step} (epoch {epoch}); its "
                          f"checkpoint is in {checkpoints}: rerun the same command to resume from that step")
            if not show_progress and time.perf_counter() - last_line > PROGRESS_SECONDS:
                seconds = train_seconds + time.perf_counter() - epoch_start
                log.info("%s step %d/%d (epoch %d), loss %.4f, %.0f examples/s", name, step, total_steps, epoch,
                         loss.item(), train_examples / seconds)
                last_line = time.perf_counter()
        bar.close()
        if rng_pending:  # the checkpoint was the epoch's last step
            checkpoint.restore_rng(resumed)
            rng_pending = False
        train_seconds += time.perf_counter() - epoch_start

        evaluate(epoch)
        if monitor.due(epoch, hp.epochs) and distributed.is_main():
            monitor.log(monitor.measure(model, epoch, step), logger)
    if hp.epochs == 0:  # zero-shot: the model as the method prepared it (LoRA's B = 0: the pretrained model), once
        evaluate(0)

    # What the analyses read: ΔW against the pretrained W, its rank truncations, and what the model forgot.
    deltas = method.delta_weights(model)
    truncation = None
    if deltas and cfg.probes.truncation is not False:
        up_to = None if cfg.probes.truncation is True else cfg.probes.truncation  # K: only the k ≤ K
        with probes.timed(overhead, "probe_truncation"):
            truncation = probes.truncation(model, deltas, lambda: evaluation(model, device, autocast)[0], up_to)
    with probes.timed(overhead, "probe_forgetting_after"):
        forgetting = skill.forgetting(before, model, device) if skill else None
    monitor.log_final(logger, step, truncation, task.metric)
    saved = disk.kept(deltas, cfg.save_delta) if deltas else {}  # save_delta: which modules, in which dtype
    if out_dir is not None and cfg.save:
        with probes.timed(overhead, "save"):
            method.save(model, Path(out_dir), model_path)
            evaluation.save(chosen[1], Path(out_dir))  # the reported epoch's
            if deltas:  # with its checksum (lorakit_sha256), which experiments/integrity.py verifies
                save_tensors(Path(out_dir) / DELTAS, saved, {"format": "pt"})

    best = chosen[0]
    flags = evaluation.flags(predictions)
    for flag in flags:
        log.warning("%s: %s", name, flag)
    metrics = {
        "run": run_info(cfg, method, name, model_path),
        "metric": task.metric,
        "epochs": epochs,
        "best": best,
        "selected": {"epoch": best["epoch"], "on": hp.select_on, "by": select_key},
        "last": epochs[-1],
        "loss_curve": loss_curve,
        "flags": flags,
        "truncation": truncation,
        "forgetting": forgetting,
        "save_delta": disk.record(deltas, saved, cfg.save_delta) if deltas and cfg.save else None,
        "overhead_s": overhead,
        "spectral_history": monitor.history,
        "trainable_params": trainable_params,
        "method_params": method_params,
        "total_params": total_params,
        "adapted_modules": list(adapted),
        "init_from": str(getattr(method, "init_adapter", None) or "") or None,
        "wall_time_s": time.perf_counter() - started,
        "train_examples_per_s": train_examples / train_seconds if train_seconds else None,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "seed": int(cfg.seed),
        "data": {"source": data.source, **data.counts},
        "versions": _versions(),
    }
    logger.summary(run_summary(metrics))
    return metrics


def run_info(cfg: DictConfig, method, name: str, model_path: str) -> dict:
    """The ``run`` block of metrics.json: what the run is. ``identity`` (its resolved config minus how it executed),
    ``config_id`` (shared by the seeds of one configuration and nothing else), ``label`` and ``label_parts`` (the
    method's name for it) and ``facts`` (what the analyses need to know of the method) describe it, so analyses
    group runs without knowing any method (experiments/identity.py, experiments/records.py); the keys after them are
    the common ones, for people reading the file."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {
        **records.describe_run(resolved, {"facts": method.facts()}),
        "name": name,
        "task": cfg.task.name,
        "method": method.name,
        "model": cfg.model.name,
        "model_path": model_path,
        "seed": int(cfg.seed),
        "shuffle_labels": bool(cfg.data.shuffle_labels),
        "family": families.family_of(cfg.task),
        **method.run_info(cfg),
    }


def _generator(loader) -> torch.Generator:
    """The generator that orders a training loader's batches (experiments/data.py ``train_loader``)."""
    sampler = loader.batch_sampler
    return getattr(sampler, "generator", None) or loader.generator


def _check_divergence(loss_curve: list[dict], factor: float, initial: float) -> None:
    """Diverged when the smoothed training loss L(t) > factor · L₀, L₀ the first step's loss (at the initial weights,
    before any update: a blow-up inside the first logging window counts too)."""
    now = loss_curve[-1]["loss"]
    if now > factor * initial:
        raise Diverged(f"training loss {now:.4g} at step {loss_curve[-1]['step']} is over {factor:g}x its first value "
                       f"{initial:.4g}; lower the learning rate (train.divergence_factor sets the bound)")


def _check_evaluation(epochs: list[dict], factor: float, initial: float | None) -> None:
    """NaN or inf in any eval value is NonFiniteLoss; an eval loss E > factor · L₀ is Diverged, L₀ the loss at the
    initial weights (the first training step's: the same per-example, or per-token, loss). Not E's own first epoch:
    a run that diverged within its first epoch has a huge E(1) already, and a long run's eval loss may rise several
    fold from a small E(1) as it overfits without diverging."""
    results = epochs[-1]
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"{bad[0]} is {results[bad[0]]} after epoch {results['epoch']}; lower the learning rate")
    for key in (k for k in results if k.startswith("eval_loss")):
        reference = initial if initial is not None else epochs[0][key]
        if results[key] > factor * reference:
            raise Diverged(f"{key} {results[key]:.4g} after epoch {results['epoch']} is over {factor:g}x the loss at "
                           f"the initial weights {reference:.4g}; lower the learning rate (train.divergence_factor "
                           f"sets the bound)")


def _device(execution: DictConfig) -> tuple[torch.device, object]:
    """The device and the autocast context: bf16 autocast on a GPU (weights and optimizer stay fp32), fp32 on a CPU."""
    if execution.threads:
        torch.set_num_threads(int(execution.threads))
    if execution.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("execution.device=cuda but torch sees no CUDA device; use execution.device=auto or cpu")
    cuda = execution.device == "cuda" or (execution.device == "auto" and torch.cuda.is_available())
    device = distributed.device(torch.device("cuda" if cuda else "cpu"))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return device, torch.autocast("cuda", dtype=torch.bfloat16)
    return device, nullcontext()


def _warn_if_untrained_pooler_is_frozen(model, cfg: DictConfig, name: str) -> None:
    pooler = untrained_pooler(model)
    if pooler and not model.get_submodule(f"{pooler}.dense").weight.requires_grad:
        log.warning("%s: the checkpoint's pooler (%s) looks untrained (bias all 0) and model.head=%s leaves it frozen; "
                    "the classifier reads it: add it, e.g. model.head=[pooler,classifier]", name, pooler,
                    list(cfg.model.head))  # fmt: skip


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

"""One job of a sweep: skip it if its results exist, else train, record the outcome, and never raise.

A job that raises (bad input, a NaN loss, anything) is written down as FAILED and returns; the launcher goes on with
the others. A disk or memory that ran out is one line naming what and where (experiments/faults.py). Its W&B run is
closed either way, so the next job in the same process logs into a run of its own. A complete run is never deleted
before its replacement is: a rerun with another config, or of a run whose files no longer match their checksums
(experiments/integrity.py), sets it aside first. A preemption signal ends the job at the next step with a
checkpoint (experiments/preemption.py): neither FAILED nor COMPLETE, it resumes on the rerun.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import checkpoint, distributed, faults, integrity, preemption, store
from experiments.config import identity, launcher_threads, same_identity
from experiments.quiet import quiet_start
from experiments.data import selection_metric
from experiments.tracking import NullLogger, make_logger, sweep_group
from experiments.train import train

log = logging.getLogger(__name__)


def run_hydra_job(cfg: DictConfig) -> float:
    """The Hydra task: run folder, name and W&B group from Hydra's runtime; threads from the launcher. Returns the
    run's metric at its reported epoch on the split the epoch is chosen on (``train.select_on``: dev, or the selection
    slice held out of training), the value a sweeper that optimises (``hydra/sweeper=optuna``) maximises, so a
    search chooses on the same split; NaN when it failed."""
    from hydra.core.hydra_config import HydraConfig

    quiet_start()  # a launcher's worker process (joblib, submitit) starts here, not in experiments/sweep.py
    hydra = HydraConfig.get()
    sweep_dir, run_dir = Path(hydra.sweep.dir), Path(hydra.runtime.output_dir)
    if cfg.execution.threads is None:
        with open_dict(cfg):
            cfg.execution.threads = launcher_threads(hydra.launcher)
    status = run_job(
        cfg,
        run_dir=run_dir,
        name=run_dir.name,  # the overrides, as conf/sweep.yaml's hydra.sweep.subdir names the folder
        group=sweep_group(sweep_dir),
    )
    return float(status["best"][selection_metric(cfg)]) if status["status"] == "complete" else math.nan


def run_job(cfg: DictConfig, run_dir: Path, name: str, group: str) -> dict:
    """Train into ``run_dir`` unless a complete run of the same config is there; return a status dict."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if distributed.active():  # one run on several processes: process 0 keeps the folder, the others only train
        return _run_shared(cfg, resolved, run_dir, name, group)
    with store.run_lock(run_dir):  # a parallel job with the same folder (a duplicate full fine-tune) waits, then skips
        return _run_locked(cfg, resolved, run_dir, name, group)


def _run_shared(cfg: DictConfig, resolved: dict, run_dir: Path, name: str, group: str) -> dict:
    """Under DDP: every process reads the folder's state before process 0 changes anything, so all agree on skipping
    and on resuming; then process 0 runs the usual job and the others train alongside without writing."""
    skip = _same_run_complete(run_dir, resolved) and integrity.run_damage(run_dir) is None  # as process 0 decides
    resume = checkpoint.matches(run_dir / checkpoint.FOLDER, identity(resolved))
    distributed.barrier()
    if distributed.is_main():
        return _run_locked(cfg, resolved, run_dir, name, group)
    if skip:
        return {"name": name, "status": "complete", "skipped": True, "best": {}}
    with preemption.watch() as stop:
        metrics = train(cfg, out_dir=None, name=name, checkpoints=run_dir / checkpoint.FOLDER if resume else None,
                        stop=stop)
    return {"name": name, "status": "complete", "skipped": False, "best": metrics["best"]}


def _same_run_complete(run_dir: Path, resolved: dict) -> bool:
    """Whether ``run_dir`` holds a complete run of the same identity (experiments/config.py): one to skip."""
    return store.is_complete(run_dir) and same_identity(store.stored_config(run_dir) or {}, resolved)


def _run_locked(cfg: DictConfig, resolved: dict, run_dir: Path, name: str, group: str) -> dict:
    damage = integrity.run_damage(run_dir)
    if damage:
        aside = store.set_aside(run_dir, f"damaged: {damage}")
        log.warning("%s: damaged (%s); set aside in %s while it trains again", name, damage, aside.name)
    elif _same_run_complete(run_dir, resolved):
        log.info("%s: complete results exist, skipped", name)
        metrics = json.loads((run_dir / store.METRICS).read_text())
        return {"name": name, "status": "complete", "skipped": True, "best": metrics["best"]}
    if store.is_complete(run_dir):
        aside = store.set_aside(run_dir, "a rerun with another config")
        log.warning("%s: stored results were made with another config; set aside in %s while it trains again",
                    name, aside.name)
    checkpoints = run_dir / checkpoint.FOLDER
    if checkpoints.is_dir() and not checkpoint.matches(checkpoints, identity(resolved)):
        log.warning("%s: its checkpoint was made with another config; starting from step 0", name)
        store.remove(checkpoints)
    store.clear_run(run_dir)

    logger, exit_code = NullLogger(), 1
    try:
        store.write_config(run_dir, cfg)
        checkpoints.mkdir(exist_ok=True)
        checkpoint.write_identity(checkpoints, identity(resolved))
        logger = make_logger(cfg.execution.wandb, group, name, resolved, run_dir)
        with preemption.watch() as stop:
            metrics = train(cfg, out_dir=run_dir / store.STAGING, logger=logger, name=name, checkpoints=checkpoints,
                            stop=stop)
        store.publish(run_dir, metrics, seal=integrity.seal)
        store.remove(checkpoints)
        store.drop_superseded(run_dir)
        exit_code = 0
        return {"name": name, "status": "complete", "skipped": False, "best": metrics["best"]}
    except Exception as err:
        err = faults.wrapped(err, run_dir)
        try:
            error = store.mark_failed(run_dir, err)["error"]
        except OSError as unwritten:  # the disk that failed the run refuses FAILED too: the log keeps the line
            error = f"{type(err).__name__}: {err}"
            log.error("%s: FAILED could not be written (%s)", name, faults.describe(unwritten, run_dir) or unwritten)
        log.error("%s: FAILED: %s", name, error)
        return {"name": name, "status": "failed", "error": error}
    finally:
        logger.finish(exit_code=exit_code)

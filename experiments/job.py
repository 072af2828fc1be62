"""One job of a sweep: skip it if its results exist, else train, record the outcome, and never raise.

A job that raises (bad input, a NaN loss, anything) is written down as FAILED and returns; the launcher goes on with
the others. Its W&B run is closed either way, so the next job in the same process logs into a run of its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import store
from experiments.config import LORA_KEYS, launcher_threads
from experiments.tracking import NullLogger, make_logger
from experiments.train import train

log = logging.getLogger(__name__)

# Keys that change how a run is executed or logged, not its results: a stored run matches without them.
EXECUTION_KEYS = ("threads", "progress", "wandb")


def run_hydra_job(cfg: DictConfig) -> dict:
    """The Hydra task: run folder, name and W&B group from Hydra's runtime; threads from the launcher."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    sweep_dir, run_dir = Path(hydra.sweep.dir), Path(hydra.runtime.output_dir)
    if cfg.threads is None:
        with open_dict(cfg):
            cfg.threads = launcher_threads(hydra.launcher)
    return run_job(
        cfg,
        run_dir=run_dir,
        name=run_dir.name,  # the overrides, as conf/sweep.yaml's hydra.sweep.subdir names the folder
        group=f"{sweep_dir.parent.name}/{sweep_dir.name}",
    )


def run_job(cfg: DictConfig, run_dir: Path, name: str, group: str) -> dict:
    """Train into ``run_dir`` unless a complete run of the same config is there; return a status dict."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with store.run_lock(run_dir):  # a parallel job with the same folder (a duplicate full fine-tune) waits, then skips
        return _run_locked(cfg, resolved, run_dir, name, group)


def _run_locked(cfg: DictConfig, resolved: dict, run_dir: Path, name: str, group: str) -> dict:
    if store.is_complete(run_dir):
        if _results_config(store.stored_config(run_dir)) == _results_config(resolved):
            log.info("%s: complete results exist, skipped", name)
            metrics = json.loads((run_dir / store.METRICS).read_text())
            return {"name": name, "status": "complete", "skipped": True, "best": metrics["best"]}
        log.warning("%s: stored results were made with another config; training again", name)
    store.clear_run(run_dir)
    store.write_config(run_dir, cfg)

    logger, exit_code = NullLogger(), 1
    try:
        logger = make_logger(cfg.wandb, group, name, resolved, run_dir)
        metrics = train(cfg, out_dir=run_dir, logger=logger, name=name)
        store.mark_complete(run_dir, metrics)
        exit_code = 0
        return {"name": name, "status": "complete", "skipped": False, "best": metrics["best"]}
    except Exception as err:
        record = store.mark_failed(run_dir, err)
        log.error("%s: FAILED: %s", name, record["error"])
        return {"name": name, "status": "failed", "error": record["error"]}
    finally:
        logger.finish(exit_code=exit_code)


def _results_config(config: dict | None) -> dict | None:
    """What a run's results depend on: the config without execution keys (and LoRA keys unless the method is LoRA)."""
    if config is None:
        return None
    ignored = EXECUTION_KEYS + (LORA_KEYS if config.get("method", {}).get("name") != "lora" else ())
    kept = {k: v for k, v in config.items() if k not in ignored}
    kept["data"] = {k: v for k, v in config.get("data", {}).items() if k != "cache_dir"}
    return kept

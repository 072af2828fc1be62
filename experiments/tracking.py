"""Run loggers: what ``train()`` reports to, kept apart from its maths. W&B is one; tests use NullLogger.

A W&B run says what it is where W&B's run table, grouping and parallel coordinates look: the method, task, model,
seed, ``config_id`` (shared by the seeds of one configuration), the learning rate and the method's own keys (rank,
alpha, targets, ...) at the top level of its config (``run_config``), the reported epoch's metrics at the top of its
summary (``run_summary``). Per-epoch ``eval/*`` and the run monitor's ``delta/*`` and ``spectral/*`` (experiments/
monitor.py) are plotted against ``epoch``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class NullLogger:
    """Logs nothing; the interface train() uses."""

    def log(self, values: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def table(self, key: str, columns: list[str], rows: list[list], step: int,
              lines: dict[str, tuple[str, str, str | None, str]] | None = None) -> None:
        """A table under ``key`` and, per entry of ``lines`` (plot key → (x, y, stroke column or None, title)), a line
        plot of it."""

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run: project, group = the sweep, name = the overrides, config = the resolved job config.

    ``reinit="finish_previous"``: a run left open by an earlier job in this process is closed, never logged into.
    """

    def __init__(self, mode: str, project: str, entity: str | None, group: str, name: str, config: dict, run_dir: Path):
        import wandb

        # Quiet unless asked (WANDB_SILENT=false): W&B prints ~26 lines a run, which bury the training log.
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            mode=mode,
            project=project,
            entity=entity,
            group=group,
            name=name,
            config=config,
            dir=str(run_dir),
            reinit="finish_previous",
        )
        for prefix in ("eval", "delta", "spectral"):
            self.run.define_metric(f"{prefix}/*", step_metric="epoch")

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def table(self, key: str, columns: list[str], rows: list[list], step: int,
              lines: dict[str, tuple[str, str, str | None, str]] | None = None) -> None:
        import wandb

        table = wandb.Table(columns=columns, data=rows)
        plots = {name: wandb.plot.line(table, x, y, stroke=stroke, title=title)
                 for name, (x, y, stroke, title) in (lines or {}).items()}
        self.run.log({key: table, **plots}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def make_logger(wandb_cfg, group: str, name: str, config: dict, run_dir: Path) -> NullLogger:
    """``config``: the run's resolved config (a plain dict); W&B gets it as ``run_config`` lays it out."""
    if wandb_cfg.mode == "disabled":
        return NullLogger()
    return WandbLogger(wandb_cfg.mode, wandb_cfg.project, wandb_cfg.entity, group, name, run_config(config), run_dir)


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group of a sweep's runs, '<date>/<time>-<id>' (its folder and the one above it): what an analysis of
    the sweep (analysis/dashboard.py) joins."""
    return f"{Path(sweep_dir).parent.name}/{Path(sweep_dir).name}"


def run_config(resolved: dict) -> dict:
    """The W&B config of a run: what it is at the top level (method, task, model, seed, config_id, lr and the method's
    own keys as metrics.json's ``run`` block has them: ``targets`` one string, absent for a method that does not read
    it), the whole resolved config under ``config``."""
    from omegaconf import OmegaConf

    from experiments.identity import config_id
    from experiments.methods import get_method

    method = get_method(resolved["method"]["name"])
    return {"method": method.name, "task": resolved["task"]["name"], "model": resolved["model"]["name"],
            "seed": resolved["seed"], "config_id": config_id(resolved), "lr": resolved["method"]["lr"],
            **method.run_info(OmegaConf.create(resolved)), "config": resolved}


def run_summary(metrics: dict) -> dict:
    """The W&B summary of a finished run (metrics.json, docs/CONTRACTS.md): ``best_metric`` (the task's primary
    metric at the reported epoch: one column every run has, whatever its task), ``best/<metric>`` and
    ``last/<metric>`` for each, and the run's size and cost."""
    best, last = metrics["best"], metrics["last"]
    forgetting = metrics.get("forgetting") or {}
    return {"best_metric": best[metrics["metric"]], "metric": metrics["metric"], "best_epoch": best["epoch"],
            **{f"best/{k}": v for k, v in best.items() if k != "epoch"},
            **{f"last/{k}": v for k, v in last.items() if k != "epoch"},
            "forgetting": forgetting.get("value"), "trainable_params": metrics["trainable_params"],
            "method_params": metrics["method_params"], "wall_time_s": metrics["wall_time_s"],
            "train_examples_per_s": metrics["train_examples_per_s"], "flags": metrics["flags"]}

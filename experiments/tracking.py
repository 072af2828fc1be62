"""Run loggers: what ``train()`` reports to, kept apart from its maths. W&B is one; tests use NullLogger."""

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
        self.run.define_metric("eval/*", step_metric="epoch")

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def make_logger(wandb_cfg, group: str, name: str, config: dict, run_dir: Path) -> NullLogger:
    if wandb_cfg.mode == "disabled":
        return NullLogger()
    return WandbLogger(wandb_cfg.mode, wandb_cfg.project, wandb_cfg.entity, group, name, config, run_dir)

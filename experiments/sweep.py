"""The sweep entry point: ``python -m experiments.sweep rank=4,8,16,64`` (conf/sweep.yaml; always a multirun).

Each job trains one run into ``multirun/<date>/<time>-<id>/<overrides>/``; afterwards runs.csv and runs.parquet
list every run of the sweep. Re-run into the same folder (``hydra.sweep.dir=...``) to finish a sweep: complete runs
are skipped, failed and half-written ones trained again. Exit status 1 when a run failed.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from experiments import distributed
from experiments.callbacks import SweepCallback
from experiments.config import moved_keys, register_resolvers
from experiments.errors import ConfigError
from experiments.search import register_optuna_schema
from experiments.job import run_hydra_job

register_resolvers()  # before @hydra.main composes conf/sweep.yaml, which uses them
register_optuna_schema()  # conf/hydra/sweeper/optuna.yaml extends the plugin's schema under its own name


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    return run_hydra_job(cfg)


def cli() -> None:
    try:
        sys.argv[1:] = distributed.setup(moved_keys(sys.argv[1:]))
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    main()
    if SweepCallback.failed:
        print(f"[lorakit] failed: {', '.join(SweepCallback.failed)} (see FAILED in each folder)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()

"""The sweep entry point: ``python -m experiments.sweep rank=4,8,16,64`` (conf/sweep.yaml; always a multirun).

Each job trains one run into ``multirun/<date>/<time>-<id>/<overrides>/``; afterwards runs.csv and runs.parquet
list every run of the sweep. Re-run into the same folder (``hydra.sweep.dir=...``) to finish a sweep: complete runs
are skipped, failed and half-written ones trained again. Exit status 1 when a run failed; 128 + the signal's number
when a preemption signal stopped it (experiments/preemption.py: rerun the same command to resume).
"""

from __future__ import annotations

import sys

from experiments.quiet import quiet_start

quiet_start()  # before anything imports transformers: its first screen is the config and progress (experiments/quiet.py)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from experiments import distributed, preemption  # noqa: E402
from experiments.callbacks import SweepCallback  # noqa: E402
from experiments.config import moved_keys, register_resolvers  # noqa: E402
from experiments.errors import ConfigError  # noqa: E402
from experiments.search import register_optuna_schema  # noqa: E402
from experiments.job import run_hydra_job  # noqa: E402

register_resolvers()  # before @hydra.main composes conf/sweep.yaml, which uses them
register_optuna_schema()  # hydra/sweeper=optuna: the plugin's schema with our defaults, registered in code (experiments/search.py)


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    return run_hydra_job(cfg)


def cli() -> None:
    try:
        sys.argv[1:] = distributed.setup(moved_keys(sys.argv[1:]))
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    try:
        main()
    except preemption.Preempted as err:  # the run's checkpoint holds the step it stopped at
        print(f"[lorakit] {err}", file=sys.stderr, flush=True)
        sys.exit(preemption.exit_status(err))
    if SweepCallback.failed:
        print(f"[lorakit] failed: {', '.join(SweepCallback.failed)} (see FAILED in each folder)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()

"""``hydra/sweeper=optuna`` as a learning-rate search (issue 11: learning rates chosen, not assumed).

hydra-optuna-sweeper's config with the defaults a run needs: maximise the run's best dev metric (the float
experiments/job.py returns; a failed run returns NaN, which Optuna records as a failed trial), over the method's own
search space (``search:`` in conf/method/<name>.yaml, e.g. LoRA's ``train.lr: tag(log, interval(1e-4, 1e-2))``), one
trial at a time so that each informs the next, TPE seeded so the same command gives the same trials.

    python -m experiments.sweep hydra/sweeper=optuna hydra.sweeper.n_trials=20                 # LoRA's learning rate
    python -m experiments.sweep hydra/sweeper=optuna method=bitfit task=mrpc
    python -m experiments.sweep hydra/sweeper=optuna alpha=8,16,32                             # and α, as a choice

No ``from __future__ import annotations`` here: OmegaConf reads the dataclass's annotations as types.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


def register_optuna_schema() -> None:
    """Register the search under ``hydra/sweeper/optuna``, over the plugin's own entry: after Hydra's plugin scan
    (a singleton, run once here), which would register the plugin's again. A no-op without the plugin: then Hydra
    says it is missing."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # first: the scan imports the plugin's module anew, and its classes must be the ones used here
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import Direction, OptunaSweeperConf, TPESamplerConfig
    except ImportError:
        return

    @dataclass
    class LearningRateSearch(OptunaSweeperConf):
        direction: Any = Direction.maximize
        n_trials: int = 12
        n_jobs: int = 1
        max_failure_rate: float = 0.5  # a diverged trial (NaN) is a failed trial, not the end of the search
        study_name: Optional[str] = "${method.name}-${task.name}"
        params: Optional[Dict[str, str]] = "${method.search}"
        sampler: Any = field(default_factory=lambda: TPESamplerConfig(seed=0, n_startup_trials=4))

    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=LearningRateSearch, provider="lorakit")

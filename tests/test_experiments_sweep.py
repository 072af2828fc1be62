"""Two-job sweeps end to end through ``python -m experiments.sweep``, on each local launcher, on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.config import REPO_ROOT

pytestmark = pytest.mark.slow  # sweeps and runs end to end: the slow tier


@pytest.fixture()
def sweep(tiny_model_dir, tiny_glue_dir, tmp_path, offline_env):
    """Run a sweep from a config that extends conf/sweep.yaml with the tiny model and data, so that only the
    command line's own overrides name the run folders; returns (process, sweep folder)."""
    (tmp_path / "tiny.yaml").write_text(
        "defaults:\n  - sweep\n  - _self_\n"
        f"model: {{path: {tiny_model_dir}}}\n"
        f"execution: {{data_dir: {tiny_glue_dir}, cache_dir: {tmp_path / 'cache'}, log_every: 2, wandb: {{mode: disabled}}}}\n"
        "train: {epochs: 2, batch_size: 16, max_length: 32, max_train_samples: null, lr: 5.0e-3}\n"
        "alpha: 4\n"
    )
    env = {**offline_env, "PYTHONPATH": os.pathsep.join(filter(None, [offline_env.get("PYTHONPATH"), str(REPO_ROOT)]))}

    def run(*overrides, sweep_dir=tmp_path / "sweep"):
        cmd = [sys.executable, "-m", "experiments.sweep", "--config-dir", str(tmp_path), "--config-name", "tiny",
               f"hydra.sweep.dir={sweep_dir}", *overrides]
        # cwd outside the repo: a sweep writes nowhere but its sweep folder
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300), sweep_dir

    return run


def table(sweep_dir):
    return pd.read_parquet(sweep_dir / "runs.parquet").set_index("name")


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_two_job_sweep_on_each_launcher(sweep, launcher):
    process, sweep_dir = sweep("rank=2,4", f"hydra/launcher={launcher}")
    assert process.returncode == 0, process.stderr[-3000:]
    runs = table(sweep_dir)
    assert sorted(runs.index) == ["rank=2", "rank=4"] and (runs["status"] == "complete").all()
    assert runs.loc["rank=4", "rank"] == 4 and runs.loc["rank=4", "trainable_params"] > runs.loc["rank=2", "trainable_params"]
    assert pd.read_csv(sweep_dir / "runs.csv").shape[0] == 2
    for name in runs.index:
        assert (sweep_dir / name / "COMPLETE").is_file() and (sweep_dir / name / "adapter").is_dir()
    if launcher == "joblib":  # two parallel jobs on the cores: a share each
        cores = os.cpu_count()
        assert json.loads((sweep_dir / "rank=2" / "metrics.json").read_text())["threads"] == max(1, cores // min(2, cores))


def test_rerun_skips_complete_runs_and_retrains_the_rest(sweep):
    process, sweep_dir = sweep("rank=2,4", "wandb.mode=offline")  # two W&B runs in one process
    assert process.returncode == 0, process.stderr[-3000:]
    assert all(next((sweep_dir / n / "wandb").glob("offline-run-*"), None) for n in ("rank=2", "rank=4"))
    kept = (sweep_dir / "rank=2" / "metrics.json").stat().st_mtime_ns
    (sweep_dir / "rank=4" / "COMPLETE").unlink()  # as if killed before its marker

    process, _ = sweep("rank=2,4", "wandb.mode=offline")
    assert process.returncode == 0, process.stderr[-3000:]
    assert "rank=2: complete results exist, skipped" in process.stdout + process.stderr
    assert (sweep_dir / "rank=2" / "metrics.json").stat().st_mtime_ns == kept
    assert (table(sweep_dir)["status"] == "complete").all()


def test_one_failed_job_does_not_stop_the_others(sweep):
    process, sweep_dir = sweep("rank=64,2")  # rank 64 exceeds the tiny model's width of 32
    assert process.returncode == 1
    runs = table(sweep_dir)
    assert runs.loc["rank=2", "status"] == "complete" and runs.loc["rank=64", "status"] == "failed"
    assert "rank" in runs.loc["rank=64", "error"] and "failed: rank=64" in process.stderr
    assert json.loads((sweep_dir / "rank=64" / "FAILED").read_text())["traceback"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("rank=0", "rank=0 is not accepted: rank must be an integer ≥ 1"),
        ("targets=qz", "unknown target preset 'qz'"),
        ("data.dir=/no/such/glue", "data folder /no/such/glue does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(sweep, override, message):
    process, sweep_dir = sweep(override)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith(message)
    assert not sweep_dir.exists()  # refused before any job started


def test_a_sweep_with_mixed_values_fails_loudly_and_still_writes_its_table(sweep):
    process, sweep_dir = sweep("rank=abc,16,2")
    assert process.returncode == 1 and "failed: rank=abc" in process.stderr
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    assert list(runs["name"]) == ["rank=2", "rank=16", "rank=abc"]  # numbers as numbers, then text
    assert list(runs["status"]) == ["complete", "complete", "failed"]
    assert "rank='abc' is not accepted" in runs.loc[2, "error"] and "1 failed" in process.stdout


def test_a_diverging_run_is_a_failure(sweep):
    process, sweep_dir = sweep("train.lr=1e6")
    assert process.returncode == 1
    (error,) = table(sweep_dir)["error"]
    assert error.startswith(("Diverged: training loss", "Diverged: eval_loss", "NonFiniteLoss: ")), error


def test_an_unwritable_sweep_folder_is_one_line(sweep, tmp_path):
    (tmp_path / "file").write_text("")
    process, _ = sweep(sweep_dir=tmp_path / "file" / "sweep")
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].endswith("is a file, not a folder; choose another with hydra.sweep.dir=...")


def test_a_full_fine_tune_trains_once_however_many_ranks_are_swept(sweep):
    process, sweep_dir = sweep("method=lora,full", "rank=2,4")
    assert process.returncode == 0, process.stderr[-3000:]
    runs = table(sweep_dir)
    assert sorted(runs.index) == ["method=full", "method=lora,rank=2", "method=lora,rank=4"]
    assert (runs["status"] == "complete").all() and (sweep_dir / "method=full" / "delta_weights.safetensors").is_file()
    assert (process.stdout + process.stderr).count("method=full: complete results exist, skipped") == 1


def test_paper_table2_preset_runs_mnli_then_starts_stsb_from_its_adapter(sweep, tmp_path):
    """The paper's chain (Appendix D) on the tiny model: the STS-B LoRA run loads the MNLI run's factors."""
    sweep_dir = tmp_path / "paper"
    process, _ = sweep("+experiment=table2_paper", "task=mnli,stsb", "method=lora", "seed=0", "budget=cpu",
                       f"init_from.dir={sweep_dir}", "model.name=tiny", "train.max_train_samples=null",
                       "train.epochs=1", sweep_dir=sweep_dir)
    assert process.returncode == 0, process.stderr[-3000:]
    runs = table(sweep_dir).set_index("task")
    assert (runs["status"] == "complete").all() and list(runs.index) == ["mnli", "stsb"]
    metrics = {t: json.loads((Path(runs.loc[t, "path"]) / "metrics.json").read_text()) for t in ("mnli", "stsb")}
    assert metrics["mnli"]["init_from"] is None
    assert metrics["stsb"]["init_from"] == str(Path(runs.loc["mnli", "path"]) / "adapter")


def test_optuna_searches_the_learning_rate_and_maximises_the_dev_metric(sweep):
    process, sweep_dir = sweep("hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "train.epochs=1")
    assert process.returncode == 0, process.stderr[-3000:]
    runs = table(sweep_dir)
    assert len(runs) == 2 and (runs["status"] == "complete").all()
    lrs = [float(name.split("train.lr=")[1]) for name in runs.index]  # each trial a learning rate of LoRA's space
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]
    import yaml

    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and best["best_value"] == runs["best_accuracy"].max()
    from analysis.tables import lr_search_tables
    from analysis.runs import load_runs

    trials, summary = lr_search_tables(load_runs([sweep_dir]))  # the trials' rates, read back from config.yaml
    assert sorted(summary.frame["lr"]) == pytest.approx(sorted(lrs))
    assert set(summary.frame["verdict"]) == {"search trial (1 seed)"}  # one seed each: nothing is chosen


def test_optuna_without_a_search_space_is_one_line(sweep):
    process, sweep_dir = sweep("hydra/sweeper=optuna", "method.search=null")
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith("hydra/sweeper=optuna has no search space")

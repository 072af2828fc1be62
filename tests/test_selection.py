"""Selection apart from report (issue 22): a slice held out of the training split picks the reported epoch, the dev set
is reported, and every run keeps the reported epoch's per-example predictions (predictions.npz)."""

import json

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy import stats

from experiments.config import CONF_DIR, ConfigError, register_resolvers
from experiments.data import DataError, selection_metric, selection_slice
from experiments.families.classification import PREDICTIONS, load_predictions
from experiments.identity import identity
from experiments.job import run_job
from experiments.store import stored_config
from experiments.train import train

register_resolvers()


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


def test_selection_slice_is_disjoint_complete_and_fixed_by_its_seed():
    kept, held = selection_slice(100, 30, seed=0)
    assert len(held) == 30 and len(kept) == 70 and not set(kept) & set(held)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    assert np.all(np.diff(held) > 0)  # original order
    again, other = selection_slice(100, 30, seed=0)[1], selection_slice(100, 30, seed=1)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other)
    with pytest.raises(DataError, match=r"data.selection_examples=100 .* 0 <= data.selection_examples < 100"):
        selection_slice(100, 100, seed=0)


def test_defaults_keep_the_identity_of_runs_written_before():
    """The two new keys at their defaults are left out of a run's identity (experiments/identity.py ADDED)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(make([]), resolve=False)
    ident = identity(plain)
    assert "selection_examples" not in ident["data"] and "select_on" not in ident["train"]
    held = identity(OmegaConf.to_container(make(["data.selection_examples=500", "train.select_on=selection"]),
                                           resolve=False))
    assert held["data"]["selection_examples"] == 500 and held["train"]["select_on"] == "selection"


def test_the_epoch_and_a_search_choose_by_the_metric_on_the_select_on_split():
    assert selection_metric(make(["task=mrpc"])) == "accuracy"
    assert selection_metric(make(["task=stsb", "data.selection_examples=8", "train.select_on=selection"])) == "pearson_selection"


def test_select_on_selection_without_a_slice_is_one_line():
    with pytest.raises(ConfigError, match="train.select_on=selection needs a selection slice"):
        train(make(["train.select_on=selection"]))
    with pytest.raises(ConfigError, match="train.select_on.*accepted|train.select_on.*one of"):
        train(make(["train.select_on=test"]))


@pytest.mark.slow
def test_the_epoch_is_chosen_on_the_held_out_slice_and_the_dev_set_reported(tiny_overrides):
    metrics = train(make(tiny_overrides + ["train.epochs=3", "data.selection_examples=16", "train.select_on=selection"]))
    assert metrics["data"]["train_examples"] == 64 - 16 and metrics["data"]["selection_examples"] == 16
    assert metrics["data"]["validation_examples"] == 32
    assert all({"accuracy", "accuracy_selection", "eval_loss_selection"} <= set(e) for e in metrics["epochs"])
    assert metrics["selected"] == {"epoch": metrics["best"]["epoch"], "on": "selection", "by": "accuracy_selection"}
    first_best = max(metrics["epochs"], key=lambda e: e["accuracy_selection"])  # max returns the first among equals
    assert metrics["best"] == first_best
    default = train(make(tiny_overrides + ["train.epochs=1"]))
    assert default["selected"] == {"epoch": 1, "on": "dev", "by": "accuracy"}
    assert default["data"]["train_examples"] == 64 and "selection_examples" not in default["data"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_the_run_folder_keeps_the_reported_epochs_predictions(task, tiny_overrides, tiny_glue_dir, tmp_path):
    run_dir = tmp_path / task
    overrides = tiny_overrides + [f"task={task}", "train.epochs=2", "data.selection_examples=8"]
    assert run_job(make(overrides), run_dir, name=task, group="test")["status"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with np.load(run_dir / PREDICTIONS, allow_pickle=False) as raw:  # no object arrays: readable without pickle
        assert set(raw.files) == {f"{s}/{f}" for s in ("validation", "selection") for f in ("outputs", "labels", "index")}
    kept = load_predictions(run_dir)
    dev = kept["validation"]
    truth = pd.read_parquet(tiny_glue_dir / task / "validation.parquet")["label"].to_numpy()
    assert np.array_equal(dev["index"], np.arange(32)) and np.allclose(dev["labels"], truth)  # the parquet's order
    assert len(kept["selection"]["labels"]) == 8
    best = metrics["best"]
    if task == "sst2":
        assert dev["outputs"].shape == (32, 2) and dev["outputs"].dtype == np.float32
        assert (dev["outputs"].argmax(1) == dev["labels"]).mean() == pytest.approx(best["accuracy"])
    else:
        assert dev["outputs"].shape == (32, 1)
        assert stats.pearsonr(dev["outputs"][:, 0], dev["labels"])[0] == pytest.approx(best["pearson"], abs=1e-5)
    assert stored_config(run_dir)["data"]["selection_examples"] == 8

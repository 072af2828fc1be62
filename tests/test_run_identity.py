"""Runs describe themselves (issue 21): a method registered here, which no analysis has heard of, gets rows and
columns of its own with no analysis edit; an old run folder reads with the config_id a new one of the same config
has; the adding-a-method guide says what the code does."""

import json
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from analysis import table2
from analysis.runs import scan_runs
from experiments import identity, records
from experiments.accepts import Accepts
from experiments.config import CONF_DIR, REPO_ROOT, register_resolvers
from experiments.job import run_job
from experiments.methods import _REGISTRY, Method, register

register_resolvers()


class Scaled(Method):
    """A toy method: the head trains, as for ``head``, and a key of its own (``gain``) scales its learning rate."""

    name = "toy_scaled"
    title = "Toy"
    accepts = {"gain": Accepts(float, low=0, low_open=True)}

    def parameter_groups(self, model, cfg):
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": cfg.method.lr * cfg.method.gain}]


@pytest.fixture()
def toy_method():
    register(Scaled)
    yield Scaled
    _REGISTRY.pop(Scaled.name, None)


def compose_run(overrides, method_node=None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=list(overrides))
    if method_node is not None:
        with open_dict(cfg):
            cfg.method = method_node
    return cfg


@pytest.mark.slow
def test_a_new_method_gets_its_rows_and_columns_with_no_analysis_edit(toy_method, tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    base = tiny_overrides + ["train.epochs=1"]
    jobs = {"method=lora": compose_run(base), "method=full": compose_run(base + ["method=full"])}
    for gain in (0.5, 2.0):
        jobs[f"method=toy_scaled,gain={gain}"] = compose_run(base, {"name": "toy_scaled", "lr": 1e-3, "gain": gain})
    for name, cfg in jobs.items():
        assert run_job(cfg, sweep / name, name=name, group="t")["status"] == "complete", name
    runs, skipped = scan_runs([sweep])
    assert not skipped and "gain" in runs  # the toy's own key is a column of the run table, read from its identity
    toy = runs[runs["method"] == "toy_scaled"]
    assert sorted(toy["gain"]) == [0.5, 2.0] and toy["config_id"].nunique() == 2
    rows = list(table2(runs).frame["model / method"])
    assert len(rows) == 4 and {"minilm Toy (gain=0.5)", "minilm Toy (gain=2)"} <= set(rows)
    written = json.loads((sweep / "method=toy_scaled,gain=2.0" / "metrics.json").read_text())["run"]
    assert written["label"] == "Toy (gain=2)" and written["identity"]["method"]["gain"] == 2.0


def test_runs_differing_only_in_a_training_knob_have_different_ids(tiny_overrides):
    base = identity.config_id(_resolved(compose_run(tiny_overrides)))
    for knob in ("train.batch_size=8", "train.max_train_samples=20", "dropout=0.1", "train.max_length=16",
                 "train.weight_decay=0.1", "train.epochs=3"):
        assert identity.config_id(_resolved(compose_run(tiny_overrides + [knob]))) != base, knob
    for same in ("seed=3", "execution.threads=2", "execution.wandb.mode=offline", "train.full_lr=1e-5"):
        assert identity.config_id(_resolved(compose_run(tiny_overrides + [same]))) == base, same


def test_an_old_run_folder_reads_with_the_config_id_of_a_new_one(tiny_overrides, tmp_path):
    """A folder written before metrics.json carried its identity (no identity, config_id or label; the method keys
    added since absent from config.yaml) reads with the same config_id and label as a run of today."""
    cfg = compose_run(tiny_overrides)
    new = records.describe_run(_resolved(cfg), {"facts": None})
    old_config = _resolved(cfg)
    for key in ("loraplus_ratio", "freeze_a", "quantize", "init_from"):  # keys added to LoRA after its first runs
        old_config["method"].pop(key)
        old_config.pop(key, None)
    run_dir = tmp_path / "sweep" / "rank=2"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old_config))
    old_run = {"name": "rank=2", "task": "sst2", "method": "lora", "model": "minilm", "seed": 0, "rank": 2,
               "alpha": 4.0, "targets": "qv", "init": "gaussian", "rslora": False}  # the old run block
    best = {"epoch": 1, "accuracy": 0.75, "eval_loss": 0.5}
    (run_dir / "metrics.json").write_text(json.dumps({"run": old_run, "metric": "accuracy", "best": best,
                                                      "last": best, "seed": 0}))
    (run_dir / "COMPLETE").write_text("")
    row = records.read_record(run_dir)
    assert row["config_id"] == new["config_id"] and row["label"] == new["label"] == "LoRA (r=2, Wq, Wv)"
    assert row["rank"] == 2 and row["train.batch_size"] == 16 and row["quantize"] == "none"


def _resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def test_the_adding_a_method_guide_names_every_hook_the_code_has():
    guide = (REPO_ROOT / "docs" / "ADDING_A_METHOD.md").read_text()
    first_cells = re.findall(r"^\| (`[^|]*)\|", guide, flags=re.M)
    table = {name for cell in first_cells for name in re.findall(r"`(\w+)", cell)}
    hooks = {n for n, v in vars(Method).items() if not n.startswith("_") and n != "name"}
    assert table == hooks, f"documented {sorted(set(table))}, the code has {sorted(hooks)}"
    # It says which files a method takes: the two it names exist for a method that has them both.
    assert "conf/method/bitfit.yaml" in guide and (REPO_ROOT / "conf/method/bitfit.yaml").is_file()
    assert "experiments/methods/bitfit.py" in guide and Path(REPO_ROOT / "experiments/methods/bitfit.py").is_file()

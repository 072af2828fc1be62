"""One run, in process, on a tiny BERT and tiny GLUE-layout data (tests/conftest.py): data, train(), run folders."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from experiments.methods.lora import find_init_adapter
from experiments import data as data_module
from experiments import identity, store
from experiments.config import CONF_DIR, ConfigError, register_resolvers
from experiments.data import DataError, PadCollator, load_tokenized, read_glue
from experiments.job import run_job
from experiments.models import load_tokenizer
from experiments.train import train

register_resolvers()
pytestmark = pytest.mark.slow  # each test trains the tiny model: the slow tier


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


def test_train_returns_the_metrics_of_the_contract(tiny_overrides):
    cfg = make(tiny_overrides)
    metrics = train(cfg, name="rank=2")
    run = dict(metrics["run"])
    # The run describes itself: its identity, the id its seeds share, the method's name for it and its facts.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert run.pop("identity") == identity.canonical(resolved) and "execution" not in identity.canonical(resolved)
    assert run.pop("config_id") == identity.config_id(resolved) == identity.config_id({**resolved, "seed": 7})
    assert run.pop("label") == "LoRA (r=2, Wq, Wv)" and run.pop("label_parts") == {"rank": "r=2", "targets": "Wq, Wv"}
    assert run.pop("title") == "LoRA"
    assert run.pop("facts") == {"has_delta": True, "has_factors": True, "files": ["adapter", "adapter_init"]}
    assert run == {
        "name": "rank=2", "task": "sst2", "method": "lora", "model": "minilm", "model_path": metrics["run"]["model_path"],
        "seed": 0, "shuffle_labels": False, "family": "sequence_classification", "rank": 2, "alpha": 4.0,
        "targets": "qv", "init": "gaussian",
        "rslora": False, "dropout": 0.0, "loraplus_ratio": 1.0, "freeze_a": False, "quantize": "none", "use_dora": False,
        "rank_pattern": "{}", "alpha_pattern": "{}",
    }
    assert metrics["metric"] == "accuracy" and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["best"] == max(metrics["epochs"], key=lambda e: e["accuracy"]) and metrics["last"] == metrics["epochs"][-1]
    assert all({"eval_loss", "accuracy"} <= set(e) for e in metrics["epochs"])
    assert [p["step"] for p in metrics["loss_curve"]] == [2, 4, 6, 8]  # 64 examples / 16 = 4 steps an epoch
    assert metrics["loss_curve"][0]["lr"] > 0 and metrics["loss_curve"][-1]["lr"] < metrics["loss_curve"][0]["lr"]
    # Two layers × (query, value) adapted: A (2×32) and B (32×2) each, plus the head: pooler (32×32 + 32) and
    # classifier (32×2 + 2). The paper's count (method_params) leaves the head out.
    assert len(metrics["adapted_modules"]) == 4 and metrics["adapted_modules"][0].endswith("attention.self.query")
    assert metrics["method_params"] == 4 * (2 * 32 + 32 * 2)
    assert metrics["trainable_params"] == metrics["method_params"] + (32 * 32 + 32) + (32 * 2 + 2) < metrics["total_params"]
    for key in ("wall_time_s", "train_examples_per_s", "peak_memory_mb"):
        assert metrics[key] > 0
    assert metrics["device"] == "cpu" and {"torch", "transformers", "lorakit"} <= set(metrics["versions"])
    assert metrics["data"]["train_examples"] == 64 and metrics["data"]["validation_examples"] == 32
    # The probes: ΔW cut to rank 0 and 1 (below r=2), and the encoder's zero-shot STS-B before and after.
    assert [t["k"] for t in metrics["truncation"]] == [0, 1] and {"accuracy", "eval_loss"} <= set(metrics["truncation"][0])
    forgetting = metrics["forgetting"]
    assert forgetting["probe"] == "stsb_spearman" and forgetting["value"] == forgetting["before"] - forgetting["after"]


def test_same_seed_same_numbers(tiny_overrides):
    first, again = train(make(tiny_overrides)), train(make(tiny_overrides))
    other = train(make(tiny_overrides + ["seed=1"]))
    assert first["loss_curve"] == again["loss_curve"] and first["epochs"] == again["epochs"]
    assert first["loss_curve"] != other["loss_curve"]


def test_zero_epochs_is_zero_shot_the_prepared_model_evaluated_once(tiny_overrides):
    """train.epochs=0: nothing trains; LoRA's B = 0 leaves the pretrained model, so it scores what full fine-tuning's
    untouched model scores with the same seeded head."""
    lora = train(make(tiny_overrides + ["train.epochs=0"]))
    full = train(make(tiny_overrides + ["train.epochs=0", "method=full"]))
    assert [e["epoch"] for e in lora["epochs"]] == [0] and lora["best"] == lora["last"] == lora["epochs"][0]
    assert lora["loss_curve"] == [] and lora["train_examples_per_s"] is None
    assert lora["epochs"][0] == full["epochs"][0]


def test_run_folder_describes_itself(tiny_overrides, tmp_path):
    run_dir = tmp_path / "rank=2"
    status = run_job(make(tiny_overrides), run_dir, name="rank=2", group="test")
    assert status["status"] == "complete" and not status["skipped"]
    assert store.is_complete(run_dir) and not (run_dir / store.FAILED).exists()
    config = store.stored_config(run_dir)
    assert "hydra" not in config and config["method"]["rank"] == 2 and config["execution"]["data_dir"]  # resolved
    assert json.loads((run_dir / "metrics.json").read_text())["run"]["name"] == "rank=2"
    adapter = run_dir / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert (run_dir / "adapter_init").is_dir() and (run_dir / "delta_weights.safetensors").is_file()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_full_fine_tuning_keeps_the_delta_of_every_encoder_linear(tiny_overrides, tmp_path):
    run_dir = tmp_path / "full"
    overrides = tiny_overrides + ["method=full", "task=stsb", "train.full_lr=1e-3"]
    assert run_job(make(overrides), run_dir, name="full", group="test")["status"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metric"] == "pearson" and {"pearson", "spearman"} <= set(metrics["best"])
    assert "rank" not in metrics["run"] and "targets" not in metrics["run"]
    assert metrics["trainable_params"] == metrics["method_params"] == metrics["total_params"]
    deltas = load_file(run_dir / "delta_weights.safetensors")
    per_layer = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"]
    assert set(deltas) == {f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in per_layer}
    assert deltas["bert.encoder.layer.0.intermediate.dense"].shape == (64, 32)
    assert all(d.dtype == torch.float32 and d.abs().max() > 0 for d in deltas.values())
    assert not (run_dir / "adapter").exists()


def test_head_only_trains_the_head_on_a_frozen_encoder(tiny_overrides, tmp_path, monkeypatch):
    from experiments import models as models_module

    kept = {}

    def keep(path, num_labels):  # the model train() builds, to compare its weights after training
        kept["model"] = model = load_model(path, num_labels)
        kept["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    load_model = models_module.load_model
    monkeypatch.setattr(models_module, "load_model", keep)
    run_dir = tmp_path / "head"
    assert run_job(make(tiny_overrides + ["method=head"]), run_dir, name="head", group="test")["status"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method_params"] == 0 and metrics["trainable_params"] == (32 * 32 + 32) + (32 * 2 + 2)
    assert metrics["run"]["method"] == "head" and "rank" not in metrics["run"] and metrics["adapted_modules"] == []
    after = kept["model"].state_dict()
    changed = {k for k, v in kept["before"].items() if not torch.equal(v, after[k])}
    assert changed == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert not (run_dir / "adapter").exists() and not (run_dir / "delta_weights.safetensors").exists()
    with pytest.raises(ConfigError, match=r"model.head=\['head'\] matches no module of the model; .* of bert, "):
        train(make(tiny_overrides + ["method=head", "model.head=[head]"]))


def test_warns_when_an_untrained_pooler_stays_frozen(tiny_overrides, caplog):
    overrides = tiny_overrides + ["train.epochs=1"]
    train(make(overrides))  # the default head trains the pooler: nothing to say
    assert "looks untrained" not in caplog.text
    train(make(overrides + ["model.head=[classifier]"]))  # the tiny model's pooler is fresh: bias all 0
    assert "the checkpoint's pooler (bert.pooler) looks untrained" in caplog.text


def test_mnli_reports_matched_and_mismatched(tiny_overrides):
    metrics = train(make(tiny_overrides + ["task=mnli", "train.epochs=1"]))
    assert {"accuracy", "accuracy_mm", "eval_loss", "eval_loss_mm"} <= set(metrics["best"])
    assert metrics["data"]["validation_mismatched_examples"] == 32


def test_rerun_skips_complete_and_retrains_half_written_or_changed(tiny_overrides, tmp_path):
    run_dir, cfg = tmp_path / "run", make(tiny_overrides)
    run_job(cfg, run_dir, name="run", group="test")
    written = (run_dir / "metrics.json").stat().st_mtime_ns
    assert run_job(make(tiny_overrides + ["execution.threads=2"]), run_dir, name="run", group="test")["skipped"]
    assert (run_dir / "metrics.json").stat().st_mtime_ns == written
    (run_dir / "COMPLETE").unlink()  # killed before the marker: half written
    assert not run_job(cfg, run_dir, name="run", group="test")["skipped"]
    assert not run_job(make(tiny_overrides + ["train.lr=1e-3"]), run_dir, name="run", group="test")["skipped"]


def test_a_failing_run_is_recorded_not_raised(tiny_overrides, tmp_path):
    run_dir = tmp_path / "rank=64"
    status = run_job(make(tiny_overrides + ["rank=64"]), run_dir, name="rank=64", group="test")  # 64 > hidden 32
    assert status["status"] == "failed" and "rank" in status["error"]
    failed = json.loads((run_dir / "FAILED").read_text())
    assert "Traceback" in failed["traceback"] and not (run_dir / "COMPLETE").exists()
    retried = run_job(make(tiny_overrides), run_dir, name="rank=64", group="test")
    assert retried["status"] == "complete" and not (run_dir / "FAILED").exists()


def test_a_nan_loss_fails_the_run(tiny_overrides, tmp_path, monkeypatch):
    from experiments import models as models_module

    def poisoned(path, num_labels):
        model = load_model(path, num_labels)
        torch.nn.init.constant_(model.classifier.weight, float("nan"))
        return model

    load_model = models_module.load_model
    monkeypatch.setattr(models_module, "load_model", poisoned)
    status = run_job(make(tiny_overrides), tmp_path / "nan", name="nan", group="test")
    assert status["status"] == "failed" and status["error"].startswith("NonFiniteLoss: loss is nan at step 1")


def test_wandb_run_is_closed_after_each_job_even_a_failed_one(tiny_overrides, tmp_path):
    wandb = pytest.importorskip("wandb")
    overrides = tiny_overrides + ["execution.wandb.mode=offline", "train.epochs=1"]
    failed = run_job(make(overrides + ["rank=64"]), tmp_path / "a", name="a", group="test")
    assert failed["status"] == "failed" and wandb.run is None
    assert run_job(make(overrides), tmp_path / "b", name="b", group="test")["status"] == "complete"
    assert wandb.run is None
    runs = [next((tmp_path / name / "wandb").glob("offline-run-*")) for name in "ab"]
    assert runs[0].name != runs[1].name  # the second job logged into a run of its own


def test_tokenization_is_cached_and_reused(tiny_overrides, tiny_model_dir, monkeypatch):
    cfg, tokenizer = make(tiny_overrides), load_tokenizer(str(tiny_model_dir))
    first, source = load_tokenized(cfg, tokenizer)
    monkeypatch.setattr(data_module, "tokenize", lambda *a, **k: pytest.fail("tokenized again"))
    again, _ = load_tokenized(cfg, tokenizer)
    assert source.endswith("sst2") and np.array_equal(first["train"].ids, again["train"].ids)
    with pytest.raises(pytest.fail.Exception):  # another max length is another cache entry
        load_tokenized(make(tiny_overrides + ["train.max_length=8"]), tokenizer)


def test_batches_pad_to_their_longest_sequence(tiny_overrides, tiny_model_dir):
    splits, _ = load_tokenized(make(tiny_overrides), load_tokenizer(str(tiny_model_dir)))
    split = splits["train"]
    batch = PadCollator(pad_id=0)([split[0], split[1]])
    width = max(split.lengths()[:2])
    assert batch["input_ids"].shape == (2, width) and batch["attention_mask"].sum() == split.lengths()[:2].sum()
    assert batch["labels"].tolist() == split.labels[:2].tolist()


def test_train_subset_is_fixed_by_the_subset_seed(tiny_overrides, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    a, _ = load_tokenized(make(tiny_overrides + ["train.max_train_samples=10", "seed=1"]), tokenizer)
    b, _ = load_tokenized(make(tiny_overrides + ["train.max_train_samples=10", "seed=2"]), tokenizer)
    assert len(a["train"]) == 10 and np.array_equal(a["train"].ids, b["train"].ids)


def test_missing_data_says_where_it_looked(tiny_overrides, tmp_path):
    (tmp_path / "sst2").mkdir()
    with pytest.raises(DataError, match=r"lacks train.parquet, validation.parquet"):
        read_glue(make(tiny_overrides).task, str(tmp_path), "nyu-mll/glue")
    with pytest.raises(DataError, match=r"execution.data_dir is unset.*could not be loaded.*GLUE_DIR") as err:
        read_glue(make(tiny_overrides).task, None, "no-such-org/no-such-glue")
    assert "\n" not in str(err.value)


def test_run_table_lists_every_run_with_its_status(tiny_overrides, tmp_path):
    run_job(make(tiny_overrides + ["train.epochs=1"]), tmp_path / "rank=2", name="rank=2", group="t")
    run_job(make(tiny_overrides + ["rank=64"]), tmp_path / "rank=64", name="rank=64", group="t")
    for rank in (8, 16):
        (tmp_path / f"rank={rank}").mkdir()
        store.write_config(tmp_path / f"rank={rank}", make(tiny_overrides + [f"rank={rank}"]))  # started, unfinished
    with store.run_lock(tmp_path / "rank=16"):  # a job (another sweep's, in the same folder) still training it
        table = store.write_run_table(tmp_path)
    assert dict(zip(table["name"], table["status"])) == {"rank=2": "complete", "rank=64": "failed", "rank=8": "incomplete",
                                                         "rank=16": "running"}
    assert store.write_run_table(tmp_path).set_index("name").loc["rank=16", "status"] == "incomplete"  # lock released
    assert table.set_index("name").loc["rank=2", "best_accuracy"] >= 0
    assert "rank" in table.set_index("name").loc["rank=64", "error"]
    assert (tmp_path / "runs.csv").is_file() and (tmp_path / "runs.parquet").is_file()


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(3, 60, 1000)
    batches = list(data_module.LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(0), group=10))
    assert sorted(i for b in batches for i in b) == list(range(1000)) and len(batches) == 32
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.2 * lengths.sum()  # random batches of 32 pad to about 2x here


def test_init_from_finds_the_source_run_or_says_what_is_missing(tiny_overrides, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_job(make(tiny_overrides + ["task=mnli", "train.epochs=1"]), sweep_dir / "task=mnli", name="task=mnli", group="t")
    source = OmegaConf.create({"dir": str(sweep_dir), "task": "mnli"})
    assert find_init_adapter(source, seed=0) == sweep_dir / "task=mnli" / "adapter"
    assert find_init_adapter(OmegaConf.create({"dir": str(sweep_dir), "task": None}), seed=0) is None
    assert find_init_adapter(OmegaConf.create({"dir": str(sweep_dir / "task=mnli"), "task": None}), seed=0) \
        == sweep_dir / "task=mnli" / "adapter"
    with pytest.raises(FileNotFoundError, match="no complete LoRA run of task=mnli with seed=1 in"):
        find_init_adapter(source, seed=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_init_adapter(OmegaConf.create({"dir": str(tmp_path / "nowhere"), "task": "mnli"}), seed=0)

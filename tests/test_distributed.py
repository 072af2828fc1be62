"""One run on two processes (DDP, gloo on the CPU) through torchrun: one run folder, written by process 0 alone, with
the metrics of a one-process run of the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from experiments.config import REPO_ROOT


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, minilm_path):
    """The tiny BERT without dropout: then two shards of 8 and one batch of 16 give the same gradient."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_two_processes_train_one_run_with_the_metrics_of_one(no_dropout_model, tiny_glue_dir, tmp_path, offline_env):
    overrides = [f"model.path={no_dropout_model}", f"execution.data_dir={tiny_glue_dir}",
                 f"execution.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.batch_size=16",
                 "train.max_length=32", "train.max_train_samples=null", "train.lr=5e-3", "rank=2", "alpha=4",
                 "execution.wandb.mode=disabled", "execution.threads=1", "train.group_by_length=false"]
    env = {**offline_env, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run([*torchrun, "-m", "experiments.sweep", *overrides, f"hydra.sweep.dir={tmp_path / 'two'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "experiments.sweep", *overrides, f"hydra.sweep.dir={tmp_path / 'one'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    runs = [p for p in (tmp_path / "two").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1 and (runs[0] / "COMPLETE").is_file()  # one folder, process 0's
    two_m, one_m = (json.loads(next((tmp_path / d).glob("*/metrics.json")).read_text()) for d in ("two", "one"))
    for a, b in zip(two_m["epochs"], one_m["epochs"]):  # tolerance: float sums in another order across processes
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-4) and a["accuracy"] == b["accuracy"]
    assert [p["loss"] for p in two_m["loss_curve"]] != []
    assert two_m["data"]["train_examples"] == one_m["data"]["train_examples"] == 64


def test_torchrun_refuses_a_sweep(offline_env, tmp_path):
    env = {**offline_env, "PYTHONPATH": str(REPO_ROOT), "WORLD_SIZE": "2", "RANK": "0"}
    out = subprocess.run([sys.executable, "-m", "experiments.sweep", "rank=4,8"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        "torchrun runs one run on 2 processes; rank=4,8 sweeps several")

"""What runs keep on disk (experiments/disk.py): ``save_delta``'s choices, and the estimate a sweep prints before it
starts, checked against what a tiny sweep writes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from experiments import disk
from experiments.config import REPO_ROOT
from experiments.errors import ConfigError
from experiments.store import folder_bytes


def test_kept_deltas_follow_the_dtype_and_the_module_pattern():
    deltas = {"encoder.layer.0.attention.self.query": torch.randn(4, 4),
              "encoder.layer.0.attention.self.key": torch.randn(4, 4),
              "encoder.layer.0.output.dense": torch.randn(4, 8)}  # fmt: skip
    everything = disk.kept(deltas, OmegaConf.create({"dtype": "fp32", "modules": "all"}))
    assert list(everything) == list(deltas) and all(torch.equal(everything[n], deltas[n]) for n in deltas)
    node = OmegaConf.create({"dtype": "bf16", "modules": r"attention\.self\.(query|value)$"})
    some = disk.kept(deltas, node)
    assert list(some) == ["encoder.layer.0.attention.self.query"] and some[next(iter(some))].dtype == torch.bfloat16
    assert disk.record(deltas, some, node) == {
        "dtype": "bf16", "modules": node.modules, "saved": 1, "of": 3,
        "missing": ["encoder.layer.0.attention.self.key", "encoder.layer.0.output.dense"]}  # fmt: skip


@pytest.mark.parametrize("node, message", [
    ({"dtype": "fp16", "modules": "all"}, "save_delta.dtype='fp16' is not accepted; accepted: fp32, bf16"),
    ({"dtype": "fp32", "modules": "query("}, "save_delta.modules='query(' is not a regular expression"),
])  # fmt: skip
def test_a_bad_save_delta_is_one_line(node, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        disk.check(OmegaConf.create(node))


def test_the_plan_warns_when_the_estimate_exceeds_the_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 5 * 10**9)
    line, short = disk.plan_line(2 * 10**9, 10, tmp_path / "sweep")
    assert not short and "about 2 GB (10 runs" in line and "5 GB free" in line
    line, short = disk.plan_line(8 * 10**9, 40, tmp_path / "sweep")
    assert short and line.startswith("[lorakit] WARNING: this sweep will write about 8 GB (40 runs)")
    assert "\n" not in line and "save_delta.dtype=bf16" in line


def test_free_space_is_read_from_the_nearest_existing_parent(tmp_path):
    assert disk.free_bytes(tmp_path / "not" / "yet") == disk.free_bytes(tmp_path) > 0


@pytest.mark.slow
def test_the_estimate_of_a_tiny_sweep_is_within_10_percent_of_what_it_writes(minilm_path, tiny_glue_dir, tmp_path,
                                                                             offline_env):  # fmt: skip
    """A model big enough that ΔW and the adapters outweigh a run's small files (metrics, config, predictions), as
    they do at any real size: hidden 128, 2 layers."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    model_dir = tmp_path / "small-bert"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512, max_position_embeddings=64)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (tmp_path / "small.yaml").write_text(
        "defaults:\n  - sweep\n  - _self_\n"
        f"model: {{path: {model_dir}}}\n"
        f"execution: {{data_dir: {tiny_glue_dir}, cache_dir: {tmp_path / 'cache'}, wandb: {{mode: disabled}}, "
        "threads: 1}\n"
        "train: {epochs: 1, batch_size: 32, max_length: 32, max_train_samples: null}\n"
        "probes: {truncation: false, forgetting: false}\n"
    )
    env = {**offline_env, "PYTHONPATH": os.pathsep.join(filter(None, [offline_env.get("PYTHONPATH"), str(REPO_ROOT)]))}
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.sweep", "--config-dir", str(tmp_path), "--config-name", "small",
           f"hydra.sweep.dir={sweep_dir}", "method=lora,full", "targets=all", "save_delta.dtype=fp32,bf16"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if "this sweep will write about" in l)
    number, unit = re.search(r"about ([\d.]+) (B|KB|MB|GB)", line).groups()
    estimate = float(number) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert "(4 runs" in line
    written = 0
    for run in sweep_dir.iterdir():
        if run.is_dir() and (run / "COMPLETE").is_file():
            logs = sum(p.stat().st_size for p in run.glob("*.log"))
            written += folder_bytes(run) - folder_bytes(run / ".hydra") - logs  # Hydra's own files are not the run's
            metrics = json.loads((run / "metrics.json").read_text())
            kept = metrics["save_delta"]
            assert kept["saved"] == kept["of"] > 0 and kept["dtype"] in ("fp32", "bf16")
    assert abs(estimate - written) <= 0.1 * written, (estimate, written)
    table = pd.read_csv(sweep_dir / "runs.csv")
    assert table["size_on_disk_mb"].sum() * 1e6 >= written  # each run's folder, Hydra's files included


def test_the_job_count_expands_the_experiments_sweep_with_the_command_line_winning():
    """`+experiment=table2_learn task=rte`: the experiment sweeps task × seed × method, the command line fixes task."""
    config = OmegaConf.create({"hydra": {
        "overrides": {"task": ["+experiment=table2_learn", "task=rte", "execution.threads=1"]},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"task": "mrpc,stsb", "seed": "0,1,2,3,4", "method": "lora,full"}}}})  # fmt: skip
    jobs, counted = disk.sweep_jobs(config)
    assert counted == "10 runs" and all("task=rte" in job and "+experiment=table2_learn" in job for job in jobs)
    assert sorted((j[1], j[2]) for j in jobs) == sorted((f"seed={s}", f"method={m}") for s in range(5)
                                                        for m in ("lora", "full"))  # fmt: skip

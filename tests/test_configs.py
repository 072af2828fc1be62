"""Every config group option composes; bad inputs fail with one line; launchers divide the cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from experiments.config import CONF_DIR, REPO_ROOT, ConfigError, known_options, launcher_threads, register_resolvers
from experiments.schema import check_config as validate

register_resolvers()
GROUPS = ("task", "model", "method", "budget")


def make(overrides=(), hydra=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in known_options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = make([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    node = resolved["train"] if group == "budget" else resolved[group]  # a budget fills train (@package train)
    assert node["lr" if group == "budget" else "name"] is not None
    if group == "task":
        assert set(cfg.task.metrics) >= {cfg.task.metric}
        assert cfg.task.get("family") == "causal_lm" or cfg.task.num_labels in (1, 2, 3)


def test_groups_hold_what_the_issue_lists():
    assert known_options("task") == sorted(["sst2", "mrpc", "cola", "rte", "stsb", "qnli", "qqp", "mnli", "e2e"])
    assert set(known_options("model")) == {"minilm", "roberta_base", "roberta_large", "deberta_v2_xxlarge", "smollm2",
                                           "gpt2_medium", "gpt2_large"}
    assert {"full", "head", "lora"} <= set(known_options("method"))


def test_every_method_is_one_config_file_and_one_module():
    from experiments.methods import known_methods

    assert known_options("method") == known_methods()
    for name in known_methods():
        assert make([f"method={name}"]).method.name == name


@pytest.mark.parametrize("task", known_options("task"))
def test_paper_budget_is_table_9(task):
    cfg = make([f"task={task}", "budget=paper"])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == tuple(cfg.task.paper[k] for k in ("lr", "batch_size", "epochs"))
    assert cfg.train.max_length == 512 and cfg.train.max_train_samples is None and cfg.method.lr == cfg.task.paper.lr


def test_method_picks_its_learning_rate():
    assert make(["method=full"]).method.lr == make().train.full_lr
    assert make(["method=head", "train.head_lr=0.02"]).method.lr == 0.02 != make().train.lr  # its own key
    assert make(["method=lora", "train.lr=3e-3"]).method.lr == 3e-3


def test_primary_config_is_a_multirun_with_unique_folders_named_by_overrides():
    first, second = make(hydra=True), make(hydra=True)
    assert first.hydra.mode.name == "MULTIRUN"
    assert str(first.hydra.sweep.dir) != str(second.hydra.sweep.dir)  # same second, different folders
    assert str(first.hydra.sweep.subdir) == "default"  # no overrides


@pytest.mark.parametrize(
    "override_dirname,method,name",
    [
        ("rank=8,seed=1", "lora", "rank=8,seed=1"),
        ("method=full,rank=64,seed=0", "full", "method=full,seed=0"),  # a full fine-tune reads no LoRA key
        ("method=full,model.head=[pooler,classifier],rank=4,targets=[query,value]", "full",
         "method=full,model.head=[pooler,classifier]"),
        ("method=head,alpha=8,model.path=/a/b", "head", "method=head,model.path=_a_b"),
        ("execution.device=cpu,rank=4,execution.wandb.mode=disabled", "lora", "rank=4"),  # execution is never named
    ],
)
def test_run_folder_names_hold_the_overrides_of_the_identity(override_dirname, method, name):
    assert OmegaConf.create({"n": f"${{lorakit.run_name:'{override_dirname}',{method}}}"}).n == name


def test_targets_may_be_a_list_of_module_names():
    validate(make(["targets=[query,value]"]))
    with pytest.raises(ConfigError, match="targets must be a preset or a non-empty list of module names"):
        validate(make(["targets=[]"]))


def test_identity_is_the_config_without_execution_and_unread_method_keys():
    from experiments.config import identity

    resolve = lambda overrides: identity(OmegaConf.to_container(make(overrides), resolve=True))
    assert resolve(["method=full", "rank=4"]) == resolve(["method=full", "rank=64", "execution.threads=1"])
    assert resolve(["rank=4"]) != resolve(["rank=64"])
    assert resolve(["execution.device=cpu", "execution.data_dir=null"]) == resolve([])
    assert "execution" not in resolve([]) and "rank" not in resolve([]) and resolve([])["method"]["rank"] == 8


def test_a_run_written_before_a_method_key_existed_keeps_its_identity():
    """A stored config without a key the method reads today (``quantize`` landed after the first LoRA runs) is the
    same run when today's value is the key's default, and another run when it is not."""
    from experiments.config import same_identity

    today = OmegaConf.to_container(make(["rank=8"]), resolve=True)
    before = {**today, "method": {k: v for k, v in today["method"].items() if k != "quantize"}}
    assert same_identity(before, today)
    assert not same_identity(before, OmegaConf.to_container(make(["rank=8", "quantize=nf4"]), resolve=True))
    assert not same_identity(before, OmegaConf.to_container(make(["rank=4"]), resolve=True))


def test_a_method_learning_rate_is_part_of_its_own_runs_identity_only():
    """Choosing the head's or full fine-tuning's learning rate (conf/budget) never makes a LoRA run look changed."""
    from experiments.config import identity, run_name, same_identity

    config = lambda overrides: OmegaConf.to_container(make(overrides), resolve=True)
    lora = config(["method=lora"])
    assert same_identity(lora, config(["method=lora", "train.full_lr=1e-4", "train.head_lr=0.5"]))
    assert not same_identity(lora, config(["method=lora", "train.lr=3e-3"]))
    head = config(["method=head", "train.head_lr=0.02"])
    assert head["method"]["lr"] == head["train"]["head_lr"] != head["train"]["lr"]
    assert same_identity(head, config(["method=head", "train.head_lr=0.02", "train.lr=3e-3"]))
    assert not same_identity(head, config(["method=head", "train.head_lr=1e-3"]))
    assert not {"lr", "full_lr", "head_lr"} & set(identity(lora)["train"])  # the rate is method.lr
    search = {"train.lr": "tag(log, interval(1e-4, 3e-2))"}  # the head's space before it had a key of its own
    before = {**head, "train": {k: v for k, v in head["train"].items() if k != "head_lr"},
              "method": {**head["method"], "search": search}}  # written before the key
    assert same_identity(before, head) and not same_identity(before, config(["method=head", "train.head_lr=1e-3"]))
    assert run_name("method=lora,train.full_lr=1e-4,seed=0", "lora") == "method=lora,seed=0"
    assert run_name("method=full,train.full_lr=1e-4", "full") == "method=full,train.full_lr=1e-4"
    pattern = "{" + ",".join(f"bert.encoder.layer.{i}.attention.self.query:{i + 1}" for i in range(12)) + "}"
    long_a = run_name(f"method=lora,rank_pattern={pattern},seed=0", "lora")
    long_b = run_name(f"method=lora,rank_pattern={pattern.replace(':12', ':13')},seed=0", "lora")
    assert len(long_a) < 80 and long_a.startswith("method=lora,rank_pattern=#") and long_a.endswith(",seed=0")
    assert long_a != long_b  # two patterns, two folders


def test_default_data_folder_is_the_shared_glue_beside_the_repo(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    expected = REPO_ROOT.parent / "shared" / "glue"
    assert make().execution.data_dir == (str(expected) if expected.is_dir() else None)
    monkeypatch.setenv("GLUE_DIR", "/somewhere/glue")
    assert make().execution.data_dir == "/somewhere/glue"


@pytest.mark.parametrize(
    "launcher,target",
    [("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"), ("slurm", "SlurmLauncher")],
)
def test_launchers_compose(launcher, target):
    cfg = make([f"hydra/launcher={launcher}"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert {"partition", "gpus_per_node", "timeout_min", "array_parallelism"} <= set(cfg.hydra.launcher)


@pytest.mark.slow  # a Python process per command
def test_slurm_composes_from_the_command_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "experiments.sweep", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "rank=4"]
    job = subprocess.run(cmd + ["--cfg", "job"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert job.returncode == 0, job.stderr
    hydra = subprocess.run(cmd + ["--cfg", "hydra"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert "SlurmLauncher" in hydra.stdout and "partition: gpu" in hydra.stdout


@pytest.mark.slow  # a Python process per command
def test_unknown_model_lists_the_options():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "experiments.sweep", "model=gpt5", "--cfg", "job"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "Could not find 'model/gpt5'" in out.stderr and "roberta_base" in out.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rank=0"], "rank=0 is not accepted: rank must be an integer ≥ 1"),
        (["rank=-4"], "rank=-4 is not accepted"),
        (["alpha=abc"], "alpha='abc' is not accepted: alpha must be a number > 0"),
        (["targets=qz"], "unknown target preset 'qz'"),
        (["task.name=sst5"], "unknown task 'sst5'; known: cola, e2e, mnli"),
        (["method.name=prefix"], "unknown method 'prefix'; known: "),
        (["execution.data_dir=/no/such/glue"], "data folder /no/such/glue does not exist"),
        (["train.batch_size=0"], "train.batch_size=0 is not accepted: train.batch_size must be an integer ≥ 1"),
        (["train.lr=fast"], "train.lr='fast' is not accepted: train.lr must be a number > 0"),
        (["seed=abc"], "seed='abc' is not accepted: seed must be an integer ≥ 0"),
        (["train.max_train_samples=0"], "train.max_train_samples=0 is not accepted: train.max_train_samples must be "
                                        "an integer ≥ 1 or null"),
        (["train.max_train_samples=-5"], "train.max_train_samples=-5 is not accepted"),
        (["train.warmup_ratio=1.5"], "train.warmup_ratio=1.5 is not accepted: train.warmup_ratio must be a number ≥ 0 "
                                     "and ≤ 1"),
        (["execution.device=tpu"], "execution.device='tpu' is not accepted: execution.device must be auto | cpu | cuda"),
        (["loraplus_ratio=0"], "loraplus_ratio=0 is not accepted: loraplus_ratio must be a number > 0"),
        (["probes.truncation=-1"], "probes.truncation=-1 is not accepted: probes.truncation must be true | false | "
                                   "an integer ≥ 0"),
    ],
)
def test_bad_input_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        validate(make(overrides))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["full", "head"])
def test_methods_without_adapters_ignore_lora_keys(method):
    validate(make([f"method={method}", "rank=0", "targets=nonsense"]))


def test_launcher_threads_divide_the_cores():
    conf = OmegaConf.create
    assert launcher_threads(None) is None
    assert launcher_threads(conf({"_target_": "x.BasicLauncher"})) is None
    assert launcher_threads(conf({"_target_": "x.JoblibLauncher", "n_jobs": 2}), cpu_count=8) == 4
    assert launcher_threads(conf({"_target_": "x.JoblibLauncher", "n_jobs": -1}), cpu_count=8) == 1
    assert launcher_threads(conf({"_target_": "x.JoblibLauncher", "n_jobs": -2}), cpu_count=8) == 1
    assert launcher_threads(conf({"_target_": "x.JoblibLauncher", "n_jobs": 16}), cpu_count=2) == 1
    assert launcher_threads(conf({"_target_": "x.submitit.LocalLauncher", "cpus_per_task": None}), cpu_count=8) == 1
    assert launcher_threads(conf({"_target_": "x.submitit.SlurmLauncher", "cpus_per_task": 6}), cpu_count=64) == 6


PRESETS = known_options("experiment")


def test_every_table_and_figure_has_a_cpu_preset_and_a_paper_variant():
    cpu = {"table2", "table3", "table5", "table6", "fig3_fig4", "table7", "table2_learn", "budget_ladder"}  # issue 22
    beyond = {"beyond_runs", "beyond_rank_allocation", "beyond_gradient_init", "beyond_sharpness"}  # issue 23
    assert set(PRESETS) == (cpu | beyond) | {f"{name}_paper" for name in cpu | beyond} | {"controls"}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_resolves(preset):
    assert make([f"+experiment={preset}"], hydra=True).hydra.sweeper.params, "a preset is a sweep of its own"
    job = OmegaConf.to_container(make([f"+experiment={preset}"]), resolve=True)
    paper, decoder = preset.endswith("_paper"), preset.startswith("table3")
    models = {(False, False): "minilm", (True, False): "roberta_base", (False, True): "smollm2", (True, True): "gpt2_medium"}
    assert job["model"]["name"] == models[paper, decoder]
    if paper:  # Appendix D: α=8 (E2E, Table 11: 32), r=8 on Wq, Wv unless the table varies them, Table 9's settings
        assert job["alpha"] == (32 if decoder else 8) and job["train"]["max_length"] == 512
        assert job["train"]["warmup_ratio"] == 0.06
        assert job["train"]["epochs"] == job["task"]["paper"]["epochs"]
    else:
        assert job["train"]["max_length"] == job["task"]["cpu"]["max_length"]
    validate(make([f"+experiment={preset}"]))
    # The main job measures k ≤ 1 and 500 forgetting pairs (issue 26); a preset keeps what its runs were written with
    # (the whole curve unless it turns truncation off, all pairs), so its runs' identities did not change.
    assert job["probes"]["truncation"] in (True, False) and job["probes"]["forgetting_pairs"] is None


def test_the_main_job_measures_only_what_its_table_reports():
    probes = make([]).probes
    assert (probes.truncation, probes.forgetting_pairs) == (1, 500)


def test_table5_spends_one_budget_over_the_weight_types():
    ranks = {t: make(["+experiment=table5", f"targets={t}"]).rank for t in ("q", "o", "qk", "qv", "qkvo")}
    assert ranks == {"q": 8, "o": 8, "qk": 4, "qv": 4, "qkvo": 2}
    assert make(["+experiment=table5", "targets=qkvo", "budget_rank=16"]).rank == 4
    with pytest.raises(InterpolationResolutionError, match="does not split over 3 types"):
        make(["+experiment=table5", "targets=qkv"]).rank


def test_paper_table2_starts_mrpc_rte_stsb_from_mnli():
    for task, source in [("mrpc", "mnli"), ("rte", "mnli"), ("stsb", "mnli"), ("sst2", None), ("mnli", None)]:
        cfg = make(["+experiment=table2_paper", f"task={task}"], hydra=True)
        assert cfg.init_from.task == source
        assert cfg.init_from.dir == cfg.hydra.sweep.dir == "multirun/table2_paper/roberta_base"


@pytest.mark.slow  # a Python process per command
def test_paper_variants_start_from_the_command_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    for preset in [p for p in PRESETS if p.endswith("_paper")]:
        cmd = [sys.executable, "-m", "experiments.sweep", f"+experiment={preset}", "hydra/launcher=slurm", "--cfg", "job"]
        job = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert job.returncode == 0 and ("gpt2" if preset.startswith("table3") else "roberta") in job.stdout, job.stderr

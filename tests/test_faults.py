"""Fault injection: what a shared cluster does to a sweep, each fault ending in one line with nothing finished lost.

A run killed at each write step leaves nothing that looks usable, and resuming completes it; a preempted run resumes
from the step it was signalled at; a planted, truncated or foreign checkpoint, a damaged cache entry, a damaged run
file, divergence, a full disk, running out of memory and a sweep folder that cannot be created each give one line and
the exit status that tells the truth, and the sweep's finished runs stay byte for byte what they were."""

import os

import pytest
from hydra import compose, initialize_config_dir

from experiments import store
from experiments.config import CONF_DIR, register_resolvers
from experiments.job import run_job

register_resolvers()
REAL_REPLACE = os.replace


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so run_job's failure handling does not see it."""


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


def renames(monkeypatch, kill_at: int | None) -> list[str]:
    """Count store's renames (every file and folder a run publishes goes through one); raise Killed at the n-th."""
    done = []

    def replace(src, dst):
        if kill_at is not None and len(done) == kill_at:
            raise Killed(dst)
        done.append(os.path.relpath(str(dst), os.path.dirname(os.path.dirname(str(dst)))))
        REAL_REPLACE(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    return done


@pytest.mark.slow  # runs end to end
def test_a_run_killed_at_any_write_leaves_nothing_usable_and_resumes(tiny_overrides, tmp_path, monkeypatch):
    cfg = make(tiny_overrides + ["train.epochs=1"])
    run_job(cfg, tmp_path / "warm", name="warm", group="t")  # fills the tokenization cache, which writes too
    steps = renames(monkeypatch, kill_at=None)
    run_job(cfg, tmp_path / "clean", name="clean", group="t")
    assert steps[-1].endswith(store.COMPLETE) and len(steps) >= 6  # config, adapter, adapter_init, ΔW, moves, COMPLETE

    for kill_at in range(len(steps)):
        run_dir = tmp_path / f"killed-at-{kill_at}"
        renames(monkeypatch, kill_at)
        with pytest.raises(Killed):
            run_job(cfg, run_dir, name=run_dir.name, group="t")
        assert not store.is_complete(run_dir), steps[kill_at]
        visible = {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}
        if store.STAGING in steps[kill_at] or steps[kill_at].endswith(store.CONFIG):  # while training and saving:
            assert visible <= {store.CONFIG}, (steps[kill_at], visible)  # no adapter, no ΔW on show
        assert store.COMPLETE not in visible  # while publishing, files appear one by one; never COMPLETE

        renames(monkeypatch, kill_at=None)
        status = run_job(cfg, run_dir, name=run_dir.name, group="t")  # the resume
        assert status["status"] == "complete" and not status["skipped"]
        leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".hydra"]
        assert leftovers == [], (steps[kill_at], leftovers)
        assert (run_dir / "adapter").is_dir() and (run_dir / store.DELTAS).is_file()


@pytest.mark.slow  # runs end to end
def test_a_killed_run_resumes_from_its_checkpoint_with_the_metrics_of_an_uninterrupted_one(tiny_overrides, tmp_path,
                                                                                            monkeypatch):
    from experiments import train as train_module

    cfg = make(tiny_overrides + ["execution.checkpoint_every=3"])  # 2 epochs of 4 steps: checkpoints at 3 and 6
    whole = run_job(cfg, tmp_path / "whole", name="whole", group="t")
    real_check = train_module._check_divergence

    def kill_at_step_7(loss_curve, factor, initial):  # after the checkpoint of step 6, in the second epoch
        real_check(loss_curve, factor, initial)
        if loss_curve[-1]["step"] >= 7:
            raise Killed("step 7")

    monkeypatch.setattr(train_module, "_check_divergence", kill_at_step_7)
    monkeypatch.setattr(train_module, "PROGRESS_SECONDS", 0)
    cfg = make(tiny_overrides + ["execution.checkpoint_every=3", "execution.log_every=1"])
    with pytest.raises(Killed):
        run_job(cfg, tmp_path / "killed", name="killed", group="t")
    assert (tmp_path / "killed" / ".checkpoint" / "state.safetensors").is_file()
    monkeypatch.setattr(train_module, "_check_divergence", real_check)
    status = run_job(cfg, tmp_path / "killed", name="killed", group="t")
    assert status["status"] == "complete" and not (tmp_path / "killed" / ".checkpoint").exists()

    import json

    first, resumed = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "killed"))
    assert resumed["epochs"] == first["epochs"]  # the same dev metrics, to the last digit
    assert resumed["truncation"] == first["truncation"]


@pytest.mark.slow  # runs end to end
def test_a_checkpoint_of_another_config_is_not_resumed(tiny_overrides, tmp_path, monkeypatch, caplog):
    from experiments import train as train_module

    def kill(loss_curve, factor, initial):
        raise Killed("at the first logged step")

    monkeypatch.setattr(train_module, "_check_divergence", kill)
    with pytest.raises(Killed):
        run_job(make(tiny_overrides + ["execution.checkpoint_every=1"]), tmp_path / "run", name="run", group="t")
    monkeypatch.undo()
    other = make(tiny_overrides + ["execution.checkpoint_every=1", "train.lr=1e-3", "train.epochs=1"])
    assert run_job(other, tmp_path / "run", name="run", group="t")["status"] == "complete"
    assert "its checkpoint was made with another config; starting from step 0" in caplog.text


# --- fast: the pieces, without training ---------------------------------------------------------------------------
import errno  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from experiments import checkpoint, integrity, train as train_module  # noqa: E402
from experiments.config import REPO_ROOT  # noqa: E402


class Payload:
    """Unpickling this creates ``path``: what a crafted checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def plant_pickle(folder, marker):
    """A pickled ``state.pt`` in place of the checkpoint, whose unpickling would create ``marker``."""
    (folder / checkpoint.STATE).unlink(missing_ok=True)
    (folder / checkpoint.PICKLED).write_bytes(pickle.dumps({"trainable": Payload(marker)}))


def tiny_training_state(tmp_path, identity):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = train_module.linear_schedule(optimizer, 1, 10)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    progress = {"epoch": 1, "batches_done": 1, "step": 1, "epochs": [], "loss_curve": [{"step": 1, "loss": 0.5}]}
    checkpoint.save(tmp_path, model, optimizer, scheduler, progress, torch.Generator().get_state(), identity)
    return model, optimizer, scheduler


def test_a_checkpoint_reads_back_whole_and_without_pickle(tmp_path):
    model, optimizer, scheduler = tiny_training_state(tmp_path, {"seed": 0})
    state = checkpoint.load(tmp_path, {"seed": 0}, model, "run")
    assert state["progress"]["loss_curve"] == [{"step": 1, "loss": 0.5}]
    assert torch.equal(state["trainable"]["0.weight"], model[0].weight.detach())
    assert state["optimizer"]["param_groups"][0]["betas"] == optimizer.state_dict()["param_groups"][0]["betas"]
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    checkpoint.restore(state, model, fresh, train_module.linear_schedule(fresh, 1, 10))
    checkpoint.restore_rng(state)
    assert fresh.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


@pytest.mark.parametrize("fault", ["pickle", "truncated", "foreign", "altered"])
def test_an_untrustworthy_checkpoint_is_set_aside_in_one_line(tmp_path, caplog, fault):
    folder = tmp_path / checkpoint.FOLDER
    folder.mkdir()
    model, _, _ = tiny_training_state(folder, {"seed": 0})
    state_file, marker = folder / checkpoint.STATE, tmp_path / "payload-ran"
    if fault == "pickle":
        plant_pickle(folder, marker)
    elif fault == "truncated":
        state_file.write_bytes(state_file.read_bytes()[:-40])
    elif fault == "altered":  # one byte of a tensor flipped: the checksum catches it
        data = bytearray(state_file.read_bytes())
        data[-3] ^= 0xFF
        state_file.write_bytes(bytes(data))
    expected = {"pickle": "is a pickled checkpoint", "truncated": "is damaged", "foreign": "of another identity",
                "altered": "is damaged"}[fault]
    identity = {"seed": 1} if fault == "foreign" else {"seed": 0}
    assert checkpoint.load(folder, identity, model, "run") is None
    lines = [r.getMessage() for r in caplog.records if "checkpoint set aside" in r.getMessage()]
    assert len(lines) == 1 and expected in lines[0] and "\n" not in lines[0], lines
    assert not marker.exists()  # the payload never ran
    assert not any(folder.iterdir()) and any((tmp_path / checkpoint.REJECTED).iterdir())  # kept, out of the way


def test_divergence_is_caught_where_it_shows():
    with pytest.raises(train_module.Diverged, match="training loss 9 at step 2 is over 10x its first value 0.69"):
        train_module._check_divergence([{"step": 2, "loss": 9.0}], 10.0, 0.69)  # inside the first logging window
    with pytest.raises(train_module.Diverged, match="eval_loss 8.7e\\+06 after epoch 1 is over 10x the loss at"):
        train_module._check_evaluation([{"epoch": 1, "eval_loss": 8.7e6, "accuracy": 0.5}], 10.0, 0.69)
    with pytest.raises(train_module.NonFiniteLoss, match="eval_loss_mm is nan after epoch 2"):
        train_module._check_evaluation([{"epoch": 1, "eval_loss": 0.5}, {"epoch": 2, "eval_loss": 0.4,
                                                                          "eval_loss_mm": float("nan")}], 10.0, 0.69)
    train_module._check_evaluation([{"epoch": 1, "eval_loss": 0.3}, {"epoch": 2, "eval_loss": 3.5}], 10.0, 0.69)


def fake_run(run_dir, seal=True):
    """A complete run folder as the store writes one, without training."""
    from safetensors.torch import save_file  # noqa: F401 - lorakit.files writes through it

    from lorakit.files import save_tensors

    run_dir.mkdir(parents=True)
    (run_dir / store.CONFIG).write_text("seed: 0\n")
    save_tensors(run_dir / store.DELTAS, {"layer.query": torch.ones(4, 4)}, {"format": "pt"})
    store.mark_complete(run_dir, {"run": {"name": run_dir.name}, "best": {"epoch": 1, "accuracy": 0.9}},
                        integrity.seal if seal else None)
    return run_dir


@pytest.mark.parametrize("sealed", [True, False])  # False: a run completed before checksums, checked for wholeness
def test_run_damage_names_the_damaged_file(tmp_path, sealed):
    run = fake_run(tmp_path / "rank=8", seal=sealed)
    assert integrity.run_damage(run) is None
    data = (run / store.DELTAS).read_bytes()
    (run / store.DELTAS).write_bytes(data[: len(data) // 2])
    damage = integrity.run_damage(run)
    assert damage.startswith(store.DELTAS) and "\n" not in damage, damage
    (run / store.DELTAS).write_bytes(data)
    metrics = json.loads((run / store.METRICS).read_text())
    metrics["best"]["accuracy"] = 0.99  # valid JSON, another number: only a checksum tells
    (run / store.METRICS).write_text(json.dumps(metrics))
    assert (integrity.run_damage(run) or "").startswith(store.METRICS) is sealed
    (run / store.CONFIG).write_text("seed: [0\n")  # truncated YAML: a rerun could not read its identity
    assert (integrity.run_damage(run) or "").startswith(store.CONFIG)  # the first damaged file, in name order


def test_verify_names_what_is_damaged_and_how_to_redo_it(tmp_path):
    from experiments import verify

    sweep_dir = tmp_path / "sweep"
    good, bad = fake_run(sweep_dir / "rank=4"), fake_run(sweep_dir / "rank=8")
    (sweep_dir / "runs.csv").write_text("name,status\nrank=4,complete\nrank=8,complete\n")  # as the sweep wrote it
    assert verify.main([str(sweep_dir)]) == 0
    before = (good / store.METRICS).read_bytes()
    (bad / store.DELTAS).write_bytes(b"\0" * 10)
    problems, redo = verify.check(sweep_dir)
    assert problems == ["rank=8: damaged: delta_weights.safetensors does not match its checksum in COMPLETE: altered "
                        "or truncated after the run completed", "runs.csv says rank=8 is complete; it is damaged"]
    assert redo == [bad]
    command = verify.redo_command(sweep_dir, bad)
    assert command == f"python -m experiments.sweep hydra.sweep.dir={sweep_dir.absolute()} rank=8"
    assert verify.main([str(sweep_dir)]) == 1 and (good / store.METRICS).read_bytes() == before
    shutil.rmtree(good)
    assert "runs.csv lists rank=4, which has no run folder" in verify.check(sweep_dir)[0]


def test_resource_faults_are_one_line_naming_what_ran_out_and_where(tmp_path):
    from experiments import faults

    full = faults.describe(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")), tmp_path)
    assert full.startswith(f"no space left on the device (ENOSPC) writing {tmp_path / 'x'} (free: ")
    gpu = faults.describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has ..."),
                          "run")
    assert gpu.startswith("out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB) in run; lower")
    assert faults.describe(MemoryError(), "run").startswith("out of host memory (MemoryError) in run")
    assert faults.describe(ValueError("bad"), "run") is None


@pytest.mark.slow  # a fresh process importing transformers: seconds
def test_a_quiet_start_hides_torchao_until_nf4_asks(tmp_path):
    code = ("import sys, importlib.util\nfrom experiments.quiet import quiet_start, allow_optional\nquiet_start()\n"
            "import transformers.quantizers.auto\n"  # what imports torchao when it is visible
            "print(sys.modules.get('torchao') is None, importlib.util.find_spec('torchao') is None)\n"
            "allow_optional('torchao')\nprint(importlib.util.find_spec('torchao') is None)\n"
            "import logging\nlogging.basicConfig()\n"  # where a sweep's logs go: quantize=nf4 imports it now
            "if importlib.util.find_spec('torchao'):\n    from torchao.quantization import to_nf4\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    import importlib.util

    installed = importlib.util.find_spec("torchao") is not None  # this process never hid it
    assert done.stdout.split() == ["True", "True", str(not installed)]
    assert "Failed to load" not in done.stderr and "_pytree" not in done.stderr, done.stderr


# --- slow: sweeps end to end, each fault injected into a copy of one preempted sweep ---------------------------------
PREEMPT_SECOND_RUN_AT_STEP_3 = """
import os, signal
from experiments import train
real, starts = train._check_divergence, []
def hook(curve, factor, initial):
    real(curve, factor, initial)
    starts.extend([1] if curve[-1]["step"] == 1 else [])
    if len(starts) == 2 and curve[-1]["step"] == 3:
        os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM does before it preempts the job
train._check_divergence = hook
"""


def sweep_command(config_dir, sweep_dir, overrides, inject=""):
    args = ["--config-dir", str(config_dir), "--config-name", "tiny", f"hydra.sweep.dir={sweep_dir}", *overrides]
    code = (f"{inject}\nimport runpy, sys\nsys.argv = ['experiments/sweep.py', *{args!r}]\n"  # as `python -m` runs it
            "runpy.run_module('experiments.sweep', run_name='__main__', alter_sys=True)\n")
    return [sys.executable, "-c", code]


def environment():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
            "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(REPO_ROOT)}


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def preempted(tiny_model_dir, tiny_glue_dir, tmp_path_factory):
    """A sweep of two runs: rank=2 complete, rank=4 preempted (SIGUSR1) at step 3 of 8: (process, folder, config)."""
    root = tmp_path_factory.mktemp("preempted")
    (root / "tiny.yaml").write_text(
        "defaults:\n  - sweep\n  - _self_\n"
        f"model: {{path: {tiny_model_dir}}}\n"
        f"execution: {{data_dir: {tiny_glue_dir}, cache_dir: {root / 'cache'}, log_every: 1, checkpoint_every: 100, "
        "wandb: {mode: disabled}}\n"
        "train: {epochs: 2, batch_size: 16, max_length: 32, max_train_samples: null, lr: 5.0e-3}\nalpha: 4\n")
    process = run(sweep_command(root, root / "sweep", ["rank=2,4"], PREEMPT_SECOND_RUN_AT_STEP_3), root)
    return process, root / "sweep", root


@pytest.fixture()
def sweep_copy(preempted, tmp_path):
    """A copy of the preempted sweep, the bytes of its finished run, and a function rerunning the sweep into it."""
    _, source, config = preempted
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(source, sweep_dir)
    done = sweep_dir / "rank=2"  # its results, COMPLETE included (Hydra rewrites its own .hydra/ and log on a rerun)
    finished = {done / name: (done / name).read_bytes() for name in [*integrity.sealed_files(done), store.COMPLETE]}

    def rerun(*overrides, inject=""):
        return run(sweep_command(config, sweep_dir, overrides or ["rank=2,4"], inject), tmp_path)

    return sweep_dir, finished, rerun


def unchanged(finished):
    return {p: p.read_bytes() for p in finished if p.exists()} == finished


def output(process):
    return process.stdout + process.stderr


@pytest.mark.slow
def test_a_preempted_run_checkpoints_at_the_next_step_and_resumes_from_it(preempted, sweep_copy):
    process, _, _ = preempted
    assert process.returncode == 128 + 10, output(process)[-3000:]  # 128 + SIGUSR1: ended by the signal, for requeue
    line = [l for l in process.stderr.splitlines() if "preempted" in l]
    assert len(line) == 1 and "rank=4: preempted (SIGUSR1) at step 3 (epoch 1)" in line[0], process.stderr[-2000:]
    assert "Traceback" not in output(process)
    sweep_dir, finished, rerun = sweep_copy
    assert not store.is_complete(sweep_dir / "rank=4") and not (sweep_dir / "rank=4" / store.FAILED).exists()
    again = rerun()
    assert again.returncode == 0, output(again)[-3000:]
    assert "rank=4: resumed from its checkpoint at step 3 (epoch 1)" in output(again)
    assert "rank=2: complete results exist, skipped" in output(again) and unchanged(finished)
    assert store.is_complete(sweep_dir / "rank=4")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["pickle", "truncated"])
def test_a_planted_or_damaged_checkpoint_is_set_aside_and_the_run_starts_over(sweep_copy, fault):
    sweep_dir, finished, rerun = sweep_copy
    folder, marker = sweep_dir / "rank=4" / checkpoint.FOLDER, sweep_dir.parent / "payload-ran"
    if fault == "pickle":
        plant_pickle(folder, marker)
    else:
        state = folder / checkpoint.STATE
        state.write_bytes(state.read_bytes()[:1000])
    again = rerun()
    assert again.returncode == 0, output(again)[-3000:]
    lines = [l for l in output(again).splitlines() if "checkpoint set aside" in l]
    expected = "is a pickled checkpoint" if fault == "pickle" else "is damaged"
    assert len(lines) == 1 and "rank=4: checkpoint set aside, starting from step 0" in lines[0] and expected in lines[0]
    assert not marker.exists() and "resumed" not in output(again)
    assert store.is_complete(sweep_dir / "rank=4") and unchanged(finished)


@pytest.mark.slow
def test_a_damaged_cache_entry_is_rebuilt(preempted, sweep_copy, tmp_path):
    import numpy as np

    sweep_dir, finished, rerun = sweep_copy
    cache = tmp_path / "cache"
    shutil.copytree(preempted[2] / "cache", cache)
    entry = next(cache.glob("*.npz"))
    np.savez(entry, **{"train/ids": np.array([object()], dtype=object)})  # pickled objects, as the issue found
    again = rerun("rank=2,4", f"execution.cache_dir={cache}")
    assert again.returncode == 0, output(again)[-3000:]
    lines = [l for l in output(again).splitlines() if "tokenized cache entry" in l]
    assert len(lines) == 1 and f"{entry} is damaged (ValueError: Object arrays cannot be loaded" in lines[0], lines
    with np.load(entry, allow_pickle=False) as arrays:
        assert "train/ids" in arrays.files and arrays["train/ids"].dtype == np.int32  # rebuilt
    assert store.is_complete(sweep_dir / "rank=4") and unchanged(finished)


@pytest.mark.slow
def test_a_damaged_run_file_is_named_and_its_redo_command_restores_it(sweep_copy, tmp_path):
    sweep_dir, finished, rerun = sweep_copy
    deltas = sweep_dir / "rank=2" / store.DELTAS
    deltas.write_bytes(deltas.read_bytes()[:-100])
    checked = run([sys.executable, "-m", "experiments.verify", str(sweep_dir)], tmp_path)
    assert checked.returncode == 1, output(checked)
    assert "rank=2: damaged: delta_weights.safetensors does not match its checksum in COMPLETE" in checked.stdout
    assert "rank=4: incomplete" in checked.stdout
    command = next(l.strip() for l in checked.stdout.splitlines() if "experiments.sweep" in l and "rank=2" in l)
    assert f"hydra.sweep.dir={sweep_dir.absolute()}" in command and "--config-name tiny" in command
    assert command.startswith("python -m experiments.sweep ")
    command = command.replace("python", shlex.quote(sys.executable), 1)  # the environment's, as a user's `python`
    redo = subprocess.run(command, shell=True, cwd=tmp_path, env=environment(), capture_output=True, text=True,
                          timeout=600)
    assert redo.returncode == 1 and redo.stderr.strip() == "[lorakit] failed: rank=4 (see FAILED in each folder)", \
        output(redo)[-3000:]  # the preempted rank=4 is still unfinished; the sweep says so
    assert "rank=2: damaged (delta_weights.safetensors does not match its checksum" in output(redo)
    assert integrity.run_damage(sweep_dir / "rank=2") is None and not (sweep_dir / "rank=2@superseded").exists()


@pytest.mark.slow
def test_divergence_fails_the_run_in_one_line_and_the_sweep_exits_1(sweep_copy):
    sweep_dir, finished, rerun = sweep_copy
    again = rerun("rank=2", "train.lr=1e6")
    assert again.returncode == 1, output(again)[-3000:]
    (failed,) = [p for p in sweep_dir.iterdir() if p.name.startswith("rank=2,")]
    error = json.loads((failed / store.FAILED).read_text())["error"]
    assert error.startswith(("Diverged: ", "NonFiniteLoss: ")) and "lower the learning rate" in error, error
    assert f"{failed.name}: FAILED: {error}" in output(again) and not store.is_complete(failed)
    assert unchanged(finished)


FULL_DISK = """
import errno, os
real = os.replace
def replace(src, dst):
    if os.path.basename(str(dst)) in ("delta_weights.safetensors", "runs.csv"):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    return real(src, dst)
os.replace = replace
"""


@pytest.mark.slow
def test_a_full_disk_fails_the_run_in_one_line_and_keeps_its_checkpoint(sweep_copy):
    sweep_dir, finished, rerun = sweep_copy
    again = rerun(inject=FULL_DISK)
    assert again.returncode == 1, output(again)[-3000:]
    text = output(again)
    assert "Traceback" not in text, text[-3000:]
    run_line = [l for l in text.splitlines() if "rank=4: FAILED" in l]
    assert len(run_line) == 1 and "no space left on the device (ENOSPC) writing " in run_line[0], run_line
    assert "delta_weights.safetensors" in run_line[0]
    assert "[lorakit] runs table not written: no space left on the device (ENOSPC) writing" in text
    rank4 = sweep_dir / "rank=4"
    assert not store.is_complete(rank4) and not (rank4 / store.DELTAS).exists() and not (rank4 / store.STAGING).exists()
    assert (rank4 / checkpoint.FOLDER / checkpoint.STATE).is_file()  # the rerun resumes: nothing lost
    assert unchanged(finished)


OUT_OF_MEMORY = """
import torch
from experiments import train
def shard(batch):
    raise {error}
train.distributed.shard = shard
"""


@pytest.mark.slow
@pytest.mark.parametrize("error, expected", [
    ("torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB')",
     "out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB) in "),
    ("MemoryError()", "out of host memory (MemoryError) in "),
])
def test_running_out_of_memory_fails_the_run_in_one_line(sweep_copy, error, expected):
    sweep_dir, finished, rerun = sweep_copy
    again = rerun(inject=OUT_OF_MEMORY.format(error=error))
    assert again.returncode == 1, output(again)[-3000:]
    lines = [l for l in output(again).splitlines() if "rank=4: FAILED" in l]
    assert len(lines) == 1 and expected in lines[0] and "lower train.batch_size" in lines[0], lines
    assert not store.is_complete(sweep_dir / "rank=4") and unchanged(finished)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_a_sweep_folder_that_cannot_be_created_is_one_line(preempted, tmp_path, where):
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "sweep" if where == "under a file" else f"/proc/lorakit-{os.getpid()}/sweep"
    process = run(sweep_command(preempted[2], target, ["rank=2"]), tmp_path)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines() == [process.stderr.strip()], process.stderr[-3000:]
    assert process.stderr.startswith(f"hydra.sweep.dir={target} cannot be written: ")


@pytest.mark.slow
def test_the_first_screen_has_no_third_party_warning(preempted):
    process = preempted[0]
    noisy = [l for l in output(process).splitlines()
             if any(w in l for w in ("Failed to load", "_pytree", "FutureWarning", "DeprecationWarning", "UserWarning",
                                     "torchao"))]
    assert noisy == [], noisy


@pytest.mark.slow
def test_a_decoder_run_resumes_with_its_generations_from_a_checkpoint(tmp_path, minilm_path, monkeypatch, caplog):
    """The checkpoint of a causal-LM run holds the reported epoch's generations (a DataFrame), without pickle."""
    from conftest import tiny_llama
    from test_causal_lm import decoder_overrides, write_tiny_e2e
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.eos_token = "[SEP]"
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    overrides = decoder_overrides(tmp_path / "llama", write_tiny_e2e(tmp_path / "e2e"), tmp_path) + [
        "execution.checkpoint_every=7", "execution.log_every=1"]  # 6 steps an epoch: a checkpoint in the second
    cfg = make(overrides)
    caplog.set_level("INFO", logger="experiments.train")
    run_job(cfg, tmp_path / "whole", name="whole", group="t")
    real_check = train_module._check_divergence

    def kill_at_step_9(loss_curve, factor, initial):
        real_check(loss_curve, factor, initial)
        if loss_curve[-1]["step"] == 9:
            raise Killed("step 9")

    monkeypatch.setattr(train_module, "_check_divergence", kill_at_step_9)
    with pytest.raises(Killed):
        run_job(cfg, tmp_path / "killed", name="killed", group="t")
    monkeypatch.setattr(train_module, "_check_divergence", real_check)
    assert run_job(cfg, tmp_path / "killed", name="killed", group="t")["status"] == "complete"
    assert "killed: resumed from its checkpoint at step 7 (epoch 2)" in caplog.text
    whole, resumed = (json.loads((tmp_path / n / store.METRICS).read_text()) for n in ("whole", "killed"))
    assert resumed["epochs"] == whole["epochs"] and resumed["best"] == whole["best"]
    assert (tmp_path / "killed" / store.GENERATIONS).read_text() == (tmp_path / "whole" / store.GENERATIONS).read_text()

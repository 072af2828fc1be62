"""Fault injection: a run killed at each write step leaves nothing that looks usable, and resuming completes it."""

import os

import pytest
from hydra import compose, initialize_config_dir

from experiments import store
from experiments.config import CONF_DIR, register_resolvers
from experiments.job import run_job

register_resolvers()
REAL_REPLACE = os.replace

pytestmark = pytest.mark.slow  # sweeps and runs end to end: the slow tier


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
        assert (run_dir / store.ADAPTER).is_dir() and (run_dir / store.DELTAS).is_file()


def test_a_killed_run_resumes_from_its_checkpoint_with_the_metrics_of_an_uninterrupted_one(tiny_overrides, tmp_path,
                                                                                            monkeypatch):
    from experiments import train as train_module

    cfg = make(tiny_overrides + ["execution.checkpoint_every=3"])  # 2 epochs of 4 steps: checkpoints at 3 and 6
    whole = run_job(cfg, tmp_path / "whole", name="whole", group="t")
    real_check = train_module._check_divergence

    def kill_at_step_7(loss_curve, factor):  # after the checkpoint of step 6, in the second epoch
        real_check(loss_curve, factor)
        if loss_curve[-1]["step"] >= 7:
            raise Killed("step 7")

    monkeypatch.setattr(train_module, "_check_divergence", kill_at_step_7)
    monkeypatch.setattr(train_module, "PROGRESS_SECONDS", 0)
    cfg = make(tiny_overrides + ["execution.checkpoint_every=3", "execution.log_every=1"])
    with pytest.raises(Killed):
        run_job(cfg, tmp_path / "killed", name="killed", group="t")
    assert (tmp_path / "killed" / ".checkpoint" / "state.pt").is_file()
    monkeypatch.setattr(train_module, "_check_divergence", real_check)
    status = run_job(cfg, tmp_path / "killed", name="killed", group="t")
    assert status["status"] == "complete" and not (tmp_path / "killed" / ".checkpoint").exists()

    import json

    first, resumed = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "killed"))
    assert resumed["epochs"] == first["epochs"]  # the same dev metrics, to the last digit
    assert resumed["truncation"] == first["truncation"]


def test_a_checkpoint_of_another_config_is_not_resumed(tiny_overrides, tmp_path, monkeypatch, caplog):
    from experiments import train as train_module

    def kill(loss_curve, factor):
        raise Killed("at the first logged step")

    monkeypatch.setattr(train_module, "_check_divergence", kill)
    with pytest.raises(Killed):
        run_job(make(tiny_overrides + ["execution.checkpoint_every=1"]), tmp_path / "run", name="run", group="t")
    monkeypatch.undo()
    other = make(tiny_overrides + ["execution.checkpoint_every=1", "train.lr=1e-3", "train.epochs=1"])
    assert run_job(other, tmp_path / "run", name="run", group="t")["status"] == "complete"
    assert "its checkpoint was made with another config; starting from step 0" in caplog.text

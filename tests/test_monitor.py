"""The run monitor (experiments/monitor.py) and what a run tells W&B (experiments/tracking.py): the per-evaluation
spectra of ΔW and the factors' drift, from the analyses' own maths; the history in metrics.json with W&B or without;
and the offline W&B run read back with W&B's own reader (experiments/wandb_records.py), never grepped."""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.maths import factor_drift, spectrum
from conftest import tiny_bert
from experiments.config import CONF_DIR, register_resolvers
from experiments.errors import ConfigError
from experiments.methods import get_method
from analysis.maths.alignment import delta_alignment, factor_alignment
from experiments.monitor import ALIGNMENT, FACTORS, SPECTRAL, Settings, SpectralMonitor
from experiments.schema import check_config
from experiments.tracking import NullLogger, run_config, run_summary
from experiments.wandb_records import read_run, run_ids
from helpers import perturb_trainable

register_resolvers()


def make(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


def test_stable_rank_and_top_share_on_known_spectra():
    spec = spectrum(torch.diag(torch.tensor([2.0, 1.0, 0.0])))
    assert spec.stable_rank == pytest.approx(5 / 4) and spec.top_share == pytest.approx(2 / 3)
    one = spectrum(torch.outer(torch.arange(1.0, 5.0), torch.ones(3)))
    assert one.stable_rank == pytest.approx(1.0) and one.top_share == pytest.approx(1.0, abs=1e-7)
    flat = spectrum(torch.eye(4))
    assert flat.stable_rank == pytest.approx(4.0) and flat.top_share == pytest.approx(0.25)
    zero = spectrum(torch.zeros(3, 2))
    assert zero.stable_rank == 0.0 and zero.top_share == 0.0


class Recorder(NullLogger):
    """Keeps what was logged, so the keys can be checked without W&B (the slow tests read a real W&B run back)."""

    def __init__(self):
        self.logged, self.tables = [], {}

    def log(self, values, step):
        self.logged.append((step, values))

    def table(self, key, columns, rows, step, lines=None):
        self.tables[key] = (columns, rows, lines)


def prepared(method_name: str, overrides=()):
    cfg = make([f"method={method_name}", "rank=2", *overrides])
    method, model = get_method(method_name), tiny_bert()
    adapted = method.prepare(model, cfg)
    perturb_trainable(model)  # as training would: ΔW ≠ 0, A moved from its init
    return cfg, method, model, adapted


def test_lora_quantities_are_the_analyses_maths_per_module():
    cfg, method, model, adapted = prepared("lora")
    monitor = SpectralMonitor.for_run(cfg, method, adapted)
    record = monitor.measure(model, epoch=1, step=4)
    deltas, factors = method.delta_weights(model), method.factors(model)
    assert list(record["modules"]) == adapted and len(adapted) == 4  # query and value of 2 layers
    for name, values in record["modules"].items():
        spec, drift = spectrum(deltas[name]), factor_drift(factors[name][0], factors[name][2])
        assert values == {"frobenius": spec.frobenius_norm, "stable_rank": spec.stable_rank,
                          "effective_rank": spec.effective_rank, "rank90": spec.rank90, "top_share": spec.top_share,
                          "A_change": drift.relative_change, "A_phi": drift.similarity,
                          "B_change": pytest.approx(float((factors[name][1] - factors[name][3]).norm()))}
        assert 0 < values["A_change"] and 0 < values["A_phi"] <= 1 and 1 <= values["stable_rank"] <= 2
    stable = sorted(v["stable_rank"] for v in record["modules"].values())
    assert record["summary"]["stable_rank"] == {"median": (stable[1] + stable[2]) / 2, "max": stable[-1]}
    assert set(record["summary"]) == {*SPECTRAL, *FACTORS} and monitor.history == [record]

    logger = Recorder()
    monitor.log(record, logger)
    step, values = logger.logged[0]
    assert step == 4 and values["epoch"] == 1
    assert values[f"delta/{adapted[0]}/rank90"] == record["modules"][adapted[0]]["rank90"]
    assert values["spectral/A_phi/max"] == record["summary"]["A_phi"]["max"]
    assert len(values) == 1 + 4 * 8 + 8 * 2  # epoch, 8 quantities per module, median and max of each

    monitor.log_final(logger, step=8, truncation=[{"k": 0, "accuracy": 0.5, "eval_loss": 0.7},
                                                  {"k": 1, "accuracy": 0.8, "eval_loss": 0.4}], metric="accuracy")
    columns, rows, lines = logger.tables["final/spectra"]
    assert columns == ["module", "k", "sigma", "energy"] and len(rows) == 4 * 2  # rank 2: two σ per module
    first = [r for r in rows if r[0] == adapted[0]]
    assert first[0][2] == pytest.approx(float(spectrum(deltas[adapted[0]]).singular_values[0]))
    assert first[-1][3] == pytest.approx(1.0) and set(lines) == {"final/spectra_sigma", "final/spectra_energy"}
    assert logger.tables["final/truncation"][1] == [[0, 0.5, 0.7], [1, 0.8, 0.4]]


def test_gradient_alignment_is_the_analysis_maths_against_the_g0_given():
    cfg, method, model, adapted = prepared("lora")
    g = torch.Generator().manual_seed(0)
    g0 = {name: torch.randn(method.delta_weights(model)[name].shape, generator=g) for name in adapted}
    monitor = SpectralMonitor(method, adapted, Settings(gradient_alignment=True), g0=g0)
    record = monitor.measure(model, epoch=1, step=4)
    factors = method.factors(model)
    for name, values in record["modules"].items():
        found = factor_alignment(g0[name].double(), factors[name][0].detach().double(), factors[name][1].detach().double())
        assert (values["G0_column"], values["G0_row"]) == pytest.approx((found["column"], found["row"]))
    assert set(record["summary"]) == {*SPECTRAL, *FACTORS, *ALIGNMENT}
    full_cfg, full, full_model, full_adapted = prepared("full", ["execution.monitor.modules='layer\\.0\\.attention'"])
    g0 = {name: torch.randn(full.delta_weights(full_model)[name].shape, generator=g) for name in full_adapted}
    one = SpectralMonitor(full, full_adapted, Settings(modules="layer\\.0\\.attention", gradient_alignment=True),
                          g0=g0).measure(full_model, epoch=1, step=1)["modules"]
    name = next(iter(one))
    expected = delta_alignment(g0[name].double(), full.delta_weights(full_model)[name].double(), 8)
    assert (one[name]["G0_column"], one[name]["G0_row"]) == pytest.approx((expected["column"], expected["row"]))


def test_full_fine_tuning_is_measured_from_its_delta_without_factors():
    cfg, method, model, adapted = prepared("full", ["execution.monitor.modules='layer\\.0\\..*(query|intermediate)'"])
    record = SpectralMonitor.for_run(cfg, method, adapted).measure(model, epoch=1, step=1)
    assert list(record["modules"]) == ["bert.encoder.layer.0.attention.self.query",
                                       "bert.encoder.layer.0.intermediate.dense"]
    assert all(set(v) == set(SPECTRAL) for v in record["modules"].values()) and set(record["summary"]) == set(SPECTRAL)
    delta = method.delta_weights(model)["bert.encoder.layer.0.intermediate.dense"]
    assert record["modules"]["bert.encoder.layer.0.intermediate.dense"]["rank90"] == spectrum(delta).rank90 > 2


def test_budget_settings_choose_modules_and_evaluations():
    cfg, method, model, adapted = prepared("lora", ["execution.monitor.every=2"])
    monitor = SpectralMonitor.for_run(cfg, method, adapted)
    assert [e for e in range(1, 6) if monitor.due(e, last_epoch=5)] == [2, 4, 5]  # and always the last
    off = SpectralMonitor.for_run(make(["execution.monitor.enabled=false"]), method, adapted)
    assert not off.due(1, 1) and off.modules == []
    head = SpectralMonitor.for_run(make(["method=head"]), get_method("head"), [])
    assert head.modules == []  # nothing to measure without ΔW
    with pytest.raises(ConfigError, match=r"execution.monitor.modules='nothing' matches none of the 4 adapted"):
        SpectralMonitor(method, adapted, Settings(modules="nothing"))
    with pytest.raises(ConfigError, match=r"execution.monitor.modules='\(' is not accepted: it must be a regular"):
        SpectralMonitor(method, adapted, Settings(modules="("))
    with pytest.raises(ConfigError, match=r"^execution.monitor.every=0 is not accepted: .* must be an integer ≥ 1$"):
        check_config(make(["execution.monitor.every=0"]))


def test_history_kept_beside_the_checkpoint_is_taken_up_to_the_resumed_step(tmp_path):
    cfg, method, model, adapted = prepared("lora")
    first = SpectralMonitor.for_run(cfg, method, adapted, tmp_path, step=0)
    first.measure(model, epoch=1, step=4)
    first.measure(model, epoch=2, step=8)
    resumed = SpectralMonitor.for_run(cfg, method, adapted, tmp_path, step=6)  # the checkpoint was at step 6
    assert [r["epoch"] for r in resumed.history] == [1]
    assert resumed.history[0] == json.loads(json.dumps(first.history[0]))


def test_wandb_config_and_summary_say_what_the_run_is():
    lora = run_config(OmegaConf.to_container(make(["rank=4", "alpha=8", "seed=2"]), resolve=True))
    assert {k: lora[k] for k in ("method", "task", "model", "seed", "rank", "alpha", "targets", "lr")} == {
        "method": "lora", "task": "sst2", "model": "minilm", "seed": 2, "rank": 4, "alpha": 8.0, "targets": "qv",
        "lr": lora["config"]["method"]["lr"]}
    assert len(lora["config_id"]) == 10 and lora["config"]["execution"]["monitor"]["every"] == 1
    full = run_config(OmegaConf.to_container(make(["method=full"]), resolve=True))
    assert full["method"] == "full" and "rank" not in full and "targets" not in full  # no rank=8 it never read
    best, last = {"epoch": 2, "accuracy": 0.9, "eval_loss": 0.3}, {"epoch": 3, "accuracy": 0.8, "eval_loss": 0.4}
    summary = run_summary({"metric": "accuracy", "best": best, "last": last, "forgetting": {"value": 0.1},
                           "trainable_params": 10, "method_params": 8, "wall_time_s": 1.0,
                           "train_examples_per_s": 5.0, "flags": []})
    assert summary["best_metric"] == 0.9 and summary["best_epoch"] == 2 and summary["best/eval_loss"] == 0.3
    assert summary["last/accuracy"] == 0.8 and summary["forgetting"] == 0.1


def test_wandb_run_ids_come_from_the_run_folder(tmp_path):
    assert run_ids(tmp_path) == []
    for name in ("run-20261201_101010-bbb222", "offline-run-20261130_090909-aaa111", "latest-run", "other"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert run_ids(tmp_path) == ["aaa111", "bbb222"]  # oldest first


# --- a real run, W&B offline and disabled ---------------------------------------------------------------------

@pytest.mark.slow
def test_offline_wandb_run_holds_the_spectral_history_and_disabled_writes_the_same_file(tiny_overrides, tmp_path):
    from experiments.job import run_job

    offline = [o for o in tiny_overrides if not o.startswith("execution.wandb.mode")] + ["execution.wandb.mode=offline"]
    assert run_job(make(offline), tmp_path / "rank=2", name="rank=2", group="day/sweep")["status"] == "complete"
    assert run_job(make(tiny_overrides), tmp_path / "off", name="off", group="day/sweep")["status"] == "complete"
    metrics = json.loads((tmp_path / "rank=2" / "metrics.json").read_text())
    history = metrics["spectral_history"]
    assert [r["epoch"] for r in history] == [1, 2] and [r["step"] for r in history] == [4, 8]
    assert len(history[0]["modules"]) == 4 and set(history[0]["summary"]) == {*SPECTRAL, *FACTORS}

    without = json.loads((tmp_path / "off" / "metrics.json").read_text())["spectral_history"]
    assert run_ids(tmp_path / "off") == []  # W&B disabled: no W&B run, the same history in the file
    assert [{k: r[k] for k in ("epoch", "step", "modules", "summary")} for r in without] == \
        [{k: r[k] for k in ("epoch", "step", "modules", "summary")} for r in history]

    run = read_run(tmp_path / "rank=2")  # W&B's own reader over the offline transaction log
    assert run.group == "day/sweep" and run.name == "rank=2" and run_ids(tmp_path / "rank=2") == [run.run_id]
    assert {k: run.config[k] for k in ("method", "task", "rank", "alpha", "targets", "seed")} == {
        "method": "lora", "task": "sst2", "rank": 2, "alpha": 4, "targets": "qv", "seed": 0}
    for module in metrics["adapted_modules"]:
        for quantity in (*SPECTRAL, *FACTORS):
            logged = run.series(f"delta/{module}/{quantity}")
            assert logged == [(r["epoch"], pytest.approx(r["modules"][module][quantity])) for r in history]
    medians = [(r["epoch"], pytest.approx(r["summary"]["stable_rank"]["median"])) for r in history]
    assert run.series("spectral/stable_rank/median") == medians
    best = metrics["best"]
    assert run.summary["best_metric"] == pytest.approx(best["accuracy"]) and run.summary["best_epoch"] == best["epoch"]
    assert run.summary["best/accuracy"] == pytest.approx(best["accuracy"]) and run.summary["method_params"] == 512
    for table in ("final/spectra", "final/truncation"):
        assert run.summary[f"{table}._type"] == "table-file" and run.summary[f"{table}.nrows"] > 0
    assert run.summary["final/spectra.nrows"] == 4 * 2 and not math.isnan(run.summary["spectral/rank90/max"])


@pytest.mark.slow
def test_overhead_benchmark_times_runs_with_and_without_the_monitor(tiny_model_dir, tiny_glue_dir, tmp_path):
    from benchmarks import monitor_overhead

    result = monitor_overhead.main(["--model-path", str(tiny_model_dir), "--glue-dir", str(tiny_glue_dir),
                                    "--train-samples", "32", "--epochs", "1", "--repeats", "1", "--rank", "2",
                                    "--out", str(tmp_path)])  # fmt: skip
    off, on = result["runs"]
    assert (off["monitor"], on["monitor"]) == (False, True) and (off["measurements"], on["measurements"]) == (0, 1)
    assert on["modules"] == 4 and on["monitor_s"] > 0
    assert result["overhead"]["monitor_share_of_run"] == pytest.approx(on["monitor_s"] / on["run_wall_s"], abs=0.01)
    assert result["overhead"]["paired_job_time_increase"] == pytest.approx(on["job_s"] / off["job_s"] - 1, abs=1e-3)
    assert "Run monitor overhead" in (tmp_path / "monitor_overhead_cpu.md").read_text()


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_history_of_an_uninterrupted_one(tiny_overrides, tmp_path, monkeypatch):
    from experiments.job import run_job

    cfg = make(tiny_overrides + ["execution.checkpoint_every=3"])  # 2 epochs of 4 steps: checkpoints at 3 and 6
    run_job(cfg, tmp_path / "whole", name="whole", group="t")
    measure = SpectralMonitor.measure

    def killed_at_epoch_2(self, model, epoch, step):  # after epoch 1's record (step 4) and the checkpoint of step 6
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return measure(self, model, epoch, step)

    monkeypatch.setattr(SpectralMonitor, "measure", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, tmp_path / "killed", name="killed", group="t")
    saved = json.loads((tmp_path / "killed" / ".checkpoint" / "spectral_history.json").read_text())["history"]
    assert [r["epoch"] for r in saved] == [1]
    monkeypatch.setattr(SpectralMonitor, "measure", measure)
    assert run_job(cfg, tmp_path / "killed", name="killed", group="t")["status"] == "complete"

    whole, resumed = (json.loads((tmp_path / n / "metrics.json").read_text())["spectral_history"]
                      for n in ("whole", "killed"))  # fmt: skip
    assert [{k: r[k] for k in ("epoch", "step", "modules")} for r in resumed] == \
        [{k: r[k] for k in ("epoch", "step", "modules")} for r in whole]

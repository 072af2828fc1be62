"""Beyond the paper, the experiments side (issue 23): G₀ through its one door (known answer: a linear model's closed
form), per-module ranks and init=gradient as sweep keys, end to end on the tiny BERT."""

import json
from types import SimpleNamespace

import peft
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from experiments.config import CONF_DIR, register_resolvers
from experiments.gradients import gradients

register_resolvers()


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


class LinearRegression(nn.Module):
    """y = W x + b with L = mean over examples of ‖y − t‖²: ∂L/∂W = (2/N) Σ (W xᵢ + b − tᵢ) xᵢᵀ."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(5, 3)

    def forward(self, x, labels):
        return SimpleNamespace(loss=(self.proj(x) - labels).square().sum(-1).mean())


def test_g0_of_a_linear_model_is_its_closed_form():
    model = LinearRegression()
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(7, 5, generator=generator), torch.randn(7, 3, generator=generator)
    batches = [{"x": x[:4], "labels": t[:4]}, {"x": x[4:], "labels": t[4:]}]  # unequal batches: example-weighted
    model.proj.weight.requires_grad_(False)
    found = gradients(model, batches, ["proj"])
    with torch.no_grad():
        expected = 2 / 7 * (model.proj(x) - t).T @ x
    torch.testing.assert_close(found["proj"], expected, atol=1e-6, rtol=1e-6)
    assert model.proj.weight.grad is None and not model.proj.weight.requires_grad  # left as it was


def test_pattern_keys_compose_and_are_checked(tiny_overrides):
    from experiments.errors import ConfigError
    from experiments.identity import identity
    from experiments.schema import check_config
    from omegaconf import OmegaConf

    cfg = make(tiny_overrides + ["rank_pattern={layer.0.attention.self.query:6,value:3}", "alpha_pattern={value:2}"])
    check_config(cfg)
    assert dict(cfg.method.rank_pattern) == {"layer.0.attention.self.query": 6, "value": 3}
    plain = identity(OmegaConf.to_container(make(tiny_overrides), resolve=True))
    assert "rank_pattern" not in plain["method"]  # runs from before the key keep their identity
    with pytest.raises(ConfigError, match=r"rank_pattern\['value'\] = 0; accepted: positive integers"):
        check_config(make(tiny_overrides + ["rank_pattern={value:0}"]))
    with pytest.raises(ConfigError, match="rank_pattern=8 is not accepted"):
        check_config(make(tiny_overrides + ["rank_pattern=8"]))


@pytest.mark.slow
def test_gradient_init_and_rank_pattern_run_end_to_end(tiny_overrides, tmp_path):
    from experiments.gradients import run_gradients
    from experiments.job import run_job
    from experiments.models import load_model

    overrides = tiny_overrides + ["train.epochs=1", "init=gradient", "rank_pattern={value:3}"]
    run_dir = tmp_path / "run"
    status = run_job(make(overrides), run_dir, name="run", group="t")
    assert status["status"] == "complete", status
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["init"] == "gradient" and json.loads(metrics["run"]["rank_pattern"]) == {"value": 3}
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["rank_pattern"].values()) == {6}  # plain LoRA of 2r: 2·2 and 2·3

    g0 = run_gradients(run_dir)  # the door: the cached G₀ the run started from
    assert set(g0) >= {"bert.encoder.layer.0.attention.self.value"} and g0["bert.encoder.layer.0.attention.self.value"].shape == (32, 32)
    init = json.loads((run_dir / "adapter_init" / "adapter_config.json").read_text())
    assert init["r"] == 4
    model_path = metrics["run"]["model_path"]
    peft_model = peft.PeftModel.from_pretrained(load_model(model_path, 2), run_dir / "adapter").eval()
    from lorakit import load_adapter

    mine = load_model(model_path, 2)
    load_adapter(mine, run_dir / "adapter")
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    torch.testing.assert_close(peft_model(**batch).logits, mine.eval()(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_beyond_builders_end_to_end(tiny_overrides, tmp_path):
    """The four builders on a tiny LoRA and a tiny full fine-tune, through experiments' door."""
    from analysis.tables.gradient_alignment import alignment_summary, gradient_alignment_tables
    from analysis.tables.intruder_cost import intruder_cost_table
    from analysis.tables.rank_allocation import rank_allocation_table
    from analysis.tables.sharpness import sharpness_table
    from analysis.runs import scan_runs
    from experiments.job import run_job

    common = tiny_overrides + ["train.epochs=1", "probes.forgetting=false", "probes.truncation=false"]
    for method in ("lora", "full"):
        status = run_job(make(common + [f"method={method}"]), tmp_path / "sweep" / method, name=method, group="t")
        assert status["status"] == "complete", status
    runs, _ = scan_runs([tmp_path / "sweep"])
    watched = run_job(make(common + ["method=lora", "execution.monitor.gradient_alignment=true"]),
                      tmp_path / "watched", name="lora", group="t")  # G₀ measured while it trains
    plain, measured = (json.loads((folder / "metrics.json").read_text())
                       for folder in (tmp_path / "sweep" / "lora", tmp_path / "watched"))
    assert watched["status"] == "complete" and measured["best"] == plain["best"]  # the run's random state untouched
    last = measured["spectral_history"][-1]
    assert {"G0_column", "G0_row"} <= set(last["summary"]) and "G0_column" not in plain["spectral_history"][-1]["summary"]
    from analysis.tables.gradient_alignment import alignment_curve_table

    curve = alignment_curve_table(scan_runs([tmp_path / "watched"])[0]).frame
    assert len(curve) == len(measured["spectral_history"]) and curve["φ column"].between(0, 1).all()

    allocation = rank_allocation_table(runs, "sst2", rank=2).frame
    assert allocation["allocated params"].sum() <= allocation["uniform params"].sum() and len(allocation) == 4

    alignment, by_seed = gradient_alignment_tables(runs, "sst2", rank=2, draws=20)
    lora = alignment.frame[alignment.frame["config"].str.startswith("LoRA")]
    assert lora["φ column (B)"].tolist() == pytest.approx(lora["φ column (ΔW)"].tolist())  # rank-r ΔW spans B
    assert alignment.missing_controls  # no other task: the cross-task control is named as missing
    assert set(alignment_summary(alignment).frame["config"]) == set(alignment.frame["config"])
    one = by_seed.frame.set_index("config").loc[lora["config"].iloc[0]]  # one seed: its mean over modules
    assert one["φ column (ΔW)"] == pytest.approx(lora["φ column (ΔW)"].mean())

    cost = intruder_cost_table(runs, "sst2", lambdas=(1.0, 0.0), seeds=1).frame
    assert (cost.loc[cost["λ"] == 1.0, "value"] == cost.loc[cost["λ"] == 1.0, "recorded"]).all()  # λ=1: the run

    sources = {row["label"]: row["run_dir"] for _, row in runs.iterrows()}
    sharp = sharpness_table(sources, examples=16, iterations=5).frame
    assert len(sharp) == 2 and (sharp["λ_max"] > 0).all()
    assert sharp.set_index("config")["trainable"].max() > sharp.set_index("config")["trainable"].min()

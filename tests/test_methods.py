"""Every method end to end on the tiny BERT: it trains what it says it trains, counts what the paper counts, and
writes what the analyses read."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments import models as models_module
from experiments.config import CONF_DIR, ConfigError, register_resolvers
from experiments.job import run_job

register_resolvers()
pytestmark = pytest.mark.slow  # each test trains the tiny model: the slow tier


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


@pytest.fixture()
def trained(tiny_overrides, tmp_path, monkeypatch):
    """Run a method into a run folder; return (metrics, {parameter: changed?}, run folder)."""
    load_model = models_module.load_model

    def run(*overrides):
        kept = {}

        def keep(path, num_labels):
            kept["model"] = model = load_model(path, num_labels)
            kept["before"] = {k: v.clone() for k, v in model.state_dict().items()}
            return model

        monkeypatch.setattr(models_module, "load_model", keep)
        run_dir = tmp_path / "_".join(overrides)
        status = run_job(make(tiny_overrides + ["train.epochs=1", *overrides]), run_dir, name=run_dir.name, group="t")
        assert status["status"] == "complete", status
        after = kept["model"].state_dict()
        changed = {k: not torch.equal(v, after[k]) for k, v in kept["before"].items() if k in after}
        return json.loads((run_dir / "metrics.json").read_text()), changed, run_dir

    return run


def test_bitfit_trains_the_biases_and_the_head(trained):
    metrics, changed, run_dir = trained("method=bitfit")
    moved = {k for k, c in changed.items() if c}
    assert moved and all(k.endswith(".bias") or k.startswith(("classifier.", "bert.pooler.")) for k in moved)
    assert any(k.startswith("bert.encoder.") and k.endswith(".bias") for k in moved)
    assert metrics["method_params"] > 0 and metrics["method_params"] < metrics["trainable_params"]
    assert metrics["truncation"] is None and not (run_dir / "delta_weights.safetensors").exists()


def test_adapter_adds_bottlenecks_and_leaves_the_encoder_weights(trained):
    metrics, changed, run_dir = trained("method=adapter", "adapter_size=4")
    assert not any(c for k, c in changed.items() if k.startswith("bert.encoder."))  # wrapped, not changed
    # 2 layers × 2 adapters × (down 32→4 + up 4→32 with biases)
    assert metrics["method_params"] == 2 * 2 * (32 * 4 + 4 + 4 * 32 + 32) and metrics["run"]["adapter_size"] == 4
    assert (run_dir / "bottleneck_adapters").is_dir() and not (run_dir / "adapter").exists()


def test_dora_writes_a_peft_adapter_and_its_delta(trained):
    metrics, _, run_dir = trained("method=dora")
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True and metrics["run"]["use_dora"] is True
    # LoRA's factors plus one magnitude per output row of each adapted matrix (4 matrices of 32 rows)
    assert metrics["method_params"] == 4 * (2 * 32 + 32 * 2) + 4 * 32
    assert [t["k"] for t in metrics["truncation"]][:2] == [0, 1]


def test_frozen_a_keeps_a_bit_identical(trained):
    from safetensors.torch import load_file

    metrics, _, run_dir = trained("freeze_a=true")
    start, end = (load_file(run_dir / name / "adapter_model.safetensors") for name in ("adapter_init", "adapter"))
    a = [k for k in start if k.endswith("lora_A.weight")]
    assert len(a) == 4 and all(torch.equal(start[k], end[k]) for k in a)
    assert all(not torch.equal(start[k], end[k]) for k in start if k.endswith("lora_B.weight"))
    assert metrics["method_params"] == 4 * 32 * 2  # B alone trains: the paper's count of what trains


def test_loraplus_puts_b_at_ratio_times_the_learning_rate(tiny_overrides):
    from experiments.methods import get_method
    from experiments.models import load_model, resolve_model_path

    cfg = make(tiny_overrides + ["loraplus_ratio=16", "train.lr=1e-3"])
    method = get_method("lora")
    model = load_model(resolve_model_path(cfg.model), 2)
    method.prepare(model, cfg)
    rest, b = method.parameter_groups(model, cfg)
    assert b["lr"] == 16 * rest["lr"] == 16e-3 and len(b["params"]) == 4
    assert all(p.shape[1] == 2 for p in b["params"])  # B is out × r


def test_pissa_run_starts_from_the_top_singular_directions(trained):
    metrics, changed, run_dir = trained("init=pissa")
    assert metrics["run"]["init"] == "pissa"
    assert changed["bert.encoder.layer.0.attention.self.query.weight"]  # W₀ is replaced by the residual
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["r"] == 4  # saved as plain LoRA of 2r


def test_qlora_trains_the_factors_on_a_4_bit_base(tiny_overrides, tiny_model_dir, tmp_path):
    pytest.importorskip("torchao")
    from transformers import AutoTokenizer, BertConfig, BertModel

    wide = tmp_path / "bert-128"  # NF4's blocks need out·in divisible by 16384: 128x128 attention projections
    config = BertConfig(vocab_size=AutoTokenizer.from_pretrained(tiny_model_dir).vocab_size, hidden_size=128,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(wide)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(wide)
    overrides = tiny_overrides + [f"model.path={wide}", "train.epochs=1", "quantize=nf4"]
    status = run_job(make(overrides), tmp_path / "qlora", name="qlora", group="t")
    assert status["status"] == "complete", status
    metrics = json.loads((tmp_path / "qlora" / "metrics.json").read_text())
    assert metrics["run"]["quantize"] == "nf4" and metrics["method_params"] == 2 * (2 * 128 + 128 * 2)
    assert metrics["truncation"][0]["k"] == 0  # ΔW against the dequantized W₀, merged and cut like any LoRA's
    failed = run_job(make(tiny_overrides + ["quantize=nf4"]), tmp_path / "narrow", name="narrow", group="t")
    assert "is 32x32 (1024 weights); NF4" in failed["error"]  # the tiny 32-wide model cannot be quantized


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=prefix"], None),
        (["quantize=nf4", "method=dora"], "quantize=nf4 keeps W₀ frozen in 4 bits; method=dora"),
        (["quantize=int3"], "quantize='int3' is not accepted: quantize must be none | nf4"),
        (["loraplus_ratio=-1"], "loraplus_ratio=-1 is not accepted: loraplus_ratio must be a number > 0"),
        (["freeze_a=true", "init=pissa"], "freeze_a=True does not combine with init='pissa'"),
        (["method=adapter", "adapter_size=0"], "adapter_size=0 is not accepted: adapter_size must be an integer ≥ 1"),
    ],
)
def test_bad_method_input_is_one_line(tiny_overrides, overrides, message):
    from hydra.errors import ConfigCompositionException

    from experiments.schema import check_config as validate

    if message is None:  # an unknown method has no config file: Hydra lists the options
        with pytest.raises(ConfigCompositionException, match="Could not find 'method/prefix'"):
            make(tiny_overrides + overrides)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        validate(make(tiny_overrides + overrides))
    assert "\n" not in str(err.value)

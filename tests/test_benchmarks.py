"""The benchmarks run end to end on a tiny model and write what the README and the lead read. No timing assertions:
timings belong to the benchmark's output, not to a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run_all
from benchmarks.models import Variant, build_base, build_variant, check_same_adaptation


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    run_all.main(["--tiny", "--out", str(folder), "--device", "cpu", "--threads", "1"])
    return folder


def load(out: Path, name: str) -> dict:
    result = json.loads((out / f"{name}_cpu.json").read_text())
    assert result["benchmark"] == name
    assert {"cpu", "logical_cpus", "torch_threads", "device", "versions"} <= set(result["machine"])
    assert 0.0 <= result["cpu_share"]["cpu_busy_with_other_processes"] <= 1.0
    assert (out / f"{name}_cpu.md").read_text().startswith("### ")
    return result


def test_train_step_compares_every_config(out: Path) -> None:
    result = load(out, "train_step")
    model = result["models"]["tiny"]
    lora = {f"{m} r=4 {t}" for m in ("lorakit", "peft") for t in ("qv", "all")}
    assert set(model["variants"]) == {"full", "peft r=4 qv #2"} | lora
    for label, variant in model["variants"].items():
        assert variant["time"]["n"] == 2 and variant["time"]["median_ms"] > 0
        assert variant["accounting"]["adam_state_bytes"] == 2 * variant["accounting"]["grad_bytes"]
        if "#" not in label:  # the noise-floor replica is timed only
            assert variant["memory"]["peak_mb"] > 0 and variant["memory"]["tensor_peak_mb"] > 0
    assert model["noise_floor"]["variants"] == ["peft r=4 qv #2", "peft r=4 qv"]
    comparisons = {(c["r"], c["targets"]): c for c in model["comparisons"]}
    assert set(comparisons) == {(4, "qv"), (4, "all")}
    # 2 layers: W_q, W_v each, or all six linears each
    assert comparisons[(4, "qv")]["adapted_modules"] == 4 and comparisons[(4, "all")]["adapted_modules"] == 12
    for c in comparisons.values():
        assert {"lorakit_vs_peft_time", "lorakit_vs_full_time", "lorakit_vs_peft_memory", "saved_vs_full_mb",
                "expected_saving_vs_full_mb", "targets_met"} <= set(c)
        assert c["expected_saving_vs_full_mb"] > 0


def test_inference_has_base_unmerged_and_merged(out: Path) -> None:
    variants = load(out, "inference")["models"]["tiny"]["variants"]
    assert variants["base"]["vs_base"] == 1.0
    assert {"lorakit r=4 qv", "peft r=8 all", "lorakit r=4 qv merged", "lorakit r=4 all merged"} <= set(variants)
    assert variants["lorakit r=4 qv merged"]["target"] == 1.02 and variants["lorakit r=8 qv"]["target"] == 1.10


def test_analysis_cost_times_every_analysis(out: Path) -> None:
    result = load(out, "analysis_cost")
    assert result["phi_grid"]["shape"] == "8x8" and result["phi_grid"]["median_ms"] > 0
    assert result["spectra_lora"]["modules"] == 12  # 2 layers x 6 linears
    assert result["spectra_full"]["modules"] == 13  # and BERT's pooler, which full fine-tuning changes too


def test_sst2_epoch_reports_throughput(out: Path) -> None:
    result = load(out, "sst2_epoch")
    run = result["methods"]["lorakit"]
    assert run["timed_steps"] == 2 and run["examples_per_s"] > 0
    assert result["settings"]["scope"].startswith("slice")


def test_readme_lists_targets_and_tables(out: Path) -> None:
    readme = (out / "README.md").read_text()
    assert "## Targets (issue 5)" in readme
    for heading in ("Training step", "Inference latency", "Analysis cost", "SST-2 training throughput"):
        assert heading in readme


def test_lora_variants_share_frozen_weights_but_not_the_head() -> None:
    state = build_base("tiny").state_dict()
    (a, _), (b, _) = (build_variant("tiny", Variant(m, 4, "qv"), state) for m in ("lorakit", "peft"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert a.get_parameter(key).data_ptr() == state[key].data_ptr()
    assert a.get_parameter("classifier.weight").data_ptr() != state["classifier.weight"].data_ptr()
    full, _ = build_variant("tiny", Variant("full"), state)
    assert full.get_parameter(key).data_ptr() != state[key].data_ptr()


def test_unequal_adaptation_is_refused() -> None:
    lk = build_variant("tiny", Variant("lorakit", 4, "qv"))
    pf = build_variant("tiny", Variant("peft", 4, "all"))
    with pytest.raises(AssertionError, match="adapted"):
        check_same_adaptation(lk, pf, "tiny")

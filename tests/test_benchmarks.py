"""The benchmarks run end to end on a tiny model and write what the README and the lead read. No timing assertions:
timings belong to the benchmark's output, not to a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import common, gpu_check, run_all, train_step
from benchmarks.models import Variant, accounting, build_base, build_variant, check_same_adaptation, target_names

REPO = Path(__file__).resolve().parents[1]


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


def test_dora_rows_race_lorakit_against_peft_on_the_same_config(tmp_path: Path) -> None:
    """``--dora``: both libraries build DoRA at the same r, targets and init, and the rows come out as LoRA's do."""
    result = train_step.main(["--dora", "--models", "tiny", "--batch", "2", "--seq-len", "8", "--ranks", "4",
                              "--targets", "qv", "--steps", "2", "--warmup", "1", "--mem-steps", "0",
                              "--device", "cpu", "--threads", "1", "--out", str(tmp_path)])
    assert result["benchmark"] == "train_step_dora" and result["settings"]["adapter"] == "dora"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_step_dora_cpu.json", "train_step_dora_cpu.md"]
    model = result["models"]["tiny"]
    assert set(model["variants"]) == {"full", "lorakit dora r=4 qv", "peft dora r=4 qv", "peft dora r=4 qv #2"}
    assert model["noise_floor"]["variants"] == ["peft dora r=4 qv #2", "peft dora r=4 qv"]
    (row,) = model["comparisons"]
    # 2 layers x (W_q, W_v); each: A (4 x 64), B (64 x 4) and DoRA's magnitude (64); plus the head (64 x 2 + 2).
    assert row["adapted_modules"] == 4 and row["trainable_params"] == 4 * (2 * 4 * 64 + 64) + 130
    assert row["lorakit_vs_peft_time_paired"] > 0 and row["step_ms"]["lorakit"] > 0 and row["step_ms"]["peft"] > 0
    assert model["variants"]["lorakit dora r=4 qv"]["dora"] and not model["variants"]["full"]["dora"]
    markdown = (tmp_path / "train_step_dora_cpu.md").read_text()
    assert markdown.startswith("### Training step, DoRA (batch 2 × 8")
    assert "| model | DoRA | modules |" in markdown and "| tiny | r=4 qv | 4 | 2,434 |" in markdown


def test_dora_variants_adapt_alike_and_a_dora_lora_pair_is_refused() -> None:
    state = build_base("tiny").state_dict()
    lk, pf = (build_variant("tiny", Variant(m, 4, "all", dora=True), state) for m in ("lorakit", "peft"))
    assert check_same_adaptation(lk, pf, "tiny") == {"adapted_modules": 12, "trainable_params": 8194}
    plain = build_variant("tiny", Variant("peft", 4, "all"), state)
    with pytest.raises(AssertionError, match="lorakit trains 8,194 parameters, PEFT 7,298"):
        check_same_adaptation(lk, plain, "tiny")  # DoRA's magnitudes: 12 modules' output features, 896 in all


# tiny-llama: hidden 64, 4 query heads and 2 key/value heads of 16 (k_proj, v_proj: 64 -> 32), MLP 128, vocab 512.
TINY_LLAMA_PARAMS = 512 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64  # lm_head tied


def test_decoder_rows_race_lorakit_against_peft_on_tiny_llama(tmp_path: Path) -> None:
    """Decoders: next-token loss, no head; qv and all adapt the same modules and train as many parameters in both
    libraries, and the rows go to train_step_decoder_<device>, never over the encoders' train_step_<device>."""
    result = train_step.main(["--models", "tiny-llama", "--batch", "2", "--seq-len", "8", "--ranks", "4",
                              "--targets", "qv,all", "--steps", "2", "--warmup", "1", "--mem-steps", "0",
                              "--device", "cpu", "--threads", "1", "--out", str(tmp_path)])
    assert result["benchmark"] == "train_step_decoder" and result["settings"]["loss"].startswith("next-token")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_step_decoder_cpu.json", "train_step_decoder_cpu.md"]
    model = result["models"]["tiny-llama"]
    rows = {c["targets"]: c for c in model["comparisons"]}
    # per layer, A (r x in) + B (out x r): qv = q (64->64) + v (64->32); all adds k, o and gate, up (64->128), down.
    qv, every = 4 * (64 + 64) + 4 * (64 + 32), 4 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
    assert (rows["qv"]["adapted_modules"], rows["qv"]["trainable_params"]) == (2 * 2, 2 * qv) == (4, 1792)
    assert (rows["all"]["adapted_modules"], rows["all"]["trainable_params"]) == (2 * 7, 2 * every) == (14, 8192)
    full = model["variants"]["full"]["accounting"]
    assert full["params"] == full["trainable_params"] == TINY_LLAMA_PARAMS  # the tied lm_head counted once
    # Model FLOPs of full fine-tuning: 3x the forward's, which multiplies every token by each layer's linears
    # (q, o 64x64; k, v 64x32; gate, up, down 64x128) and the lm_head (64x512). Attention is not counted on a CPU:
    # torch's counter has no formula for the fused CPU SDPA kernel LLaMA calls (train_step.FLOPS_NOTE says so).
    forward = 2 * (2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 512) * (2 * 8)
    assert model["variants"]["full"]["utilisation"]["flops_per_step"] == 3 * forward
    assert "CPU SDPA" in result["settings"]["flops"]
    for c in rows.values():
        assert c["step_ms"]["lorakit"] > 0 and c["step_ms"]["peft"] > 0 and c["lorakit_vs_peft_time_paired"] > 0
        assert c["utilisation"]["lorakit"]["flops_per_step"] == c["utilisation"]["peft"]["flops_per_step"]
    assert model["noise_floor"]["variants"] == ["peft r=4 qv #2", "peft r=4 qv"]
    markdown = (tmp_path / "train_step_decoder_cpu.md").read_text()
    assert markdown.startswith("### Training step, decoders (next-token loss) (batch 2 × 8")
    assert "| tiny-llama | r=4 all | 14 | 8,192 |" in markdown
    readme = run_all.write_readme(tmp_path).read_text()  # its own section, and its rows in the targets table
    assert "## cpu: Training step, decoders (next-token loss)" in readme
    assert "| step time lorakit/PEFT ≤ 1.00 | cpu: tiny-llama r=4 all |" in readme


def test_decoder_variants_keep_the_tied_lm_head_and_share_frozen_weights() -> None:
    state = build_base("tiny-llama").state_dict()
    key, embedding = "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"
    for variant in (Variant("lorakit", 4, "all"), Variant("peft", 4, "all"), Variant("full")):
        model, _ = build_variant("tiny-llama", variant, state)
        base = model.get_base_model() if variant.method == "peft" else model
        assert base.lm_head.weight is base.model.embed_tokens.weight, variant
        shared = base.model.embed_tokens.weight.data_ptr() == state[embedding].data_ptr()
        assert shared == (variant.method != "full"), variant
        assert accounting(model)["params"] - accounting(model)["trainable_params"] == (
            0 if variant.method == "full" else TINY_LLAMA_PARAMS)
    lk = build_variant("tiny-llama", Variant("lorakit", 4, "qv"), state)[0]
    assert lk.get_parameter(key).data_ptr() == state[key].data_ptr()


def test_decoder_memory_is_measured_on_a_next_token_step() -> None:
    """What each fresh memory process runs (here in this one: forking a process per variant costs seconds)."""
    args = {"threads": torch.get_num_threads(), "device": "cpu", "dtype": "fp32", "init": "kaiming", "batch": 2,
            "seq_len": 8, "mem_steps": 2, "pin_malloc": False}
    memory = train_step.measure_memory("tiny-llama", Variant("lorakit", 4, "all"), args)
    # live tensors: at least the fp32 weights (the tied embedding once), the factors and their two Adam moments
    assert memory["tensor_peak_mb"] * common.MB >= 4 * (TINY_LLAMA_PARAMS + 3 * 8192)
    assert memory["peak_mb"] > memory["tensor_peak_mb"]


def test_all_is_lorakits_preset_for_both_architectures() -> None:
    import lorakit

    assert target_names("all") == lorakit.TARGET_PRESETS["all"]
    assert {"query", "attention.output.dense", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        target_names("all"))


def test_readme_rebuilds_from_the_committed_results(tmp_path: Path) -> None:
    """Every results/benchmarks JSON renders, those written before the FLOP counts and the issue-15 bound included."""
    for path in (REPO / "results" / "benchmarks").glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    readme = run_all.write_readme(tmp_path).read_text()
    for section in ("## cpu: Training step (batch", "## cpu: Training step, DoRA", "## cpu: Training step, decoders"):
        assert section in readme
    assert "| step time lorakit/PEFT ≤ 1.00 | cpu: minilm r=8 qv |" in readme


def test_a_run_mixing_encoders_and_decoders_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="mixes encoders and decoders"):
        train_step.main(["--models", "tiny,tiny-llama", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def forward_flops(config, batch: int, seq: int) -> int:
    """Matmul FLOPs of a BERT classifier's forward pass: the encoder's linears and attention on every token, the
    pooler and classifier on the [CLS] tokens (2 FLOPs per multiply-add)."""
    d, inner, layers, tokens = config.hidden_size, config.intermediate_size, config.num_hidden_layers, batch * seq
    linears = layers * (4 * d * d + 2 * d * inner) * tokens
    attention = layers * 2 * tokens * seq * d  # Q·Kᵀ and softmax·V
    head = (d * d + d * config.num_labels) * batch
    return 2 * (linears + attention + head)


def test_train_step_counts_model_flops(out: Path) -> None:
    variants = load(out, "train_step")["models"]["tiny"]["variants"]
    flops = {label: v["utilisation"]["flops_per_step"] for label, v in variants.items()}
    # Full fine-tuning: forward, then the input and the weight gradient of every product, each as costly: 3x forward.
    assert flops["full"] == 3 * forward_flops(build_base("tiny").config, batch=4, seq=16)
    # LoRA skips the frozen weights' gradients; both libraries do the same arithmetic.
    assert flops["full"] > flops["lorakit r=4 all"] > flops["lorakit r=4 qv"] > 0
    assert flops["lorakit r=4 qv"] == flops["peft r=4 qv"] and flops["lorakit r=4 all"] == flops["peft r=4 all"]
    assert all(v["utilisation"]["mfu"] is None for v in variants.values())  # fp32 on a CPU: no bf16 peak


def test_utilisation_is_flops_over_time_over_peak() -> None:
    assert train_step.utilisation(2 * 10**12, 1000.0, 4.0) == {"flops_per_step": 2 * 10**12, "tflops_per_s": 2.0,
                                                              "mfu": 0.5}
    assert train_step.utilisation(10**12, 1000.0, None)["mfu"] is None


def test_bf16_peak_comes_from_the_device_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, tflops in (("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                         ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce RTX 4090", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda name=name: name)
        peak = common.bf16_peak_tflops("cuda")
        assert peak["tflops"] == tflops and (name in peak["source"] or tflops is None), peak
    assert common.bf16_peak_tflops("cpu")["tflops"] is None
    assert common.bf16_peak_tflops("cpu", 123.0) == {"tflops": 123.0, "source": "--peak-tflops"}


@pytest.mark.slow
def test_train_step_in_bf16_reports_mfu(tmp_path: Path) -> None:
    """The GPU check's bf16 path, on the CPU (bf16 autocast there too), with a stated peak."""
    result = train_step.main(["--models", "tiny", "--batch", "4", "--seq-len", "16", "--ranks", "4", "--targets", "qv",
                              "--steps", "2", "--warmup", "1", "--mem-steps", "0", "--device", "cpu", "--dtype", "bf16",
                              "--threads", "1", "--peak-tflops", "0.5", "--out", str(tmp_path)])
    assert result["machine"]["precision"] == "bf16 autocast" and result["settings"]["dtype"] == "bf16"
    assert result["settings"]["peak_tflops"] == {"tflops": 0.5, "source": "--peak-tflops"}
    row = result["models"]["tiny"]["comparisons"][0]
    for u in row["utilisation"].values():
        assert u["mfu"] == pytest.approx(u["tflops_per_s"] / 0.5, abs=2e-3) and u["mfu"] > 0
    assert row["targets_met"]["mfu"] is None  # the MFU target is RoBERTa-base's
    assert row["time_vs_peft_bound"] == 1.0  # on a CPU (issue 5); 0.90 on a GPU (issue 15)
    assert "MFU against a peak of 0.5 TFLOP/s" in (tmp_path / "train_step_cpu.md").read_text()


GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_refuses_an_unknown_option() -> None:
    done = subprocess.run(["bash", str(GPU_CHECK), "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --bogus" in done.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_checks_every_command_and_catches_a_bad_one(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    good = subprocess.run(["bash", str(GPU_CHECK), "--dry-run"], capture_output=True, text=True, env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    for step in ("machine", "gpu_tests", "fast_tests", "main_job", "train_step_bf16"):
        assert f"[{step}, at most" in good.stdout
    assert good.stdout.count("  ok: ") == 3 and "FAILED" not in good.stdout
    assert "--dtype' 'bf16'" in good.stdout and "'train.max_train_samples=2000'" in good.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    bad = subprocess.run(["bash", str(GPU_CHECK), "--dry-run", "no_such_key=1"], capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 1 and "FAILED: main job overrides compose" in bad.stdout, bad.stdout
    assert bad.stdout.count("  ok: ") == 2


def test_gpu_check_accepts_a_complete_sweep_and_names_an_incomplete_run(tmp_path: Path) -> None:
    header = "name,status,metric,best_accuracy,wall_time_s,train_examples_per_s,device\n"
    (tmp_path / "runs.csv").write_text(header + "rank=8,complete,accuracy,0.84,30.5,900,cuda\n")
    assert gpu_check.check_runs(tmp_path) == "rank=8: complete, best accuracy 0.8400, 30.5 s, 900 train examples/s on cuda"
    (tmp_path / "runs.csv").write_text(header + "rank=8,failed,accuracy,,,,cuda\n")
    with pytest.raises(SystemExit, match="not complete: rank=8"):
        gpu_check.check_runs(tmp_path)
    with pytest.raises(SystemExit, match="no runs table"):
        gpu_check.check_runs(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would run the whole check")
def test_gpu_check_without_a_gpu_stops_after_naming_the_machine(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(GPU_CHECK), "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    summary = (tmp_path / "summary.md").read_text()
    assert done.returncode == 1, done.stdout + done.stderr
    machine = next(line for line in summary.splitlines() if line.startswith("| machine |"))
    if "**failed** (exit 1)" in machine:
        assert "no usable GPU" in (tmp_path / "machine.log").read_text()
    else:  # a loaded CPU machine can spend the step's 30 s importing torch
        assert "**timed out** (30 s)" in machine, machine
    assert "not run: the machine step failed" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["machine.log", "summary.md"]


@pytest.mark.slow
def test_qlora_benchmark_runs_end_to_end_on_minilm(tmp_path: Path) -> None:
    """One step of each base on the real MiniLM (NF4 needs its 384-wide layers), memory from fresh processes."""
    pytest.importorskip("torchao")
    from benchmarks import qlora

    qlora.main(["--models", "minilm", "--steps", "1", "--warmup", "0", "--mem-steps", "2", "--batch", "2",
                "--seq-len", "16", "--threads", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "qlora_cpu.json").read_text())
    minilm = result["models"]["minilm"]
    assert result["machine"]["precision"] and minilm["adapted_w0_ratio"] <= 0.35 and minilm["target_w0_ratio_met"]
    assert set(minilm["memory"]) == {"fp32", "nf4"} and all(m["peak_mb"] > 0 for m in minilm["memory"].values())


def test_job_overhead_splits_a_runs_wall_time_into_steps_evaluation_and_overhead() -> None:
    from benchmarks.job_overhead import run_record

    metrics = {"run": {"name": "rank=4"}, "data": {"train_examples": 1000}, "epochs": [{}, {}],
               "train_examples_per_s": 20.0, "wall_time_s": 120.0,
               "overhead_s": {"startup": 0.5, "probe_truncation": 6.0, "probe_forgetting_after": 5.5}}  # fmt: skip
    record = run_record(metrics)
    # 2,000 examples at 20/s: 100 s of steps; 12 s named overhead; the other 8 s were the epochs' evaluations.
    assert (record["training_steps_s"], record["overhead_s"], record["evaluation_s"]) == (100.0, 12.0, 8.0)
    assert record["overhead_share"] == 0.1 and record["run"] == "rank=4"


def test_job_overhead_refuses_to_keep_its_sweep_in_an_existing_folder(tmp_path: Path) -> None:
    from benchmarks import job_overhead

    with pytest.raises(SystemExit, match="exists: the main job there would skip its complete runs"):
        job_overhead.main(["--keep", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cpu"])

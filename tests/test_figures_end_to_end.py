"""The figure command on run folders made here in the contract's format (docs/CONTRACTS.md): every file appears,
missing runs are named, incomplete runs are skipped with a message."""

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis import lora_factors, run_deltas, scan_runs, spectrum
from analysis.figures import main
from analysis.runs import RunWarning, load_runs

HIDDEN, LAYERS = 32, 2


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config).eval()


def write_run(run_dir: Path, run: dict, model, score: float, complete: bool = True) -> None:
    from lorakit import count_parameters

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"task:\n  name: {run['task']}\n  num_labels: 2\nseed: {run['seed']}\n")
    trainable, total = count_parameters(model)
    best = {"epoch": 1, "eval_loss": 0.5, "accuracy": score}
    metrics = {
        "run": run, "metric": "accuracy", "epochs": [best], "best": best, "last": best, "loss_curve": [],
        "trainable_params": trainable, "total_params": total,
        "adapted_modules": sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A")),
        "wall_time_s": 1.0, "device": "cpu", "seed": run["seed"],
    }  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if complete:
        (run_dir / "COMPLETE").write_text("")


def lora_run(sweep: Path, model_path: Path, rank: int, seed: int, targets: str = "qv", complete: bool = True):
    from lorakit import LoRAConfig, inject_lora, lora_modules, save_adapter

    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=rank, alpha=2.0 * rank, targets=targets))
    gen = torch.Generator().manual_seed(100 * rank + seed)
    with torch.no_grad():  # a trained B is non-zero; a small random one stands in for training here
        for module in lora_modules(model).values():
            module.lora_A.normal_(0, 1 / rank, generator=gen)
            module.lora_B.normal_(0, 0.05, generator=gen)
    name = f"rank={rank},seed={seed}" + ("" if targets == "qv" else f",targets={targets}")
    run = {"name": name, "task": "sst2", "method": "lora", "model": "tiny-bert", "model_path": str(model_path),
           "rank": rank, "alpha": 2.0 * rank, "targets": targets, "seed": seed, "init": "gaussian", "rslora": False}
    save_adapter(model, sweep / name / "adapter")
    write_run(sweep / name, run, model, 0.80 + 0.005 * rank + 0.01 * seed, complete)


def full_run(sweep: Path, model_path: Path, seed: int):
    from lorakit import linear_module_names, weight_deltas

    base = tiny_bert()
    tuned = tiny_bert()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    names = linear_module_names(tuned)
    deltas = weight_deltas(base.state_dict(), tuned.state_dict(), names)
    from safetensors.torch import save_file

    name = f"method=full,seed={seed}"
    (sweep / name).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in deltas.items()}, str(sweep / name / "delta_weights.safetensors"))
    run = {"name": name, "task": "sst2", "method": "full", "model": "tiny-bert", "model_path": str(model_path),
           "rank": None, "alpha": None, "targets": None, "seed": seed, "init": None, "rslora": None}
    write_run(sweep / name, run, tuned, 0.84 + 0.01 * seed)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun")
    model_path = root / "tiny-bert"
    tiny_bert().save_pretrained(model_path)
    sweep = root / "12-00-00-test"
    for rank in (2, 8):
        for seed in (1, 2):
            lora_run(sweep, model_path, rank, seed)
    lora_run(sweep, model_path, 4, 1, targets="q")  # same budget as qv at r=2: Table 5
    full_run(sweep, model_path, 1)
    lora_run(sweep, model_path, 8, 3, complete=False)  # still running: skipped with a message
    (sweep / "rank=16,seed=1").mkdir()
    (sweep / "rank=16,seed=1" / "FAILED").write_text(json.dumps({"error": "CUDA out of memory", "traceback": ""}))
    return sweep


EXPECTED = [
    "index.md", "runs.csv",
    "table2.csv", "table2.md", "table5.csv", "table5.md", "table6.csv", "table6.md",
    "fig_metric_vs_rank.png", "fig_metric_vs_rank.pdf", "fig3.png", "fig3.pdf", "fig3.csv", "fig4.png", "fig4.pdf", "fig4.csv",
    "subspace_summary.csv", "subspace_summary.md", "subspace_summary_agg.csv", "subspace_summary_agg.md",
    "table7.csv", "table7.md", "spectra.csv", "spectra.md", "fig_spectra.png", "fig_spectra.pdf",
    "overlap.csv", "overlap.md", "fig_overlap.png", "fig_overlap.pdf",
    "intruders.csv", "intruders.md", "fig_intruders.png", "fig_intruders.pdf",
]  # fmt: skip


def test_scan_skips_incomplete_and_failed_runs_by_name(sweep):
    table, skipped = scan_runs([sweep])
    assert len(table) == 6 and set(table["method"]) == {"lora", "full"}
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons == {
        "rank=8,seed=3": "incomplete (no COMPLETE file)",
        "rank=16,seed=1": "run failed (CUDA out of memory)",
    }
    with pytest.warns(RunWarning) as record:
        load_runs([sweep])
    assert sorted(Path(str(w.message).split(": ")[0].removeprefix("skipped ")).name for w in record) == [
        "rank=16,seed=1", "rank=8,seed=3"]


def test_tensors_load_lazily_with_model_names(sweep):
    run = sweep / "rank=8,seed=1"
    factors = lora_factors(str(run))
    name = "bert.encoder.layer.1.attention.self.query"
    assert factors[name][0].shape == (8, HIDDEN) and factors[name][1].shape == (HIDDEN, 8)
    assert spectrum(run_deltas(str(run), "lora")[name]).numerical_rank == 8
    full = run_deltas(str(sweep / "method=full,seed=1"), "full")
    assert "bert.encoder.layer.0.intermediate.dense" in full and full[name].shape == (HIDDEN, HIDDEN)


def test_figure_command_writes_every_file(sweep, tmp_path, capsys):
    out = tmp_path / "results" / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(sweep), "--out", str(out), "--strict"])
    log = capsys.readouterr()
    assert code == 0, log.err
    missing = [f for f in EXPECTED if not (out / f).is_file() or (out / f).stat().st_size == 0]
    assert not missing, log.out + log.err
    index = (out / "index.md").read_text()
    assert "## Skipped" not in index and "rank=8,seed=3" in index and "CUDA out of memory" in index
    table2 = pd.read_csv(out / "table2.csv")
    full_ft = table2[table2["model / method"] == "tiny-bert full FT"]
    assert full_ft["sst2"].item() == pytest.approx(85.0)
    lora8 = table2[table2["model / method"].str.contains("r=8")]
    assert lora8["sst2"].item() == pytest.approx(100 * (0.84 + 0.015))  # median of seeds 1 and 2
    assert "r=2" in pd.read_csv(out / "table6.csv").columns
    table7 = pd.read_csv(out / "table7.csv")
    assert {"Wq, LoRA, r=2", "Wq, LoRA, r=8", "Wv, full FT, r=8"} <= set(table7.columns)
    spectra = pd.read_csv(out / "spectra.csv")
    lora2 = spectra[spectra["method"].str.startswith("LoRA (r=2,")]
    assert (lora2["rank@99%"] <= 2).all()
    full_encoder = spectra[(spectra["method"] == "full FT") & spectra["layer"].notna()]
    assert len(full_encoder) == LAYERS * 6  # q, k, v, o, FFN in, FFN out per layer (plus the pooler, layer-less)
    assert "layer 1" in (out / "table7.md").read_text()


def test_missing_runs_are_named_and_skipped(sweep, tmp_path, capsys):
    out = tmp_path / "partial"
    code = main([str(sweep / "rank=2,seed=1"), str(sweep / "rank=8,seed=1"), "--out", str(out)])
    log = capsys.readouterr().out
    assert code == 0
    assert "table2: skipped — Table 2 needs LoRA and full fine-tuning runs on a common task" in log
    assert "fig4: skipped — Figure 4 needs two LoRA runs with different seeds" in log
    assert (out / "fig3.png").exists() and not (out / "fig4.png").exists()
    index = (out / "index.md").read_text()
    assert "## Skipped" in index and "Figure 4" in index


def test_nothing_to_produce_exits_non_zero(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "nothing could be produced" in capsys.readouterr().err
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2

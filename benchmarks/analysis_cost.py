"""Cost of the paper's §7 analyses on a RoBERTa-base-shaped model, through the ``analysis`` package.

- the φ grid (Figure 4): φ(A₁, A₂, i, j) for every i, j ≤ 64 between two r = 64 adapters of one module, from
  singular vectors and from the A factors (with their SVDs); then for every adapted module of the model;
- the spectra (singular values, energy, ranks) of every ΔW: the 72 attention and MLP linears of RoBERTa-base, for a
  LoRA r = 64 update (scale·B·A from ``lorakit.delta_weights``) and for a dense full fine-tuning update (W_ft − W₀
  from ``lorakit.weight_deltas``).

The ``analysis`` package computes in float64 on the CPU whatever the device, so these are CPU numbers everywhere.

    python -m benchmarks.analysis_cost
    python -m benchmarks.analysis_cost --model tiny --r 8 --repeats 2 --out /tmp/bench
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

import analysis
import lorakit

from . import common
from .models import build_base, randomize_lora_b


def timings(fn: Callable[[], Any], repeats: int, device: str) -> dict[str, Any]:
    fn()  # warm-up: first calls pay for allocations and LAPACK workspace queries
    return common.summarize([common.timed(fn, device) for _ in range(repeats)])


def adapters(model: torch.nn.Module, r: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                     dict[str, torch.Tensor]]:
    """Two r-rank A factors per adapted module (two seeds) and the LoRA ΔW of the first adapter."""
    lorakit.inject_lora(model, lorakit.LoRAConfig(r=r, alpha=float(r), targets="all", init="gaussian"))
    randomize_lora_b(model)
    modules = lorakit.lora_modules(model)
    first = {name: m.lora_A.detach().clone() for name, m in modules.items()}
    deltas = lorakit.delta_weights(model)
    torch.manual_seed(1)
    for m in modules.values():
        m.reset_lora_parameters("gaussian")
    second = {name: m.lora_A.detach().clone() for name, m in modules.items()}
    return first, second, deltas


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scale:
        return run_scale(args)
    device = common.setup(args)
    model = build_base(args.model)
    names = lorakit.linear_module_names(model)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    tuned_state = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) if k.endswith(".weight") else v
                   for k, v in base_state.items()}
    a1, a2, lora_deltas = adapters(model, args.r)
    one = next(iter(a1))
    u1, u2 = (analysis.top_singular_vectors(a[one], args.r, "right") for a in (a1, a2))
    full_deltas = lorakit.weight_deltas(base_state, tuned_state, names)
    shapes = sorted({tuple(d.shape) for d in full_deltas.values()})

    share = common.CpuShare()
    with share.measure():
        result: dict[str, Any] = {
            "benchmark": "analysis_cost",
            "machine": common.machine_info(device, args.dtype),
            "settings": {"model": args.model, "r": args.r, "repeats": args.repeats,
                         "note": "analysis computes in float64 on the CPU"},
            "phi_grid": {"shape": f"{args.r}x{args.r}", "module": one,
                         **timings(lambda: analysis.subspace_similarity(u1, u2), args.repeats, device)},
            "phi_grid_from_factors": {"module": one, **timings(
                lambda: analysis.lora_subspace_similarity(a1[one], a2[one]), args.repeats, device)},
            "phi_grids_all_modules": {"modules": len(a1), **timings(
                lambda: [analysis.lora_subspace_similarity(a1[n], a2[n]) for n in a1], args.spectra_repeats, device)},
            "delta_weights_lora": {"modules": len(lora_deltas), **timings(
                lambda: lorakit.delta_weights(model), args.spectra_repeats, device)},
            "spectra_lora": {"modules": len(lora_deltas), **timings(
                lambda: [analysis.spectrum(d) for d in lora_deltas.values()], args.spectra_repeats, device)},
            "spectra_full": {"modules": len(full_deltas), "shapes": [list(s) for s in shapes], **timings(
                lambda: [analysis.spectrum(d) for d in full_deltas.values()], args.spectra_repeats, device)},
        }
    result["cpu_share"] = share.record()
    return result


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    """``--scale``: the per-module analysis on ΔW files shaped like models from MiniLM to a 7B (benchmarks/
    analysis_scale.py), each (shape, dtype) in a fresh process."""
    from . import analysis_scale

    device = common.setup(args)
    share = common.CpuShare()
    with share.measure():
        measured = analysis_scale.measure(args.shapes, args.per_shape, args.scratch)
    return {"benchmark": "analysis_cost_scale", "machine": common.machine_info(device, "fp32"),
            "settings": {"shapes": args.shapes, "per_shape": args.per_shape,
                         "note": "float64 SVDs on the CPU, one thread per process; the 7B stack is 2 of 32 layers"},
            **measured, "cpu_share": share.record()}  # fmt: skip


def render_scale(result: dict[str, Any]) -> str:
    rows = [[r["shape"], r["dtype"], r["modules"], r["file_mb"], r["read_all_s"], r["peak_rss_mb"],
             r["baseline_rss_mb"], r["largest_module_mb"], len(r["per_module"]),
             r["ratio_max"] if r["ratio_max"] is not None else "—", r["analysis_total_s"], r["modules_extrapolated"],
             r["full_model_analysis_s"]] for r in result["rows"]]  # fmt: skip
    fit = result["fit"]
    return "\n\n".join([
        "### Analysis cost as models grow (full fine-tune ΔW, read one module at a time)",
        common.machine_line(result["machine"], result["cpu_share"]),
        common.markdown_table(["shape", "ΔW dtype", "modules", "file MB", "read all s", "peak RSS MB",
                               "of which start-up MB", "largest module MB (fp32)", "modules analysed",
                               "max analysis / bare SVD", "analysis total s", "of which extrapolated",
                               "whole model s"], rows),  # fmt: skip
        f"Fitted per-module time of the analysis set (ΔW's spectrum, the seed-noise floor and its spectrum, the "
        f"signal rank): t = {fit['per_module_s']} s for an m x n module (m ≥ n): β = {fit['beta']} against an SVD's "
        f"m·n² flops. The analysis total is Σ over modules (linear in the module count: one module at a time); "
        f"peak memory does not grow with the file, only with the largest module. " + result["settings"]["note"] + ".",
    ])


def render(result: dict[str, Any]) -> str:
    if result.get("benchmark") == "analysis_cost_scale":
        return render_scale(result)
    rows = [
        [f"φ grid {result['phi_grid']['shape']}, from singular vectors", 1, result["phi_grid"]],
        [f"φ grid {result['phi_grid']['shape']}, from the A factors (2 SVDs)", 1, result["phi_grid_from_factors"]],
        ["φ grids, every adapted module", result["phi_grids_all_modules"]["modules"],
         result["phi_grids_all_modules"]],
        [f"ΔW = scale·B·A, every module (lorakit.delta_weights)", result["delta_weights_lora"]["modules"],
         result["delta_weights_lora"]],
        [f"spectra of LoRA r={result['settings']['r']} ΔW", result["spectra_lora"]["modules"],
         result["spectra_lora"]],
        ["spectra of dense full-FT ΔW", result["spectra_full"]["modules"], result["spectra_full"]],
    ]
    table = [[what, count, t["median_ms"], t["min_ms"], t["n"]] for what, count, t in rows]
    return "\n\n".join([
        f"### Analysis cost ({result['settings']['model']}, {result['settings']['note']})",
        common.machine_line(result["machine"], result["cpu_share"]),
        common.markdown_table(["computation", "matrices", "median ms", "min ms", "repeats"], table),
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="roberta-base")
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20, help="timed repeats of the single-grid measurements")
    p.add_argument("--spectra-repeats", type=int, default=3, help="timed repeats of the whole-model measurements")
    p.add_argument("--scale", action="store_true", help="the per-module analysis on model-shaped ΔW files instead")
    p.add_argument("--shapes", type=common.csv(str), default=["minilm", "roberta-base", "roberta-large", "gpt2-large",
                                                               "llama-7b-2-layers"])  # fmt: skip
    p.add_argument("--per-shape", type=int, default=1, help="--scale: modules analysed of each distinct matrix shape")
    p.add_argument("--scratch", type=Path, default=None, help="--scale: where the ΔW files are written (a temp dir)")
    common.add_machine_args(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("analysis_cost", parser(), run, render, argv)


if __name__ == "__main__":
    main()

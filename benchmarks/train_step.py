"""Training-step time and peak memory: lorakit LoRA, HF PEFT LoRA (same config) and full fine-tuning; with
``--dora``, lorakit's DoRA against PEFT's (``use_dora=True`` in both, same r, α, targets and init) instead of LoRA,
written as ``train_step_dora_<device>``. Encoders train a new classification head beside the adapter on a
classification loss; decoders (``tiny-llama``, ``smollm2``) train the next-token loss with no head, and are written as
``train_step_decoder_<device>`` (``train_step_dora_decoder_<device>``) so they never replace the encoders' file.

A step is forward + backward + AdamW step + zero_grad on one fixed batch. All variants of a model live in one process
(frozen weights shared) and take their steps in turn — one step of each, then the next round in reverse order — so a
load spike from another process lands on every variant; the time is the median over rounds after warm-up. Peak memory
comes from a fresh process per variant (see ``common.PeakMemory``).

Model FLOPs utilisation (MFU) = the step's model FLOPs / its median time / the chip's dense bf16 peak. The FLOPs are
the matmul and attention FLOPs one step executes, counted by ``torch.utils.flop_counter.FlopCounterMode``: nothing is
recomputed, so these are model FLOPs — for LoRA the frozen weights' forward and input-gradient products (≈ 4·N per
token against full fine-tuning's 6·N) plus the factors'.

    python -m benchmarks.train_step                       # MiniLM + RoBERTa-base, r 8/64, targets qv/all
    python -m benchmarks.train_step --models tiny --steps 2 --warmup 1 --out /tmp/bench
    python -m benchmarks.train_step --device cuda --dtype bf16 --models roberta-base,minilm   # the GPU check
    python -m benchmarks.train_step --dora --models minilm --ranks 8 --targets qv --steps 5   # the DoRA rows
    python -m benchmarks.train_step --models smollm2 --ranks 8 --batch 8 --seq-len 64 --steps 5   # the decoder rows
"""

from __future__ import annotations

import argparse
import gc
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import common
from .models import (Variant, accounting, build_base, build_variant, check_same_adaptation, is_causal_lm,
                     make_batch)

MEMORY_NOTE = (
    "'peak' on a CPU is the peak resident set size of a fresh process that builds only this variant and runs its "
    "training steps, over those steps (the high-water mark is reset after the build), with glibc's mmap threshold "
    "pinned so that RSS tracks live memory (see common.pin_mmap_threshold); it includes ~0.3-0.4 GB of Python/torch "
    "runtime, the same for every variant. On a GPU it is torch.cuda.max_memory_allocated over the same steps. "
    "'tensor peak' (CPU) counts live tensors only: weights, AdamW state and batch at the start of the last step plus "
    "their peak growth within it (profiler allocation events). 'static' is the analytic weights + gradients + AdamW "
    "moments (fp32). 'saved vs full' is full FT's peak minus this variant's, to compare with the gradient + Adam "
    "bytes that LoRA does not hold (the bound in brackets)."
)
# lorakit/PEFT step time: at most PEFT's on a CPU (issue 5), 10% under it on a GPU (issue 15).
TIME_VS_PEFT_BOUND = {"cpu": 1.0, "cuda": 0.90}
MFU_TARGET, MFU_TARGET_MODEL = 0.40, "roberta-base"  # of the chip's bf16 peak, for its LoRA step (issue 15)
FLOPS_NOTE = "matmul + attention FLOPs of one step, torch.utils.flop_counter.FlopCounterMode"
# torch's counter has formulas for the CUDA SDPA kernels only; LLaMA's attention on a CPU runs the fused
# aten._scaled_dot_product_flash_attention_for_cpu, which it skips (the encoders' attention is counted).
FLOPS_NOTE_CPU_DECODER = (" (matmuls only: the counter has no formula for the fused CPU SDPA kernel the decoders' "
                          "attention runs, so its FLOPs are left out)")


def variants_for(ranks: list[int], targets: list[str], dora: bool = False) -> list[Variant]:
    """Full FT, both libraries at every (r, targets), and a second PEFT instance of the first config (noise floor);
    every adapter LoRA, or every one DoRA."""
    lora = [Variant(method, r, t, dora=dora) for r in ranks for t in targets for method in ("lorakit", "peft")]
    return [Variant("full"), *lora, Variant("peft", ranks[0], targets[0], replica=1, dora=dora)]


def noise_floor(variants: list[Variant], times: dict[Variant, list[float]]) -> dict[str, Any]:
    """The ratio between two identical instances timed side by side: how far from 1.00 noise alone moves a ratio."""
    copy = next(v for v in variants if v.replica)
    original = copy.twin(copy.method)
    medians = [common.summarize(times[v])["median_ms"] for v in (copy, original)]
    return {"variants": [copy.label, original.label], "ratio": common.ratio(*medians),
            "paired_ratio": common.paired_ratio(times[copy], times[original])}


def make_step(model: nn.Module, device: str, dtype: str = "fp32",
              lr: float = 1e-4) -> Callable[[dict[str, torch.Tensor]], None]:
    """One optimisation step on a batch; the optimizer is torch's default AdamW for every variant."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(batch: dict[str, torch.Tensor]) -> None:
        with common.amp(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.optimizer = optimizer
    return step


def step_flops(step: Callable[[dict[str, torch.Tensor]], None], batch: dict[str, torch.Tensor]) -> int:
    """Matmul and attention FLOPs of one step (forward, backward, optimizer), counted as it runs (an untimed step)."""
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


def measure_memory(name: str, variant: Variant, args: dict[str, Any]) -> dict[str, Any]:
    """Runs in its own process: build one variant, take ``mem_steps`` steps, report the peaks (MB).

    ``peak_mb``: peak RSS (CPU) or max_memory_allocated (GPU) over the steps. ``tensor_peak_mb`` (CPU): live tensor
    bytes at the start of the last step (weights, AdamW state, batch) plus their peak growth within it, from the
    profiler — the last step is the first that starts with the optimizer state allocated.
    """
    pinned = args["pin_malloc"] and args["device"] == "cpu" and common.pin_mmap_threshold()
    torch.set_num_threads(args["threads"])
    device = args["device"]
    model, _ = build_variant(name, variant, init=args["init"])
    model.to(device).train()
    step = make_step(model, device, args["dtype"])
    batch = make_batch(model, args["batch"], args["seq_len"], device, causal_lm=is_causal_lm(name))
    live = lambda: common.live_bytes([*model.parameters(), *model.buffers(), *batch.values(), *optimizer_state(step)])
    return common.step_memory(step, batch, args["mem_steps"], device, pinned, live)


def optimizer_state(step: Callable) -> list[torch.Tensor]:
    return [t for state in step.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]


def time_variants(name: str, variants: list[Variant], args: argparse.Namespace, device: str,
                  share: common.CpuShare) -> dict[str, Any]:
    reference = build_base(name).to(device)  # moved whole, so tied tensors stay one tensor in the state
    batch = make_batch(reference, args.batch, args.seq_len, device, causal_lm=is_causal_lm(name))
    state = reference.state_dict()
    del reference
    built = {v: build_variant(name, v, state, init=args.init) for v in variants}
    checks = {}
    for v in variants:
        if v.method == "lorakit" and not v.replica:
            checks[v] = check_same_adaptation(built[v], built[v.twin("peft")], f"{name} {v.label}")
    steps, account, flops = {}, {}, {}
    for v, (model, _) in built.items():
        model.to(device).train()
        steps[v], account[v] = make_step(model, device, args.dtype), accounting(model)
        flops[v] = step_flops(steps[v], batch)
    with share.measure():
        times = common.time_in_turn({v: steps[v] for v in variants}, batch, args.warmup, args.steps, device)
    del built, steps
    gc.collect()
    return {"times": times, "accounting": account, "checks": checks, "flops": flops}


def utilisation(flops: int, median_ms: float, peak_tflops: float | None) -> dict[str, Any]:
    """Achieved model TFLOP/s of a step and, where the peak is known, its share of it (MFU)."""
    achieved = flops / (median_ms / 1e3) / 1e12
    return {"flops_per_step": flops, "tflops_per_s": round(achieved, 3),
            "mfu": round(achieved / peak_tflops, 4) if peak_tflops else None}


def compare(name: str, variants: list[Variant], timing: dict[str, Any], memory: dict[Variant, dict],
            device: str, peak_tflops: float | None) -> list[dict]:
    """One row per (r, targets): lorakit against PEFT and against full fine-tuning: time, memory and MFU."""
    times, account = timing["times"], timing["accounting"]
    median = {v: common.summarize(t)["median_ms"] for v, t in times.items()}

    def peaks(key: str, *vs: Variant) -> list[float | None]:
        return [memory.get(v, {}).get(key) for v in vs]

    rows = []
    for lk in (v for v in variants if v.method == "lorakit" and not v.replica):
        pf, full = lk.twin("peft"), Variant("full")
        rss, tensors = peaks("peak_mb", lk, pf, full), peaks("tensor_peak_mb", lk, pf, full)
        row = {
            "model": name, "r": lk.r, "targets": lk.targets, **timing["checks"][lk],
            "step_ms": {"lorakit": median[lk], "peft": median[pf], "full": median[full]},
            "lorakit_vs_peft_time": common.ratio(median[lk], median[pf]),
            "lorakit_vs_peft_time_paired": common.paired_ratio(times[lk], times[pf]),
            "lorakit_vs_full_time": common.ratio(median[lk], median[full]),
            "peft_vs_full_time": common.ratio(median[pf], median[full]),
            "peak_mb": dict(zip(("lorakit", "peft", "full"), rss)),
            "tensor_peak_mb": dict(zip(("lorakit", "peft", "full"), tensors)),
            "lorakit_vs_peft_memory": common.ratio(rss[0], rss[1]),
            "saved_vs_full_mb": None if None in rss else round(rss[2] - rss[0], 1),
            "saved_vs_full_tensor_mb": None if None in tensors else round(tensors[2] - tensors[0], 1),
            "expected_saving_vs_full_mb": round(
                (account[full]["grad_bytes"] - account[lk]["grad_bytes"]) * 3 / common.MB, 1),
            "utilisation": {label: utilisation(timing["flops"][v], median[v], peak_tflops)
                            for label, v in (("lorakit", lk), ("peft", pf), ("full", full))},
            "time_vs_peft_bound": TIME_VS_PEFT_BOUND[device],
        }
        mfu = row["utilisation"]["lorakit"]["mfu"]
        row["targets_met"] = {
            "time_vs_peft": row["lorakit_vs_peft_time"] <= row["time_vs_peft_bound"],
            "time_vs_full": row["lorakit_vs_full_time"] <= 0.75,
            "memory_vs_peft": None if None in rss else rss[0] <= rss[1],
            "memory_vs_full": None if None in rss else row["saved_vs_full_mb"] >= row["expected_saving_vs_full_mb"],
            "mfu": None if mfu is None or name != MFU_TARGET_MODEL else mfu >= MFU_TARGET,
        }
        rows.append(row)
    return rows


def benchmark_name(models: list[str], dora: bool) -> str:
    """``train_step``, ``_dora`` for DoRA rows, ``_decoder`` for causal LMs; one run holds encoders or decoders."""
    decoders = [is_causal_lm(name) for name in models]
    if any(decoders) and not all(decoders):
        raise SystemExit(f"--models mixes encoders and decoders ({', '.join(models)}): run them separately, since "
                         f"decoders are written to train_step_decoder_<device> and encoders to train_step_<device>")
    return "train_step" + ("_dora" if dora else "") + ("_decoder" if any(decoders) else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    name = benchmark_name(args.models, args.dora)
    decoder = name.endswith("_decoder")
    device = common.setup(args)
    gpu = device == "cuda"
    args.steps = args.steps if args.steps is not None else 20 if gpu else 3
    args.warmup = args.warmup if args.warmup is not None else 3 if gpu else 1
    variants = variants_for(args.ranks, args.targets, args.dora)
    peak = common.bf16_peak_tflops(device, args.peak_tflops) if args.dtype == "bf16" else {
        "tflops": args.peak_tflops, "source": "--peak-tflops" if args.peak_tflops else "fp32 run: no bf16 peak applies"}
    child_args = {"threads": args.threads, "device": device, "dtype": args.dtype, "init": args.init, "batch": args.batch,
                  "seq_len": args.seq_len, "mem_steps": args.mem_steps, "pin_malloc": not args.default_malloc}
    result: dict[str, Any] = {
        "benchmark": name,
        "machine": common.machine_info(device, args.dtype),
        "settings": {"batch": args.batch, "seq_len": args.seq_len, "warmup_rounds": args.warmup,
                     "timed_rounds": args.steps, "memory_steps": args.mem_steps, "init": args.init,
                     "adapter": "dora" if args.dora else "lora",
                     "loss": "next-token (labels = input ids), no head" if decoder else
                     "sequence classification, a new head (classifier) trained beside the adapter",
                     "alpha": 16.0, "dropout": 0.0, "optimizer": "torch.optim.AdamW(lr=1e-4), default implementation",
                     "dtype": args.dtype, "peak_tflops": peak,
                     "flops": FLOPS_NOTE + (FLOPS_NOTE_CPU_DECODER if decoder and device == "cpu" else ""),
                     "time": "median over rounds of one step per variant, rounds alternating order"},
        "memory_note": MEMORY_NOTE,
        "models": {},
    }
    share = common.CpuShare()
    for name in args.models:
        timing = time_variants(name, variants, args, device, share)
        measured = [v for v in variants if not v.replica] if args.mem_steps else []
        memory = {v: common.run_isolated(measure_memory, name, v, child_args) for v in measured}
        result["models"][name] = {
            "variants": {v.label: {"method": v.method, "r": v.r, "targets": v.targets, "dora": v.dora,
                                   "time": common.summarize(timing["times"][v]),
                                   "memory": memory.get(v), "accounting": timing["accounting"][v],
                                   "utilisation": utilisation(timing["flops"][v],
                                                              common.summarize(timing["times"][v])["median_ms"],
                                                              peak["tflops"])}
                         for v in variants},
            "comparisons": compare(name, variants, timing, memory, device, peak["tflops"]),
            "noise_floor": noise_floor(variants, timing["times"]),
        }
    result["cpu_share"] = share.record()
    return result


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    dora = s.get("adapter") == "dora"  # results written before the DoRA rows have no "adapter": LoRA
    decoder = result["benchmark"].endswith("_decoder")
    adapter = "DoRA" if dora else "LoRA"
    times, memory, floors, flops = [], [], [], []
    for name, model in result["models"].items():
        full = model["variants"]["full"]
        floor = model["noise_floor"]
        floors.append(f"{name}: {floor['variants'][0]} / {floor['variants'][1]} = {floor['ratio']} "
                      f"(paired {floor['paired_ratio']})")
        for c in model["comparisons"]:
            static = model["variants"][Variant("lorakit", c["r"], c["targets"], dora=dora).label]["accounting"][
                "static_bytes"]
            times.append([name, f"r={c['r']} {c['targets']}", c["adapted_modules"], c["trainable_params"],
                          c["step_ms"]["lorakit"], c["step_ms"]["peft"], c["step_ms"]["full"],
                          f"{c['lorakit_vs_peft_time']:.3f} ({c['lorakit_vs_peft_time_paired']:.3f})",
                          c["lorakit_vs_full_time"], c["peft_vs_full_time"]])
            memory.append([name, f"r={c['r']} {c['targets']}", *c["peak_mb"].values(), c["lorakit_vs_peft_memory"],
                           *c["tensor_peak_mb"].values(), round(static / common.MB),
                           round(full["accounting"]["static_bytes"] / common.MB),
                           f"{c['saved_vs_full_mb']} / {c['saved_vs_full_tensor_mb']} "
                           f"(≥ {c['expected_saving_vs_full_mb']})"])
            if "utilisation" not in c:  # results written before the FLOP counts have none
                continue
            flops.append([name, f"r={c['r']} {c['targets']}",
                          *(f"{u['flops_per_step'] / 1e9:,.1f} / {u['tflops_per_s']:.2f}"
                            + ("" if u["mfu"] is None else f" / {u['mfu']:.1%}") for u in c["utilisation"].values())])
    peak = s.get("peak_tflops") or {}
    flops_section = [
        f"Model FLOPs per step (GFLOP) / achieved TFLOP/s / MFU against a peak of {peak.get('tflops') or '–'} "
        f"TFLOP/s ({peak.get('source', 'not recorded')}); FLOPs: {s.get('flops', 'not recorded')}.",
        common.markdown_table(["model", adapter, "lorakit", "PEFT", "full FT"], flops),
    ] if flops else []
    return "\n\n".join([
        f"### Training step{', DoRA' if dora else ''}{', decoders (next-token loss)' if decoder else ''} "
        f"(batch {s['batch']} × {s['seq_len']}, median of {s['timed_rounds']} interleaved rounds "
        f"after {s['warmup_rounds']} warm-up)",
        common.machine_line(result["machine"], result["cpu_share"]),
        common.markdown_table(["model", adapter, "modules", "trainable", "lorakit ms", "PEFT ms", "full FT ms",
                               "lorakit/PEFT (paired)", "lorakit/full", "PEFT/full"], times),
        "Noise floor — two identical PEFT instances timed side by side: " + "; ".join(floors) + ".",
        common.markdown_table(["model", adapter, "lorakit peak MB", "PEFT peak MB", "full peak MB", "lorakit/PEFT",
                               "lorakit tensors MB", "PEFT tensors MB", "full tensors MB", "static MB",
                               "full static MB", "saved vs full MB: peak / tensors (≥ grads+Adam)"], memory),
        f"Memory: {result['memory_note']}",
        *flops_section,
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_workload_args(p)
    common.add_machine_args(p)
    p.add_argument("--steps", type=int, default=None,
                   help="timed rounds, one step of every variant each (default 3 on a CPU, 20 on a GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1 on a CPU, 3 on a GPU)")
    p.add_argument("--dora", action="store_true",
                   help="DoRA in both libraries instead of LoRA (use_dora=True); writes train_step_dora_<device>")
    p.add_argument("--mem-steps", type=int, default=2, help="steps in each memory process (≥ 2); 0 skips memory")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's dynamic mmap threshold alone")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the chip's dense bf16 peak for MFU (default: common.BF16_PEAK_TFLOPS by GPU name)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("train_step", parser(), run, render, argv)


if __name__ == "__main__":
    main()

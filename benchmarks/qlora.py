"""QLoRA's cost: the same LoRA on an fp32 base and on an NF4 base (``lorakit.quantize_base``), step time and memory.

A step is forward + backward + AdamW step + zero_grad on one fixed batch (``train_step.make_step``). The variants of a
model live in one process (frozen fp32 weights shared) and take their steps in turn, the order reversed every other
round, so a load spike lands on all of them; a second fp32 instance gives the noise floor of the ratio. Peak memory
comes from a fresh process per variant, as in ``train_step``. The NF4 base's bytes are exact (``lorakit.weight_bytes``:
codes, scalers, factors), and its error is measured against the fp32 weights and, at init (B = 0), on the logits.

    python -m benchmarks.qlora --threads 1                          # MiniLM, LoRA r=8 on all six linears per layer
    python -m benchmarks.qlora --threads 1 --bytes-only roberta-base  # + RoBERTa-base's bytes, built but not run
    python -m benchmarks.qlora --models minilm,roberta-base --steps 2  # where a step of RoBERTa-base is affordable
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import torch
from torch import nn

import lorakit

from . import common
from .models import Variant, build_base, build_variant, is_causal_lm, make_batch
from .train_step import make_step, optimizer_state

BASES = ("fp32", "nf4")
NOISE = "fp32 #2"  # a second fp32 instance, timed beside the first
MEMORY_NOTE = (
    "'peak' (CPU) is the peak RSS of a fresh process that builds one variant and runs its steps, the high-water mark "
    "reset after the build, glibc's mmap threshold pinned (see train_step); it includes ~0.3-0.4 GB of Python/torch "
    "runtime, the same for both. On a GPU it is torch.cuda.max_memory_allocated. 'tensors' (CPU) counts live tensors "
    "at the start of the last step (weights with NF4 at its true size, AdamW state, batch) plus their peak growth "
    "within it. With LoRA the activations of a 32 x 128 batch, not the weights, dominate the peak. The RSS peak also "
    "holds what the NF4 path brings besides tensors (torchao's code on first use, the allocator's state after "
    "quantizing: a few tens of MB here), so on a model as small as MiniLM the 'tensors' columns are the ones that "
    "isolate the weights' saving."
)
CAVEAT = (
    "The machine is shared (2 CPU cores, several other processes running tests and trainings) and noisy: step times "
    "and their ratio move by several percent between runs; read the NF4/fp32 ratio against the noise floor beside it."
)


def build(name: str, base: str, args: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The LoRA model of ``args`` on the pretrained weights, its adapted W₀ quantized when ``base`` is "nf4"."""
    model, _ = build_variant(name, Variant("lorakit", args["r"], args["targets"]), state, init=args["init"])
    if base == "nf4":
        lorakit.quantize_base(model)
    return model


def base_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the adapted layers' W₀ (as stored, and as fp32) and of every weight of the model."""
    layers = [m.weight for m in lorakit.lora_modules(model).values()]
    return {"adapted_w0_bytes": sum(lorakit.weight_bytes(w) for w in layers),
            "adapted_w0_fp32_bytes": sum(w.numel() * 4 for w in layers),
            "model_weight_bytes": sum(lorakit.weight_bytes(p) for p in model.parameters())}


def quantization_error(fp32: nn.Module, nf4: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖W̃₀ − W₀‖/‖W₀‖ over the adapted layers (median and max), and the relative change of the encoder's last hidden
    state and of the (untrained head's) logits at init, where B = 0 and only the quantization moves them."""
    dense, quantized = lorakit.lora_modules(fp32), lorakit.lora_modules(nf4)
    errors = sorted(float((lorakit.dequantize(quantized[n].weight) - w).norm() / w.norm())
                    for n, w in ((n, m.weight.detach()) for n, m in dense.items()))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fp32.eval()
    nf4.eval()
    with torch.no_grad():
        a, b = (model(**inputs, output_hidden_states=True) for model in (fp32, nf4))

    def change(x: torch.Tensor, y: torch.Tensor) -> float:
        return round(float((y.float() - x.float()).norm() / x.float().norm()), 4)

    return {"weight_rel_error_median": round(errors[len(errors) // 2], 4), "weight_rel_error_max": round(errors[-1], 4),
            "hidden_rel_change_at_init": change(a.hidden_states[-1], b.hidden_states[-1]),
            "logits_rel_change_at_init": change(a.logits, b.logits)}


def time_bases(name: str, args: argparse.Namespace, device: str, share: common.CpuShare) -> dict[str, Any]:
    reference = build_base(name)
    batch = make_batch(reference, args.batch, args.seq_len, device, causal_lm=is_causal_lm(name))
    state = {k: v.to(device) for k, v in reference.state_dict().items()}
    del reference
    settings = vars(args)
    models = {label: build(name, label.split()[0], settings, state) for label in (*BASES, NOISE)}
    error = quantization_error(models["fp32"], models["nf4"], batch)
    bytes_ = {base: base_bytes(models[base]) for base in BASES}
    steps = {}
    for label, model in models.items():
        model.train()
        steps[label] = make_step(model, device)
    with share.measure():
        times = common.time_in_turn(steps, batch, args.warmup, args.steps, device)
    del models, steps
    gc.collect()
    return {"times": times, "bytes": bytes_, "error": error}


def measure_memory(name: str, base: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Runs in its own process: build one variant, take ``mem_steps`` steps, report the peaks (MB)."""
    pinned = settings["device"] == "cpu" and common.pin_mmap_threshold()
    torch.set_num_threads(settings["threads"])
    device = settings["device"]
    model = build(name, base, settings).to(device).train()
    step, batch = make_step(model, device), make_batch(model, settings["batch"], settings["seq_len"], device,
                                                      causal_lm=is_causal_lm(name))
    return common.step_memory(step, batch, settings["mem_steps"], device, pinned, lambda: live_bytes(model, batch, step))


def live_bytes(model: nn.Module, batch: dict[str, torch.Tensor], step) -> int:
    """``common.live_bytes`` for the dense tensors, plus the NF4 weights at their true size (they own no storage)."""
    params = list(model.parameters())
    quantized = [p for p in params if lorakit.nf4.is_quantized(p)]
    dense = [p for p in params if all(p is not q for q in quantized)]
    return (common.live_bytes([*dense, *model.buffers(), *batch.values(), *optimizer_state(step)])
            + sum(lorakit.weight_bytes(q) for q in quantized))


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.setup(args)
    settings = {**vars(args), "device": device, "out": str(args.out)}
    result: dict[str, Any] = {
        "benchmark": "qlora",
        "machine": common.machine_info(device, args.dtype),
        "settings": {"batch": args.batch, "seq_len": args.seq_len, "r": args.r, "alpha": 16.0, "dropout": 0.0,
                     "targets": args.targets, "init": args.init, "warmup_rounds": args.warmup,
                     "timed_rounds": args.steps, "memory_steps": args.mem_steps,
                     "nf4": {"block_size": lorakit.nf4.BLOCK_SIZE, "scaler_block_size": lorakit.nf4.SCALER_BLOCK_SIZE,
                             "quantized": "W₀ of the LoRA-wrapped linears; embeddings, LayerNorms, biases, head fp32"},
                     "optimizer": "torch.optim.AdamW(lr=1e-4), default implementation",
                     "time": "median over rounds of one step per variant, rounds alternating order"},
        "memory_note": MEMORY_NOTE,
        "caveat": CAVEAT,
        "models": {},
        "bytes_only": {},
    }
    share = common.CpuShare()
    for name in args.models:
        timing = time_bases(name, args, device, share)
        memory = {base: common.run_isolated(measure_memory, name, base, settings) for base in BASES} \
            if args.mem_steps else {}
        result["models"][name] = summarize(timing, memory)
    for name in args.bytes_only:  # a model too slow to train here: the exact bytes need only a build
        bytes_ = {base: base_bytes(build(name, base, settings)) for base in BASES}
        result["bytes_only"][name] = {"bytes": bytes_, **ratios(bytes_)}
    result["cpu_share"] = share.record()
    return result


def summarize(timing: dict[str, Any], memory: dict[str, dict]) -> dict[str, Any]:
    times, bytes_ = timing["times"], timing["bytes"]
    median = {label: common.summarize(t)["median_ms"] for label, t in times.items()}
    peaks = {base: memory.get(base, {}).get("peak_mb") for base in BASES}
    tensors = {base: memory.get(base, {}).get("tensor_peak_mb") for base in BASES}
    return {
        "time": {label: common.summarize(t) for label, t in times.items()},
        "nf4_vs_fp32_time": common.ratio(median["nf4"], median["fp32"]),
        "nf4_vs_fp32_time_paired": common.paired_ratio(times["nf4"], times["fp32"]),
        "noise_floor": {"ratio": common.ratio(median[NOISE], median["fp32"]),
                        "paired_ratio": common.paired_ratio(times[NOISE], times["fp32"])},
        "bytes": bytes_,
        **ratios(bytes_),
        "memory": memory,
        "saved_peak_mb": None if None in peaks.values() else round(peaks["fp32"] - peaks["nf4"], 1),
        "saved_tensor_peak_mb": None if None in tensors.values() else round(tensors["fp32"] - tensors["nf4"], 1),
        "error": timing["error"],
    }


def ratios(bytes_: dict[str, dict[str, int]]) -> dict[str, Any]:
    nf4 = bytes_["nf4"]
    return {"adapted_w0_ratio": round(nf4["adapted_w0_bytes"] / nf4["adapted_w0_fp32_bytes"], 4),
            "model_weights_ratio": round(nf4["model_weight_bytes"] / bytes_["fp32"]["model_weight_bytes"], 4),
            "target_w0_ratio_met": nf4["adapted_w0_bytes"] <= 0.35 * nf4["adapted_w0_fp32_bytes"]}


def render(result: dict[str, Any]) -> str:
    s, mb = result["settings"], common.MB
    rows, memory = [], []
    for name, m in {**result["models"], **result.get("bytes_only", {})}.items():
        b, error = m["bytes"], m.get("error", {})
        rows.append([name, round(b["fp32"]["adapted_w0_bytes"] / mb, 1), round(b["nf4"]["adapted_w0_bytes"] / mb, 1),
                     m["adapted_w0_ratio"], round(b["fp32"]["model_weight_bytes"] / mb, 1),
                     round(b["nf4"]["model_weight_bytes"] / mb, 1), error.get("weight_rel_error_median"),
                     error.get("hidden_rel_change_at_init"), error.get("logits_rel_change_at_init")])
    for name, m in result["models"].items():
        t = m["time"]
        peak = {base: m["memory"].get(base, {}) for base in BASES}
        memory.append([name, t["fp32"]["median_ms"], t["nf4"]["median_ms"],
                       f"{m['nf4_vs_fp32_time']:.3f} ({m['nf4_vs_fp32_time_paired']:.3f})",
                       f"{m['noise_floor']['ratio']:.3f} ({m['noise_floor']['paired_ratio']:.3f})",
                       peak["fp32"].get("peak_mb"), peak["nf4"].get("peak_mb"), m["saved_peak_mb"],
                       peak["fp32"].get("tensor_peak_mb"), peak["nf4"].get("tensor_peak_mb"),
                       m["saved_tensor_peak_mb"]])
    return "\n\n".join([
        f"### QLoRA: NF4 vs fp32 base (LoRA r={s['r']} on {s['targets']}, batch {s['batch']} × {s['seq_len']}, "
        f"median of {s['timed_rounds']} interleaved rounds after {s['warmup_rounds']} warm-up)",
        common.machine_line(result["machine"], result["cpu_share"]),
        f"**Caveat.** {result['caveat']}",
        common.markdown_table(["model", "adapted W₀ fp32 MB", "NF4 MB", "NF4/fp32 (goal ≤ 0.35)", "all weights fp32 MB",
                               "with NF4 MB", "‖W̃₀−W₀‖/‖W₀‖ (median)", "hidden state change at init",
                               "logits change at init"], rows),
        common.markdown_table(["model", "fp32 ms", "NF4 ms", "NF4/fp32 (paired)", "noise floor fp32#2/fp32 (paired)",
                               "fp32 peak MB", "NF4 peak MB", "saved MB", "fp32 tensors MB", "NF4 tensors MB",
                               "saved tensors MB"], memory),
        f"Memory: {result['memory_note']}",
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=common.csv(str), default=["minilm"], help="minilm,roberta-base")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--targets", default="all", help="'all' (QLoRA adapts every linear) or a preset such as qv")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--init", default="kaiming", choices=["kaiming", "gaussian"])
    p.add_argument("--steps", type=int, default=3, help="timed rounds, one step of every variant each")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--bytes-only", type=common.csv(str), default=[],
                   help="models whose weight bytes alone are reported (built and quantized, never run)")
    p.add_argument("--mem-steps", type=int, default=2, help="steps in each memory process (≥ 2); 0 skips memory")
    common.add_machine_args(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("qlora", parser(), run, render, argv)


if __name__ == "__main__":
    main()

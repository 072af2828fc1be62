"""Inference latency: the base model, LoRA unmerged (lorakit and PEFT) and LoRA merged into W (lorakit).

One forward pass under ``torch.inference_mode`` in eval mode, on one fixed batch. All variants live in one process
and run in turn, one forward each per round (order reversed every other round); the latency is the median over
rounds. Merged cost does not depend on r — W has the same shape — so merged variants are timed at the smallest rank.

    python -m benchmarks.inference
    python -m benchmarks.inference --models tiny --rounds 2 --warmup 1 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import torch

from . import common
from .models import Variant, build_base, build_variant, is_causal_lm, make_batch, merge, randomize_lora_b


def variants_for(ranks: list[int], targets: list[str]) -> list[Variant]:
    unmerged = [Variant(method, r, t) for r in ranks for t in targets for method in ("lorakit", "peft")]
    merged = [Variant("lorakit", min(ranks), t, merged=True) for t in targets]
    # A second base instance: its ratio to the first is the noise floor the 2% merged target is read against.
    return [Variant("base"), *unmerged, *merged, Variant("base", replica=1)]


def time_variants(name: str, variants: list[Variant], args: argparse.Namespace, device: str,
                  share: common.CpuShare) -> dict[Variant, list]:
    reference = build_base(name)
    batch = make_batch(reference, args.batch, args.seq_len, device, causal_lm=is_causal_lm(name))
    batch.pop("labels")
    state = {k: v.to(device) for k, v in reference.state_dict().items()}
    del reference
    models = {}
    for v in variants:
        model, _ = build_variant(name, v, state, init=args.init)
        randomize_lora_b(model)
        if v.merged:
            merge(model, v)
        models[v] = model.to(device).eval()

    @torch.inference_mode()
    def forward(v: Variant) -> None:
        with common.amp(device, args.dtype):
            models[v](**batch)

    steps = {v: (lambda _, v=v: forward(v)) for v in variants}
    with share.measure():
        times = common.time_in_turn(steps, batch, args.warmup, args.rounds, device)
    del models
    gc.collect()
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.setup(args)
    gpu = device == "cuda"
    args.rounds = args.rounds if args.rounds is not None else 50 if gpu else 10
    args.warmup = args.warmup if args.warmup is not None else 5 if gpu else 1
    variants = variants_for(args.ranks, args.targets)
    result: dict[str, Any] = {
        "benchmark": "inference",
        "machine": common.machine_info(device, args.dtype),
        "settings": {"batch": args.batch, "seq_len": args.seq_len, "warmup_rounds": args.warmup,
                     "timed_rounds": args.rounds, "alpha": 16.0,
                     "time": "median over rounds of one forward per variant, rounds alternating order"},
        "models": {},
    }
    share = common.CpuShare()
    for name in args.models:
        times = time_variants(name, variants, args, device, share)
        base = times[Variant("base")]
        base_ms = common.summarize(base)["median_ms"]
        rows = {}
        for v in variants:
            summary = common.summarize(times[v])
            rows[v.label] = {
                "method": v.method, "r": v.r, "targets": v.targets, "merged": v.merged, "time": summary,
                "vs_base": common.ratio(summary["median_ms"], base_ms),
                "vs_base_paired": common.paired_ratio(times[v], base),
            }
            if v.method != "base":
                limit = 1.02 if v.merged else 1.10 if v.r == 8 else None
                rows[v.label]["target"] = limit
                rows[v.label]["target_met"] = None if limit is None else rows[v.label]["vs_base"] <= limit
        result["models"][name] = {"variants": rows}
    result["cpu_share"] = share.record()
    return result


def render(result: dict[str, Any]) -> str:
    header = ["model", "variant", "median ms", "min ms", "vs base", "vs base (paired)", "target", "met"]
    rows = []
    for name, model in result["models"].items():
        for label, row in model["variants"].items():
            target = row.get("target")
            met = row.get("target_met")
            rows.append([name, label, row["time"]["median_ms"], row["time"]["min_ms"], row["vs_base"],
                         row["vs_base_paired"], f"≤ {target}" if target else "", "" if met is None else
                         ("yes" if met else "no")])
    s = result["settings"]
    return "\n\n".join([
        f"### Inference latency (forward, batch {s['batch']} × {s['seq_len']}, median of {s['timed_rounds']} "
        f"interleaved rounds after {s['warmup_rounds']} warm-up)",
        common.machine_line(result["machine"], result["cpu_share"]),
        common.markdown_table(header, rows),
        "`base #2` is a second, identical base model: its ratio to `base` is the noise floor of every ratio here.",
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_workload_args(p)
    common.add_machine_args(p)
    p.set_defaults(batch=8)  # a latency batch, and 4x cheaper than training's 32 on a 2-core CPU
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds, one forward of every variant each (default 10 on a CPU, 50 on a GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1 on a CPU, 5 on a GPU)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("inference", parser(), run, render, argv)


if __name__ == "__main__":
    main()

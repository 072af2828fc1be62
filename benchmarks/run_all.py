"""Every benchmark, then ``README.md`` in the output folder: machine, tables, ratios, and which targets were met.

    python -m benchmarks.run_all                  # the default run behind results/benchmarks/ (~15 min on 2 CPU cores)
    python -m benchmarks.run_all --tiny --out /tmp/bench   # every benchmark on a tiny model, in seconds
    python -m benchmarks.run_all --readme-only    # rebuild README.md from the JSON files already there
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import analysis_cost, common, inference, sst2_epoch, train_step

BENCHMARKS = {"train_step": train_step, "inference": inference, "analysis_cost": analysis_cost,
              "sst2_epoch": sst2_epoch}
# What the README renders, in order: every benchmark above, and after LoRA's training step the DoRA rows
# (``train_step --dora``) and the decoders' (``train_step --models smollm2``).
SECTIONS = {"train_step": train_step, "train_step_dora": train_step, "train_step_decoder": train_step, **BENCHMARKS}
# Whose rows the targets table reads: LoRA's training step on encoders and on decoders.
TARGET_STEPS = ("train_step", "train_step_decoder")
TINY = {
    "train_step": ["--models", "tiny", "--batch", "4", "--seq-len", "16", "--ranks", "4", "--steps", "2",
                   "--warmup", "1"],
    "inference": ["--models", "tiny", "--batch", "4", "--seq-len", "16", "--ranks", "4,8", "--rounds", "2",
                  "--warmup", "1"],
    "analysis_cost": ["--model", "tiny", "--r", "8", "--repeats", "2"],
    "sst2_epoch": ["--model", "tiny", "--batch", "4", "--max-steps", "2", "--warmup-steps", "1"],
}


def target_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per target of issue 5: the measured value next to the bound."""
    rows = []

    def add(target: str, where: str, value: Any, met: bool | None) -> None:
        rows.append([target, where, value, "–" if met is None else "yes" if met else "**no**"])

    step_results = [(device, r) for name in TARGET_STEPS for device, r in results.get(name, {}).items()]
    for device, result in step_results:
        for c in (c for m in result["models"].values() for c in m["comparisons"]):
            where = f"{device}: {c['model']} r={c['r']} {c['targets']}"
            met = c["targets_met"]
            # results written before issue 15 name no bound (it was 1.00) and have no MFU target
            bound = c.get("time_vs_peft_bound", train_step.TIME_VS_PEFT_BOUND[device])
            add(f"step time lorakit/PEFT ≤ {bound:.2f}", where, c["lorakit_vs_peft_time"], met["time_vs_peft"])
            add("peak memory lorakit/PEFT ≤ 1.00", where, c["lorakit_vs_peft_memory"], met["memory_vs_peft"])
            add("step time lorakit/full ≤ 0.75", where, c["lorakit_vs_full_time"], met["time_vs_full"])
            add("MB saved vs full ≥ grads + Adam state", where,
                f"{c['saved_vs_full_mb']} vs {c['expected_saving_vs_full_mb']}", met["memory_vs_full"])
            if met.get("mfu") is not None:
                add(f"MFU of the lorakit step ≥ {train_step.MFU_TARGET:.0%}", where,
                    f"{c['utilisation']['lorakit']['mfu']:.1%}", met["mfu"])
    for device, result in results.get("inference", {}).items():
        for name, model in result["models"].items():
            for label, row in model["variants"].items():
                if row.get("target"):
                    add(f"inference vs base ≤ {row['target']}", f"{device}: {name} {label}", row["vs_base"],
                        row["target_met"])
    for device, result in results.get("analysis_cost", {}).items():
        grid = result["phi_grid"]
        add("φ grid r=64 in milliseconds", f"{device}: one {grid['shape']} grid", f"{grid['median_ms']} ms",
            grid["median_ms"] < 1000)
    return rows


def write_readme(out: Path) -> Path:
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        result = json.loads(path.read_text())
        results.setdefault(result["benchmark"], {})[result["machine"]["device"]] = result
    sections = [
        "# Benchmarks: lorakit against HF PEFT and full fine-tuning",
        "Written by `python -m benchmarks.run_all` (see `benchmarks/`); each `*.json` here holds every raw "
        "timing, the settings and the machine. Variants are timed side by side in one process, one step of each in "
        "turn; peak memory comes from a fresh process per variant. Ratios below 1 favour the numerator.",
        "## Targets (issue 5)",
        common.markdown_table(["target", "where", "measured", "met"], target_rows(results)),
    ]
    for name, module in SECTIONS.items():
        for device, result in results.get(name, {}).items():
            sections.append(module.render(result).replace("### ", f"## {device}: ", 1))
    notes = out / "NOTES.md"  # hand-written findings (profiles, caveats), kept across runs
    if notes.is_file():
        sections.append(notes.read_text().strip())
    readme = out / "README.md"
    common.atomic_write(readme, "\n\n".join(sections) + "\n")
    return readme


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    p.add_argument("--tiny", action="store_true", help="a tiny model and two steps everywhere (for tests)")
    p.add_argument("--only", type=common.csv(str), default=list(BENCHMARKS), help=", ".join(BENCHMARKS))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16")
    p.add_argument("--threads", default="2", help="torch CPU threads for every benchmark")
    p.add_argument("--readme-only", action="store_true")
    args = p.parse_args(argv)
    if not args.readme_only:
        for name in args.only:
            extra = TINY[name] if args.tiny else []
            BENCHMARKS[name].main([*extra, "--out", str(args.out), "--device", args.device, "--dtype", args.dtype,
                                   "--threads", args.threads])
    print(f"written: {write_readme(args.out)}")


if __name__ == "__main__":
    main()

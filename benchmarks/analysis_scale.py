"""How an analysis's time and memory grow with the model: the per-module analysis of a full fine-tune's ΔW on files
shaped like MiniLM, RoBERTa-base, RoBERTa-large, GPT-2 large and a 7B LLaMA's layers (``python -m
benchmarks.analysis_cost --scale``).

For each shape a synthetic ΔW file (every attention and MLP linear, N(0, 10⁻⁶) entries) is written to a scratch
folder once in fp32 and once in bf16, streamed one module at a time, and deleted after. Each (shape, dtype) is
measured in a fresh process, so its peak resident set (VmHWM) is that analysis's alone:
- one pass reading every module through ``analysis.runs.lazy.LazyTensors`` (what an analysis reads);
- the analysis set of the spectra table on sampled modules: ΔW's spectrum, the seed-noise floor (ΔW₁ − ΔW₂)/√2 with
  a second seed's ΔW read from disk again (and perturbed), the floor's spectrum and the signal rank — beside the bare
  float64 ``svdvals`` of the same module, the ratio being the target (≤ 3×).
Sampling: up to ``--per-shape`` modules of each distinct matrix shape are analysed (each the fastest of up to three
timings when its SVD takes under 5 s, against the load of a shared machine) (the 7B stack's 11008 x 4096 MLP
matrices are not: one float64 SVD of one of them takes minutes on a shared 2-core machine); the model's total time
is Σ over its modules of the per-module time of its shape, and for shapes not sampled the fitted growth
t ∝ (m·n²)^β. The 7B stack is 2 of LLaMA-7B's 32 layers (d = 4096, MLP 11008): per-module costs do not depend on
the layer count, and the whole-model total scales by 16.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .common import _vm_hwm_bytes

SHAPES: dict[str, dict[str, Any]] = {
    # d, MLP width, layers; modules per layer as (out, in); the 7B stack holds 2 of 32 layers
    "minilm": {"d": 384, "layers": 6, "modules": lambda d, f: [(d, d)] * 4 + [(f, d), (d, f)], "f": 1536},
    "roberta-base": {"d": 768, "layers": 12, "modules": lambda d, f: [(d, d)] * 4 + [(f, d), (d, f)], "f": 3072},
    "roberta-large": {"d": 1024, "layers": 24, "modules": lambda d, f: [(d, d)] * 4 + [(f, d), (d, f)], "f": 4096},
    "gpt2-large": {"d": 1280, "layers": 36, "modules": lambda d, f: [(3 * d, d), (d, d), (f, d), (d, f)], "f": 5120},
    "llama-7b-2-layers": {"d": 4096, "layers": 2, "modules": lambda d, f: [(d, d)] * 4 + [(f, d), (f, d), (d, f)],
                          "f": 11008, "scale_to_layers": 32, "max_sampled_elements": 4096 * 4096},
}  # fmt: skip
_TAGS = {torch.float32: "F32", torch.bfloat16: "BF16"}


def modules(shape: str) -> list[tuple[str, tuple[int, int]]]:
    spec = SHAPES[shape]
    per_layer = spec["modules"](spec["d"], spec["f"])
    return [(f"layer.{i}.linear.{j}", mn) for i in range(spec["layers"]) for j, mn in enumerate(per_layer)]


def write_deltas(path: Path, shape: str, dtype: torch.dtype, seed: int = 0) -> int:
    """A safetensors file of N(0, 1e-6) ΔW for every module of ``shape``, written one module at a time (the header
    first, from the shapes alone), so writing a 3 GB file holds one module in memory. Returns its size in bytes."""
    size = torch.empty((), dtype=dtype).element_size()
    header, offset = {}, 0
    for name, (m, n) in modules(shape):
        header[name] = {"dtype": _TAGS[dtype], "shape": [m, n], "data_offsets": [offset, offset + m * n * size]}
        offset += m * n * size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, (m, n) in modules(shape):
            f.write((torch.randn(m, n, generator=gen) * 1e-3).to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
    return path.stat().st_size


def sampled(shape: str, per_shape: int) -> list[str]:
    """Up to ``per_shape`` modules of each distinct matrix shape, in file order; none above the shape's size cap."""
    cap = SHAPES[shape].get("max_sampled_elements", math.inf)
    seen: dict[tuple[int, int], int] = {}
    out = []
    for name, mn in modules(shape):
        if mn[0] * mn[1] <= cap and seen.get(mn, 0) < per_shape:
            seen[mn] = seen.get(mn, 0) + 1
            out.append(name)
    return out


def child(file: str, names: list[str]) -> dict[str, Any]:
    """In a fresh process: read every module, then the analysis set and the bare SVD on ``names``."""
    from analysis.maths import noise_floor, signal_rank, spectrum
    from analysis.runs.lazy import LazyTensors, read_header

    torch.set_num_threads(1)
    torch.linalg.svdvals(torch.randn(64, 32, dtype=torch.float64))  # LAPACK's buffers, before the baseline
    baseline = _vm_hwm_bytes()  # VmHWM starts afresh at exec; ru_maxrss keeps the forking parent's
    header = read_header(file)[0]
    deltas = LazyTensors({k: (file, k) for k in header}, lambda t: t.float())
    start = time.perf_counter()
    for name in deltas:
        deltas[name]
    read_all = time.perf_counter() - start
    def analyse(name: str, seed: int) -> float:
        start = time.perf_counter()
        first = deltas[name]
        spec = spectrum(first)
        gen = torch.Generator().manual_seed(seed)
        second = deltas[name] + 1e-4 * torch.randn(first.shape, generator=gen)  # another seed's ΔW, read again
        floor = spectrum(noise_floor(first, second))
        signal_rank(spec, float(floor.singular_values[0]))
        return time.perf_counter() - start

    def bare(name: str) -> float:
        matrix = deltas[name].double()
        matrix = matrix.T if matrix.shape[0] < matrix.shape[1] else matrix
        start = time.perf_counter()
        torch.linalg.svdvals(matrix)
        return time.perf_counter() - start

    per_module = []
    for i, name in enumerate(names):
        analysis_s, bare_s = analyse(name, i), bare(name)
        repeats = 2 if bare_s < 0.5 else 1 if bare_s < 5 else 0  # the fastest of each, against a shared machine's load
        for _ in range(repeats):
            analysis_s, bare_s = min(analysis_s, analyse(name, i)), min(bare_s, bare(name))
        per_module.append({"module": name, "shape": header[name]["shape"], "analysis_s": round(analysis_s, 4),
                           "bare_svd_s": round(bare_s, 4), "ratio": round(analysis_s / bare_s, 3)})
    peak = _vm_hwm_bytes()
    return {"read_all_s": round(read_all, 3), "modules_read": len(header), "baseline_rss_mb": round(baseline / 2**20),
            "peak_rss_mb": round(peak / 2**20), "per_module": per_module}  # fmt: skip


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of log y = log c + β log x: (c, β)."""
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    beta = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    return math.exp(my - beta * mx), beta


def measure(shapes: list[str], per_shape: int, scratch: Path | None = None) -> dict[str, Any]:
    """Every shape in fp32 and bf16, each in a fresh process; the files are deleted after."""
    folder = Path(tempfile.mkdtemp(prefix="lorakit-analysis-scale-", dir=scratch))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = []
    try:
        for shape in shapes:
            for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                path = folder / f"{shape}-{tag}.safetensors"
                start = time.perf_counter()
                size = write_deltas(path, shape, dtype)
                written = time.perf_counter() - start
                names = sampled(shape, per_shape) if tag == "fp32" or shape != "llama-7b-2-layers" else []
                code = ("import json, sys; from benchmarks.analysis_scale import child; "
                        "print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))))")
                done = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(names)], env=env,
                                      capture_output=True, text=True, check=True)  # fmt: skip
                result = json.loads(done.stdout.strip().splitlines()[-1])
                path.unlink()
                rows.append({"shape": shape, "dtype": tag, "file_mb": round(size / 1e6), "write_s": round(written, 1),
                             "modules": len(modules(shape)), **result})  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fitted growth: per-module time against m·n² (an SVD's flops), and each model's whole-analysis time."""
    points = [(m["shape"][0] * min(m["shape"]) ** 2 if m["shape"][0] >= m["shape"][1] else
               m["shape"][1] * m["shape"][0] ** 2, m["analysis_s"]) for r in rows for m in r["per_module"]]
    c, beta = _fit(points)
    sizes = [(r["file_mb"], r["peak_rss_mb"] - r["baseline_rss_mb"]) for r in rows]
    for row in rows:
        by_shape: dict[tuple, list[float]] = {}
        for m in row["per_module"]:
            by_shape.setdefault(tuple(m["shape"]), []).append(m["analysis_s"])
        total, extrapolated = 0.0, 0
        for _, (m, n) in modules(row["shape"]):
            if (m, n) in by_shape:
                total += sorted(by_shape[(m, n)])[len(by_shape[(m, n)]) // 2]
            else:
                big, small = max(m, n), min(m, n)
                total += c * (big * small**2) ** beta
                extrapolated += 1
        scale = SHAPES[row["shape"]].get("scale_to_layers", SHAPES[row["shape"]]["layers"]) / SHAPES[row["shape"]]["layers"]
        row["analysis_total_s"] = round(total, 1)
        row["modules_extrapolated"] = extrapolated
        row["full_model_analysis_s"] = round(total * scale, 1)
        ratios = [m["ratio"] for m in row["per_module"]]
        row["ratio_max"] = max(ratios) if ratios else None
        row["largest_module_mb"] = round(max(m * n for _, (m, n) in modules(row["shape"])) * 4 / 1e6, 1)
    return {"rows": rows, "fit": {"per_module_s": f"{c:.3g} * (m*n^2)^{beta:.3f}", "c": c, "beta": round(beta, 3),
                                  "memory_vs_file": sizes}}  # fmt: skip

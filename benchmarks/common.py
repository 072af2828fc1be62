"""What every benchmark shares: the machine, timing, peak memory, isolated runs and result files."""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import psutil
import torch

from lorakit import files

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "benchmarks"
MB = 2**20

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("WANDB_MODE", "offline")


def csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """argparse type for a comma-separated list: ``--ranks 8,64``."""
    return lambda text: [kind(item) for item in text.split(",") if item]


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """Models and batch shared by the side-by-side benchmarks."""
    parser.add_argument("--models", type=csv(str), default=["minilm", "roberta-base"],
                        help="comma-separated: tiny, minilm, roberta-base (encoders), tiny-llama, smollm2 (decoders)")
    parser.add_argument("--ranks", type=csv(int), default=[8, 64])
    parser.add_argument("--targets", type=csv(str), default=["qv", "all"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--init", default="kaiming", choices=["kaiming", "gaussian"])


def add_machine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="bf16: autocast, weights and optimizer stay fp32; auto: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, set explicitly and recorded")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def setup(args: argparse.Namespace) -> str:
    """Fix the thread count, pick the device and settle ``args.dtype``; returns ``"cpu"`` or ``"cuda"``."""
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no GPU")
    else:
        device = args.device
    if args.dtype == "auto":
        args.dtype = "bf16" if device == "cuda" else "fp32"
    return device


def amp(device: str, dtype: str):
    """``dtype="bf16"``: bf16 autocast on that device (weights and optimizer stay fp32, as in experiments/); fp32
    otherwise."""
    return torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched against the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}


def bf16_peak_tflops(device: str, override: float | None = None) -> dict[str, Any]:
    """The peak that model FLOPs utilisation divides by: ``override`` (``--peak-tflops``), else the data-sheet value
    for this GPU, else none (a CPU, or a GPU not in ``BF16_PEAK_TFLOPS``: MFU is then not reported)."""
    if override:
        return {"tflops": override, "source": "--peak-tflops"}
    name = torch.cuda.get_device_name() if device == "cuda" else None
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if name and key in name:
            return {"tflops": tflops, "source": f"NVIDIA data sheet, dense bf16, {key} (device: {name})"}
    return {"tflops": None, "source": f"no bf16 peak known for {name or 'a CPU'}; pass --peak-tflops"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str, dtype: str) -> dict[str, Any]:
    import peft
    import transformers

    import lorakit

    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "precision": "bf16 autocast" if dtype == "bf16" else "fp32",
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "lorakit": getattr(lorakit, "__version__", "unknown"),
        },
    }
    return info


class CpuShare:
    """How busy the CPUs were with *other* processes while we measured (0 = the machine to ourselves).

    other = (system busy CPU time − this process's CPU time) / (wall time × CPUs), summed over every ``measure()``
    block; only time measurements go inside, so the processes we start for memory never count as others.
    """

    def __init__(self) -> None:
        self.wall = self.others = 0.0
        self.load = [os.getloadavg()[0]]

    @contextmanager
    def measure(self) -> Iterator[None]:
        me = psutil.Process()

        def busy() -> float:
            t = psutil.cpu_times()
            return sum(t) - t.idle - getattr(t, "iowait", 0.0)

        def own() -> float:
            t = me.cpu_times()
            return t.user + t.system

        wall, busy0, own0 = time.perf_counter(), busy(), own()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.others += max(0.0, (busy() - busy0) - (own() - own0))
            self.load.append(os.getloadavg()[0])

    def record(self) -> dict[str, float]:
        return {
            "timed_wall_s": round(self.wall, 1),
            "cpu_busy_with_other_processes": round(self.others / max(self.wall, 1e-9) / (os.cpu_count() or 1), 3),
            "load_avg_1min_max": round(max(self.load), 2),
        }


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call of ``fn`` takes, with the GPU's queue drained on both sides."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_in_turn(steps: dict, batch, warmup: int, rounds: int, device: str) -> dict[Any, list[float]]:
    """Seconds per step of every variant, their steps taken in turn (the order reversed every other round, so no
    variant always runs first after another) in one process, after ``warmup`` untimed rounds."""
    keys = list(steps)
    times: dict[Any, list[float]] = {key: [] for key in keys}
    for _ in range(warmup):
        for key in keys:
            steps[key](batch)
    for round_ in range(rounds):
        for key in keys if round_ % 2 == 0 else keys[::-1]:
            times[key].append(timed(lambda: steps[key](batch), device))
    return times


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": round(statistics.median(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
        "n": len(ms),
        "all_ms": [round(m, 2) for m in ms],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of per-round ratios: each pair ran back to back, so a load spike hits both sides of most pairs."""
    return round(statistics.median(a / b for a, b in zip(numerators, denominators)), 3)


# ---------------------------------------------------------------------------------------------- peak memory

def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakMemory:
    """Peak memory of this process while the ``with`` block runs, in bytes (``.peak``).

    GPU: ``torch.cuda.max_memory_allocated`` after a reset (tensors only, not the CUDA context or cache).
    CPU: peak resident set size. Linux lets a process reset its high-water mark (``echo 5 > /proc/self/clear_refs``),
    so the peak is exact and covers only the block; elsewhere a thread samples the RSS every millisecond.
    ``.start`` is the RSS (or allocated bytes) when the block began.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.start = self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start, self.method = torch.cuda.memory_allocated(), "torch.cuda.max_memory_allocated"
            return self
        self.start = psutil.Process().memory_info().rss
        try:
            Path("/proc/self/clear_refs").write_text("5")
            _vm_hwm_bytes()
            self.method = "peak RSS (VmHWM reset via /proc/self/clear_refs)"
        except OSError:
            self.method = "peak RSS (psutil sampled every 1 ms)"
            self.peak = self.start
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, me.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        else:
            self.peak = _vm_hwm_bytes()


def pin_mmap_threshold(threshold: int = 64 * 1024) -> bool:
    """Make glibc serve every allocation ≥ ``threshold`` bytes with its own mmap, unmapped on free.

    By default glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, after which such blocks
    come from the heap, and freed heap memory stays resident. Peak RSS then counts fragments freed long before and
    depends on the order of allocations more than on what is alive: measured on MiniLM, LoRA on all linears showed a
    higher peak RSS than full fine-tuning (2.6 vs 2.2 GB) while its peak of live tensors was lower. Pinned, peak RSS
    tracks the live tensors. Returns False where glibc's ``mallopt`` is not available.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1


_M_MMAP_THRESHOLD = -3


def step_memory(step: Callable[[Any], None], batch: Any, steps: int, device: str, pinned: bool,
                live: Callable[[], int]) -> dict[str, Any]:
    """Take ``steps`` training steps and report the peaks (MB): ``peak_mb`` (RSS on a CPU, max_memory_allocated on a
    GPU) and, on a CPU, ``tensor_peak_mb``: ``live()`` bytes at the start of the last step (the first that starts with
    the optimizer state allocated) plus their peak growth within it, from the profiler."""
    with PeakMemory(device) as memory:
        for _ in range(steps - 1):
            step(batch)
        live_at_start = live()
        with tensor_peak() if device == "cpu" else nullcontext({}) as trace:
            step(batch)
    result = {"peak_mb": round(memory.peak / MB, 1), "at_start_mb": round(memory.start / MB, 1),
              "method": memory.method + (", glibc mmap threshold pinned to 64 KiB" if pinned else "")}
    if trace:
        result["tensor_peak_mb"] = round((live_at_start + trace["peak_growth"]) / MB, 1)
    return result


def live_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared storage counted once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@contextmanager
def tensor_peak() -> Iterator[dict[str, int]]:
    """Peak growth of live tensor bytes during the block (``["peak_growth"]``), from the profiler's allocation events.

    The CPU counterpart of ``torch.cuda.max_memory_allocated``: it counts tensors only, never allocator slack.
    """
    record: dict[str, int] = {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        yield record
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    record["peak_growth"] = max(itertools.accumulate(n for _, n in events), default=0)


# Imported once by the fork server, so a measuring process starts in a fraction of a second instead of ~7 s.
_PRELOAD = ["torch", "peft", "transformers.models.bert.modeling_bert", "transformers.models.roberta.modeling_roberta",
            "transformers.models.llama.modeling_llama", "benchmarks.models"]


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new process that holds nothing else and exits afterwards.

    The process is forked from a fork server that has imported the libraries but never built a model or run an op
    (so no thread pool is copied across the fork); where there is no fork server, it is spawned.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
    else:
        context = multiprocessing.get_context("spawn")
    # One task per pool, whose worker exits when the pool shuts down (max_tasks_per_child would need Python 3.11).
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------------------------- results

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def atomic_write(path: Path, text: str) -> None:
    files.atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_result(out: Path, name: str, result: dict[str, Any], markdown: str) -> Path:
    """``<out>/<name>_<device>.json`` and ``.md``, each replaced atomically; returns the JSON path."""
    stem = f"{name}_{result['machine']['device']}"
    atomic_write(out / f"{stem}.md", markdown + "\n")
    atomic_write(out / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    return out / f"{stem}.json"


def run_cli(name: str, parser, run, render, argv: list[str] | None) -> dict[str, Any]:
    """A benchmark's command line: parse, measure, write ``<out>/<name>_<device>.json`` and ``.md``, print the table.

    The file is named after the result's own ``"benchmark"`` where it records one, since options can change what was
    measured (``train_step --dora`` writes ``train_step_dora_<device>``), and ``name`` otherwise.
    """
    args = parser.parse_args(argv)
    result = run(args)
    markdown = render(result)
    path = write_result(args.out, result.get("benchmark", name), result, markdown)
    print(markdown, f"\nwritten: {path}", sep="\n")
    return result


def machine_line(machine: dict[str, Any], share: dict[str, float]) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (
        f"{machine['cpu']} ({machine['logical_cpus']} logical CPUs, torch threads {machine['torch_threads']}){gpu}, "
        f"{machine['precision']}; torch {machine['versions']['torch']}, peft {machine['versions']['peft']}. "
        f"While timing ({share['timed_wall_s']} s), other processes kept {share['cpu_busy_with_other_processes']:.0%} "
        f"of the CPUs busy (1-minute load average up to {share['load_avg_1min_max']})."
    )

"""Analyses read one module at a time (analysis/runs/tensors.py): the tables are those of an eager, whole-file read,
and an analysis completes under a memory limit smaller than the ΔW file it reads."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.tables import intruder_table, overlap_table, spectra_table, table7
from analysis.tables import intruders, projection, spectra, subspace
from analysis.runs import load_runs, tensors
from test_figures_end_to_end import full_run, lora_run, tiny_bert

TESTS = Path(__file__).resolve().parent


def _eager_deltas(run_dir: str) -> dict[str, torch.Tensor]:
    """What the analyses read before: the whole ΔW file (or every scale·B·A of the adapter) in memory at once."""
    from safetensors.torch import load_file

    from lorakit import read_adapter

    path = Path(run_dir) / "delta_weights.safetensors"
    if path.exists():
        return {tensors._strip(k): v.float() for k, v in load_file(str(path)).items()}
    return read_adapter(Path(run_dir) / "adapter").delta_weights()


def _eager_base(run) -> dict[str, torch.Tensor]:
    return tensors.loaded_weights(run["model_path"], tensors.num_labels(run["run_dir"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    model_path = root / "tiny-bert"
    tiny_bert().save_pretrained(model_path)
    sweep = root / "sweep"
    for rank in (2, 8):
        for seed in (1, 2):
            lora_run(sweep, model_path, rank, seed, delta_file=seed == 2)  # seed 1: ΔW from adapter/ (B·A)
    for seed in (1, 2):
        full_run(sweep, model_path, seed)
    full_run(sweep, model_path, 3, shuffle_labels=True)
    return load_runs([sweep])


def _tables(runs) -> dict[str, pd.DataFrame]:
    return {"spectra": spectra_table(runs)[0].frame, "intruders": intruder_table(runs).frame,
            "table7": table7(runs, ranks=(2, 8), draws=20).frame, "overlap": overlap_table(runs).frame}


@pytest.mark.slow  # four weight analyses twice over nine runs: ~10 s, too long for the fast tier's 60 s
def test_lazy_and_eager_reads_give_identical_tables(runs, monkeypatch):
    deltas = tensors.run_deltas(runs[runs["method"] == "full"]["run_dir"].iloc[0])
    assert not isinstance(deltas, dict)  # the reader is lazy: nothing read until a module is asked for
    w0 = tensors.run_base_weights(runs.iloc[0])
    assert not isinstance(w0, dict) and set(w0) <= set(_eager_base(runs.iloc[0]))
    lazy = _tables(runs)
    for module in (intruders, projection, spectra, subspace):
        monkeypatch.setattr(module, "run_deltas", _eager_deltas)
        if hasattr(module, "run_base_weights"):
            monkeypatch.setattr(module, "run_base_weights", _eager_base)
    eager = _tables(runs)
    for name, frame in lazy.items():
        assert len(frame) > 0
        pd.testing.assert_frame_equal(frame, eager[name], obj=name)


_UNDER_LIMIT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from safetensors.torch import load_file
    from analysis.tables import spectra_table
    from analysis.runs import load_runs

    from benchmarks.common import pin_mmap_threshold

    pin_mmap_threshold()  # a freed module's memory goes back to the system, not into a heap that only grows
    sweep, warm, delta_file, headroom_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    spectra_table(load_runs([warm]))  # the analysis's own imports and caches, before the limit: only ΔW counts after
    runs = load_runs([sweep])
    torch.linalg.svdvals(torch.randn(64, 32, dtype=torch.float64))  # LAPACK's buffers, before the limit
    data_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmData:"))
    limit = (data_kb * 1024) + headroom_mb * 2**20  # RLIMIT_DATA: heap and private mappings (Linux >= 4.7)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
    table = spectra_table(runs)[0].frame
    try:
        load_file(delta_file)
        eager = "completed"
    except (MemoryError, RuntimeError, OSError, Exception) as err:
        eager = type(err).__name__
    print(json.dumps({"rows": len(table), "eager": eager}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA counts mappings on Linux only")
def test_an_analysis_completes_under_a_memory_limit_smaller_than_its_delta_file(tmp_path):
    from safetensors.torch import save_file

    from test_figures_end_to_end import write_run

    model_path = tmp_path / "tiny-bert"
    tiny_bert().save_pretrained(model_path)
    gen = torch.Generator().manual_seed(0)
    for sweep, modules, shape in (("warm", 1, (64, 32)), ("sweep", 36, (2048, 512))):
        run_dir = tmp_path / sweep / "method=full,seed=1"
        run_dir.mkdir(parents=True)
        deltas = {f"bert.encoder.layer.{i}.output.dense": torch.randn(*shape, generator=gen) * 1e-3
                  for i in range(modules)}  # fmt: skip
        save_file(deltas, str(run_dir / "delta_weights.safetensors"))
        del deltas
        run = {"name": run_dir.name, "task": "sst2", "method": "full", "model": "tiny-bert",
               "model_path": str(model_path), "seed": 1, "shuffle_labels": False}  # fmt: skip
        write_run(run_dir, run, tiny_bert(), 0.85)
    file_mb = (run_dir / "delta_weights.safetensors").stat().st_size / 2**20
    headroom = 64
    assert file_mb > 2 * headroom  # the file is twice the memory the analysis may add
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _UNDER_LIMIT, str(tmp_path / "sweep"), str(tmp_path / "warm"),
                           str(run_dir / "delta_weights.safetensors"), str(headroom)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == 36  # one row per layer of the one configuration: every module was read
    assert result["eager"] != "completed"  # the same limit stops a whole-file read: the limit binds


def test_the_svd_device_follows_execution_device_semantics():
    from analysis.maths import linalg

    try:
        assert linalg.use_device("cpu").type == "cpu"
        assert linalg.use_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
        with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'gpu'"):
            linalg.use_device("gpu")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="device cuda asked for, but torch sees no CUDA device"):
                linalg.use_device("cuda")
    finally:
        linalg.use_device("cpu")


@pytest.mark.gpu
def test_svds_on_the_gpu_match_the_cpu_and_come_back_on_the_cpu():
    from analysis.maths import linalg, spectrum

    m = torch.randn(300, 120, generator=torch.Generator().manual_seed(0))
    cpu = spectrum(m).singular_values
    try:
        linalg.use_device("cuda")
        gpu = spectrum(m).singular_values
        u, s, vh = linalg.svd(m.T)
    finally:
        linalg.use_device("cpu")
    assert gpu.device.type == "cpu" and u.device.type == "cpu"
    torch.testing.assert_close(gpu, cpu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, m.T.double(), rtol=1e-10, atol=1e-10)

"""Cross-task subspaces and the interpolation between two tasks' adapters (issue 13), against known answers: ΔW
subspaces built to coincide, to be orthogonal or to share half their directions, and adapters whose interpolation
ends must score exactly what each adapter scores alone, as must the control (each adapter alone at w and 1 − w)."""

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import low_rank, one_thread, perturb_trainable  # noqa: F401 (one_thread: an autouse fixture)
from safetensors.torch import save_file

from analysis import (
    MissingRuns,
    delta_overlaps,
    expected_random_similarity,
    random_subspace_overlap,
    scan_runs,
    singular_subspaces,
    subspace_overlap,
)
from analysis.tables import cross_task_agg, cross_task_matrix, cross_task_pairs, cross_task_table
from analysis.figures import main

D, R = 32, 2
MODULES = [f"bert.encoder.layer.{i}.attention.self.{kind}" for i in range(2) for kind in ("query", "value")]


def orthonormal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ---------------------------------------------------------------------------------------------------------- maths


def test_phi_of_an_update_with_itself_is_one_on_both_sides():
    delta = low_rank(48, 40, 4, seed=0)
    u, v = singular_subspaces(delta, 4)
    assert u.shape == (48, 4) and v.shape == (40, 4)
    assert subspace_overlap(u, u) == pytest.approx(1.0, abs=1e-12) and subspace_overlap(v, v) == pytest.approx(1.0)
    assert delta_overlaps(delta, 3.0 * delta, 4) == pytest.approx((1.0, 1.0), abs=1e-12)  # scale does not matter
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 40\]"):
        singular_subspaces(delta, 41)


def test_random_subspace_overlap_is_a_distribution_around_k_over_d():
    interval = random_subspace_overlap(64, 4, draws=200, seed=0)
    assert interval.draws == 200 and interval.lo < interval.mean < interval.hi
    assert interval.mean == pytest.approx(expected_random_similarity(4, 64), rel=0.1)
    assert random_subspace_overlap(64, 4, draws=200, seed=0) == interval  # reproducible from the seed
    assert random_subspace_overlap(8, 8, draws=10).lo == pytest.approx(1.0)  # k = d: both span everything
    with pytest.raises(ValueError, match="draws must be an integer >= 2"):
        random_subspace_overlap(64, 4, draws=1)


# ------------------------------------------------------------------------------------------ cross-task from runs


def update(left: list[int], right: list[int], seed: int) -> torch.Tensor:
    """A rank-2 ΔW whose column space is span(P[:, left]) and row space span(Q[:, right]), mixed within each span by
    a random invertible matrix so the singular vectors are not the columns themselves."""
    p, q = orthonormal(D, 1), orthonormal(D, 2)
    mix = torch.randn(R, R, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 3 * torch.eye(R)
    return (p[:, left] @ mix @ q[:, right].T).float()


def delta_run(sweep: Path, task: str, seed: int, left: list[int], right: list[int], rank: int = R,
              shuffled: bool = False) -> None:
    run_dir = sweep / (f"task={task},seed={seed}" + ("" if rank == R else f",rank={rank}") + (",shuffled" * shuffled))
    run_dir.mkdir(parents=True)
    save_file({f"{m}": update(left, right, 10 * seed + i) for i, m in enumerate(MODULES)},
              str(run_dir / "delta_weights.safetensors"))  # fmt: skip
    run = {"name": run_dir.name, "task": task, "method": "lora", "model": "tiny-bert", "model_path": "tiny-bert",
           "rank": rank, "alpha": 2.0 * rank, "targets": "qv", "seed": seed, "init": "gaussian", "rslora": False}
    if task != "sst2":  # sst2's runs predate these keys: their defaults, the same setting as the others
        run.update(quantize="none", loraplus_ratio=1.0, freeze_a=False)
    if shuffled:
        run["shuffle_labels"] = True
    last = {"epoch": 1, "accuracy": 0.5}
    (run_dir / "metrics.json").write_text(json.dumps({"run": run, "metric": "accuracy", "best": last, "last": last,
                                                      "adapted_modules": MODULES, "seed": seed}))  # fmt: skip
    (run_dir / "COMPLETE").write_text("")


@pytest.fixture(scope="module")
def subspace_sweep(tmp_path_factory) -> Path:
    """Column and row spaces as index sets of two fixed orthonormal bases: the expected φ(2, 2) is the share of
    indices two runs have in common."""
    sweep = tmp_path_factory.mktemp("multirun") / "tasks"
    delta_run(sweep, "sst2", 0, [0, 1], [0, 1])
    delta_run(sweep, "sst2", 1, [0, 4], [0, 4])  # half of seed 0's directions: same task, other seeds → 0.5
    delta_run(sweep, "mrpc", 0, [0, 1], [0, 1])  # sst2 seed 0's subspaces, other singular vectors → 1
    delta_run(sweep, "mrpc", 1, [2, 3], [2, 3])  # orthogonal to every sst2 run → 0
    delta_run(sweep, "cola", 0, [6, 7], [6, 7])  # one seed: no same-task value
    delta_run(sweep, "rte", 0, [0, 1], [0, 1], rank=4)  # another rank: another setting, never compared with r=2
    return sweep


def test_cross_task_phi_is_one_for_shared_subspaces_and_zero_for_orthogonal_ones(subspace_sweep):
    runs, _ = scan_runs([subspace_sweep])
    pairs = cross_task_pairs(runs, draws=50)
    frame = pairs.frame
    assert set(frame["LoRA"]) == {"LoRA (r=2, Wq, Wv)"} and not frame["task B"].eq("rte").any()
    expected = {  # (comparison, task A, task B, seeds): φ on both sides, every module
        ("same task, other seeds", "sst2", "sst2", "0 vs 1"): 0.5,
        ("same task, other seeds", "mrpc", "mrpc", "0 vs 1"): 0.0,
        ("cross-task, same seed", "sst2", "mrpc", "0"): 1.0,
        ("cross-task, same seed", "sst2", "mrpc", "1"): 0.0,
        ("cross-task, other seeds", "sst2", "mrpc", "0 vs 1"): 0.0,
        ("cross-task, other seeds", "sst2", "mrpc", "1 vs 0"): 0.5,
        ("cross-task, same seed", "sst2", "cola", "0"): 0.0,
        ("cross-task, other seeds", "sst2", "cola", "1 vs 0"): 0.0,
        ("cross-task, same seed", "mrpc", "cola", "0"): 0.0,
        ("cross-task, other seeds", "mrpc", "cola", "1 vs 0"): 0.0,
    }
    got = frame.groupby(["comparison", "task A", "task B", "seed"])
    assert got.size().to_dict() == {key: len(MODULES) for key in got.size().index}
    for key, phi in expected.items():
        rows = got.get_group(key)
        assert rows["φ column space (k=r)"].tolist() == pytest.approx([phi] * 4, abs=1e-9), key
        assert rows["φ row space (k=r)"].tolist() == pytest.approx([phi] * 4, abs=1e-9), key
    assert len(frame) == len(MODULES) * len(expected)  # every pair of runs of the r=2 setting, once
    lo, mean, hi = frame[["random row space 2.5%", "random row space", "random row space 97.5%"]].iloc[0]
    assert lo < mean < hi and mean == pytest.approx(R / D, rel=0.25)

    table = cross_task_table(pairs)
    cell = table.frame[(table.frame["comparison"] == "cross-task, same seed") & (table.frame["task B"] == "mrpc")]
    assert cell["φ row space (k=r)"].tolist() == pytest.approx([0.5] * 4)  # median of seeds 0 (1.0) and 1 (0.0)
    assert cell["φ row space (k=r) min"].tolist() == pytest.approx([0.0] * 4) and (cell["seed pairs"] == 2).all()
    agg = cross_task_agg(pairs).frame
    assert (agg.loc[agg["task B"] == "cola", "layers × seed pairs"] == 2).all()  # two layers, one seed pair

    tasks, matrix = cross_task_matrix(pairs, "column space", "cross-task, same seed")
    assert tasks == ["sst2", "mrpc", "cola"]  # the paper's order
    assert matrix[0, 0] == pytest.approx(0.5) and matrix[1, 1] == pytest.approx(0.0) and math.isnan(matrix[2, 2])
    assert matrix[0, 1] == matrix[1, 0] == pytest.approx(0.5) and matrix[0, 2] == pytest.approx(0.0)
    _, other = cross_task_matrix(pairs, "row space", "cross-task, other seeds")
    assert other[0, 1] == pytest.approx(0.25) and other[0, 2] == pytest.approx(0.0)  # mean of 0.0 and 0.5; 0.0


def test_cross_task_needs_two_tasks_in_one_setting(subspace_sweep):
    runs, _ = scan_runs([subspace_sweep / "task=sst2,seed=0", subspace_sweep / "task=sst2,seed=1",
                         subspace_sweep / "task=rte,seed=0,rank=4"])  # fmt: skip
    with pytest.raises(MissingRuns) as err:
        cross_task_pairs(runs)
    message = str(err.value)
    assert "\n" not in message and "two or more tasks with the same model, rank" in message
    assert "['rte', 'sst2']" in message


def test_cross_task_through_the_figure_command(subspace_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(subspace_sweep), "--out", str(out), "--only", "cross_task", "interpolation",
                     "--random-draws", "20"])  # fmt: skip
    log = capsys.readouterr().out
    assert code == 0, log
    for name in ("cross_task.csv", "cross_task.md", "cross_task_agg.csv", "cross_task_agg.md", "fig_cross_task.png"):
        assert (out / name).stat().st_size > 0, name
    assert "interpolation: skipped — the interpolation curve needs LoRA runs with adapter/" in log
    index = (out / "index.md").read_text()
    assert "Cross-task subspaces" in index and "## Skipped" in index
    assert "| cross-task, same seed | sst2 | mrpc |" in (out / "cross_task_agg.md").read_text()


# ------------------------------------------------------------------------------------- interpolation from runs


def write_adapter_run(sweep: Path, model_dir: Path, glue_dir: Path, cache: Path, task: str, seed: int) -> Path:
    """A LoRA run folder on the tiny model and data: the resolved config, an adapter (factors and head moved by
    seeded noise, standing in for training) and metrics.json."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import CONF_DIR, register_resolvers
    from experiments.models import load_model
    from lorakit import LoRAConfig, inject_lora, save_adapter

    register_resolvers()
    overrides = [f"task={task}", f"seed={seed}", f"model.path={model_dir}", f"execution.data_dir={glue_dir}",
                 f"execution.cache_dir={cache}", "train.max_length=32", "train.max_train_samples=null", "rank=2",
                 "alpha=4"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides)
    run_dir = sweep / f"task={task},seed={seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    model = load_model(str(model_dir), cfg.task.num_labels)
    adapted = inject_lora(model, LoRAConfig(r=2, alpha=4.0, targets="qv", trainable=("pooler", "classifier")))
    perturb_trainable(model, seed=100 + 10 * seed + len(task), std=0.5)
    save_adapter(model, run_dir / "adapter", base_model_name_or_path=str(model_dir))
    run = {"name": run_dir.name, "task": task, "method": "lora", "model": "tiny-bert", "model_path": str(model_dir),
           "rank": 2, "alpha": 4.0, "targets": "qv", "seed": seed, "init": "gaussian", "rslora": False}
    last = {"epoch": 1, cfg.task.metric: 0.5}
    (run_dir / "metrics.json").write_text(json.dumps({"run": run, "metric": cfg.task.metric, "best": last,
                                                      "last": last, "adapted_modules": adapted, "seed": seed}))
    (run_dir / "COMPLETE").write_text("")
    return run_dir


@pytest.fixture(scope="module")
def adapter_sweep(tmp_path_factory, tiny_model_dir, tiny_glue_dir) -> Path:
    sweep = tmp_path_factory.mktemp("multirun") / "adapters"
    cache = tmp_path_factory.mktemp("cache")
    for task in ("sst2", "stsb"):  # two labels and one output (regression): a base model per head size
        for seed in (0, 1):
            write_adapter_run(sweep, tiny_model_dir, tiny_glue_dir, cache, task, seed)
    return sweep


def own_score(run_dir: Path, model_dir: Path, scale: float = 1.0) -> float:
    """The task's metric of the run's adapter alone, loaded the ordinary way on a fresh base model, with every B
    multiplied by ``scale`` (ΔW = scale·ΔW_run; not through combine_adapters); at scale 0 no LoRA at all: the run's
    head copied into the pretrained model, the frozen encoder under the task's head."""
    from analysis.runs.dev_sets import dev_set
    from experiments.models import load_model, load_tokenizer
    from lorakit import load_adapter, lora_modules, read_adapter

    dev = dev_set(run_dir, load_tokenizer(str(model_dir)))
    model = load_model(str(model_dir), dev.num_labels)
    with torch.no_grad():
        if scale == 0.0:
            for key, value in read_adapter(run_dir / "adapter").extra.items():
                model.get_parameter(key).copy_(value)
        else:
            load_adapter(model, run_dir / "adapter")
            for layer in lora_modules(model).values():
                layer.lora_B.mul_(scale)
    return dev.score(model)


def test_interpolation_ends_score_each_adapter_alone(adapter_sweep, tiny_model_dir):
    from analysis.tables import interpolation_curves

    runs, _ = scan_runs([adapter_sweep])
    table = interpolation_curves(runs, pair=("sst2", "stsb"), seeds=1, points=3)
    frame = table.frame
    assert list(frame.columns) == ["pair", "seed", "w", "task", "metric", "value", "alone", "recorded",
                                   "head-only baseline"]  # fmt: skip
    assert len(frame) == 2 * 3 and set(frame["seed"]) == {0} and sorted(set(frame["w"])) == [0.0, 0.5, 1.0]
    value, alone = frame.set_index(["task", "w"])["value"], frame.set_index(["task", "w"])["alone"]
    sst2, stsb = adapter_sweep / "task=sst2,seed=0", adapter_sweep / "task=stsb,seed=0"
    # w = 1: sst2's adapter alone (with its head); w = 0: stsb's adapter alone (with its head)
    assert value["sst2", 1.0] == pytest.approx(100 * own_score(sst2, tiny_model_dir))
    assert value["stsb", 0.0] == pytest.approx(100 * own_score(stsb, tiny_model_dir), abs=1e-4)
    assert len({round(value["stsb", w], 6) for w in (0.0, 0.5, 1.0)}) == 3  # the factors change what stsb's head sees
    # The control, each adapter alone at its weight in the mix. At its own end it is the mix (the other weighs 0) ...
    assert alone["sst2", 1.0] == pytest.approx(value["sst2", 1.0]) and alone["stsb", 0.0] == pytest.approx(
        value["stsb", 0.0], abs=1e-4)  # fmt: skip
    # ... at the other end ΔW = 0: the pretrained encoder under the task's own head, no LoRA at all ...
    assert alone["sst2", 0.0] == pytest.approx(100 * own_score(sst2, tiny_model_dir, scale=0.0))
    assert alone["stsb", 1.0] == pytest.approx(100 * own_score(stsb, tiny_model_dir, scale=0.0), abs=1e-4)
    # ... and at w = 0.5 half its own update, which the other task's factors change (interference in the mix)
    assert alone["sst2", 0.5] == pytest.approx(100 * own_score(sst2, tiny_model_dir, scale=0.5))
    assert alone["stsb", 0.5] == pytest.approx(100 * own_score(stsb, tiny_model_dir, scale=0.5), abs=1e-4)
    assert alone["stsb", 0.5] != pytest.approx(value["stsb", 0.5], abs=1e-3)
    assert len({round(alone["stsb", w], 6) for w in (0.0, 0.5, 1.0)}) == 3  # its scale changes what stsb's head sees
    recorded = frame.dropna(subset="recorded")  # at each task's own end only: sst2 at w = 1, stsb at w = 0
    assert list(zip(recorded["task"], recorded["w"], recorded["recorded"])) == [("sst2", 1.0, 50.0), ("stsb", 0.0, 50.0)]
    assert frame["head-only baseline"].isna().all()
    assert table.missing_controls == [f"head-only baseline — needs method=head runs on {t}" for t in ("sst2", "stsb")]


def test_interpolation_names_the_pairs_it_has(adapter_sweep, subspace_sweep):
    from analysis.tables import interpolation_curves

    runs, _ = scan_runs([adapter_sweep])
    with pytest.raises(MissingRuns, match=r"no such runs for the pair sst2 \+ cola \(pairs with runs: \['sst2 \+ stsb'\]\)"):
        interpolation_curves(runs, pair=("sst2", "cola"))
    runs, _ = scan_runs([subspace_sweep])  # ΔW files, no adapter/
    with pytest.raises(MissingRuns, match="needs LoRA runs with adapter/ on two tasks"):
        interpolation_curves(runs)


def test_interpolation_through_the_figure_command(adapter_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(adapter_sweep), "--out", str(out), "--only", "interpolation", "--interpolation-seeds", "2",
                 "--interpolation-points", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    frame = pd.read_csv(out / "interpolation.csv")
    assert len(frame) == 2 * 2 * 2 and set(frame["seed"]) == {0, 1} and set(frame["pair"]) == {"sst2 + stsb"}
    assert frame["alone"].notna().all()  # the control beside every point of the mix, and in the figure
    assert (out / "fig_interpolation.png").stat().st_size > 0
    assert "Interpolating two tasks' adapters" in (out / "index.md").read_text()


def test_shuffled_label_runs_are_the_task_free_control_of_the_cross_task_values(tmp_path):
    """Shuffled-label LoRA runs of the setting enter as a pseudo-task, compared with every true-label run ("task vs
    shuffled labels") and with each other, never as a task of the cross-task matrix."""
    sweep = tmp_path / "tasks"
    delta_run(sweep, "sst2", 0, [0, 1], [0, 1])
    delta_run(sweep, "mrpc", 1, [0, 4], [0, 4])
    delta_run(sweep, "sst2", 1, [0, 1], [2, 3], shuffled=True)  # shares sst2 seed 0's column space, not its rows
    delta_run(sweep, "sst2", 2, [5, 6], [5, 6], shuffled=True)
    runs, _ = scan_runs([sweep])
    pairs = cross_task_pairs(runs, draws=20)
    got = pairs.frame.groupby(["comparison", "task A", "task B", "seed"])[
        ["φ column space (k=r)", "φ row space (k=r)"]].mean()
    shuffled = "sst2 (shuffled labels)"
    assert got.loc[("task vs shuffled labels, other seeds", "sst2", shuffled, "0 vs 1")].tolist() == \
        pytest.approx([1.0, 0.0], abs=1e-9)
    assert got.loc[("task vs shuffled labels, same seed", "mrpc", shuffled, "1")].tolist() == \
        pytest.approx([0.5, 0.0], abs=1e-9)
    assert got.loc[("shuffled labels, other seeds", shuffled, shuffled, "1 vs 2")].tolist() == \
        pytest.approx([0.0, 0.0], abs=1e-9)
    assert got.loc[("cross-task, other seeds", "sst2", "mrpc", "0 vs 1")].tolist() == pytest.approx([0.5, 0.5])
    assert set(pairs.frame["comparison"]) == {"cross-task, other seeds", "task vs shuffled labels, other seeds",
                                              "task vs shuffled labels, same seed", "shuffled labels, other seeds"}
    tasks, _ = cross_task_matrix(pairs, "column space", "cross-task, other seeds")
    assert tasks == ["sst2", "mrpc"]

"""Does each method's best learning rate follow the curvature? λ_max at init beside the searched best rate (issue 23,
beyond the paper; Lee et al. 2026; the maths in ``maths.sharpness``).

For each method configuration (a run folder, or a list of sweep overrides for one not yet run, e.g.
``["task=sst2", "method=lora", "rank=8"]``) the model is built as its run would start (experiments' one door, ``experiments.gradients.model_at_init``: seed, pretrained weights, the
method's ``prepare``), and λ_max of the training loss on the fixed batch set is found by Lanczos on
Hessian-vector products, twice: w.r.t. the method's own parameters (what trains outside the task head; the head
alone for method=head) — the λ_max the rule reads, since the head trains in every method and its curvature, the same
for all, would otherwise dominate (it did in the CPU demonstration: 4.3–4.8 for every method) — and w.r.t. everything
that trains at the method's rate (the head included), the λ the rate must be stable for. Beside it,
the method's best rate from the learning-rate results (``results/lr_search/lr_search.csv``): at one training budget,
the confirmed rate (≥ 3 seeds) with the highest median. Across methods, Spearman's ρ between λ_max and the best rate
with a bootstrap interval over methods; the stability bound η < 2/λ predicts ρ < 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from lorakit.inject import matches_any_prefix

from ..maths.sharpness import spearman_interval, top_hessian_eigenvalue
from ..runs import MissingRuns
from .table import Table

CONFIRMED_SEEDS = 3  # a rate confirmed with this many seeds or more is a candidate for the best


def best_rates(lr_table: str | Path | pd.DataFrame, task: str, budget: str | None = None) -> pd.DataFrame:
    """{config, budget, best lr, score}: per configuration of ``task``, at ``budget`` (default: the budget with the
    most configurations confirmed), the confirmed rate with the highest median score. ``lr_table``: the
    learning-rate table (``lr_search.csv``) or its path."""
    table = lr_table if isinstance(lr_table, pd.DataFrame) else pd.read_csv(lr_table)
    lr_csv = "the learning-rate table" if isinstance(lr_table, pd.DataFrame) else lr_table
    table = table[(table["task"] == task) & (table["seeds"] >= CONFIRMED_SEEDS)]
    if table.empty:
        raise MissingRuns(f"{lr_csv}: no rate confirmed with {CONFIRMED_SEEDS}+ seeds on {task}")
    if budget is None:
        budget = table.groupby("budget")["config"].nunique().idxmax()
    at = table[table["budget"] == budget]
    best = at.loc[at.groupby("config")["score"].idxmax(), ["config", "budget", "lr", "score"]]
    return best.rename(columns={"lr": "best lr"}).reset_index(drop=True)


def searched_configurations(trials: pd.DataFrame, best: pd.DataFrame, run_dirs: dict[str, str]) -> dict:
    """config → what rebuilds it at init, for every configuration in ``best`` (``best_rates``): the folder of one of
    its runs where ``run_dirs`` (run → folder) has one, else the sweep overrides its run's name records (Hydra's
    ``override_dirname``, "sweep/name"), its rate left out (it does not change the model at init) and seed 0."""
    from experiments.config import split_overrides

    sources = {}
    for config in best["config"]:
        runs = trials[(trials["config"] == config) & trials["budget"].isin(best["budget"])].sort_values("seed")
        present = [run for run in runs["run"] if run in run_dirs]
        if present:
            sources[config] = run_dirs[present[0]]
            continue
        name = runs["run"].iloc[0].split("/", 1)[-1]
        kept = [o for o in split_overrides(name) if not o.split("=")[0].endswith("lr") and not o.startswith("seed=")]
        sources[config] = [*kept, "seed=0"]
    return sources


def sharpness_table(methods: dict[str, str | Path | list[str]], lr_csv: str | Path | pd.DataFrame | None = None,
                    examples: int = 64, iterations: int = 60, tol: float = 1e-2, draws: int = 2000,
                    data_dir: str | None = None) -> Table:
    """One row per configuration (``methods``: its name in the lr_search table → a run folder or sweep overrides, all
    of one task): λ_max at init, the trainable parameters, whether Lanczos converged, and the best rate
    where the table has one; ρ(λ_max, best lr) with its 95% bootstrap interval in the title and the verdict column."""
    from experiments.gradients import model_at_init, run_config

    records, tasks = [], set()
    for name, source in methods.items():
        cfg = run_config(source, data_dir)
        tasks.add(str(cfg.task.name))
        model, _, batches = model_at_init(cfg, examples)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        own = [p for n, p in named if not matches_any_prefix(n.rpartition(".")[0], tuple(cfg.model.head))] or params
        total = sum(len(b["labels"]) for b in batches)

        def loss():
            # Attention by the math kernel: the fused CPU/GPU kernels have no double backward, which Hv needs.
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                return sum(model(**b).loss * (len(b["labels"]) / total) for b in batches)

        found, everything = (top_hessian_eigenvalue(loss, group, iterations, tol) for group in (own, params))
        records.append({"config": name, "method params": sum(p.numel() for p in own), "λ_max": found.value,
                        "converged": found.converged, "residual": found.residual, "products": found.iterations, "trainable": sum(p.numel() for p in params),
                        "λ_max (with head)": everything.value, "converged (with head)": everything.converged,
                        "2/λ_max (with head)": 2 / everything.value if everything.value > 0 else math.nan})
    if len(tasks) != 1:
        raise ValueError(f"the configurations compared must share one task, got {sorted(tasks)}")
    task, frame = tasks.pop(), pd.DataFrame(records)
    title = f"Sharpness at init — {task}: λ_max of the training loss on {examples} fixed examples w.r.t. each " \
            f"method's own parameters (and with the head)"
    missing = []
    if lr_csv is not None:
        frame = frame.merge(best_rates(lr_csv, task), on="config", how="left")
        both = frame.dropna(subset=["best lr", "λ_max"])
        if len(both) >= 3:
            rho, interval = spearman_interval(both["λ_max"].tolist(), both["best lr"].tolist(), draws)
            unconverged = list(both.loc[~both["converged"].astype(bool), "config"])
            verdict = (f"no verdict: λ_max did not converge for {', '.join(unconverged)}" if unconverged else
                       "holds: ρ < 0, interval below 0" if interval.hi < 0 else
                       "not held: interval above 0" if interval.lo > 0 else "not told apart: interval spans 0")
            frame["ρ(λ_max, best lr)"] = rho
            frame["ρ 2.5%"], frame["ρ 97.5%"], frame["verdict"] = interval.lo, interval.hi, verdict
            title += f"; Spearman ρ with the best rate {rho:.2f} [{interval.lo:.2f}, {interval.hi:.2f}] ({verdict})"
        else:
            missing.append("the rank correlation — needs the best rate of three or more of these configurations "
                           f"in {lr_csv}")
    return Table(
        frame=frame,
        title=title,
        runs=[],
        notes=[f"Lanczos on Hessian-vector products (double backward), {iterations} products at most, converged "
               f"when the Ritz residual is ≤ {tol:g}·λ_max: an eigenvalue lies within it (analysis/maths/sharpness.py). Best lr: the confirmed rate (≥ "
               f"{CONFIRMED_SEEDS} seeds) with the highest median at one budget. ρ's interval: {draws} bootstrap "
               f"resamples of the configurations."],
        float_format=".4g",
        missing_controls=missing,
    )  # fmt: skip

"""What do intruder dimensions cost? An intervention on trained LoRA runs, not a count (issue 23, beyond the paper;
Shuttleworth et al. 2024, §5).

For each LoRA run with its adapter and head on one task, the adapted model W = W₀ + ΔW is rebuilt (the run's
adapter merged into the pretrained model), and in every adapted module the intruders among W's top-k left singular
vectors (max |cos| with W₀'s below ε: ``maths.intruder_dimensions``) are scaled by λ (``maths.scale_directions``:
W' = W + (λ − 1)·Σ σ_k u_k v_kᵀ). The model is re-scored on the run's dev set and re-probed for forgetting (MiniLM's
zero-shot STS-B, ``experiments.probes``) at each λ, evaluation only. The control scales, in each module, as many of
W's top-k directions that are not intruders (the highest first: ``maths.control_positions``) by the same λ. A cost
of intruders is a metric drop (and a forgetting change) beyond the control's at the same λ.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from experiments.records import FACTORS

from ..maths.intruders import control_positions, intruder_dimensions, scale_directions
from ..runs import MissingRuns, RunError
from ..runs.dev_sets import dev_set
from ..runs.select import choose_task
from .common import true_label_runs
from .table import Table

LAMBDAS = (1.0, 0.75, 0.5, 0.25, 0.0)
ARMS = ("intruders", "control: top non-intruders")


def _lora_runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = true_label_runs(runs)
    return runs[[(Path(d) / FACTORS).is_dir() for d in runs["run_dir"]]] if len(runs) else runs


def intruder_cost_table(runs: pd.DataFrame, task: str | None = None, lambdas=LAMBDAS, k: int = 10,
                        threshold: float = 0.5, seeds: int = 3, data_dir: str | None = None) -> Table:
    """One row per (configuration, seed, arm, λ): the dev metric ×100 and the forgetting probe with the arm's
    directions scaled by λ in every adapted module, and how many directions were scaled."""
    import lorakit
    from experiments.errors import ConfigError
    from experiments.gradients import run_config
    from experiments.models import load_model, load_tokenizer
    from experiments.probes import SentenceSkill

    usable = _lora_runs(runs)
    task = choose_task(usable, task, "the intruder intervention needs LoRA runs with adapter/ (and its head)")
    on_task = usable[usable["task"] == task].sort_values(["label", "seed"])
    on_task = on_task.groupby("label", group_keys=False).head(seeds)
    if any(not 0.0 <= lam <= 1.0 for lam in lambdas):
        raise ValueError(f"λ must lie in [0, 1], got {list(lambdas)}")
    records, cpu = [], torch.device("cpu")
    for _, run in on_task.iterrows():
        try:
            cfg = run_config(run["run_dir"], data_dir)
            tokenizer = load_tokenizer(run["model_path"])
            dev = dev_set(run["run_dir"], tokenizer, data_dir)
            if cfg.probes.forgetting is False:  # a run trained without the probe is probed here all the same
                cfg.probes.forgetting = "auto"
            skill = SentenceSkill.for_run(cfg, tokenizer, run["model_path"])
        except ConfigError as err:
            raise RunError(f"{run['run']}: cannot rebuild its evaluation: {err}") from None
        model = load_model(run["model_path"], dev.num_labels)
        before = skill.measure(model, cpu) if skill else float("nan")
        lorakit.load_adapter(model, Path(run["run_dir"]) / FACTORS)
        lorakit.merge_lora(model)
        modules = lorakit.lora_modules(model)
        tuned = {name: m.stored(m.weight.detach()).double().clone() for name, m in modules.items()}
        found = {name: intruder_dimensions(m.base_weight(), tuned[name], min(k, min(tuned[name].shape)), threshold)
                 for name, m in modules.items()}
        positions = {ARMS[0]: {n: f.ranks for n, f in found.items()},
                     ARMS[1]: {n: control_positions(f) for n, f in found.items()}}
        unchanged = dev.score(model), (skill.measure(model, cpu) if skill else float("nan"))  # the run itself
        for arm in ARMS:
            for lam in lambdas:
                if lam == 1.0 or not any(positions[arm].values()):  # nothing to scale: the run itself
                    score, after = unchanged
                else:
                    with torch.no_grad():
                        for name, m in modules.items():
                            w = scale_directions(tuned[name], positions[arm][name], lam)
                            m.weight.copy_(m.stored(w).to(m.weight.dtype))
                    score, after = dev.score(model), (skill.measure(model, cpu) if skill else float("nan"))
                records.append({"config": run["label"], "seed": run["seed"], "arm": arm, "λ": lam,
                                "directions scaled": sum(len(p) for p in positions[arm].values()),
                                "metric": dev.metric, "value": 100 * score, "recorded": 100 * run.get("score_last", float("nan")),
                                "forgetting (STS-B ×100)": 100 * (before - after)})
        lorakit.unmerge_lora(model)
    if not records:
        raise MissingRuns(f"the intruder intervention: no LoRA run on {task} with adapter/")
    frame = pd.DataFrame(records)
    return Table(
        frame=frame,
        title=f"Intruder cost — {task}: dev metric ×100 and forgetting with each adapted module's intruders (top-{k}, "
        f"ε={threshold}) scaled by λ, against as many top non-intruder directions scaled alike",
        runs=list(on_task["run"]),
        notes=["Evaluation only: the run's adapter merged, then W' = W + (λ − 1)·Σ σ_k u_k v_kᵀ over the arm's "
               "directions in every adapted module (analysis/maths/intruders.py). λ = 1 is the run itself (value "
               "should equal recorded). forgetting: zero-shot STS-B Spearman of the pretrained encoder minus the "
               "intervened one's, ×100, on the run's probe pairs (all 1,500 when the run trained without the probe). PEFT's reduce_intruder_dimension scales the same directions to the same λ but "
               "re-factors W' − W₀ at the adapter's rank, which this exact W' does not."],
        float_format=".2f",
    )  # fmt: skip

"""The verdict table (issue 22): each rule on fixture runs gives the verdict written by hand; the committed
results/VERDICTS.md is what the command regenerates from the committed files, byte for byte."""

from pathlib import Path

import pandas as pd
import pytest

from analysis import verdicts

REPO = Path(__file__).resolve().parent.parent


def write_tasks(root: Path, scores: dict[tuple[str, str, float], list[float]]) -> None:
    """tasks/five_seeds/runs.csv as the analysis command writes it: one row per (task, method, lr) and seed."""
    rows = []
    for (task, method, lr), values in scores.items():
        for seed, score in enumerate(values):
            lora = method == "lora"
            rows.append({"run": f"s/{task},{method},{lr},{seed}", "task": task, "method": method, "metric": "accuracy",
                         "rank": 8.0 if lora else None, "targets": "qv" if lora else None,
                         "init": "gaussian" if lora else None, "rslora": False if lora else None, "lr": lr,
                         "train.max_train_samples": 2000, "train.epochs": 2, "seed": seed, "score": score,
                         "forgetting": 0.02 if lora else 0.30})  # fmt: skip
    (root / "tasks" / "five_seeds").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "tasks" / "five_seeds" / "runs.csv", index=False)


def test_table2_rules_give_the_verdicts_written_by_hand(tmp_path):
    close = [0.900, 0.901, 0.899, 0.900, 0.900]  # a spread of 0.2 points: five seeds pin the gap down
    scores = {
        ("sst2", "full", 3e-4): close, ("sst2", "lora", 1e-3): close, ("sst2", "head", 1e-3): [0.70] * 3,
        ("rte", "full", 3e-4): [0.60] * 3, ("rte", "lora", 1e-3): [0.59] * 3, ("rte", "head", 1e-3): [0.60] * 3,
        ("stsb", "full", 3e-4): [0.80, 0.81, 0.82], ("stsb", "lora", 1e-3): [0.85, 0.86, 0.87],
        ("stsb", "head", 1e-3): [0.20] * 3,
        ("mrpc", "full", 3e-4): [0.80, 0.85, 0.90], ("mrpc", "lora", 1e-3): [0.78, 0.86, 0.91],
        ("mrpc", "head", 1e-3): [0.60] * 3,
    }  # fmt: skip
    write_tasks(tmp_path, scores)
    rows = {r.claim.split(":")[0].split(", ")[1].split(" ")[0]: r for r in verdicts.table2_rows(tmp_path)}
    assert rows["sst2"].verdict == "equivalent (±1)"  # identical arms, tight seeds
    assert rows["rte"].verdict == "not tested: the task did not learn at this budget"  # full FT = the head alone
    assert rows["stsb"].verdict == "better (±1)"  # +5 points, every seed apart
    assert rows["mrpc"].verdict == "inconclusive (±1)"  # three seeds spread over 10 points
    assert rows["sst2"].evidence == "5 vs 5 · seeds only"


def test_chance_rule():
    row = verdicts._chance("c", "p", (0.3, 0.2, 0.4), (0.02, 0.01, 0.03), "e", "r", ("s",))
    assert row.verdict == "above chance"
    assert verdicts._chance("c", "p", (0.02, 0.0, 0.05), (0.02, 0.01, 0.03), "e", "r", ("s",)).verdict == "at chance"
    assert verdicts._chance("c", "p", (0.0, 0.0, 0.005), (0.02, 0.01, 0.03), "e", "r", ("s",)).verdict == \
        "below chance"


def write_beyond(root: Path, analysis: str, task: str, name: str, rows: list[dict]) -> None:
    (root / "beyond" / analysis / task).mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "beyond" / analysis / task / name, index=False)


def test_b1_needs_every_seed_above_chance_and_above_the_other_tasks_gradient(tmp_path):
    chance = {f"random {side}{end}": value for side in ("column", "row")
              for end, value in (("", 0.02), (" 2.5%", 0.015), (" 97.5%", 0.028))}  # fmt: skip
    rows = [{"task": "stsb", "config": "LoRA", "seed": seed, "φ column (B)": 0.3, "φ column (ΔW)": 0.30 + 0.01 * seed,
             "φ column (ΔW), other task's G₀": 0.10 + 0.01 * seed, "φ row (ΔW)": 0.02 + 0.001 * seed,
             "φ row (ΔW), other task's G₀": 0.02, **chance} for seed in range(5)]
    rows.append({"task": "stsb", "config": "full FT", "seed": 0, "φ column (ΔW)": 0.5, "φ row (ΔW)": 0.4, **chance})
    write_beyond(tmp_path, "gradient_alignment", "stsb", "gradient_alignment_seeds.csv", rows)
    column, row = verdicts.gradient_alignment_rows(tmp_path)
    assert column.verdict == "held: from G₀" and "+0.200 [+0.200, +0.200]" in column.ours  # paired: the same gap
    assert "full FT's ΔW 0.500" in column.ours
    assert row.verdict == "not held: at chance"


def test_b3_reads_the_intervention_against_its_control_paired_by_run(tmp_path):
    rows = []
    for seed in range(5):
        level = 80 + 3 * seed  # runs differ far more than the intervention's effect: pairing takes that out
        for lam in (1.0, 0.75, 0.5, 0.25, 0.0):
            for arm, cost in (("intruders", 4.0), ("control: top non-intruders", 0.2)):
                rows.append({"config": "LoRA", "seed": seed, "arm": arm, "λ": lam, "directions scaled": 5,
                             "metric": "accuracy", "value": level - cost * (1 - lam) + 0.05 * seed,
                             "recorded": level, "forgetting (STS-B ×100)": 1.0 + 0.1 * seed})
    write_beyond(tmp_path, "intruder_cost", "sst2", "intruder_cost.csv", rows)
    skill, forgetting = verdicts.intruder_cost_rows(tmp_path)
    assert skill.verdict.startswith("held: intruders cost task skill (worse, worse")
    assert forgetting.verdict.startswith("not held: no more than the control (equivalent, equivalent")


def test_reproduction_table_is_filled_between_its_markers(tmp_path):
    path = tmp_path / "REPRODUCTION.md"
    path.write_text(f"# R\n\n{verdicts.TABLE_START}\nold\n{verdicts.TABLE_END}\n\n## Rules\n")
    assert verdicts.fill_reproduction(path, "| new |")
    assert path.read_text() == f"# R\n\n{verdicts.TABLE_START}\n| new |\n{verdicts.TABLE_END}\n\n## Rules\n"
    assert not verdicts.fill_reproduction(tmp_path / "absent.md", "x")


@pytest.mark.slow
def test_the_committed_verdicts_are_what_the_committed_results_give():
    """Byte for byte: rerunning the rules on the committed files reproduces the committed VERDICTS.md."""
    rows = verdicts.verdict_rows(REPO / "results")
    assert verdicts.document(rows) == (REPO / "results" / "VERDICTS.md").read_text(encoding="utf-8")


def ladder_runs(root: Path, rungs: dict[int, dict[tuple[str, float], list]]) -> pd.DataFrame:
    """A run table (scan_runs' columns) of LoRA and full FT runs at several training-set sizes; a run given as an
    array of dev predictions keeps them (predictions.npz), one given as a float has only its score."""
    import numpy as np

    rows = []
    for trained, arms in rungs.items():
        for (method, lr), runs in arms.items():
            for seed, run in enumerate(runs):
                run_dir = root / f"{method}-{lr}-{trained}-{seed}"
                run_dir.mkdir(parents=True)
                if not isinstance(run, float):
                    labels = np.arange(len(run)) % 2
                    np.savez(run_dir / "predictions.npz", **{"validation/outputs": np.asarray(run, np.float32),
                             "validation/labels": labels, "validation/index": np.arange(len(run))})  # fmt: skip
                    run = float(np.mean(np.asarray(run).argmax(-1) == labels))
                rows.append({"run": f"s/{run_dir.name}", "run_dir": str(run_dir), "task": "sst2", "method": method,
                             "metric": "accuracy", "lr": lr, "config_id": f"{method}{lr}", "label": f"{method} {lr}",
                             "train_examples": trained, "seed": seed, "score": run,
                             "data.shuffle_labels": lr < 0})  # a negative rate marks a shuffled-label run (a control)
    return pd.DataFrame(rows)


def test_the_budget_ladder_compares_each_rung_and_never_pools_two_configurations(tmp_path):
    import numpy as np

    from analysis.tables import write_table
    from analysis.tables.budget_ladder import budget_ladder_table

    tight = [0.900, 0.901, 0.899, 0.900, 0.900]
    right = np.eye(2, dtype=np.float32)[np.arange(400) % 2]  # every dev example right
    majority = np.tile(np.float32([1.0, 0.0]), (400, 1))  # always class 0: the constant predictor
    runs = ladder_runs(tmp_path / "runs", {
        1000: {("lora", 1e-3): tight, ("lora", 3e-3): tight, ("full", 3e-4): tight},  # two LoRA rates: left out
        2000: {("lora", 1e-3): tight, ("full", 3e-4): tight, ("lora", -1.0): [0.5] * 3},  # equivalent; a control
        4000: {("lora", 1e-3): [right] * 3, ("full", 3e-4): [majority] * 3},  # full FT at the floor: not tested
        8000: {("lora", 1e-3): [0.95, 0.951, 0.949, 0.95, 0.95], ("full", 3e-4): tight},  # better
    })  # fmt: skip
    table = budget_ladder_table(runs)
    frame = table.frame.set_index("examples trained")
    assert list(frame.index) == [2000, 4000, 8000]
    assert table.left_out == ["sst2 at 1,000 examples: more than one configuration per arm (full 0.0003; lora 0.001; "
                              "lora 0.003), never pooled"]
    assert frame.loc[2000, "verdict"] == "equivalent" and frame.loc[2000, "seeds"] == "5 vs 5"
    assert frame.loc[4000, "verdict"] == "not tested: full FT did not learn" and frame.loc[4000, "constant"] == 50.0
    assert frame.loc[4000, "dev examples"] == 400 and frame.loc[4000, "LoRA − full FT"] == pytest.approx(50.0)
    assert frame.loc[8000, "verdict"] == "better" and np.isnan(frame.loc[8000, "dev examples"])
    write_table(table, tmp_path / "budget_ladder", "budget_ladder")
    (row,) = verdicts.budget_ladder_rows(tmp_path)
    assert row.verdict == "depends on the budget: equivalent · not tested · better (±1)"
    assert row.ours.startswith("2,000: +0.0 [") and "8,000: +5.0 [" in row.ours


def test_a_searched_task_is_judged_on_its_confirmation_seeds_at_the_rates_chosen_on_the_selection_slice(tmp_path):
    """Rule 15: the search's seed-0 trials choose each arm's rate by the selection slice, never by dev; the verdict
    reads seeds 1–5 at those rates only, and an arm with fewer than 3 seeds gives no verdict."""
    from analysis.tables import write_table
    from analysis.tables.lr_search import selection_search_table

    rows = []
    def run(method, lr, seed, dev, selection):
        rows.append({"run": f"s/{method},{lr},{seed}", "task": "cola", "method": method, "metric":
                     "matthews_correlation", "lr": lr, "seed": seed, "score": dev, "train.select_on": "selection",
                     "best_matthews_correlation_selection": selection, "train.epochs": 3,
                     "title": "LoRA" if method == "lora" else "full FT", "config_id": f"{method}{lr}",
                     "label_parts": {"rank": "r=8", "targets": "Wq, Wv"} if method == "lora" else {}})
    # full FT: 1e-4 best on the selection slice, 3e-4 best on dev (it must not be chosen); LoRA: 3e-3
    for lr, dev, sel in ((1e-5, 0.10, 0.10), (1e-4, 0.30, 0.35), (3e-4, 0.40, 0.20)):
        run("full", lr, 0, dev, sel)
    for lr, dev, sel in ((1e-3, 0.30, 0.30), (3e-3, 0.30, 0.32)):
        run("lora", lr, 0, dev, sel)
    for seed in range(1, 6):
        run("full", 1e-4, seed, 0.300 + 0.001 * seed, 0.3)
        run("lora", 3e-3, seed, 0.300 - 0.001 * seed, 0.3)
    run("lora", 1e-3, 1, 0.9, 0.3)  # an unchosen rate's extra seed: never read
    runs = pd.DataFrame(rows)
    search = selection_search_table(runs)
    picked = search.frame[search.frame["chosen"] == "chosen"].set_index("config")["lr"]
    assert picked.to_dict() == {"LoRA (r=8, Wq, Wv)": 3e-3, "full FT": 1e-4}
    assert set(search.frame.loc[search.frame["chosen"] == "chosen", "method"]) == {"lora", "full"}  # by identity
    folder = tmp_path / "table2_learn"
    write_table(search, folder, "lr_selection")
    runs.to_csv(folder / "runs.csv", index=False)
    (row,) = verdicts.table2_learn_rows(tmp_path)
    assert row.evidence == "5 vs 5 · seeds only" and row.verdict == "equivalent (±2)"
    assert "(29.7 vs 30.3;" in row.ours and "table2_learn/lr_selection.csv" in row.sources
    runs[runs["seed"].le(2) | runs["method"].eq("lora")].to_csv(folder / "runs.csv", index=False)
    (row,) = verdicts.table2_learn_rows(tmp_path)
    assert row.verdict == "not tested: fewer than 3 seeds per arm" and row.evidence == "5 vs 2 seeds"


def test_table3_judges_every_metric_from_the_runs_own_values_when_the_run_table_has_them(tmp_path):
    (tmp_path / "table3").mkdir()
    rows = [{"run": f"t/{m},{s}", "task": "e2e", "method": m, "metric": "bleu", "seed": s, "score": 56.0 + s,
             "best_nist": {"lora": 5.5, "full": 6.0}[m] + 0.01 * s, "best_rouge_l": 62.0 + 0.1 * s}
            for m in ("lora", "full") for s in range(3)]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "table3" / "runs.csv", index=False)
    pd.DataFrame({"task / model / method": ["e2e smollm2 LoRA", "e2e smollm2 full FT"]}).to_csv(
        tmp_path / "table3" / "table3.csv", index=False)
    _, nist, rouge = verdicts.table3_rows(tmp_path)
    assert nist.claim == "Table 3, E2E NIST: LoRA r=4 matches full FT" and nist.verdict == "worse (±0.1)"
    assert nist.ours.startswith("−0.50 [")
    assert rouge.verdict == "equivalent (±1)" and rouge.evidence == "3 vs 3 · seeds only"


def test_table3_reads_the_whole_test_set_once_it_has_three_seeds_per_arm_and_the_zero_shot_run(tmp_path):
    """Rule 22: the 630-MR runs replace the 50-MR rerun only when complete; until then the rows stay the rerun's."""
    def write(folder: str, runs: list[tuple[str, int, int, float]]) -> None:
        (tmp_path / folder).mkdir(exist_ok=True)
        pd.DataFrame([{"run": f"{folder}/{m},{s},{e}", "task": "e2e", "method": m, "metric": "bleu", "seed": s,
                       "train.epochs": e, "score": score, "best_nist": 6.0, "best_rouge_l": 62.0}
                      for m, s, e, score in runs]).to_csv(tmp_path / folder / "runs.csv", index=False)  # fmt: skip

    write("table3_rerun", [(m, s, 1, 56.0 + s) for m in ("lora", "full") for s in range(3)])
    write("table3_zero_shot", [("lora", 0, 0, 1.5)])
    whole = [(m, s, 1, {"lora": 60.0, "full": 58.0}[m] + 0.1 * s) for m in ("lora", "full") for s in range(3)]
    write("table3_test", whole[:5] + [("lora", 0, 0, 2.0)])  # full FT's third seed still training
    bleu, zero, *_ = verdicts.table3_rows(tmp_path)
    assert "50 test MRs" in bleu.rule and zero.sources == ("table3_rerun/runs.csv", "table3_zero_shot/runs.csv")
    write("table3_test", whole + [("lora", 0, 0, 2.0)])
    bleu, zero, _, nist, rouge = verdicts.table3_rows(tmp_path)
    assert "all 630 test MRs" in bleu.rule and bleu.verdict == "better (±1)" and bleu.ours.startswith("+2.0 [")
    assert zero.ours.startswith("+58.1 [") and zero.sources == ("table3_test/runs.csv",)
    assert "all 630 test MRs" in nist.rule and nist.verdict == "equivalent (±0.1)"


def test_rule_18_reads_only_the_controls_it_named_and_18b_every_tasks(tmp_path):
    """Rule 18 named SST-2's and STS-B's shuffled labels before its runs; a control added later (rule 18b) gets a row of
    its own and never moves rule 18's. Column space: cross-task cells 0.05–0.07; the named controls 0.02–0.03 (the
    tasks above them), RTE's shuffled-label control 0.09 (every task's control then reaches above the tasks)."""
    cells = [("cross-task, other seeds", "sst2", "mrpc", 0.05), ("cross-task, other seeds", "sst2", "stsb", 0.07),
             ("task vs shuffled labels, other seeds", "sst2", "stsb (shuffled labels)", 0.03),
             ("task vs shuffled labels, other seeds", "mrpc", "sst2 (shuffled labels)", 0.02),
             ("task vs shuffled labels, other seeds", "sst2", "rte (shuffled labels)", 0.09)]  # fmt: skip
    (tmp_path / "table2_learn").mkdir()
    pd.DataFrame([{"LoRA": "LoRA (r=8, Wq, Wv)", "comparison": c, "task A": a, "task B": b, "module": "Wq",
                   "φ column space (k=r)": v, "φ row space (k=r)": 0.02} for c, a, b, v in cells]).to_csv(
        tmp_path / "table2_learn" / "cross_task_agg.csv", index=False)
    rows = {(r.claim.split(", ")[1], r.rule.split(":")[0]): r for r in verdicts.cross_task_control_rows(tmp_path)}
    assert rows["column space (B's side)", "rule 18"].verdict == "above the shuffled-label control"
    assert rows["column space (B's side)", "rule 18"].evidence == "2 vs 2 (task pair, module) cells"
    assert rows["column space (B's side)", "rule 18b"].verdict == "at the shuffled-label control"
    assert "every task's control (3 tasks)" in rows["column space (B's side)", "rule 18b"].claim
    assert rows["row space (A's side)", "rule 18"].verdict == "at the shuffled-label control"


def test_the_interpolation_is_titled_with_the_name_of_the_setting_it_chose(monkeypatch):
    """The interpolation's title names the setting it chose (``setting_names``, tested with the run tables'
    naming in test_analysis_tables), the name of the group it returns."""
    from analysis.tables import interpolation

    monkeypatch.setattr(interpolation, "setting_names", lambda groups: [f"LoRA [lr={g['lr'].iloc[0]:g}]" for g in groups])
    monkeypatch.setattr(interpolation, "_with_adapter", lambda runs: runs)
    at = lambda lr, seeds: pd.DataFrame({"task": ["sst2", "mrpc"] * len(seeds), "lr": lr,  # noqa: E731
                                         "seed": [s for s in seeds for _ in (0, 1)]})
    monkeypatch.setattr(interpolation, "groups_across_tasks", lambda runs: [at(1e-3, [0, 1]), at(2.72e-3, [0])])
    group, name, a, b, seeds = interpolation.choose_pair(pd.DataFrame())
    assert (name, a, b, seeds) == ("LoRA [lr=0.001]", "sst2", "mrpc", [0, 1])
    monkeypatch.setattr(interpolation, "groups_across_tasks", lambda runs: [at(2.72e-3, [0]), at(1e-3, [0, 1])])
    group, name, *_ = interpolation.choose_pair(pd.DataFrame())  # the first setting with a pair: its own name
    assert name == "LoRA [lr=0.00272]" and (group["lr"] == 2.72e-3).all()


def test_intruders_at_a_common_norm_name_each_folders_lora_and_read_both_ways(tmp_path):
    """One row per way per task folder, naming the LoRA configuration the folder holds (r=4 on E2E, r=8 on SST-2)."""
    for task, lora, counts in (("e2e", "LoRA (r=4, Wq, Wv)", ((19, 0, 18), (19, 0, 23), (19, 0, 19))),
                               ("sst2", "LoRA (r=8, Wq, Wv)", ((11, 0, 11), (12, 0, 15), (12, 1, 12)))):
        rows = [{"task": task, "method": method, "seed": seed, "modules": 12, "intruders": raw,
                 "intruders at matched norm": down, "intruders at LoRA's norm": up}
                for method, scale in ((lora, 1), ("full FT", 0))
                for seed, (raw, down, up) in enumerate(counts)
                for raw, down, up in [(raw * scale, down * scale, up * scale + 2 * (1 - scale))]]  # fmt: skip
        (tmp_path / "intruders" / task).mkdir(parents=True)
        pd.DataFrame(rows).to_csv(tmp_path / "intruders" / task / "intruders_runs.csv", index=False)
    found = {(r.claim.split(":")[0].split(" (")[0], r.claim.split("(")[-1].rstrip(")")): r
             for r in verdicts.intruder_norm_rows(tmp_path)}
    down, up = "Intruders at full FT's norm", "Intruders at LoRA's norm"
    assert "LoRA (r=4, Wq, Wv) vs full FT (e2e)" in found[down, "e2e"].claim
    assert (found[down, "e2e"].verdict, found[up, "e2e"].verdict) == ("none in either", "LoRA has more")
    assert found[down, "sst2"].verdict == "not told apart"
    assert "LoRA (r=8, Wq, Wv) vs full FT (sst2)" in found[up, "sst2"].claim

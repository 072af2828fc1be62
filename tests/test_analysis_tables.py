"""The metric tables (Tables 2, 5, 6 analogues) on a hand-made run table, and the Markdown writer."""

import math

import pandas as pd
import pytest

from analysis import MissingRuns, table2, table5, table6, targets_label, to_markdown
from analysis.runs import runs_footnote, runs_table
from experiments import records


def run(method="lora", task="sst2", rank=8, targets="qv", seed=1, score=0.9, trainable=1000, alpha=8.0, lr=1e-3,
        samples=None, epochs=3, shuffled=False, batch_size=32, **extra):
    """A run table row as scan_runs makes it, from a resolved config through experiments/records (the one reader):
    its identity columns, config_id and label come from the same functions a run folder is read with."""
    node = {"name": method, "lr": lr}
    if method in ("lora", "dora"):
        node.update(rank=rank, alpha=alpha, targets=targets, init="gaussian", rslora=False, dropout=0.0,
                    loraplus_ratio=1.0, freeze_a=False, quantize="none", init_from={"dir": None, "task": None})
    if method == "adapter":
        node["adapter_size"] = 64
    node.update(extra)
    config = {"task": {"name": task, "metric": "accuracy"}, "model": {"name": "minilm"}, "method": node,
              "train": {"max_train_samples": samples, "epochs": epochs, "batch_size": batch_size},
              "data": {"shuffle_labels": shuffled}, "seed": seed}
    described = records.describe_run(config)
    facts = described["facts"] or {}
    name = ",".join(f"{k}={v}" for k, v in records.flatten_identity(described["identity"]).items() if k != "task")
    return {"run": f"sweep/{task},{name}", "sweep": "sweep", "name": name, "config_id": described["config_id"],
            "label": described["label"], "title": described["title"], "label_parts": described["label_parts"],
            "has_delta": bool(facts.get("has_delta")), "has_factors": bool(facts.get("has_factors")),
            "family": "sequence_classification", **records.flatten_identity(described["identity"]),
            "method_columns": records.method_columns(described["identity"]), "metric": "accuracy", "score": score,
            "score_last": score, "trainable_params": trainable,
            "method_params": {"lora": trainable - 100, "head": 0}.get(method, trainable), "adapted_modules": [],
            "has_weights": True, "run_dir": f"/runs/{name}"}  # fmt: skip


def table(rows) -> pd.DataFrame:
    return runs_table(rows)


def test_table2_medians_over_seeds_per_task_and_method():
    rows = [run(seed=s, score=x) for s, x in ((1, 0.90), (2, 0.94), (3, 0.91))]
    rows += [run(task="rte", seed=s, score=x) for s, x in ((1, 0.70), (2, 0.80))]
    rows += [run(method="full", seed=1, score=0.93, trainable=22_000_000), run(method="full", task="rte", score=0.75)]
    t = table2(table(rows))
    lora = t.frame[t.frame["model / method"] == "minilm LoRA (r=8, Wq, Wv)"].iloc[0]
    assert lora["sst2"] == pytest.approx(91.0) and lora["rte"] == pytest.approx(75.0)
    assert lora["avg"] == pytest.approx(83.0) and lora["seeds"] == "2–3"
    assert (lora["sst2 min"], lora["sst2 max"]) == pytest.approx((90.0, 94.0))
    full = t.frame[t.frame["model / method"] == "minilm full FT"].iloc[0]
    assert full["sst2"] == pytest.approx(93.0) and list(t.frame.columns)[3:7:3] == ["sst2", "rte"]  # paper's order
    assert lora["params"] == 900 and lora["trainable"] == 1000  # the paper's count leaves the head out
    md = to_markdown(t.frame, t.formats)
    assert "| minilm full FT |" in md and "11.0M" in md  # median of 22M and 1000
    assert "| 91.0 [90.0, 94.0] |" in md and "| 93.0 |" in md  # one seed: no interval to show
    assert "sst2 min" not in md


def test_table2_has_a_row_for_every_method_with_the_head_only_baseline_last():
    rows = [run(score=0.9), run(method="full", score=0.93, trainable=22_000_000), run(method="head", score=0.8)]
    rows += [run(method="bitfit", seed=s, score=x) for s, x in ((1, 0.85), (2, 0.87), (3, 0.86))]
    rows += [run(method="dora", score=0.91)]
    rows += [run(method="adapter")]
    rows += [run(method="ia3", score=0.88)]  # a method this code has never heard of still gets its row
    rows += [run(method="full", seed=2, score=0.2, shuffled=True)]  # a noise control, not a result
    t = table2(table(rows))
    assert list(t.frame["model / method"]) == [  # the reference, the method under study, the others, the baseline
        "minilm full FT", "minilm LoRA (r=8, Wq, Wv)", "minilm Adapter (size=64)", "minilm BitFit",
        "minilm DoRA (r=8, Wq, Wv)", "minilm ia3", "minilm head only"]  # fmt: skip
    head = t.frame.iloc[-1]
    assert head["params"] == 0 and head["trainable"] == 1000 and head["sst2"] == pytest.approx(80.0)
    bitfit = t.frame.iloc[3]
    assert (bitfit["sst2"], bitfit["sst2 min"], bitfit["sst2 max"], bitfit["seeds"]) == (86.0, 85.0, 87.0, "3")
    assert t.frame.iloc[0]["sst2"] == pytest.approx(93.0)  # the shuffled-label run is left out, and says so
    assert len(t.left_out) == 1 and t.left_out[0].endswith("shuffled labels (a noise control)")


def test_table2_names_the_missing_method():
    with pytest.raises(MissingRuns, match=r"LoRA and full fine-tuning runs on a common task; found lora on \['sst2'\]"):
        table2(table([run()]))


def test_table6_metric_vs_rank_per_target_set():
    rows = [run(rank=r, seed=s, score=0.9 + 0.01 * r + 0.001 * s) for r in (1, 2, 8) for s in (1, 2, 3)]
    t = table6(table(rows + [run(rank=4, targets="q")]))
    assert [c for c in t.frame.columns if not c.endswith(("min", "max"))] == [
        "task", "configuration", "r=1", "r=2", "r=4", "r=8", "seeds"]
    row = t.frame.iloc[0]
    assert row["configuration"] == "LoRA (Wq, Wv)" and row["r=2"] == pytest.approx(100 * 0.922) and math.isnan(row["r=4"])
    assert (row["r=2 min"], row["r=2 max"]) == pytest.approx((92.1, 92.3)) and row["seeds"] == "3"
    assert len(t.frame) == 1  # Wq alone has one rank: not a rank sweep
    with pytest.raises(MissingRuns, match="two or more ranks"):
        table6(table([run(rank=8)]))


def test_table5_picks_the_budget_shared_by_most_target_sets():
    rows = [run(rank=8, targets="q", trainable=600, score=0.90), run(rank=4, targets="qv", trainable=600, score=0.92),
            run(rank=2, targets="qkvo", trainable=600, score=0.93), run(rank=8, targets="qv", trainable=1200)]
    t = table5(table(rows))
    assert list(t.frame["configuration"]) == ["LoRA (Wq)", "LoRA (Wq, Wv)", "LoRA (Wq, Wk, Wv, Wo)"]
    assert list(t.frame["rank r"]) == ["8", "4", "2"] and t.frame["sst2"].tolist() == pytest.approx([90, 92, 93])
    assert t.notes[0] == "Budget (trainable parameters incl. head): sst2 600 (500 of them LoRA's)"
    with pytest.raises(MissingRuns, match="same number of trainable parameters"):
        table5(table([run(targets="q", trainable=1), run(targets="qv", trainable=2)]))


def test_markdown_escapes_pipes_and_marks_missing_cells():
    frame = pd.DataFrame({"name": ["a|b", "c"], "value": [1.23456, math.nan]})
    assert to_markdown(frame, float_format=".2f").splitlines() == [
        "| name | value |", "|:---|---:|", "| a\\|b | 1.23 |", "| c | — |",
    ]  # fmt: skip


def test_labels_and_footnotes():
    assert targets_label("qv") == "Wq, Wv" and targets_label("all") == "all (attn + MLP)" and targets_label(None) == "—"
    assert runs_footnote(["s/a", "s/b"]) == "runs: s/a; s/b"
    assert runs_footnote([f"s{i % 2}/r{i}" for i in range(9)]) == "9 runs from sweeps s0, s1"


def test_config_names_name_every_setting_that_makes_an_arm_and_only_what_varies():
    from analysis.tables import config_names

    names = lambda rows: list(config_names(table(rows)))  # noqa: E731
    assert names([run(rank=4, targets="q")]) == ["LoRA (r=4, Wq)"]
    variant = run(rank=4, targets="q", rslora=True, loraplus_ratio=16.0, freeze_a=True)
    assert names([variant]) == ["LoRA (r=4, Wq, rsLoRA, LoRA+ λ=16, A frozen)"]
    assert sorted(names([run(rank=4, targets="q", alpha=a) for a in (8.0, 16.0)])) == [
        "LoRA (r=4, Wq) [alpha=16]", "LoRA (r=4, Wq) [alpha=8]"]  # α named only because it varies
    assert names([run(method="adapter")]) == ["Adapter (size=64)"] and names([run(method="ia3")]) == ["ia3"]
    assert names([run(method="full", lr=1e-4), run(method="full", lr=1e-4, seed=2)]) == ["full FT"] * 2


def test_two_cross_task_settings_with_one_label_are_told_apart_by_what_they_differ_in():
    """A search's or a confirmation's LoRA runs at another rate form a setting of their own; named alike, their cells
    would be read as one setting's (a task's seeds at two rates pooled). Alone, a setting keeps its bare name."""
    from analysis.tables import setting_names

    runs = table([run(task=t, seed=s, lr=lr) for lr in (1e-3, 2.72e-3) for t in ("sst2", "mrpc") for s in (1, 2)])
    groups = [runs[runs["lr"] == lr] for lr in (1e-3, 2.72e-3)]
    assert setting_names(groups) == ["LoRA (r=8, Wq, Wv) [lr=0.001]", "LoRA (r=8, Wq, Wv) [lr=0.00272]"]
    assert setting_names(groups[:1]) == ["LoRA (r=8, Wq, Wv)"] and setting_names([]) == []


def test_runs_differing_in_anything_but_the_seed_are_never_pooled():
    """Batch size, budget, dropout or max_length: a row each, named by what differs (issue 21)."""
    for knob in ({"batch_size": 16}, {"samples": 2000}, {"epochs": 1}, {"dropout": 0.1}):
        rows = [run(seed=s, score=0.9) for s in (1, 2)] + [run(seed=s, score=0.8, **knob) for s in (1, 2)]
        rows += [run(method="full", score=0.85)]
        t = table2(table(rows))
        lora = t.frame[t.frame["model / method"].str.contains("LoRA")]
        assert len(lora) == 2 and sorted(lora["sst2"]) == pytest.approx([80.0, 90.0]), knob
        assert set(lora["seeds"]) == {"2"}
    assert records.describe_run(run_config := {"method": {"name": "lora"}, "seed": 1})["config_id"] == \
        records.describe_run({**run_config, "seed": 2})["config_id"]


def lr_run(lr, seed, score, samples=2000, method="lora"):
    return run(method=method, seed=seed, score=score, lr=lr, samples=samples, epochs=1)


def test_lr_search_chooses_a_rate_only_when_it_beats_the_others_by_more_than_the_seed_range():
    from analysis.tables import lr_search_tables

    rows = [lr_run(1e-3, s, x) for s, x in ((0, 0.80), (1, 0.81), (2, 0.82))]  # range 2 points
    rows += [lr_run(3e-3, s, x) for s, x in ((0, 0.84), (1, 0.845), (2, 0.85))]  # +3.5 > 2: beats
    rows += [lr_run(3e-3, 0, 0.84)]  # the search trial of the same rate and seed: counted once
    rows += [lr_run(9e-3, 0, 0.86)]  # one seed: a search trial, never chosen
    trials, summary = lr_search_tables(table(rows))
    verdict = dict(zip(summary.frame["lr"], summary.frame["verdict"]))
    assert verdict[3e-3].startswith("chosen") and verdict[1e-3].startswith("beaten: +3.5")
    assert verdict[9e-3] == "search trial (1 seed)"
    row = summary.frame[summary.frame["lr"] == 3e-3].iloc[0]
    assert row["seeds"] == 3 and row["score"] == pytest.approx(84.5) and len(trials.frame) == 7

    close = [lr_run(1e-3, s, x) for s, x in ((0, 0.80), (1, 0.81), (2, 0.84))]  # range 4 points
    close += [lr_run(3e-3, s, x) for s, x in ((0, 0.83), (1, 0.84), (2, 0.845))]  # +3.0 < 4: not told apart
    verdict = dict(zip(*lr_search_tables(table(close))[1].frame[["lr", "verdict"]].T.values))
    assert verdict[3e-3].startswith("best median, not chosen") and verdict[1e-3].startswith("not told apart")


def test_lr_search_never_pools_budgets_and_names_what_it_needs():
    from analysis.tables import lr_search_tables

    rows = [lr_run(1e-3, 0, 0.80), lr_run(3e-3, 0, 0.84, samples=4000)]  # one rate per budget: nothing to compare
    with pytest.raises(MissingRuns, match="two or more learning rates of one configuration and budget"):
        lr_search_tables(table(rows))


def test_the_head_only_baseline_is_its_best_learning_rate_and_table2_keeps_rates_apart():
    from analysis.tables import head_baseline

    rows = [run(method="head", seed=s, score=x, lr=1e-3) for s, x in ((1, 0.66), (2, 0.67))]
    rows += [run(method="head", seed=s, score=x, lr=2e-2) for s, x in ((1, 0.69), (2, 0.70))]
    rows += [run(seed=1, score=0.8, lr=1e-3), run(method="full", score=0.82, lr=5e-5)]
    runs = table(rows)
    assert head_baseline(runs, "sst2") == pytest.approx(0.695)  # the stronger rate's median, not the pooled 0.68
    configs = list(table2(runs).frame["model / method"])
    assert configs[-2:] == ["minilm head only [lr=0.001]", "minilm head only [lr=0.02]"]
    assert "minilm LoRA (r=8, Wq, Wv)" in configs  # one rate: no rate in its name


def test_table2_verdicts_compare_each_method_at_its_best_rate_with_full_fine_tuning_at_its_best():
    from analysis.tables import table2_verdicts

    rows = [run(method="full", seed=s, score=x, lr=5e-5) for s, x in ((0, 0.80), (1, 0.80), (2, 0.81))]
    rows += [run(method="full", seed=s, score=x, lr=3e-4) for s, x in ((0, 0.83), (1, 0.84), (2, 0.84))]
    rows += [run(method="full", seed=0, score=0.99, lr=1e-2)]  # one seed: a trial, never the best rate
    rows += [run(seed=s, score=x, lr=1e-3) for s, x in ((0, 0.815), (1, 0.82), (2, 0.825))]  # −2.0 vs 1.0
    rows += [run(method="head", seed=s, score=x, lr=1e-3) for s, x in ((0, 0.70), (1, 0.71), (2, 0.72))]
    rows += [run(task="rte", seed=s, score=x, lr=1e-3) for s, x in ((0, 0.50), (1, 0.55), (2, 0.60))]
    rows += [run(method="full", task="rte", seed=s, score=x, lr=5e-5) for s, x in ((0, 0.52), (1, 0.58))]
    frame = table2_verdicts(table(rows)).frame.set_index(["task", "model / method"])
    full = frame.loc[("sst2", "minilm full FT")]
    assert full["lr"] == 3e-4 and full["score"] == pytest.approx(84.0) and full["rates tried"] == "5e-05, 0.0003, 0.01"
    lora = frame.loc[("sst2", "minilm LoRA (r=8, Wq, Wv)")]
    assert lora["vs full FT"] == "beaten by full FT: -2.0 vs seed range 1.0"
    assert frame.loc[("sst2", "minilm head only"), "vs full FT"].startswith("beaten by full FT: -13.0")
    # RTE: full FT has two seeds only (no rate with three), so it is compared at the rate it has; spread 10 > 0
    assert frame.loc[("rte", "minilm LoRA (r=8, Wq, Wv)"), "vs full FT"] == "within the spread: +0.0 vs seed range 10.0"
    assert list(frame.index.get_level_values("task")) == ["sst2"] * 3 + ["rte"] * 2  # the paper's task order

    # another budget is another arm: a short-budget trial of the same rate and seed is neither pooled nor deduplicated
    short = [run(seed=0, score=0.99, lr=1e-3, samples=500, epochs=1)]
    both = table2_verdicts(table(rows + short)).frame
    assert both.loc[both["budget"] == "all × 3 ep", "vs full FT"].tolist() == list(frame["vs full FT"])  # unchanged
    assert not (both["budget"] == "500 × 1 ep").any()  # no full FT at that budget: nothing to compare it with

    with pytest.raises(MissingRuns, match="need full fine-tuning runs"):
        table2_verdicts(table([run(seed=0, lr=1e-3)]))

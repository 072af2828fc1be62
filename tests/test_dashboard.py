"""The analyses in W&B (analysis/dashboard.py): ``python -m analysis.figures ... --wandb`` over a tiny sweep writes
one analysis run whose records, read back with W&B's own reader, hold every table and figure index.md names, the
verdicts among the tables, and the source runs with their W&B run ids."""

import json
import re

import pandas as pd
import pytest
import yaml

from analysis.dashboard import target
from analysis.figures import main
from experiments.wandb_records import read_run, run_folders, run_ids
from test_figures_end_to_end import full_run, lora_run, no_delta_run, tiny_bert

ONLY = ["table2", "table2_verdicts", "table6", "init_drift", "spectra", "truncation", "forgetting"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Runs in the contract's format, one of them with a real offline W&B run in its folder as a job leaves it."""
    import wandb

    root = tmp_path_factory.mktemp("multirun") / "2026-12-04"
    model_path = root / "tiny-bert"
    tiny_bert().save_pretrained(model_path)
    sweep = root / "12-00-00-abc"
    for rank in (2, 8):
        for seed in (1, 2):
            lora_run(sweep, model_path, rank, seed, delta_file=True)
    for seed in (1, 2):
        full_run(sweep, model_path, seed)
        no_delta_run(sweep, model_path, "head", seed, 0.70 + 0.01 * seed)
    logged = sweep / "rank=2,seed=1"
    config = yaml.safe_load((logged / "config.yaml").read_text())
    config["execution"] = {"wandb": {"mode": "offline", "project": "dash-test", "entity": None}}
    (logged / "config.yaml").write_text(yaml.safe_dump(config))
    run = wandb.init(mode="offline", project="dash-test", group="2026-12-04/12-00-00-abc", name="rank=2,seed=1",
                     dir=str(logged), reinit="finish_previous")
    run.log({"eval/accuracy": 0.81})
    run.finish()
    return sweep


def test_the_target_is_the_runs_project_and_sweep_group(tmp_path):
    folders = [tmp_path / "day" / sweep / run for sweep, run in (("a", "r1"), ("a", "r2"), ("b", "r1"))]
    for folder, project, mode in zip(folders, ("p", "p", "q"), ("online", "online", "offline")):
        folder.mkdir(parents=True)
        config = {"execution": {"wandb": {"mode": mode, "project": project, "entity": None}}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    runs = pd.DataFrame({"run_dir": [str(f) for f in folders]})
    where = target(runs)  # most runs are in project p, sweep day/a; their modes differ: offline
    assert (where.mode, where.project, where.group, where.groups) == ("offline", "p", "day/a", ["day/a", "day/b"])
    assert target(runs.iloc[:2]).mode == "online" and target(runs, "disabled").mode == "disabled"


@pytest.mark.slow
def test_analysis_run_holds_every_table_and_figure_of_the_index(sweep, tmp_path):
    out = tmp_path / "analysis"
    assert main([str(sweep), "--out", str(out), "--only", *ONLY, "--wandb"]) == 0
    index = (out / "index.md").read_text()
    produced = index.split("## Produced")[1].split("\n## ")[0]
    files = re.findall(r"`([^`/]+\.(?:csv|md|png))`", produced)
    assert "table2_verdicts.csv" in files and "fig_spectra.png" in files and len(files) >= 15

    run = read_run(out)  # W&B's own reader over the analysis run's offline transaction log
    assert run.job_type == "analysis" and run.project == "dash-test" and run.group == "2026-12-04/12-00-00-abc"
    row = run.history[-1]
    for name in files:
        stem, suffix = name.rsplit(".", 1)
        key, kind = (f"figures/{stem}", "image-file") if suffix == "png" else (f"tables/{stem}", "table-file")
        assert row[f"{key}._type"] == kind, name
    media = run_folders(out)[-1] / "files"
    verdicts = json.loads((media / row["tables/table2_verdicts.path"]).read_text())
    assert verdicts["columns"] == list(pd.read_csv(out / "table2_verdicts.csv").columns)
    assert row["tables/runs._type"] == row["analyses._type"] == row["source_runs._type"] == "table-file"

    sources = json.loads((media / row["source_runs.path"]).read_text())
    ids = dict(zip((r[0] for r in sources["data"]), (r[sources["columns"].index("wandb_run_ids")]
                                                    for r in sources["data"])))  # fmt: skip
    logged = run_ids(sweep / "rank=2,seed=1")
    assert ids["12-00-00-abc/rank=2,seed=1"] == logged[0] and ids["12-00-00-abc/rank=8,seed=1"] == ""
    assert run.config["source_run_ids"] == logged and run.summary["source_runs"] == len(sources["data"]) == 8
    analyses = json.loads((media / row["analyses.path"]).read_text())
    assert {r[0]: r[2] for r in analyses["data"]} == {key: "produced" for key in ONLY}


@pytest.mark.slow
def test_wandb_disabled_logs_nothing(sweep, tmp_path):
    out = tmp_path / "quiet"
    assert main([str(sweep), "--out", str(out), "--only", "table2", "--wandb", "disabled"]) == 0
    assert (out / "table2.csv").is_file() and not (out / "wandb").exists()

"""The analyses in W&B: ``python -m analysis.figures <sweeps> --out DIR --wandb [offline|online|disabled]`` logs one
analysis run (``job_type="analysis"``) into the sweeps' W&B project and group, holding
- every table the command wrote, a ``wandb.Table`` each under ``tables/<stem>`` (the verdicts, ``table2_verdicts``,
  among them; ``runs.csv`` as ``tables/runs``),
- every figure, an image each under ``figures/<stem>`` (from its PNG; ``--formats`` must include png),
- ``analyses``: each analysis produced, skipped or failed, its files and why,
- ``source_runs``: the runs read, with the ids of their W&B runs where they logged one, so the dashboard links back.

Where it logs comes from the source runs' own ``execution.wandb`` (config.yaml): the project (and entity) most of them
name, the group of the sweep most of them belong to (``experiments.tracking.sweep_group``; every group is in the
run's config). ``--wandb`` without a value takes their mode when they agree on offline or online, else offline. The
run's files go to ``DIR/wandb/`` (git ignores ``wandb/``); ``wandb sync DIR/wandb/offline-run-*`` uploads an offline
one. W&B is imported here only, when asked for.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .runs.folders import read_config

MODES = ("offline", "online", "disabled")
AUTO = "auto"  # --wandb without a value


@dataclass
class Target:
    """Where the analysis run logs."""

    mode: str
    project: str
    entity: str | None
    group: str | None
    groups: list[str] = field(default_factory=list)  # every source run's group, most runs first


def target(runs: pd.DataFrame, mode: str = AUTO) -> Target:
    """The project, entity, group and mode of the analysis run, from its source runs' config.yaml."""
    from experiments.tracking import sweep_group

    settings = [(read_config(d).get("execution") or {}).get("wandb") or {} for d in runs["run_dir"]]
    groups = [g for g, _ in Counter(sweep_group(Path(d).parent) for d in runs["run_dir"]).most_common()]
    project = _most_common([s.get("project") for s in settings]) or "lorakit"
    entity = _most_common([s.get("entity") for s in settings])
    if mode == AUTO:
        modes = {s.get("mode") for s in settings} - {None}
        mode = modes.pop() if len(modes) == 1 and modes <= {"offline", "online"} else "offline"
    return Target(mode, project, entity, groups[0] if groups else None, groups)


def _most_common(values: list) -> object:
    counted = Counter(v for v in values if v)
    return counted.most_common(1)[0][0] if counted else None


def log_analysis(out: Path, outcomes: list, runs: pd.DataFrame, argv: list[str], mode: str = AUTO) -> str | None:
    """Log the analysis written into ``out`` (``outcomes`` of ``analysis.command.run_all``) as one W&B run; returns
    its id, or None with mode disabled."""
    where = target(runs, mode)
    if where.mode == "disabled":
        return None
    import wandb
    from experiments.wandb_records import run_ids

    os.environ.setdefault("WANDB_SILENT", "true")
    sources = source_runs(runs, run_ids)
    config = {"command": "python -m analysis " + " ".join(argv), "runs": len(runs), "source_groups": where.groups,
              "source_run_ids": [i for ids in sources["wandb_run_ids"] for i in ids.split()]}
    run = wandb.init(mode=where.mode, project=where.project, entity=where.entity, group=where.group,
                     job_type="analysis", name=f"analysis:{out.resolve().name}", dir=str(out), config=config,
                     reinit="finish_previous")
    try:
        payload, rows = {}, []
        for outcome in outcomes:
            logged = []
            for path in outcome.files:
                key = _media_key(path, outcome.files)
                if key is None:
                    continue
                payload[key] = (wandb.Image(str(path), caption=outcome.title) if key.startswith("figures/")
                                else wandb.Table(dataframe=pd.read_csv(path), allow_mixed_types=True))
                logged.append(key)
            status = "failed" if outcome.failed else "produced" if outcome.files else "skipped"
            rows.append([outcome.key, outcome.title, status, " ".join(logged), outcome.reason])
        if (out / "runs.csv").is_file():
            payload["tables/runs"] = wandb.Table(dataframe=pd.read_csv(out / "runs.csv"), allow_mixed_types=True)
        payload["analyses"] = wandb.Table(columns=["analysis", "title", "status", "logged as", "reason"], data=rows)
        payload["source_runs"] = wandb.Table(dataframe=sources, allow_mixed_types=True)
        run.log(payload)
        run.summary.update({"produced": sum(r[2] == "produced" for r in rows), "analyses": len(rows),
                            "source_runs": len(sources)})
        run_id = run.id
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run_id


def _media_key(path: Path, siblings: list[Path]) -> str | None:
    """Where a written file goes in the run: a CSV is a table, a PNG a figure; a Markdown table is its CSV's twin and
    a PDF its PNG's, so neither is logged again (a PDF without a PNG cannot be an image)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return f"tables/{path.stem}"
    if suffix == ".png":
        return f"figures/{path.stem}"
    twin = {".md": ".csv", ".pdf": ".png"}.get(suffix)
    if twin and path.with_suffix(twin) not in siblings:
        print(f"[analysis] W&B: {path.name} has no {twin} twin and is not logged")
    return None


def source_runs(runs: pd.DataFrame, run_ids) -> pd.DataFrame:
    """The runs read, one row each: ``run`` (<sweep>/<folder>, as runs.csv and index.md name it), what they are, their
    score, and their W&B run ids (space-separated, oldest first: a resumed run logged one per attempt; empty when it
    never logged to W&B)."""
    from experiments.tracking import sweep_group

    columns = [c for c in ("run", "label", "config_id", "task", "method", "seed", "metric", "score") if c in runs]
    table = runs[columns].astype(object).where(runs[columns].notna(), None)  # pandas' NA is not JSON
    table["wandb_group"] = [sweep_group(Path(d).parent) for d in runs["run_dir"]]
    table["wandb_run_ids"] = [" ".join(run_ids(Path(d))) for d in runs["run_dir"]]
    return table.reset_index(drop=True)

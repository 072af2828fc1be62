"""Draw what a monitored run logged to W&B, read back from its offline transaction log with W&B's own reader
(experiments/wandb_records.py): the README's picture of the dashboard. Not a W&B screenshot: the same series W&B
charts, drawn by matplotlib, labelled as such.

    python docs/dashboard_history.py <run folder | its wandb/ run folder | run-<id>.wandb> docs/dashboard_history.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.wandb_records import read_run, read_records  # noqa: E402

PANELS = [("stable_rank", "stable rank Σσ²/σ₁²"), ("rank90", "rank at 90% energy"), ("top_share", "top share σ₁/Σσ"),
          ("A_change", "‖A − A₀‖ / ‖A₀‖"), ("A_phi", "φ(A, A₀)")]  # fmt: skip


def short(module: str) -> str:
    """'bert.encoder.layer.5.attention.self.value' -> 'L5 value'."""
    parts = module.split(".")
    layer = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("layer", "layers", "h")), "?")
    return f"L{layer} {parts[-1]}"


def main(source: str, out: str) -> None:
    path = Path(source)
    if path.is_dir() and list(path.glob("run-*.wandb")):
        path = next(path.glob("run-*.wandb"))
    run = read_run(path)
    modules = sorted({k.split("/")[1] for row in run.history for k in row if k.startswith("delta/")})
    fig, grid = plt.subplots(2, 3, figsize=(13, 7.5))
    axes = list(grid.flat)
    colours = plt.get_cmap("tab20")
    for ax, (quantity, label) in zip(axes, PANELS):
        for index, module in enumerate(modules):
            points = run.series(f"delta/{module}/{quantity}")
            ax.plot([e for e, _ in points], [v for _, v in points], marker="o", lw=1, ms=3, label=short(module),
                    color=colours(index % 20))
        median = run.series(f"spectral/{quantity}/median")
        ax.plot([e for e, _ in median], [v for _, v in median], color="black", lw=2.5, label="median (spectral/)")
        ax.set_title(f"delta/<module>/{quantity}\n{label}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_xticks(sorted({e for e, _ in median}))
    metric = run.summary.get("metric", "accuracy")
    evals = run.series(f"eval/{metric}")
    axes[-1].plot([e for e, _ in evals], [v for _, v in evals], marker="o", color="tab:green")
    axes[-1].set_title(f"eval/{metric}\n(best_metric {run.summary.get('best_metric', float('nan')):.4f})", fontsize=9)
    axes[-1].set_xlabel("epoch")
    axes[-1].set_xticks([e for e, _ in evals])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8, title="delta/<module>")
    config = {k: run.config.get(k) for k in ("method", "task", "rank", "alpha", "targets", "seed")}
    fig.suptitle(f"W&B run {run.run_id} (group {run.group}; {', '.join(f'{k}={v}' for k, v in config.items())})\n"
                 f"its logged history, read back from the offline file ({len(read_records(path))} records) with "
                 f"`wandb leet inspect --json` and drawn with matplotlib: not a W&B screenshot", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(out, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(*sys.argv[1:3])

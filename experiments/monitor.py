"""The intrinsic-rank quantities of a run while it trains: ΔW's spectrum and the factors' drift from their init, per
adapted module, at each evaluation (Hu et al. 2021, §7), with the analyses' own maths (``analysis.maths``).

Per module, from ΔW against the pretrained W (``Method.delta_weights``; W_ft − W₀ for full fine-tuning), with
σ₁ ≥ σ₂ ≥ … its singular values:
- ``frobenius``       ‖ΔW‖_F = √Σσ²
- ``stable_rank``     Σσ² / σ₁²
- ``effective_rank``  exp(H(p)), p_k = σ_k / Σσ (Roy & Vetterli 2007)
- ``rank90``          the smallest k with Σ_{l≤k} σ_l² ≥ 0.9 Σσ²
- ``top_share``       σ₁ / Σσ
and for methods whose ΔW is s·B·A (``Method.factors``: LoRA, DoRA), against the factors at step 0:
- ``A_change``        ‖A − A₀‖_F / ‖A₀‖_F
- ``A_phi``           φ(A, A₀) = ‖V_Aᵀ V_A₀‖²_F / r over A's r right-singular directions (1: A reads the input
                      through its init's directions; ≈ r/in for unrelated ones), as the ``init_drift`` analysis
- ``B_change``        ‖B − B₀‖_F (absolute: B₀ = 0 at the paper's init, so no ratio)
and, with ``gradient_alignment`` on, against G₀ = ∂L/∂W at the pretrained weights (``experiments.gradients``, issue
23's rule B1), at r = the factors' rank (8 for a ΔW without factors):
- ``G0_column``       φ(G₀'s top-r left singular directions, B's column space; ΔW's top-r left ones without factors)
- ``G0_row``          φ(G₀'s top-r right singular directions, Aᵀ's column space; ΔW's top-r right ones)
so where LoRA's directions come from is a curve over training, not only its end.
Each quantity is also summarised over the modules (median, max), so the runs of a sweep compare on one chart.

What it costs is a budget of ``execution.monitor`` (how a run executes, not what it computes): ``enabled``, ``every``
(evaluations between measurements; the last evaluation is always measured), ``modules`` (a regular expression
searched in the adapted modules' names; null: all) and ``gradient_alignment`` (G₀ once per run, cached per model,
task, data and seed: one backward pass over 256 training examples; off by default). ``benchmarks/monitor_overhead.py`` measures the default's cost.
A run that checkpoints keeps the history beside its checkpoint (``.checkpoint/spectral_history.json``), so a resumed
run ends with the history of an uninterrupted one.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from analysis.maths.alignment import delta_alignment, factor_alignment
from analysis.maths.spectra import spectrum
from analysis.maths.subspace import factor_drift
from experiments.errors import ConfigError
from experiments.store import write_json

SPECTRAL = ("frobenius", "stable_rank", "effective_rank", "rank90", "top_share")
FACTORS = ("A_change", "A_phi", "B_change")
ALIGNMENT = ("G0_column", "G0_row")
ALIGNMENT_RANK = 8  # r for a ΔW without factors (full fine-tuning), as the gradient_alignment analysis reads it
PER_MODULE, SUMMARY = "delta", "spectral"  # W&B key prefixes: delta/<module>/<quantity>, spectral/<quantity>/<stat>
SAVED = "spectral_history.json"  # in the checkpoint folder
TABLE_ROWS = 10_000  # wandb.Table's row limit in a run's media (wandb.Table.MAX_ROWS); beyond it W&B truncates


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    every: int = 1
    modules: str | None = None
    gradient_alignment: bool = False

    @classmethod
    def from_config(cls, execution: DictConfig) -> "Settings":
        """``execution.monitor``; runs configured before it existed get the defaults."""
        node = execution.get("monitor") or {}
        return cls(bool(node.get("enabled", True)), int(node.get("every", 1)), node.get("modules"),
                   bool(node.get("gradient_alignment", False)))


class SpectralMonitor:
    """Measures a run's ΔW at its evaluations and keeps the history (``history``: one record per measurement, the
    ``spectral_history`` of metrics.json); ``log`` sends a record to the run's logger, ``log_final`` the last spectra
    and the truncation curve as tables with a line plot each."""

    def __init__(self, method, adapted: list[str], settings: Settings, history: list[dict] | None = None,
                 saved: Path | None = None, g0: dict | None = None):
        self.method, self.settings, self.saved = method, settings, saved
        self.history: list[dict] = history if history is not None else []
        measured = settings.enabled and method.has_delta and adapted
        self.modules = _select(adapted, settings.modules) if measured else []
        self.last_spectra: dict[str, list[float]] = {}
        self.g0 = {name: g for name, g in (g0 or {}).items() if name in self.modules}

    @classmethod
    def for_run(cls, cfg: DictConfig, method, adapted: list[str], checkpoints: Path | None = None,
                step: int = 0) -> "SpectralMonitor":
        """The run's monitor; with ``checkpoints``, the history saved there up to ``step`` (where a resumed run
        starts again: later records are measured again) is taken up and kept there."""
        saved = Path(checkpoints) / SAVED if checkpoints else None
        history = json.loads(saved.read_text())["history"] if saved and saved.is_file() else []
        settings = Settings.from_config(cfg.execution)
        g0 = None
        if settings.enabled and settings.gradient_alignment and method.has_delta:
            from experiments.gradients import config_gradients

            g0 = config_gradients(cfg)  # the pretrained model's, whatever step the run resumes at
        return cls(method, list(adapted), settings, [r for r in history if r["step"] <= step], saved, g0)

    def due(self, epoch: int, last_epoch: int) -> bool:
        return bool(self.modules) and (epoch % self.settings.every == 0 or epoch == last_epoch)

    def measure(self, model, epoch: int, step: int) -> dict:
        """One record: ``{"epoch", "step", "seconds", "modules": {name: {quantity: value}}, "summary": {quantity:
        {"median", "max"}}}``, appended to ``history``."""
        started = time.perf_counter()
        deltas = self.method.delta_weights(model)
        factors = self.method.factors(model)
        modules, self.last_spectra = {}, {}
        for name in self.modules:
            spec = spectrum(deltas[name])
            values = {"frobenius": spec.frobenius_norm, "stable_rank": spec.stable_rank,
                      "effective_rank": spec.effective_rank, "rank90": spec.rank90, "top_share": spec.top_share}
            if name in factors:
                a, b, a0, b0 = factors[name]
                drift = factor_drift(a, a0)
                values |= {"A_change": drift.relative_change, "A_phi": drift.similarity,
                           "B_change": float((b.detach().double().cpu() - b0.double().cpu()).norm())}
            if name in self.g0:
                g0 = self.g0[name].double()
                if name in factors:
                    found = factor_alignment(g0, a.detach().double().cpu(), b.detach().double().cpu())
                else:
                    found = delta_alignment(g0, deltas[name].detach().double().cpu(), ALIGNMENT_RANK)
                values |= {"G0_column": found["column"], "G0_row": found["row"]}
            modules[name] = values
            kept = min(max(spec.numerical_rank, 1), TABLE_ROWS // len(self.modules))  # full FT: 36 x 384 is too many
            self.last_spectra[name] = spec.singular_values[:kept].tolist()
        quantities = [q for q in (*SPECTRAL, *FACTORS, *ALIGNMENT) if all(q in v for v in modules.values())]
        summary = {q: {"median": statistics.median(v[q] for v in modules.values()),
                       "max": max(v[q] for v in modules.values())} for q in quantities}
        record = {"epoch": epoch, "step": step, "seconds": time.perf_counter() - started, "modules": modules,
                  "summary": summary}
        self.history.append(record)
        if self.saved is not None:
            write_json(self.saved, {"history": self.history})
        return record

    def log(self, record: dict, logger) -> None:
        values = {f"{PER_MODULE}/{name}/{q}": v for name, per in record["modules"].items() for q, v in per.items()}
        values |= {f"{SUMMARY}/{q}/{stat}": v for q, stats in record["summary"].items() for stat, v in stats.items()}
        logger.log({**values, "epoch": record["epoch"]}, step=record["step"])

    def log_final(self, logger, step: int, truncation: list[dict] | None, metric: str) -> None:
        """The last measurement's spectra (σ_k for k up to the numerical rank, at most 10,000 rows over the modules,
        and the energy a rank-k cut keeps, per module) and the truncation probe's metric against k (experiments/
        probes.py), each a table with line plots."""
        if self.last_spectra:
            rows = []
            for name, sigmas in self.last_spectra.items():
                total, kept = self.history[-1]["modules"][name]["frobenius"] ** 2, 0.0
                for k, s in enumerate(sigmas, 1):
                    kept += s * s
                    rows.append([name, k, s, kept / total if total else 0.0])
            logger.table("final/spectra", ["module", "k", "sigma", "energy"], rows, step,
                         {"final/spectra_sigma": ("k", "sigma", "module", "ΔW's singular values σ_k, per module"),
                          "final/spectra_energy": ("k", "energy", "module",
                                                   "energy a rank-k cut of ΔW keeps, Σ_{l≤k} σ_l² / Σ σ²")})
        if truncation:
            rows = [[t["k"], t[metric], t.get("eval_loss")] for t in truncation]
            logger.table("final/truncation", ["k", metric, "eval_loss"], rows, step,
                         {"final/truncation_curve": ("k", metric, None, f"{metric} with every ΔW cut to rank k")})


def _select(adapted: list[str], pattern: str | None) -> list[str]:
    if pattern is None:
        return list(adapted)
    try:
        found = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"execution.monitor.modules={pattern!r} is not accepted: it must be a regular expression "
                          f"({err}) or null (every adapted module)") from None
    chosen = [name for name in adapted if found.search(name)]
    if not chosen:
        raise ConfigError(f"execution.monitor.modules={pattern!r} matches none of the {len(adapted)} adapted modules "
                          f"(e.g. {adapted[0]}); give a regular expression searched in their names, or null for all")
    return chosen

"""One-off diagnostics run by hand on a checkpoint, apart from what every run measures (experiments/probes.py):
``python -m experiments.diagnostics.feature_probe`` asks whether a checkpoint's pooler was ever trained."""

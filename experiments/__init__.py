"""GLUE experiments on top of lorakit: Hydra sweeps of LoRA vs full fine-tuning (``python -m experiments.sweep``)."""

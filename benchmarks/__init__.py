"""Cost benchmarks: lorakit LoRA against HF PEFT and full fine-tuning (issue 5).

Each module runs on its own (``python -m benchmarks.train_step``) and writes ``<name>_<device>.json`` plus a Markdown
table to ``results/benchmarks/``; ``python -m benchmarks.run_all`` runs them all and writes the README there.
Variants are timed side by side in one process, one step of each in turn, so load from other processes falls on all
of them alike; peak memory is measured in a fresh process per variant, because a process's peak RSS only grows.
"""

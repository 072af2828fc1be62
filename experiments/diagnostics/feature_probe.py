"""What a frozen checkpoint's sentence features carry for a task, read three ways: BERT's pooler, the [CLS] state and
the mean over tokens. A linear probe (logistic regression, or ridge for a regression task) fits each on a sample of the
training split and is scored on the dev split with the task's metric; the pooler's weight and bias statistics say
whether it was ever trained.

    python -m experiments.diagnostics.feature_probe task=stsb                 # the embedded MiniLM, data from ../shared/glue
    python -m experiments.diagnostics.feature_probe task=cola model.path=/path/to/checkpoint probe.train_examples=4000

Overrides are the sweep's (conf/sweep.yaml) plus ``probe.train_examples`` (default 2000) and ``probe.seed`` (0).
This is how results/REPRODUCTION.md tells "the pooler loses the information" from "the pooler's scale and gradient
path are the problem" (it is the second).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch


FEATURES = ("pooler", "cls", "mean")


@torch.no_grad()
def sentence_features(encoder, tokenizer, frame: pd.DataFrame, columns, max_length: int, batch_size: int = 64):
    """{feature: array (n, hidden)}: the pooler output, the [CLS] state and the attention-masked mean of the tokens."""
    encoder.eval()
    out = {k: [] for k in FEATURES}
    for start in range(0, len(frame), batch_size):
        texts = [frame[c].iloc[start : start + batch_size].tolist() for c in columns]
        batch = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        result = encoder(**batch)
        hidden, mask = result.last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
        out["pooler"].append(result.pooler_output)
        out["cls"].append(hidden[:, 0])
        out["mean"].append((hidden * mask).sum(1) / mask.sum(1))
    return {k: torch.cat(v).float().numpy() for k, v in out.items()}


def probe(train_x, train_y, eval_x, regression: bool, seed: int) -> np.ndarray:
    """Dev-split outputs of a linear probe: ridge predictions (regression) or class probabilities."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)  # the pooler's outputs are ~6x smaller than the others'; compare content
    train_x, eval_x = scaler.transform(train_x), scaler.transform(eval_x)
    if regression:
        return Ridge(alpha=1.0).fit(train_x, train_y).predict(eval_x)
    model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    return model.fit(train_x, train_y).predict_proba(eval_x)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from hydra import compose, initialize_config_dir
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from experiments.config import CONF_DIR, register_resolvers
    from experiments.data import read_glue
    from experiments.metrics import glue_metrics
    from experiments.models import load_tokenizer, resolve_model_path, untrained_pooler

    from experiments.config import moved_keys

    argv = moved_keys(sys.argv[1:] if argv is None else argv)
    ours = {k: v for k, v in (a.split("=", 1) for a in argv if a.startswith("probe."))}
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=[a for a in argv if not a.startswith("probe.")])
    n_train, seed = int(ours.get("probe.train_examples", 2000)), int(ours.get("probe.seed", 0))
    task = cfg.task
    frames, _ = read_glue(task, cfg.execution.data_dir, cfg.data.hub)
    train = frames[task.train_split]
    train = train.sample(min(n_train, len(train)), random_state=seed)
    dev = frames[next(iter(task.eval_splits))]

    path = resolve_model_path(cfg.model)
    hf_logging.disable_progress_bar()
    tokenizer, encoder = load_tokenizer(path), AutoModel.from_pretrained(path, dtype=torch.float32)
    columns, regression = list(task.text_columns), task.num_labels == 1
    train_f = sentence_features(encoder, tokenizer, train, columns, cfg.train.max_length)
    dev_f = sentence_features(encoder, tokenizer, dev, columns, cfg.train.max_length)

    rows = []
    for name in FEATURES:
        outputs = probe(train_f[name], train["label"].to_numpy(), dev_f[name], regression, seed)
        scores = glue_metrics(task.metrics, outputs, dev["label"].to_numpy())
        rows.append({"feature": name, "std over examples": float(train_f[name].std(0).mean()), **scores})
    table = pd.DataFrame(rows)
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None:
        weight, bias = pooler.dense.weight.detach(), pooler.dense.bias.detach()
        trained = "looks untrained (bias all 0)" if untrained_pooler(encoder) else "trained"
        print(f"pooler: weight std {weight.std():.4f}, |bias| max {bias.abs().max():.4f}: {trained}")
    print(f"{task.name}: linear probes on {len(train)} training examples, scored on {len(dev)} dev examples")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return table


if __name__ == "__main__":
    main()

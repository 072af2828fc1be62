"""The probes a run is measured with after training (experiments/probes.py), against hand computations."""

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

import lorakit
from experiments.config import CONF_DIR, ConfigError, register_resolvers
from experiments.models import load_model, load_tokenizer
from experiments.probes import SentenceSkill, truncation

register_resolvers()


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


def test_forgetting_probe_equals_a_hand_computation_on_20_pairs(tiny_model_dir):
    rng = np.random.default_rng(0)
    words = "a cat dog sat ran on the mat fast slow red blue".split()
    pairs = pd.DataFrame({"sentence1": [" ".join(rng.choice(words, 5)) for _ in range(20)],
                          "sentence2": [" ".join(rng.choice(words, 5)) for _ in range(20)],
                          "label": rng.uniform(0, 5, 20)})
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), 2).eval()
    skill = SentenceSkill(pairs, tokenizer, batch_size=7)  # batches that do not divide 20: padding must not matter

    def mean_pooled(sentence):  # one sentence at a time, no padding at all
        ids = tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            return model.bert(**ids).last_hidden_state[0].mean(0)

    cosines = [torch.nn.functional.cosine_similarity(mean_pooled(a), mean_pooled(b), dim=0).item()
               for a, b in zip(pairs["sentence1"], pairs["sentence2"])]
    expected = spearmanr(cosines, pairs["label"])[0]
    assert skill.measure(model, torch.device("cpu")) == pytest.approx(expected, abs=1e-6)
    result = skill.forgetting(0.9, model, torch.device("cpu"))
    assert result["value"] == pytest.approx(0.9 - expected, abs=1e-6) and result["probe"] == "stsb_spearman"


def test_forgetting_on_a_model_without_the_skill_is_one_line(tiny_overrides):
    cfg = make(tiny_overrides + ["model=roberta_base", "probes.forgetting=true"])
    with pytest.raises(ConfigError, match=r"probes.forgetting=true needs a model with a sentence-embedding skill"):
        SentenceSkill.for_run(cfg, tokenizer=None, model_path="unused")
    assert SentenceSkill.for_run(make(tiny_overrides + ["model=roberta_base"]), None, "unused") is None  # auto: off


def test_truncation_at_zero_removes_the_update_and_leaves_the_model_as_it_was(batch):
    from conftest import tiny_bert

    model = tiny_bert()
    lorakit.inject_lora(model, lorakit.LoRAConfig(r=4, alpha=8, targets="qv"))
    with torch.no_grad():
        for module in lorakit.lora_modules(model).values():
            module.lora_B.normal_(0, 0.5)  # a rank-4 ΔW in every adapted matrix
    trained = model(**batch).logits
    deltas = lorakit.delta_weights(model)
    results = truncation(model, deltas, lambda: {"logits": model(**batch).logits.clone()})

    assert [r["k"] for r in results] == [0, 1, 2]  # the powers of two below the rank, and 0
    with torch.no_grad():
        saved = {name: m.lora_B.detach().clone() for name, m in lorakit.lora_modules(model).items()}
        for module in lorakit.lora_modules(model).values():
            module.lora_B.zero_()
        base = model(**batch).logits
        for name, module in lorakit.lora_modules(model).items():
            module.lora_B.copy_(saved[name])
    assert torch.allclose(results[0]["logits"], base, atol=1e-5)  # k=0: the pretrained weights
    assert not torch.allclose(results[2]["logits"], trained, atol=1e-4)  # rank 2 of a rank-4 ΔW is not all of it
    assert torch.equal(model(**batch).logits, trained)  # restored: unmerged, its trained factors
    assert not any(m.merged for m in lorakit.lora_modules(model).values())
    # probes.truncation=K: the same cuts, only k ≤ K (the main job's 1: the two its table reports), equal to the curve's.
    short = truncation(model, deltas, lambda: {"logits": model(**batch).logits.clone()}, up_to=1)
    assert [r["k"] for r in short] == [0, 1]
    assert all(torch.equal(s["logits"], r["logits"]) for s, r in zip(short, results))
    assert torch.equal(model(**batch).logits, trained)

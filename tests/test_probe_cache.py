"""The forgetting probe's "before" score (experiments/probes.py), cached once per model, probe and data: the cached
score equals a fresh one, it is read back without measuring, and a damaged or foreign entry is measured again."""

import json
import logging

import pandas as pd
import pytest
import torch

from experiments.probes import SentenceSkill

PAIRS = pd.DataFrame({
    "sentence1": ["a great film", "a dull plot", "a moving story", "a bland cast", "a superb ending", "a weak script"],
    "sentence2": ["a brilliant movie", "a boring story", "a touching film", "a lifeless picture", "a dull ending",
                  "a charming plot"],
    "label": [4.5, 4.0, 4.2, 3.9, 1.0, 0.5],
})  # fmt: skip


@pytest.fixture()
def skill_and_model(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    return SentenceSkill(PAIRS, AutoTokenizer.from_pretrained(tiny_model_dir)), model


def test_the_cached_before_score_equals_a_fresh_one_and_is_read_back(skill_and_model, tiny_model_dir, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    skill, model = skill_and_model
    device = torch.device("cpu")
    fresh = skill.measure(model, device)
    first = skill.before(model, device, str(tiny_model_dir), str(tmp_path))
    assert first == fresh and len(list(tmp_path.glob("before-stsb_spearman-*.json"))) == 1
    monkeypatch.setattr(SentenceSkill, "measure", lambda *a: pytest.fail("measured again despite the cache"))
    assert skill.before(model, device, str(tiny_model_dir), str(tmp_path)) == fresh


def test_other_pairs_are_another_entry(skill_and_model, tiny_model_dir, tmp_path):
    skill, model = skill_and_model
    device = torch.device("cpu")
    skill.before(model, device, str(tiny_model_dir), str(tmp_path))
    other = SentenceSkill(PAIRS.iloc[:4], skill.tokenizer)
    assert other.cache_key(str(tiny_model_dir), device) != skill.cache_key(str(tiny_model_dir), device)
    assert other.before(model, device, str(tiny_model_dir), str(tmp_path)) == other.measure(model, device)
    assert len(list(tmp_path.glob("before-*.json"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "value", "key"])
def test_a_damaged_entry_is_measured_again_and_replaced(skill_and_model, tiny_model_dir, tmp_path, caplog, damage):
    skill, model = skill_and_model
    device = torch.device("cpu")
    fresh = skill.before(model, device, str(tiny_model_dir), str(tmp_path))
    (path,) = tmp_path.glob("before-*.json")
    entry = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:20])
    elif damage == "value":
        path.write_text(json.dumps({**entry, "value": entry["value"] + 0.25}))  # the checksum no longer holds
    else:
        path.write_text(json.dumps({**entry, "key": entry["key"].replace("stsb", "other")}))
    with caplog.at_level(logging.WARNING, logger="experiments.probes"):
        again = skill.before(model, device, str(tiny_model_dir), str(tmp_path))
    assert again == fresh
    assert len(caplog.records) == 1 and "is damaged" in caplog.records[0].getMessage()
    assert json.loads(path.read_text()) == entry  # replaced by a whole, correct entry

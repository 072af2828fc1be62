"""The frozen-feature probe (experiments.diagnostics.feature_probe) on the tiny BERT and tiny GLUE-layout data."""

import math

import pytest

from experiments.diagnostics.feature_probe import FEATURES, main


@pytest.mark.parametrize("task,metric", [("stsb", "pearson"), ("sst2", "accuracy")])
def test_probe_scores_each_feature_with_the_tasks_metric(tiny_model_dir, tiny_glue_dir, capsys, task, metric):
    table = main([f"task={task}", f"model.path={tiny_model_dir}", f"execution.data_dir={tiny_glue_dir}", "probe.train_examples=48"])
    assert list(table["feature"]) == list(FEATURES) and metric in table
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in table[metric])
    printed = capsys.readouterr().out
    assert "looks untrained (bias all 0)" in printed  # the tiny model's pooler is freshly initialised
    assert f"{task}: linear probes on 48 training examples" in printed

"""Every bad input is refused with one clear line that says what is wrong and what is accepted."""

import pytest
from conftest import tiny_bert
from torch import nn

from lorakit import LoRAConfig, LoRAError, LoRALinear, inject_lora, resolve_targets


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "rank r must be a positive integer, got 0"),
        ({"r": -4}, "rank r must be a positive integer, got -4"),
        ({"alpha": 0}, "alpha must be > 0, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"init": "xavier"}, "unknown init 'xavier'; accepted: gaussian, kaiming, pissa"),
        ({"init": "pissa", "freeze_a": True},
         "freeze_a=True does not combine with init='pissa'.*accepted: freeze_a with init gaussian or kaiming"),
        ({"init": "pissa", "use_dora": True}, "use_dora=True does not combine with init='pissa'"),
        ({"use_dora": "yes"}, "use_dora must be true or false, got 'yes'"),
        ({"freeze_a": 1}, "freeze_a must be true or false, got 1"),
        ({"targets": "qq"}, "unknown target preset 'qq'; accepted: 'all', any combination of the letters q, k, v, o"),
        ({"targets": ()}, "targets must be a preset or a non-empty list of module names"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(LoRAError, match=message) as info:
        LoRAConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_no_module_matched_lists_the_linear_modules():
    with pytest.raises(LoRAError) as info:
        inject_lora(tiny_bert(), LoRAConfig(targets=("q_proj_typo",)))
    message = str(info.value)
    assert "no nn.Linear module matches targets ['q_proj_typo']" in message
    assert "bert.encoder.layer.{0..1}.attention.self.query" in message and "classifier" in message
    assert "\n" not in message


def test_rank_above_min_dimension():
    with pytest.raises(LoRAError, match=r"rank r=33 must be in \[1, min\(in, out\)\] = \[1, 32\]"):
        inject_lora(tiny_bert(), LoRAConfig(r=33))
    with pytest.raises(LoRAError, match="for a 4x6 linear layer"):
        LoRALinear(nn.Linear(6, 4), r=5, alpha=1)


def test_double_injection():
    model = tiny_bert()
    inject_lora(model, LoRAConfig())
    with pytest.raises(LoRAError, match="model already has LoRA layers"):
        inject_lora(model, LoRAConfig(targets="k"))


def test_wrapping_a_non_linear():
    with pytest.raises(LoRAError, match="LoRALinear wraps nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(2, 2, 1), r=1, alpha=1)
    with pytest.raises(LoRAError, match=r"takes init gaussian or kaiming, got 'pissa' \(init 'pissa' is PiSSALinear\)"):
        LoRALinear(nn.Linear(4, 4), r=1, alpha=1, init="pissa")


def test_presets():
    assert resolve_targets("qv") == ("query", "query_proj", "q_proj", "c_attn", "value", "value_proj", "v_proj")
    assert resolve_targets("vq") == resolve_targets("qv")
    assert resolve_targets(["a.b", "c"]) == ("a.b", "c")

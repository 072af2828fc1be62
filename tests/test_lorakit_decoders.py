"""Decoders: target presets for LLaMA-style and GPT-2 names, GPT-2's Conv1D (W stored in x out, PEFT's
fan_in_fan_out), and PEFT round trips on tiny causal LMs built from configs."""

import json

import peft
import pytest
import torch
from conftest import TINY, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta
from helpers import perturb_trainable
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from lorakit import (
    AdapterConfig,
    LoRAConfig,
    LoRAError,
    delta_weights,
    fan_in_fan_out_modules,
    inject_adapters,
    inject_lora,
    linear_module_names,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    unmerge_lora,
    weight_deltas,
)


def tiny_deberta():
    torch.manual_seed(0)
    return DebertaV2ForSequenceClassification(DebertaV2Config(**TINY, num_labels=2)).eval()


@pytest.fixture
def tokens():
    return torch.randint(3, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(0))


# Per layer: the modules each preset adapts, by the last part(s) of their names.
PRESETS = {
    "bert": (tiny_bert, {"qv": {"query", "value"}, "qkvo": {"query", "key", "value", "attention.output.dense"},
                         "all": {"query", "key", "value", "attention.output.dense", "intermediate.dense",
                                 "layer.{i}.output.dense"}}),
    "roberta": (tiny_roberta, None),  # BERT's names
    "deberta-v2": (tiny_deberta, {"qv": {"query_proj", "value_proj"},
                                  "qkvo": {"query_proj", "key_proj", "value_proj", "attention.output.dense"},
                                  "all": {"query_proj", "key_proj", "value_proj", "attention.output.dense",
                                          "intermediate.dense", "layer.{i}.output.dense"}}),
    "llama": (tiny_llama, {"qv": {"q_proj", "v_proj"}, "qkvo": {"q_proj", "k_proj", "v_proj", "o_proj"},
                           "all": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}),
    "gpt2": (tiny_gpt2, {"qv": {"c_attn"}, "qkvo": {"c_attn", "attn.c_proj"},
                         "all": {"c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}}),
}


@pytest.mark.parametrize("preset", ["qv", "qkvo", "all"])
@pytest.mark.parametrize("arch", list(PRESETS))
def test_presets_know_each_architectures_names(arch, preset):
    make, expected = PRESETS[arch]
    expected = (expected or PRESETS["bert"][1])[preset]
    model = make()
    adapted = inject_lora(model, LoRAConfig(r=2, targets=preset))
    per_layer = {name for name in adapted if ".0." in name}
    assert len(adapted) == 2 * len(expected) and len(per_layer) == len(expected)
    for suffix in expected:
        pattern = suffix.replace("{i}", "0")
        assert sum(name.endswith("." + pattern) for name in per_layer) == 1, (suffix, per_layer)
    if preset == "all":  # every linear layer of attention and MLP: all of them but the head and the pooler
        assert set(adapted) == set(linear_module_names(model, head=("classifier", "lm_head", "pooler")))


def test_linear_module_names_include_conv1d():
    model = tiny_gpt2()
    assert linear_module_names(model) == [
        f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert linear_module_names(model, include_head=True)[-1] == "lm_head"
    inject_lora(model, LoRAConfig(r=2, targets="qv"))  # a wrapped Conv1D is still one linear layer
    assert len(linear_module_names(model)) == 8
    assert fan_in_fan_out_modules(model) == linear_module_names(model)
    assert fan_in_fan_out_modules(tiny_llama()) == []


@pytest.mark.parametrize("kind", [{}, {"use_dora": True}, {"init": "pissa"}])
def test_conv1d_identity_merge_and_delta_out_by_in(tokens, kind):
    model = tiny_gpt2()
    expected = model(tokens).logits
    inject_lora(model, LoRAConfig(r=2, alpha=4, targets="all", trainable=(), **kind))
    module = lora_modules(model)["transformer.h.0.attn.c_attn"]
    assert module.fan_in_fan_out and (module.in_features, module.out_features) == (32, 96)
    assert module.lora_A.shape == (2, 32) and module.lora_B.shape == (96, 2)
    atol = 0 if not kind else 2e-5  # PiSSA's residual W - BA is W only up to rounding
    torch.testing.assert_close(model(tokens).logits, expected, atol=atol, rtol=0)

    perturb_trainable(model)
    stored = {name: m.weight.detach().clone() for name, m in lora_modules(model).items()}
    pretrained = tiny_gpt2().state_dict()
    unmerged = model(tokens).logits
    deltas = delta_weights(model)
    merge_lora(model)
    torch.testing.assert_close(model(tokens).logits, unmerged, atol=1e-5, rtol=0)
    for name, m in lora_modules(model).items():
        assert deltas[name].shape == (m.out_features, m.in_features)  # out x in, the analyses' convention
        merged_minus_pretrained = (m.weight.detach() - pretrained[name + ".weight"]).t()
        torch.testing.assert_close(merged_minus_pretrained, deltas[name], atol=2e-6, rtol=0)
    unmerge_lora(model)
    assert all(torch.equal(m.weight, stored[name]) for name, m in lora_modules(model).items())


def test_full_fine_tune_deltas_are_out_by_in_for_conv1d():
    base, tuned = tiny_gpt2(), perturb_trainable(tiny_gpt2())
    names = linear_module_names(base)
    deltas = weight_deltas(base.state_dict(), tuned.state_dict(), names, fan_in_fan_out=fan_in_fan_out_modules(base))
    c_attn = "transformer.h.0.attn.c_attn"
    assert deltas[c_attn].shape == (96, 32) and deltas[c_attn].is_contiguous()
    torch.testing.assert_close(deltas[c_attn], (tuned.state_dict()[c_attn + ".weight"]
                                                - base.state_dict()[c_attn + ".weight"]).t())


@pytest.mark.parametrize("make, targets", [(tiny_llama, "all"), (tiny_gpt2, "all"), (tiny_gpt2, "qv")])
@pytest.mark.parametrize("use_dora", [False, True])
def test_lorakit_decoder_adapter_loads_in_peft_with_equal_logits(tmp_path, tokens, make, targets, use_dora):
    model = injected(make, targets, use_dora)
    expected = model(tokens).logits
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"] is (make is tiny_gpt2)
    peft_model = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    assert type(peft_model).__name__ == "PeftModelForCausalLM"
    torch.testing.assert_close(peft_model(tokens).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make, targets", [(tiny_llama, ["q_proj", "v_proj", "down_proj"]),
                                           (tiny_gpt2, ["c_attn", "c_fc"])])
@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_decoder_adapter_loads_in_lorakit_with_equal_logits(tmp_path, tokens, make, targets, use_dora):
    config = peft.LoraConfig(r=2, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM", use_dora=use_dora,
                             fan_in_fan_out=make is tiny_gpt2)
    peft_model = perturb_trainable(peft.get_peft_model(make(), config)).eval()
    expected = peft_model(tokens).logits
    peft_model.save_pretrained(tmp_path)

    model = make()
    names = load_adapter(model, tmp_path)
    assert len(names) == 2 * len(targets)
    torch.testing.assert_close(model(tokens).logits, expected, atol=1e-5, rtol=1e-5)
    assert all(m.fan_in_fan_out is (make is tiny_gpt2) for m in lora_modules(model).values())


def injected(make, targets, use_dora=False):
    model = make()
    inject_lora(model, LoRAConfig(r=2, alpha=4, targets=targets, trainable=(), use_dora=use_dora))
    return perturb_trainable(model)


@pytest.mark.parametrize("make, saved, message", [
    (tiny_gpt2, False, r"fan_in_fan_out=false, but transformer\.h\.0\.attn\.c_attn is GPT-2's Conv1D .*accepted: "
                       r"fan_in_fan_out true for Conv1D layers, false for nn\.Linear"),
    (tiny_llama, True, r"fan_in_fan_out=true, but model\.layers\.0\.self_attn\.q_proj is an nn\.Linear"),
])
def test_fan_in_fan_out_mismatch_is_one_line(tmp_path, make, saved, message):
    save_adapter(injected(make, "qv"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["fan_in_fan_out"] = saved
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    model = make()
    with pytest.raises(LoRAError, match=message) as info:
        load_adapter(model, tmp_path)
    assert "\n" not in str(info.value) and not lora_modules(model)


def test_houlsby_adapters_on_gpt2_start_as_identity(tokens):
    model = tiny_gpt2()
    expected = model(tokens).logits
    names = inject_adapters(model, AdapterConfig(size=4, trainable=()))
    assert names == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_proj", "mlp.c_proj")]
    assert torch.equal(model(tokens).logits, expected)


def test_refused_injection_changes_nothing():
    """r=20 fits q_proj (32x32) but not k_proj (16x32, grouped-query attention): no layer is wrapped, none frozen."""
    model = tiny_llama()
    with pytest.raises(LoRAError, match=r"rank r=20 must be in \[1, min\(in, out\)\] = \[1, 16\] for a 16x32"):
        inject_lora(model, LoRAConfig(r=20, targets="all"))
    assert not lora_modules(model) and all(p.requires_grad for p in model.parameters())

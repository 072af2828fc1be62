"""DoRA (Liu et al. 2024): the layer maths, exact merge, ΔW, and PEFT's on-disk format both ways."""

import copy
import json

import peft
import pytest
import torch
from conftest import tiny_bert, tiny_roberta
from helpers import assert_peft_round_trip, minilm_classifier, minilm_inputs, perturb_trainable
from safetensors.torch import load_file
from torch import nn

from lorakit import (
    DoRALinear,
    LoRAConfig,
    LoRAError,
    count_lora_parameters,
    count_method_parameters,
    delta_weights,
    inject_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    read_adapter,
    save_adapter,
    unmerge_lora,
)


def dora_model(make, **config):
    model = make()
    inject_lora(model, LoRAConfig(**{"r": 4, "alpha": 8, "targets": "qkvo", "use_dora": True, **config}))
    return perturb_trainable(model)


def test_identity_at_init_and_magnitude_is_row_norm(tiny_model, batch):
    expected = tiny_model(**batch).logits
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=8, targets="all", use_dora=True))
    assert torch.equal(tiny_model(**batch).logits, expected)
    for module in lora_modules(tiny_model).values():
        assert isinstance(module, DoRALinear) and module.magnitude.requires_grad
        torch.testing.assert_close(module.magnitude, module.weight.norm(dim=1), atol=1e-6, rtol=1e-6)


def test_forward_is_magnitude_times_unit_rows():
    torch.manual_seed(0)
    base = nn.Linear(10, 7)
    layer = DoRALinear(copy.deepcopy(base), r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.uniform_(0.5, 2.0)
    V = base.weight + 2.0 * layer.lora_B @ layer.lora_A
    W = layer.magnitude.unsqueeze(1) * V / V.norm(dim=1, keepdim=True)  # each output row rescaled to length m_i
    x = torch.randn(5, 10)
    torch.testing.assert_close(layer(x), x @ W.T + base.bias, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), W - base.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.merged_weight().norm(dim=1), layer.magnitude.detach())


def test_norm_is_a_constant_in_backprop():
    """DoRA §4.3: ‖W₀ + sBA‖ gets no gradient, so ∂L/∂m = Σ (W₀x + sBAx)/‖·‖ ⊙ ∂L/∂h with the norm held fixed."""
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 4), r=2, alpha=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    layer(x).sum().backward()
    V = (layer.weight + layer.lora_B @ layer.lora_A).detach()
    expected = ((x @ V.T) / V.norm(dim=1)).sum(0)
    torch.testing.assert_close(layer.magnitude.grad, expected, atol=1e-5, rtol=1e-5)
    assert layer.weight.grad is None


def test_merge_equals_unmerged_unmerge_restores_w0_exactly(tiny_model, batch):
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=16, targets="qkvo", use_dora=True))
    perturb_trainable(tiny_model)
    W0 = {n: m.weight.detach().clone() for n, m in lora_modules(tiny_model).items()}
    deltas = delta_weights(tiny_model)
    unmerged = tiny_model(**batch).logits

    merge_lora(tiny_model)
    merge_lora(tiny_model)  # idempotent
    torch.testing.assert_close(tiny_model(**batch).logits, unmerged, atol=1e-5, rtol=0)
    for name, module in lora_modules(tiny_model).items():
        assert torch.equal(module.weight - W0[name], deltas[name])  # ΔW is merged W − W₀
        assert torch.equal(module.delta_weight(), deltas[name])  # and reads the same while merged

    unmerge_lora(tiny_model)
    for name, module in lora_modules(tiny_model).items():
        assert torch.equal(module.weight, W0[name])
    assert torch.equal(tiny_model(**batch).logits, unmerged)


def test_dropout_training_forward_matches_peft(batch):
    """With dropout active DoRA rescales W₀·dropout(x) (PEFT's convention): same seed, same masks, same loss."""
    config = LoRAConfig(r=4, alpha=8, targets="qv", dropout=0.3, use_dora=True)
    ours = perturb_trainable(_injected(config))
    theirs = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, use_dora=True,
                                                              target_modules=["query", "value"], task_type="SEQ_CLS"))
    _copy_into_peft(ours, theirs)
    ours.train(), theirs.train()
    torch.manual_seed(11)
    expected = theirs(**batch).logits
    torch.manual_seed(11)
    torch.testing.assert_close(ours(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def _injected(config):
    model = tiny_bert()
    inject_lora(model, config)
    return model


def _copy_into_peft(model, peft_model):
    with torch.no_grad():
        for name, module in lora_modules(model).items():
            target = peft_model.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(module.lora_A)
            target.lora_B["default"].weight.copy_(module.lora_B)
            target.lora_magnitude_vector["default"].weight.copy_(module.magnitude)
        peft_model.base_model.model.classifier.modules_to_save["default"].load_state_dict(model.classifier.state_dict())


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_lorakit_dora_adapter_loads_in_peft_with_equal_logits(tmp_path, batch, make):
    model = dora_model(make)
    expected = model(**batch).logits
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["r"] == 4
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    magnitudes = {k for k in tensors if k.endswith(".lora_magnitude_vector")}
    assert len(magnitudes) == 8 and all(k.startswith("base_model.model.") for k in magnitudes)
    assert all(tensors[k].shape == (32,) for k in magnitudes)

    peft_model = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    torch.testing.assert_close(peft_model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    fresh = make()
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(**batch).logits, expected)


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_peft_dora_adapter_loads_in_lorakit_with_equal_logits(tmp_path, batch, make):
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], use_dora=True, task_type="SEQ_CLS")
    peft_model = perturb_trainable(peft.get_peft_model(make(), config), seed=5).eval()
    expected = peft_model(**batch).logits
    assert not torch.allclose(expected, make()(**batch).logits, atol=1e-3)  # perturbed: not the identity adapter
    peft_model.save_pretrained(tmp_path)

    model = make()
    names = load_adapter(model, tmp_path)
    assert len(names) == 4 and all(isinstance(lora_modules(model)[n], DoRALinear) for n in names)
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_adapter_delta_weights_need_the_base_weights(tmp_path):
    model = dora_model(tiny_bert)
    save_adapter(model, tmp_path)
    adapter = read_adapter(tmp_path)
    assert adapter.kind == "DoRA"
    with pytest.raises(LoRAError, match="a DoRA adapter's ΔW depends on W₀: pass base_weights"):
        adapter.delta_weights()
    base = {n: m.weight for n, m in lora_modules(model).items()}
    for name, delta in adapter.delta_weights(base).items():
        torch.testing.assert_close(delta, delta_weights(model)[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("saved_dora", [True, False])
def test_kind_mismatch_at_load_is_one_line(tmp_path, saved_dora):
    save_adapter(dora_model(tiny_bert, use_dora=saved_dora), tmp_path)
    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=4, alpha=8, targets="qkvo", use_dora=not saved_dora))
    kinds = ("DoRA", "plain LoRA") if saved_dora else ("plain LoRA", "DoRA")
    with pytest.raises(LoRAError, match=f"is a {kinds[0]} adapter, the model's LoRA layers are {kinds[1]}") as info:
        load_adapter(model, tmp_path)
    assert "\n" not in str(info.value)


def test_missing_magnitude_is_incomplete(tmp_path):
    save_adapter(dora_model(tiny_bert), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items() if "layer.0.attention.self.query.lora_mag" not in k},
              tmp_path / "adapter_model.safetensors")
    with pytest.raises(LoRAError, match=r"is incomplete: \[.*layer\.0\.attention\.self\.query \(no lora_magnitude"):
        read_adapter(tmp_path)


def test_parameter_counts_include_the_magnitudes(tiny_model):
    inject_lora(tiny_model, LoRAConfig(r=4, targets="qv", use_dora=True))
    assert count_lora_parameters(tiny_model) == 2 * 2 * (2 * 4 * 32 + 32)  # 2 layers x {q, v} x (2·r·d + d)
    assert count_method_parameters(tiny_model) == count_lora_parameters(tiny_model)


def test_real_minilm_dora_roundtrip_through_peft(tmp_path, minilm_path):
    inputs = minilm_inputs(minilm_path)
    model = minilm_classifier(minilm_path)
    inject_lora(model, LoRAConfig(r=8, alpha=16, targets="qv", use_dora=True))
    perturb_trainable(model, std=0.02)
    assert_peft_round_trip(model, inputs, model(**inputs).logits, minilm_path, tmp_path)

"""Houlsby adapters (Houlsby et al. 2019): identity at init, the bottleneck maths, what trains, and the saved folder."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert, tiny_roberta
from helpers import perturb_trainable
from torch import nn

from lorakit import (
    AdapterConfig,
    AdapterLinear,
    LoRAConfig,
    LoRAError,
    adapter_modules,
    count_adapter_parameters,
    count_method_parameters,
    inject_adapters,
    inject_lora,
    load_bottleneck_adapters,
    save_adapter,
    save_bottleneck_adapters,
)


def adapted(make, size=8, **config):
    model = make()
    inject_adapters(model, AdapterConfig(size=size, **config))
    return model


def test_identity_at_init_after_both_sublayers(tiny_model, batch):
    base_keys = set(tiny_model.state_dict())
    expected = tiny_model(**batch).logits
    names = inject_adapters(tiny_model, AdapterConfig(size=8))
    assert len(names) == 2 * 2
    assert [n.rpartition("layer.")[2][2:] for n in names] == ["attention.output.dense", "output.dense"] * 2
    assert torch.equal(tiny_model(**batch).logits, expected)
    keys = set(tiny_model.state_dict())
    assert base_keys <= keys and all(".adapter_" in k for k in keys - base_keys)


def test_forward_is_h_plus_bottleneck():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    layer = AdapterLinear(copy.deepcopy(base), size=3, activation="gelu")
    assert torch.count_nonzero(layer.adapter_up) == 0 and layer.adapter_down.abs().max() <= 2e-3
    with torch.no_grad():
        for p in (layer.adapter_down, layer.adapter_down_bias, layer.adapter_up, layer.adapter_up_bias):
            p.normal_()
    x = torch.randn(4, 10)
    h = base(x)
    bottleneck = F.gelu(h @ layer.adapter_down.T + layer.adapter_down_bias)
    expected = h + bottleneck @ layer.adapter_up.T + layer.adapter_up_bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_only_adapters_and_head_train(tiny_model, batch):
    inject_adapters(tiny_model, AdapterConfig(size=4))
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tiny_model.named_parameters() if ".adapter_" in n or n.startswith("classifier.")}
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    tiny_model.train()
    optimizer = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    tiny_model(**batch, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    optimizer.step()
    moved = {n for n, p in tiny_model.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= trainable and any(n.endswith("adapter_up") for n in moved)


def test_parameter_count_is_2md_plus_m_plus_d_per_projection(tiny_model):
    inject_adapters(tiny_model, AdapterConfig(size=8))
    assert count_adapter_parameters(tiny_model) == 4 * (2 * 8 * 32 + 8 + 32)
    assert count_method_parameters(tiny_model) == count_adapter_parameters(tiny_model)


def test_roberta_base_count():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
        inject_adapters(model, AdapterConfig(size=64))
    assert count_adapter_parameters(model) == 24 * (2 * 64 * 768 + 64 + 768)  # 2,379,264


def test_llama_output_projections():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50)).eval()
    ids = torch.randint(0, 50, (2, 7))
    expected = model(input_ids=ids).logits
    names = inject_adapters(model, AdapterConfig(size=4, trainable=("lm_head",)))
    assert [n.rpartition(".")[2] for n in names] == ["o_proj", "down_proj"] * 2
    assert torch.equal(model(input_ids=ids).logits, expected)


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_save_load_roundtrip(tmp_path, batch, make):
    model = perturb_trainable(adapted(make, size=8, activation="relu"))
    expected = model(**batch).logits
    save_bottleneck_adapters(model, tmp_path)
    saved = json.loads((tmp_path / "bottleneck_config.json").read_text())
    assert (saved["adapter_type"], saved["size"], saved["activation"]) == ("houlsby", 8, "relu")
    fresh = make()
    assert load_bottleneck_adapters(fresh, tmp_path) == sorted(adapter_modules(model))
    assert torch.equal(fresh(**batch).logits, expected)
    injected = adapted(make, size=8, activation="relu")  # a model with matching adapters takes the weights in place
    load_bottleneck_adapters(injected, tmp_path)
    assert torch.equal(injected(**batch).logits, expected)


def test_head_false_leaves_the_head(tmp_path):
    save_bottleneck_adapters(perturb_trainable(adapted(lambda: tiny_bert(num_labels=3))), tmp_path)
    target = tiny_bert(num_labels=2, seed=1)
    head = target.classifier.weight.detach().clone()
    with pytest.raises(LoRAError, match=r"saved for another model: classifier\.(weight|bias) is \(3"):
        load_bottleneck_adapters(target, tmp_path)
    assert not adapter_modules(target)  # refused before anything changed
    load_bottleneck_adapters(target, tmp_path, head=False)
    assert torch.equal(target.classifier.weight, head) and adapter_modules(target)


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(LoRAError, match="adapter size must be a positive integer, got 0"):
        AdapterConfig(size=0)
    with pytest.raises(LoRAError, match="adapter size must be a positive integer, got -3"):
        AdapterConfig(size=-3)
    with pytest.raises(LoRAError, match="unknown adapter activation 'swish'; accepted: gelu, relu, tanh, silu"):
        AdapterConfig(activation="swish")
    with pytest.raises(LoRAError, match=r"no nn.Linear module matches targets \['fc_out'\]; the model's Linear"):
        inject_adapters(tiny_bert(), AdapterConfig(targets=("fc_out",)))
    model = adapted(tiny_bert)
    with pytest.raises(LoRAError, match="model already has adapters"):
        inject_adapters(model, AdapterConfig())
    save_bottleneck_adapters(model, tmp_path / "h")
    with pytest.raises(LoRAError, match=r"adapters at .* \(size 8, 4 modules\) differ from the model's"):
        load_bottleneck_adapters(adapted(tiny_bert, size=4), tmp_path / "h")
    lora = tiny_bert()
    inject_lora(lora, LoRAConfig(r=2))
    save_adapter(lora, tmp_path / "lora")
    with pytest.raises(LoRAError, match="no Houlsby adapter at .*found adapter_config.json: a LoRA adapter") as info:
        load_bottleneck_adapters(tiny_bert(), tmp_path / "lora")
    assert "\n" not in str(info.value)
    with pytest.raises(LoRAError, match="AdapterLinear wraps nn.Linear, got Conv1d"):
        AdapterLinear(nn.Conv1d(2, 2, 1), size=2)

"""Adapters on disk: PEFT's format, both directions, and refusals of adapters made for other models."""

import json

import peft
import pytest
import torch
from conftest import tiny_bert, tiny_roberta
from helpers import assert_peft_round_trip, minilm_classifier, minilm_inputs, perturb_trainable
from safetensors.torch import load_file

from lorakit import LoRAConfig, LoRAError, delta_weights, inject_lora, load_adapter, lora_modules, read_adapter, save_adapter



def trained_lorakit_model(make, config, seed=3):
    model = make()
    inject_lora(model, config)
    return perturb_trainable(model, seed)


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
@pytest.mark.parametrize("rslora", [False, True])
def test_lorakit_adapter_loads_in_peft_with_equal_logits(tmp_path, batch, make, rslora):
    model = trained_lorakit_model(make, LoRAConfig(r=4, alpha=8, targets="qkvo", rslora=rslora))
    expected = model(**batch).logits
    save_adapter(model, tmp_path)
    assert set(load_file(tmp_path / "adapter_model.safetensors")) >= {
        "base_model.model.classifier.out_proj.weight" if make is tiny_roberta else "base_model.model.classifier.weight"
    }
    peft_model = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    torch.testing.assert_close(peft_model(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_peft_adapter_loads_in_lorakit_with_equal_logits(tmp_path, batch, make):
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
    peft_model = peft.get_peft_model(make(), config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    peft_model.eval()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)

    model = make()
    names = load_adapter(model, tmp_path)
    assert len(names) == 4 and all(n.endswith(("query", "value")) for n in names)
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip_in_lorakit(tmp_path, batch):
    model = trained_lorakit_model(tiny_bert, LoRAConfig(r=2, alpha=4, targets="all", init="kaiming"))
    expected = model(**batch).logits
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["init_lora_weights"] is True

    fresh = tiny_bert()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(**batch).logits, expected, atol=0, rtol=0)

    adapter = read_adapter(tmp_path)
    for name, delta in delta_weights(model).items():
        torch.testing.assert_close(adapter.delta_weights()[name], delta)

    injected = tiny_bert()  # a model that already has matching LoRA layers takes the weights in place
    inject_lora(injected, LoRAConfig(r=2, alpha=4, targets="all"))
    load_adapter(injected, tmp_path)
    torch.testing.assert_close(injected(**batch).logits, expected, atol=0, rtol=0)


def test_refuses_adapter_for_another_shape(tmp_path):
    save_adapter(trained_lorakit_model(tiny_bert, LoRAConfig(r=2)), tmp_path)
    from transformers import BertConfig, BertForSequenceClassification

    wider = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=120))
    with pytest.raises(LoRAError, match=r"saved for another model: .*query is 32x32 in the adapter, 48x48"):
        load_adapter(wider, tmp_path)


def test_refuses_adapter_for_another_architecture(tmp_path):
    save_adapter(trained_lorakit_model(tiny_bert, LoRAConfig(r=2)), tmp_path)
    with pytest.raises(LoRAError, match=r"saved for another model: it adapts 'bert\.encoder.*RobertaForSequence"):
        load_adapter(tiny_roberta(), tmp_path)


def test_refuses_head_with_other_label_count(tmp_path):
    save_adapter(trained_lorakit_model(tiny_bert, LoRAConfig(r=2)), tmp_path)
    with pytest.raises(LoRAError, match=r"classifier\.(weight|bias) is \(2(, 32)?,?\) in the adapter, \(3(, 32)?,?\) here"):
        load_adapter(tiny_bert(num_labels=3), tmp_path)


def test_refuses_pickled_and_missing_adapters(tmp_path):
    with pytest.raises(LoRAError, match="no adapter at .* expected adapter_config.json"):
        load_adapter(tiny_bert(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(LoRAError, match="pickled weights are refused"):
        load_adapter(tiny_bert(), tmp_path)


def test_refuses_rank_mismatch_with_existing_lora(tmp_path):
    save_adapter(trained_lorakit_model(tiny_bert, LoRAConfig(r=2)), tmp_path)
    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=4))
    with pytest.raises(LoRAError, match="has r=2, the model's LoRA layer"):
        load_adapter(model, tmp_path)


def test_refuses_unsupported_peft_features(tmp_path):
    model = trained_lorakit_model(tiny_bert, LoRAConfig(r=2))
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["layers_to_transform"] = [0]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoRAError, match="uses layers_to_transform, which lorakit does not support"):
        read_adapter(tmp_path)
    config["layers_to_transform"], config["rank_pattern"] = None, {"query": 4}  # read, and held to the tensors
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoRAError, match=r"query has rank 2, config says rank_pattern\['query'\]=4"):
        read_adapter(tmp_path)
    config["rank_pattern"], config["init_lora_weights"] = {}, "olora"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoRAError, match="init_lora_weights='olora', which needs the base weights PEFT changed"):
        read_adapter(tmp_path)


def test_save_without_lora_is_an_error(tmp_path):
    with pytest.raises(LoRAError, match="no LoRA layers"):
        save_adapter(tiny_bert(), tmp_path)


def test_loading_unmerges_first(tmp_path, batch):
    model = trained_lorakit_model(tiny_bert, LoRAConfig(r=2))
    save_adapter(model, tmp_path)
    expected = model(**batch).logits
    for m in lora_modules(model).values():
        m.merge()
    load_adapter(model, tmp_path)
    assert not any(m.merged for m in lora_modules(model).values())
    torch.testing.assert_close(model(**batch).logits, expected, atol=0, rtol=0)


def test_real_minilm_roundtrip_through_peft(tmp_path, minilm_path):
    inputs = minilm_inputs(minilm_path, ["a gripping, funny film", "tedious and far too long"])
    model = minilm_classifier(minilm_path)
    torch.manual_seed(0)
    model.classifier.reset_parameters()
    base_logits = model(**inputs).logits
    inject_lora(model, LoRAConfig(r=8, alpha=16, targets="qv"))
    torch.testing.assert_close(model(**inputs).logits, base_logits, atol=0, rtol=0)  # B = 0: the pretrained model

    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(std=0.02)
    expected = model(**inputs).logits
    assert not torch.allclose(expected, base_logits)
    assert_peft_round_trip(model, inputs, expected, minilm_path, tmp_path)


def test_factors_alone_start_another_task(tmp_path):
    """head=False: another task's adapter (3 labels) initialises the factors; the new 2-label head is untouched."""
    source = trained_lorakit_model(lambda: tiny_bert(num_labels=3), LoRAConfig(r=4, alpha=8))
    save_adapter(source, tmp_path)
    target = tiny_bert(num_labels=2, seed=1)
    inject_lora(target, LoRAConfig(r=4, alpha=8))
    head = target.classifier.weight.detach().clone()
    with pytest.raises(LoRAError, match="another number of labels"):
        load_adapter(target, tmp_path)
    load_adapter(target, tmp_path, head=False)
    for name, module in lora_modules(target).items():
        assert torch.equal(module.lora_A, lora_modules(source)[name].lora_A)
        assert torch.equal(module.lora_B, lora_modules(source)[name].lora_B)
    assert torch.equal(target.classifier.weight, head)

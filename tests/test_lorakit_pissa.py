"""PiSSA (Meng et al. 2024): SVD init, residual base, ΔW against the pretrained W, and the rank-2r adapter on disk."""

import copy
import json

import peft
import pytest
import torch
from conftest import tiny_bert, tiny_roberta
from helpers import minilm_classifier, minilm_inputs, perturb_trainable
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from lorakit import (
    LoRAConfig,
    LoRAError,
    PiSSALinear,
    delta_weights,
    inject_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    read_adapter,
    save_adapter,
    unmerge_lora,
)


def pissa_model(make, **config):
    model = make()
    inject_lora(model, LoRAConfig(**{"r": 4, "alpha": 8, "targets": "qkvo", "init": "pissa", **config}))
    return model


def test_init_is_the_top_r_svd_and_the_residual_the_rest():
    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    W = base.weight.detach().clone()
    layer = PiSSALinear(copy.deepcopy(base), r=3, alpha=6)
    U, S, Vh = torch.linalg.svd(W)
    top = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    torch.testing.assert_close(layer.lora_weight(), top, atol=1e-5, rtol=1e-5)  # scale·B₀A₀ = W's best rank-3 part
    torch.testing.assert_close(layer.weight, W - top, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(layer.weight)[:6], S[3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.lora_A.norm(dim=1) ** 2, S[:3] / 2.0)  # √(S/scale) split evenly over A and B
    torch.testing.assert_close(layer.lora_B.norm(dim=0) ** 2, S[:3] / 2.0)
    assert torch.equal(layer.delta_weight(), torch.zeros_like(W))  # no update yet against the pretrained W


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_init_matches_peft_pissa(make):
    ours = pissa_model(make, targets="qv")
    theirs = peft.get_peft_model(make(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                         init_lora_weights="pissa"))
    for name, module in lora_modules(ours).items():
        target = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(module.weight, target.base_layer.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(module.lora_A, target.lora_A["default"].weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(module.lora_B, target.lora_B["default"].weight, atol=1e-6, rtol=0)


def test_identity_at_init_merge_and_delta(tiny_model, batch):
    pretrained = {n: m.weight.detach().clone() for n, m in tiny_model.named_modules() if isinstance(m, nn.Linear)}
    expected = tiny_model(**batch).logits
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=8, targets="all", init="pissa"))
    torch.testing.assert_close(tiny_model(**batch).logits, expected, atol=1e-5, rtol=0)

    perturb_trainable(tiny_model)
    W_res = {n: m.weight.detach().clone() for n, m in lora_modules(tiny_model).items()}
    unmerged = tiny_model(**batch).logits
    merge_lora(tiny_model)
    merge_lora(tiny_model)
    torch.testing.assert_close(tiny_model(**batch).logits, unmerged, atol=1e-5, rtol=0)
    for name, module in lora_modules(tiny_model).items():  # ΔW is against the pretrained W, not the residual
        torch.testing.assert_close(module.weight - pretrained[name], module.delta_weight(), atol=1e-5, rtol=0)
    unmerge_lora(tiny_model)
    assert all(torch.equal(m.weight, W_res[n]) for n, m in lora_modules(tiny_model).items())
    assert torch.equal(tiny_model(**batch).logits, unmerged)


def test_state_dict_keys_are_those_of_plain_lora(tiny_model):
    inject_lora(tiny_model, LoRAConfig(r=2, targets="qv", init="pissa"))
    added = {k for k in tiny_model.state_dict() if "lora" in k}
    assert added and all(k.endswith((".lora_A", ".lora_B")) for k in added)


@pytest.mark.parametrize("make, rslora", [(tiny_bert, False), (tiny_roberta, False), (tiny_bert, True)])
def test_saved_adapter_is_rank_2r_lora_for_the_unmodified_model(tmp_path, batch, make, rslora):
    model = perturb_trainable(pissa_model(make, rslora=rslora))
    expected = model(**batch).logits
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["init_lora_weights"], config["use_dora"]) == (8, True, False)
    assert config["lora_alpha"] == pytest.approx(8 * (2**0.5 if rslora else 2))
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    name = next(iter(lora_modules(model)))
    module = lora_modules(model)[name]
    A, B = tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"]
    assert torch.equal(A, torch.cat([module.lora_A, module.lora_A_init]))
    assert torch.equal(B, torch.cat([module.lora_B, -module.lora_B_init], dim=1))

    in_lorakit = make()
    load_adapter(in_lorakit, tmp_path)
    assert not any(isinstance(m, PiSSALinear) for m in lora_modules(in_lorakit).values())
    torch.testing.assert_close(in_lorakit(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    in_peft = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    torch.testing.assert_close(in_peft(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    for n, delta in read_adapter(tmp_path).delta_weights().items():
        torch.testing.assert_close(delta, delta_weights(model)[n], atol=1e-6, rtol=1e-5)


def test_conversion_equals_peft_path_initial_model_for_weight_conversion(tmp_path, batch):
    peft_model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                                  init_lora_weights="pissa", task_type="SEQ_CLS"))
    peft_model.save_pretrained(tmp_path / "init")
    perturb_trainable(peft_model)
    peft_model.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))

    ours = pissa_model(tiny_bert, targets="qv")
    with torch.no_grad():
        for name, module in lora_modules(ours).items():
            target = peft_model.base_model.model.get_submodule(name)
            module.lora_A.copy_(target.lora_A["default"].weight)
            module.lora_B.copy_(target.lora_B["default"].weight)
    save_adapter(ours, tmp_path / "ours")
    theirs_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    our_config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "init_lora_weights", "use_rslora"):
        assert our_config[key] == theirs_config[key], key
    theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    mine = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    factors = {k for k in theirs if ".lora_" in k}
    assert len(factors) == 8
    for key in factors:
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_peft_unconverted_pissa_adapter_rebuilds_the_residual(tmp_path, batch, make):
    """A PEFT adapter saved with init_lora_weights="pissa" needs the residual base; lorakit rebuilds it as PEFT does."""
    peft_model = peft.get_peft_model(make(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                             init_lora_weights="pissa", task_type="SEQ_CLS"))
    perturb_trainable(peft_model).eval()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    model = make()
    load_adapter(model, tmp_path)
    assert all(isinstance(m, PiSSALinear) for m in lora_modules(model).values())
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(LoRAError, match="saved by PEFT with init 'pissa' unconverted"):
        read_adapter(tmp_path).delta_weights()


def test_plain_adapter_into_a_pissa_model_is_refused(tmp_path):
    save_adapter(perturb_trainable(pissa_model(tiny_bert)), tmp_path)
    with pytest.raises(LoRAError, match="is a plain LoRA adapter, the model's LoRA layers are PiSSA; load it into a "
                                        "model without LoRA"):
        load_adapter(pissa_model(tiny_bert), tmp_path)


def test_rank_must_leave_room_for_2r():
    with pytest.raises(LoRAError, match=r"init='pissa' needs 2r <= min\(in, out\) = 6 for a 6x8 linear layer"):
        PiSSALinear(nn.Linear(8, 6), r=4, alpha=4)


def test_real_minilm_pissa_adapter_loads_on_the_pretrained_model_in_peft(tmp_path, minilm_path):
    inputs = minilm_inputs(minilm_path)
    model = minilm_classifier(minilm_path)
    base_logits = model(**inputs).logits
    inject_lora(model, LoRAConfig(r=8, alpha=16, targets="qv", init="pissa"))
    torch.testing.assert_close(model(**inputs).logits, base_logits, atol=1e-4, rtol=1e-4)
    perturb_trainable(model, std=0.02)
    expected = model(**inputs).logits
    assert not torch.allclose(expected, base_logits, atol=1e-3)
    save_adapter(model, tmp_path, base_model_name_or_path=str(minilm_path))
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        assert f.metadata()["lorakit_pissa_rank"] == "8"
    peft_model = peft.PeftModel.from_pretrained(minilm_classifier(minilm_path), tmp_path).eval()
    torch.testing.assert_close(peft_model(**inputs).logits, expected, atol=1e-4, rtol=1e-4)

"""QLoRA's NF4 base (Dettmers et al. 2023): the quantizer against NF4's definition, the forward against the dequantized
model, training, merging, bytes, refusals and adapters on disk.

The model is a tiny BERT with hidden size 128: NF4 takes a layer when out·in is a multiple of 64·256, which the
conftest model's 32 × 32 layers are not.
"""

import importlib.util
import io
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_bert
from scipy.stats import norm
from transformers import BertConfig, BertForSequenceClassification

from lorakit import (
    LoRAConfig,
    LoRAError,
    LoRALinear,
    NF4LoRALinear,
    delta_weights,
    dequantize,
    inject_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    quantize_base,
    save_adapter,
    unmerge_lora,
    weight_bytes,
)

requires_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="pip install torchao")
NF4_PARTS = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean")


def bert128(intermediate: int = 256, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=intermediate,
                        vocab_size=120, num_labels=2)
    return BertForSequenceClassification(config).eval()


def lora_bert(targets="all", intermediate: int = 256, trained: bool = False) -> BertForSequenceClassification:
    """bert128 with LoRA (A from seed 1); ``trained`` moves B and the head as training would, so ΔW ≠ 0."""
    model = bert128(intermediate)
    torch.manual_seed(1)
    inject_lora(model, LoRAConfig(r=4, alpha=8, targets=targets))
    if trained:
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def parts(weight):
    return {name: getattr(weight, name).clone() for name in NF4_PARTS}


def nf4_levels() -> torch.Tensor:
    """NF4's 16 levels from their definition (QLoRA §3): N(0, 1) quantiles at evenly spaced probabilities, 8 on the
    positive side and 7 on the negative, an exact zero, scaled to [−1, 1] (offset 0.9677 as in bitsandbytes)."""
    offset = 0.9677083
    positive = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    negative = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([negative, [0.0], positive]))
    return torch.tensor(levels / levels.max(), dtype=torch.float32)


@requires_torchao
def test_every_weight_is_an_nf4_level_times_its_block_scale_and_the_nearest_one():
    model = lora_bert("q")
    W = lora_modules(model)["bert.encoder.layer.0.attention.self.query"].weight.detach().clone()
    quantize_base(model)
    deq = dequantize(lora_modules(model)["bert.encoder.layer.0.attention.self.query"].weight)
    blocks, original = deq.flatten().view(-1, 64), W.flatten().view(-1, 64)
    scale = blocks.abs().amax(dim=1, keepdim=True)  # the absmax maps to level ±1 exactly, so this is the stored c
    levels = nf4_levels()
    normalized = blocks / scale
    assert (normalized.unsqueeze(-1) - levels).abs().min(dim=-1).values.max() < 1e-4  # only the 16 NF4 values
    # Round to nearest: |W̃ − W| ≤ c·(largest half gap, (1 − 0.7230)/2) plus the error of the 8-bit stored c itself.
    true_scale = original.abs().amax(dim=1, keepdim=True)
    half_gap = (levels.diff().max() / 2).item()
    bound = true_scale * half_gap + (scale - true_scale).abs() + 1e-7
    assert ((blocks - original).abs() <= bound).all()
    assert ((scale - true_scale).abs() / true_scale).max() < 0.02  # double quantization keeps c within 2%


@requires_torchao
def test_output_is_the_model_on_the_dequantized_weights(batch):
    quantized, dense = lora_bert(trained=True), lora_bert(trained=True)
    assert quantize_base(quantized) == list(lora_modules(quantized))
    with torch.no_grad():
        for name, module in lora_modules(dense).items():
            module.weight.copy_(dequantize(lora_modules(quantized)[name].weight))
    assert all(isinstance(m, NF4LoRALinear) for m in lora_modules(quantized).values())
    torch.testing.assert_close(logits(quantized, batch), logits(dense, batch), rtol=1e-5, atol=1e-5)


@requires_torchao
def test_quantized_base_at_init_is_the_pretrained_model_within_nf4_error(batch):
    """Measured on this model (BERT's N(0, 0.02) init): ‖W̃₀ − W₀‖/‖W₀‖ = 0.091–0.093 per layer, 0.011 on the
    logits (B = 0, so only the quantization moves them)."""
    pretrained, model = bert128(), lora_bert()
    quantize_base(model)
    for name, module in lora_modules(model).items():
        W = pretrained.get_submodule(name).weight
        error = ((dequantize(module.weight) - W).norm() / W.norm()).item()
        assert 0.08 < error < 0.10, (name, error)  # 4 bits: neither lossless nor broken
    expected, got = logits(pretrained, batch), logits(model, batch)
    assert 0 < ((got - expected).norm() / expected.norm()).item() < 0.03


@requires_torchao
def test_one_adamw_step_trains_lora_and_head_and_leaves_the_nf4_base_bit_identical(batch):
    model = lora_bert()
    quantize_base(model)
    model.train()
    before = {name: parts(m.weight) for name, m in lora_modules(model).items()}
    biases = {name: m.bias.detach().clone() for name, m in lora_modules(model).items()}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert {n.rsplit(".", 1)[-1] for n in trainable} == {"lora_A", "lora_B", "weight", "bias"}
    assert all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    optimizer.step()
    for name, module in lora_modules(model).items():
        assert module.weight.grad is None and not module.weight.requires_grad
        for part, tensor in before[name].items():
            assert torch.equal(getattr(module.weight, part), tensor), (name, part)
        assert torch.equal(module.bias, biases[name])
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert sorted(grads) == sorted(trainable)
    moved = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert sorted(moved) == sorted(trainable)  # B and the head by their gradients, A by weight decay (B = 0: ∇A = 0)


@requires_torchao
def test_base_weights_take_under_0_35_of_their_fp32_bytes():
    model = lora_bert()
    fp32 = sum(weight_bytes(m.weight) for m in lora_modules(model).values())
    quantize_base(model)
    nf4 = sum(weight_bytes(m.weight) for m in lora_modules(model).values())
    elements = fp32 // 4
    # 4-bit codes, an int8 scaler per 64, an fp32 factor per 64·256, and per tensor an fp32 mean and the 16 levels
    layers = len(lora_modules(model))
    assert nf4 == elements // 2 + elements // 64 + 4 * (elements // (64 * 256)) + layers * (4 + 16 * 4)
    assert nf4 / fp32 <= 0.35
    assert nf4 / fp32 == pytest.approx(0.1300, abs=5e-4)


def test_a_layer_nf4_cannot_hold_is_one_line_and_the_model_is_unchanged():
    """intermediate 200: q, k, v, o (128 × 128) fit, the MLP's 200 × 128 does not; checked before torchao loads."""
    model = lora_bert(intermediate=200)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoRAError) as error:
        quantize_base(model)
    message = str(error.value)
    assert "\n" not in message
    assert "bert.encoder.layer.0.intermediate.dense is 200x128" in message and "16384" in message
    assert all(type(m) is LoRALinear for m in lora_modules(model).values())  # the fitting q, k, v, o untouched too
    assert all(type(t) is torch.Tensor and torch.equal(t, state[k]) for k, t in model.state_dict().items())


def test_the_conftest_model_is_refused_whole(batch):
    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=2, alpha=4, targets="qv"))
    before = logits(model, batch)
    with pytest.raises(LoRAError, match=r"query is 32x32 \(1024 weights\).*divisible by 16384"):
        quantize_base(model)
    assert torch.equal(logits(model, batch), before)


@requires_torchao
def test_names_select_layers_and_a_miss_lists_the_lora_layers():
    model = lora_bert("qv")
    assert quantize_base(model, "q") == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]
    kinds = {n.rsplit(".", 1)[-1]: type(m) for n, m in lora_modules(model).items()}
    assert kinds == {"query": NF4LoRALinear, "value": LoRALinear}
    with pytest.raises(LoRAError, match=r"no LoRA layer matches \['key'\].*bert.encoder.layer.\{0..1\}"):
        quantize_base(model, ["key"])
    codes = parts(model.get_submodule("bert.encoder.layer.0.attention.self.query").weight)
    assert quantize_base(model) == [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(2)
                                    for p in ("query", "value")]  # the rest; the quantized ones are not re-rounded
    for part, tensor in codes.items():
        assert torch.equal(getattr(model.get_submodule("bert.encoder.layer.0.attention.self.query").weight, part),
                           tensor)


def test_refusals_name_the_layer(batch):
    model = lora_bert()
    with pytest.raises(LoRAError, match="no LoRA layers; call inject_lora first"):
        quantize_base(bert128())
    merge_lora(model)
    with pytest.raises(LoRAError, match=r"layer.0.attention.self.query is merged .*unmerge_lora first"):
        quantize_base(model)
    dora = bert128()
    inject_lora(dora, LoRAConfig(r=4, alpha=8, targets="qv", use_dora=True))
    with pytest.raises(LoRAError, match="query is a DoRALinear; the NF4 base is implemented for plain LoRA"):
        quantize_base(dora)


def test_without_torchao_it_is_one_line_and_nothing_changes(monkeypatch, batch):
    model = lora_bert()
    for name in ("torchao", "torchao.quantization", "torchao.dtypes", "torchao.dtypes.nf4tensor"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import` raise ImportError
    with pytest.raises(LoRAError, match=r"^quantize=nf4 needs torchao \(pip install torchao\)$"):
        quantize_base(model)
    assert all(type(m) is LoRALinear for m in lora_modules(model).values())


@requires_torchao
def test_merge_folds_into_the_dequantized_weight_and_unmerge_restores_the_nf4_codes(batch):
    model = lora_bert(trained=True)
    quantize_base(model)
    deltas = delta_weights(model)
    layer = lora_modules(model)["bert.encoder.layer.1.intermediate.dense"]
    expected_delta = layer.scale * layer.lora_B.detach() @ layer.lora_A.detach()
    torch.testing.assert_close(deltas["bert.encoder.layer.1.intermediate.dense"], expected_delta)
    dense_w0 = {name: dequantize(m.weight) for name, m in lora_modules(model).items()}
    storage = {name: m.weight.quantized_data.data_ptr() for name, m in lora_modules(model).items()}
    codes = {name: parts(m.weight) for name, m in lora_modules(model).items()}
    unmerged = logits(model, batch)

    merge_lora(model)
    merge_lora(model)  # a no-op the second time
    for name, module in lora_modules(model).items():
        assert type(module.weight.data) is torch.Tensor and module.weight.dtype == torch.float32
        torch.testing.assert_close(module.weight, dense_w0[name] + deltas[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta_weights(model)["bert.encoder.layer.1.intermediate.dense"], expected_delta)

    unmerge_lora(model)
    unmerge_lora(model)
    for name, module in lora_modules(model).items():
        assert module.weight.quantized_data.data_ptr() == storage[name]  # the very tensor, not a re-quantized copy
        for part, tensor in codes[name].items():
            assert torch.equal(getattr(module.weight, part), tensor)
        assert not module.weight.requires_grad
    assert torch.equal(logits(model, batch), unmerged)


@requires_torchao
def test_adapter_round_trip_on_a_quantized_model_gives_the_same_logits(tmp_path, batch):
    trained = lora_bert(trained=True)
    quantize_base(trained)
    save_adapter(trained, tmp_path / "adapter")
    expected = logits(trained, batch)

    injected = lora_bert()  # LoRA injected, then quantized, then loaded
    quantize_base(injected)
    load_adapter(injected, tmp_path / "adapter")
    torch.testing.assert_close(logits(injected, batch), expected, rtol=0, atol=1e-6)

    loaded_first = bert128()  # load_adapter injects, quantizing comes after
    load_adapter(loaded_first, tmp_path / "adapter")
    quantize_base(loaded_first)
    torch.testing.assert_close(logits(loaded_first, batch), expected, rtol=0, atol=1e-6)


@requires_torchao
def test_state_dict_keeps_its_keys_and_loads_back(batch):
    dense, model = lora_bert(trained=True), lora_bert(trained=True)
    quantize_base(model)
    assert list(model.state_dict()) == list(dense.state_dict())
    codes = {name: parts(m.weight) for name, m in lora_modules(model).items()}
    expected = logits(model, batch)

    model.load_state_dict(dense.state_dict())  # a full-precision checkpoint is quantized into the NF4 weights
    for name, module in lora_modules(model).items():
        for part, tensor in codes[name].items():
            assert torch.equal(getattr(module.weight, part), tensor), (name, part)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = lora_bert()
    quantize_base(fresh)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(logits(fresh, batch), expected)

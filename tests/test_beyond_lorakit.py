"""Beyond the paper, the library side (issue 23): per-module rank and α with PEFT's pattern semantics, both ways
through PEFT's format, and LoRA-GA's gradient init (init="gradient") reading back exactly."""

import re

import peft
import pytest
import torch
from conftest import tiny_bert, tiny_roberta
from helpers import perturb_trainable

from lorakit import LoRAConfig, LoRAError, delta_weights, inject_lora, load_adapter, lora_modules, read_adapter, save_adapter
from lorakit.config import pattern_key

PATTERNS = {"layer.0.attention.self.query": 6, "value": 2}  # layer 0's query, every value; the rest at r


def test_pattern_key_is_peft_rule():
    from peft.utils.other import get_pattern_key

    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query",
             "bert.encoder.layer.10.attention.self.value", "bert.encoder.layer.1.attention.output.dense",
             "bert.encoder.layer.1.output.dense", "xquery"]
    patterns = ["layer.1.*query", "value", "^bert.encoder.layer.1.output.dense", "query", "output.dense"]
    for name in names:
        ours = pattern_key(patterns, name)
        assert (ours or name) == get_pattern_key(patterns, name), name  # PEFT returns the name itself for no match
    assert pattern_key(patterns, "bert.encoder.layer.0.attention.self.query") == "query"
    assert pattern_key(patterns, "xquery") is None  # a suffix counts only after a "."


def test_rank_and_alpha_per_module():
    model = tiny_bert()
    config = LoRAConfig(r=4, alpha=8, targets="qv", rank_pattern=PATTERNS, alpha_pattern={"value": 1})
    inject_lora(model, config)
    ranks = {name: (m.r, m.scale) for name, m in lora_modules(model).items()}
    assert ranks["bert.encoder.layer.0.attention.self.query"] == (6, 8 / 6)
    assert ranks["bert.encoder.layer.1.attention.self.query"] == (4, 2.0)
    assert ranks["bert.encoder.layer.1.attention.self.value"] == (2, 0.5)
    assert config.rank_pattern == (("layer.0.attention.self.query", 6), ("value", 2))  # ordered, hashable
    hash(config)


@pytest.mark.parametrize("bad, message", [
    ({"rank_pattern": {"query": 0}}, r"rank_pattern\['query'\] = 0; accepted: positive integers"),
    ({"rank_pattern": {"query": 2.5}}, "positive integers"),
    ({"alpha_pattern": {"(query": 2}}, "is not a regular expression"),
    ({"rank_pattern": {"query": 40}}, r"rank r=40 must be in \[1, min\(in, out\)\]"),
])
def test_bad_patterns_are_one_line(bad, message):
    with pytest.raises(LoRAError, match=message):
        inject_lora(tiny_bert(), LoRAConfig(r=2, **bad))


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
@pytest.mark.parametrize("rslora", [False, True])
def test_per_module_rank_loads_in_peft_with_equal_logits(tmp_path, batch, make, rslora):
    model = make()
    inject_lora(model, LoRAConfig(r=4, alpha=8, targets="qkvo", rslora=rslora, rank_pattern=PATTERNS,
                                  alpha_pattern={"attention.output.dense": 3}))
    perturb_trainable(model, 3)
    expected = model(**batch).logits
    save_adapter(model, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    torch.testing.assert_close(peft_model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    peft_ranks = {n: m.r["default"] for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert peft_ranks == {n: m.r for n, m in lora_modules(model).items()}

    again = make()  # and back into lorakit: same ranks, same logits, same ΔW
    load_adapter(again, tmp_path)
    torch.testing.assert_close(again(**batch).logits, expected, atol=1e-6, rtol=1e-6)
    adapter = read_adapter(tmp_path)
    for name, delta in delta_weights(model).items():
        torch.testing.assert_close(adapter.delta_weights()[name], delta, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_peft_per_module_rank_loads_in_lorakit_with_equal_logits(tmp_path, batch, make):
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS",
                             rank_pattern={"layer.1.*query": 7, "value": 2}, alpha_pattern={"layer.0.*value": 5})
    peft_model = peft.get_peft_model(make(), config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    peft_model.eval()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)

    model = make()
    load_adapter(model, tmp_path)
    ranks = {re.sub(r"^.*layer\.(\d)\..*\.(\w+)$", r"\1\2", n): (m.r, m.scale) for n, m in lora_modules(model).items()}
    assert ranks == {"0query": (4, 4.0), "0value": (2, 2.5), "1query": (7, 16 / 7), "1value": (2, 8.0)}
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)


# --- init="gradient" (LoRA-GA) ---------------------------------------------------------------------------------

def _gradients(model, batch) -> dict[str, torch.Tensor]:
    """G₀ = ∂L/∂W of every query/value weight at the pretrained model, for a fixed label vector."""
    model.zero_grad()
    labels = torch.tensor([0, 1, 1, 0])
    model(**batch, labels=labels).loss.backward()
    grads = {n: m.weight.grad.detach().clone() for n, m in model.named_modules()
             if n.endswith(("query", "value")) and isinstance(m, torch.nn.Linear)}
    model.zero_grad()
    return grads


def test_gradient_init_starts_unchanged_and_spans_g0(batch):
    reference = tiny_bert()
    expected = reference(**batch).logits
    grads = _gradients(tiny_bert(), batch)
    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=2, alpha=4, init="gradient"), gradients=grads)
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    name = "bert.encoder.layer.0.attention.self.query"
    layer = lora_modules(model)[name]
    U, _, Vh = torch.linalg.svd(grads[name])
    zeta = 32 ** 0.25 / 4
    torch.testing.assert_close(layer.lora_B.detach(), zeta * U[:, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.lora_A.detach(), zeta * Vh[2:4], atol=1e-5, rtol=1e-5)
    assert all(d.abs().max() == 0 for d in delta_weights(model).values())  # ΔW against the pretrained W: zero


def test_gradient_init_needs_every_gradient(batch):
    grads = _gradients(tiny_bert(), batch)
    grads.pop("bert.encoder.layer.1.attention.self.value")
    model = tiny_bert()
    with pytest.raises(LoRAError, match="init='gradient' needs G₀ = dL/dW for bert.encoder.layer.1.attention.self.value"):
        inject_lora(model, LoRAConfig(r=2, init="gradient"), gradients=grads)
    assert not lora_modules(model)  # refused before any layer changed


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta])
def test_gradient_init_adapter_reads_back_exactly_in_peft_and_lorakit(tmp_path, batch, make):
    model = make()
    inject_lora(model, LoRAConfig(r=2, alpha=4, init="gradient", rank_pattern={"value": 3}),
                gradients=_gradients(make(), batch))
    perturb_trainable(model, 3)
    expected = model(**batch).logits
    save_adapter(model, tmp_path)
    assert read_adapter(tmp_path).config["r"] == 4  # the plain LoRA of rank 2r on the unmodified pretrained W
    peft_model = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    torch.testing.assert_close(peft_model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    again = make()
    load_adapter(again, tmp_path)
    torch.testing.assert_close(again(**batch).logits, expected, atol=1e-5, rtol=1e-5)

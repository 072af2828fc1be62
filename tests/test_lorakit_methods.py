"""LoRA-FA (frozen A), optimizer groups by role (LoRA+), BitFit, and what each method counts as trained."""

import pytest
import torch

from lorakit import (
    LoRAConfig,
    apply_bitfit,
    count_bitfit_parameters,
    count_lora_parameters,
    count_method_parameters,
    inject_lora,
    lora_modules,
    lora_parameter_groups,
)

LABELS = torch.tensor([0, 1, 1, 0])


def one_adamw_step(model, batch, groups=None, lr=1e-2):
    """One AdamW step on the model's trainable parameters; returns the parameters before it."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    optimizer = torch.optim.AdamW(groups or [p for p in model.parameters() if p.requires_grad], lr=lr)
    model(**batch, labels=LABELS).loss.backward()
    optimizer.step()
    return before


def changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_freeze_a_keeps_a_bit_identical_and_trains_b(tiny_model, batch):
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=8, targets="qv", freeze_a=True))
    modules = lora_modules(tiny_model)
    assert not any(m.lora_A.requires_grad for m in modules.values())
    assert all(m.lora_B.requires_grad for m in modules.values())
    before = one_adamw_step(tiny_model, batch)
    moved = changed(tiny_model, before)
    assert all(f"{n}.lora_B" in moved for n in modules)  # every B moved
    assert not any(n.endswith(".lora_A") for n in moved)  # no A did, bit for bit
    assert all(n.endswith(".lora_B") or n.startswith("classifier.") for n in moved)
    assert count_method_parameters(tiny_model) == 2 * 2 * (4 * 32)  # B alone: 2 layers x {q, v} x d·r
    assert count_lora_parameters(tiny_model) == 2 * 2 * (2 * 4 * 32)  # what the adapter stores


def test_parameter_groups_by_role(tiny_model):
    inject_lora(tiny_model, LoRAConfig(r=2, targets="qv", use_dora=True))
    groups = lora_parameter_groups(tiny_model)
    modules = lora_modules(tiny_model).values()
    assert [id(p) for p in groups["A"]] == [id(m.lora_A) for m in modules]
    assert [id(p) for p in groups["B"]] == [id(m.lora_B) for m in modules]
    assert [id(p) for p in groups["magnitude"]] == [id(m.magnitude) for m in modules]
    head = dict(tiny_model.named_parameters())
    assert {id(p) for p in groups["other"]} == {id(p) for n, p in head.items() if n.startswith("classifier.")}
    trainable = {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert {id(p) for group in groups.values() for p in group} == trainable


def test_loraplus_groups_give_b_lambda_times_the_lr(tiny_model, batch):
    """LoRA+ (Hayou et al. 2024): with B at 16·lr, B's first Adam step is 16 times A's (Adam's step is ±lr)."""
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=8, targets="qv"))
    with torch.no_grad():  # B ≠ 0, so that A gets a gradient at the first step
        for m in lora_modules(tiny_model).values():
            m.lora_B.normal_(std=0.1)
    groups = lora_parameter_groups(tiny_model)
    lr, ratio = 1e-3, 16.0
    optimizer_groups = [{"params": groups["A"] + groups["other"], "lr": lr}, {"params": groups["B"], "lr": ratio * lr}]
    before = one_adamw_step(tiny_model, batch, optimizer_groups, lr=lr)
    params = dict(tiny_model.named_parameters())
    name = next(iter(lora_modules(tiny_model)))
    step_A = (params[f"{name}.lora_A"] - before[f"{name}.lora_A"]).abs().max().item()
    step_B = (params[f"{name}.lora_B"] - before[f"{name}.lora_B"]).abs().max().item()
    assert step_A == pytest.approx(lr, rel=0.05) and step_B == pytest.approx(ratio * lr, rel=0.05)


def test_bitfit_trains_biases_and_head_only(tiny_model, batch):
    trainable = apply_bitfit(tiny_model)
    head = {n for n, _ in tiny_model.named_parameters() if n.startswith("classifier.")}
    assert set(trainable) == {n for n, _ in tiny_model.named_parameters() if n.endswith(".bias")} | head
    before = one_adamw_step(tiny_model, batch)
    moved = changed(tiny_model, before)
    assert moved and moved <= set(trainable)
    assert all(p.grad is None for n, p in tiny_model.named_parameters() if n not in trainable)


def test_bitfit_count_on_tiny_bert():
    from conftest import tiny_bert

    model = tiny_bert()
    # per layer: q, k, v, attention-output (4 x 32), LayerNorm 32, intermediate 64, output 32, LayerNorm 32; plus the
    # embeddings' LayerNorm and the pooler (32 each), the head left out.
    expected = 2 * (4 * 32 + 32 + 64 + 32 + 32) + 32 + 32
    assert count_bitfit_parameters(model) == expected
    apply_bitfit(model)
    assert count_method_parameters(model) == expected
    assert count_bitfit_parameters(model, head=("classifier", "pooler")) == expected - 32


def test_bitfit_on_roberta_base_is_the_papers_0_1m():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    # 12 x (4·768 + 768 + 3072 + 768 + 768) + 768 (embeddings LayerNorm) = 102,144: Table 2's "0.1M"
    assert count_bitfit_parameters(model) == 102_144


def test_method_count_of_plain_lora_is_the_factors(tiny_model):
    inject_lora(tiny_model, LoRAConfig(r=4, targets="qkvo"))
    assert count_method_parameters(tiny_model) == count_lora_parameters(tiny_model) == 2 * 4 * (2 * 4 * 32)

"""The layer maths on tiny modules and tiny BERT/RoBERTa models."""

import copy

import pytest
import torch
from torch import nn

from lorakit import (
    LoRAConfig,
    LoRALinear,
    count_lora_parameters,
    count_parameters,
    delta_weights,
    freeze_except,
    inject_lora,
    lora_modules,
    merge_lora,
    unmerge_lora,
    weight_deltas,
)


def randomize_lora(model, seed=1):
    """Give B non-zero values, as training would, so ΔW ≠ 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
def test_identity_at_init(tiny_model, batch, init):
    expected = tiny_model(**batch).logits
    names = inject_lora(tiny_model, LoRAConfig(r=4, alpha=8, targets="all", init=init))
    assert len(names) == 2 * 6
    assert torch.equal(tiny_model(**batch).logits, expected)
    for module in lora_modules(tiny_model).values():
        assert module.lora_A.abs().sum() > 0 and torch.count_nonzero(module.lora_B) == 0


def test_gaussian_init_std():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(512, 512), r=16, alpha=16, init="gaussian")
    assert layer.lora_A.std().item() == pytest.approx(1 / 16, rel=0.05)


def test_forward_equals_dense_update():
    torch.manual_seed(0)
    base = nn.Linear(10, 7)
    layer = LoRALinear(copy.deepcopy(base), r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 10)
    W = base.weight + 2.0 * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(layer(x), x @ W.T + base.bias, atol=1e-5, rtol=1e-5)


def test_state_dict_keeps_base_keys(tiny_model):
    base_keys = set(tiny_model.state_dict())
    inject_lora(tiny_model, LoRAConfig(r=2, targets="qv"))
    keys = set(tiny_model.state_dict())
    assert base_keys <= keys
    added = keys - base_keys
    assert added and all(k.endswith((".lora_A", ".lora_B")) for k in added)


def test_merge_equals_unmerged_and_is_idempotent(tiny_model, batch):
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=16, targets="qkvo"))
    randomize_lora(tiny_model)
    W0 = {n: m.weight.detach().clone() for n, m in lora_modules(tiny_model).items()}
    unmerged = tiny_model(**batch).logits

    merge_lora(tiny_model)
    merged_once = {n: m.weight.detach().clone() for n, m in lora_modules(tiny_model).items()}
    torch.testing.assert_close(tiny_model(**batch).logits, unmerged, atol=1e-5, rtol=0)
    merge_lora(tiny_model)
    for name, module in lora_modules(tiny_model).items():
        assert torch.equal(module.weight, merged_once[name])
        assert not torch.equal(module.weight, W0[name])

    unmerge_lora(tiny_model)
    unmerge_lora(tiny_model)
    for name, module in lora_modules(tiny_model).items():
        assert torch.equal(module.weight, W0[name])
    torch.testing.assert_close(tiny_model(**batch).logits, unmerged, atol=0, rtol=0)


def test_eval_and_train_do_not_merge(tiny_model):
    inject_lora(tiny_model, LoRAConfig(r=2))
    randomize_lora(tiny_model)
    before = {n: m.weight.detach().clone() for n, m in lora_modules(tiny_model).items()}
    tiny_model.eval()
    tiny_model.train()
    assert all(torch.equal(m.weight, before[n]) for n, m in lora_modules(tiny_model).items())


def test_one_step_changes_only_lora_and_head(tiny_model, batch):
    inject_lora(tiny_model, LoRAConfig(r=4, alpha=8, targets="qv"))
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    lora_names = {f"{m}.{p}" for m in lora_modules(tiny_model) for p in ("lora_A", "lora_B")}
    assert trainable == lora_names | {n for n in before if n.startswith("classifier.")}

    tiny_model.train()
    optimizer = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    loss = tiny_model(**batch, labels=torch.tensor([0, 1, 1, 0])).loss
    loss.backward()
    optimizer.step()
    for name, param in tiny_model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name in trainable:
            assert changed or name.endswith("lora_A"), name  # A's gradient is B-weighted: zero at the first step
        else:
            assert not changed, f"frozen {name} changed"
            assert param.grad is None
    assert any(not torch.equal(p, before[n]) for n, p in tiny_model.named_parameters() if n.endswith("lora_B"))


def test_delta_weights_is_scaled_BA_of_rank_at_most_r(tiny_model):
    inject_lora(tiny_model, LoRAConfig(r=3, alpha=12, targets="all", rslora=False))
    randomize_lora(tiny_model)
    deltas = delta_weights(tiny_model)
    assert set(deltas) == set(lora_modules(tiny_model))
    for name, module in lora_modules(tiny_model).items():
        torch.testing.assert_close(deltas[name], 4.0 * module.lora_B @ module.lora_A)
        assert deltas[name].shape == module.weight.shape
        sigma = torch.linalg.svdvals(deltas[name].double())
        assert sigma[2] > 1e-3 * sigma[0] and sigma[3] < 1e-5 * sigma[0]  # rank exactly r, up to fp32 rounding


def test_rslora_scale():
    assert LoRAConfig(r=16, alpha=8, rslora=True).scale == pytest.approx(2.0)
    assert LoRAConfig(r=16, alpha=8).scale == pytest.approx(0.5)


def test_weight_deltas_of_a_full_finetune(tiny_model):
    base = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    name = next(n for n, m in tiny_model.named_modules() if n.endswith("attention.self.query"))
    with torch.no_grad():
        tiny_model.get_submodule(name).weight.add_(0.5)
    deltas = weight_deltas(base, tiny_model.state_dict(), [name])
    assert list(deltas) == [name]
    torch.testing.assert_close(deltas[name], torch.full_like(deltas[name], 0.5))


def test_parameter_count_adds_2rd_per_matrix(tiny_model):
    _, total_before = count_parameters(tiny_model)
    inject_lora(tiny_model, LoRAConfig(r=4, targets="qv"))
    trainable, total = count_parameters(tiny_model)
    assert total - total_before == 2 * 2 * (2 * 4 * 32)  # 2 layers x {q, v} x 2·r·d
    head = sum(p.numel() for n, p in tiny_model.named_parameters() if n.startswith("classifier."))
    assert trainable == total - total_before + head
    assert count_lora_parameters(tiny_model) == total - total_before


def test_freeze_except_leaves_only_the_named_modules_trainable(tiny_model):
    assert freeze_except(tiny_model, ["classifier"]) == ["classifier"]  # BERT's Linear; RoBERTa's dense + out_proj
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tiny_model.named_parameters() if n.startswith("classifier.")} != set()
    assert freeze_except(tiny_model, ["head"]) == [] and not any(p.requires_grad for p in tiny_model.parameters())


def test_minilm_qv_r8_adds_73728(minilm_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    _, before = count_parameters(model)
    names = inject_lora(model, LoRAConfig(r=8, targets="qv"))
    assert len(names) == 12 and all(n.endswith(("query", "value")) for n in names)
    assert count_parameters(model)[1] - before == 73_728


def test_roberta_base_qv_r8_adds_294912():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):  # the paper's "0.3M": shapes only, no 125M-parameter allocation
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    _, before = count_parameters(model)
    inject_lora(model, LoRAConfig(r=8, targets="qv"))
    assert count_parameters(model)[1] - before == 294_912


@pytest.mark.parametrize(
    "targets, suffixes",
    [
        ("qv", ("attention.self.query", "attention.self.value")),
        ("qkvo", ("self.query", "self.key", "self.value", "attention.output.dense")),
        ("all", ("self.query", "self.key", "self.value", "attention.output.dense", "intermediate.dense", "output.dense")),
        ("o", ("attention.output.dense",)),
    ],
)
def test_presets_resolve_on_bert_and_roberta(tiny_model, targets, suffixes):
    names = inject_lora(tiny_model, LoRAConfig(r=2, targets=targets))
    assert len(names) == 2 * len(suffixes)
    assert all(n.endswith(suffixes) for n in names)
    assert not any("classifier" in n or "pooler" in n for n in names)

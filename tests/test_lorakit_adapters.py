"""Several named adapters on one model: switching, combining (cat and svd, against PEFT), deleting, saving in
PEFT's multi-adapter layout, exact merges, and refusals that change nothing."""

import peft
import pytest
import torch
from conftest import TINY, tiny_bert, tiny_llama
from helpers import perturb_trainable

from lorakit import (
    LoRAConfig,
    LoRAError,
    active_adapters,
    adapter_names,
    combine_adapters,
    count_lora_parameters,
    count_method_parameters,
    delete_adapter,
    delta_weights,
    inject_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    set_adapter,
    unmerge_lora,
)


def saved(path, seed, **config):
    """A trained-looking tiny BERT adapter with its classifier, saved to ``path``."""
    model = tiny_bert()
    inject_lora(model, LoRAConfig(**{"r": 2, "alpha": 4, "targets": "qv", **config}))
    save_adapter(perturb_trainable(model, seed), path)
    return path


def alone(path, **kwargs):
    """A fresh model with only the adapter at ``path``: what each named adapter must reproduce."""
    model = tiny_bert()
    load_adapter(model, path, **kwargs)
    return model


@pytest.fixture
def two(tmp_path):
    """Adapters a (r=2 on q, v) and b (r=4 on q, k, v, o, rsLoRA), each with its own classifier."""
    return saved(tmp_path / "a", seed=3), saved(tmp_path / "b", seed=4, r=4, alpha=8, targets="qkvo", rslora=True)


@pytest.fixture
def loaded(two):
    model = tiny_bert()
    load_adapter(model, two[0], name="a")
    load_adapter(model, two[1], name="b")
    return model


def snapshot(model, batch):
    return ({k: v.clone() for k, v in model.state_dict().items()}, adapter_names(model), active_adapters(model),
            model(**batch).logits)


def assert_unchanged(model, batch, before):
    state, names, active, logits = before
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert (adapter_names(model), active_adapters(model)) == (names, active)
    assert torch.equal(model(**batch).logits, logits)


def test_switching_gives_exactly_each_adapters_outputs(two, loaded, batch):
    a, b = two
    assert adapter_names(loaded) == ["a", "b"] and active_adapters(loaded) == ["a"]
    assert torch.equal(loaded(**batch).logits, alone(a)(**batch).logits)  # loading b changed nothing
    set_adapter(loaded, "b")
    assert torch.equal(loaded(**batch).logits, alone(b)(**batch).logits)  # b's factors and b's classifier
    set_adapter(loaded, "a")
    assert torch.equal(loaded(**batch).logits, alone(a)(**batch).logits)
    assert not torch.equal(alone(a)(**batch).logits, alone(b)(**batch).logits)


def test_keys_of_the_base_model_stay(loaded):
    base = set(tiny_bert().state_dict())
    keys = set(loaded.state_dict())
    assert base <= keys and all(".lora_" in k for k in keys - base)


def test_only_the_active_adapter_trains(loaded):
    set_adapter(loaded, "b")
    for layer in lora_modules(loaded).values():
        for name in layer.adapter_names:
            slot = layer.slot(name)
            assert slot.lora_A.requires_grad == slot.lora_B.requires_grad == (name == "b")
    # b alone: r=4 on 4 projections of 2 layers, 32x32 each; the classifier trains too, as the head (not counted)
    assert count_lora_parameters(loaded) == 2 * 4 * 4 * (32 + 32)
    assert count_method_parameters(loaded) == count_lora_parameters(loaded) and loaded.classifier.weight.requires_grad


@pytest.mark.parametrize("how", ["cat", "svd"])
def test_weights_one_and_zero_give_the_first_adapter(two, loaded, batch, how):
    names = combine_adapters(loaded, {"a": 1.0, "b": 0.0}, "ab", how=how, head="a")
    assert len(names) == 8  # the union of a's and b's modules
    expected = alone(two[0])(**batch).logits
    set_adapter(loaded, "ab")
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=0)
    r = lora_modules(loaded)[names[0]].slot("ab").r
    assert r == (2 + 4 if how == "cat" else 4)


def test_svd_of_one_adapter_at_half_weight_is_it_at_half_scale(two, loaded, batch):
    combine_adapters(loaded, {"a": 0.5}, "halved", how="svd", head="a")
    deltas, half = delta_weights(loaded, "a"), delta_weights(loaded, "halved")
    assert half.keys() == deltas.keys()
    for name, delta in deltas.items():
        torch.testing.assert_close(half[name], 0.5 * delta, atol=1e-6, rtol=0)
        assert lora_modules(loaded)[name].slot("halved").r == 2
    reference = alone(two[0])
    with torch.no_grad():
        for layer in lora_modules(reference).values():
            layer.lora_B.mul_(0.5)
    set_adapter(loaded, "halved")
    torch.testing.assert_close(loaded(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=0)


def test_cat_is_the_exact_weighted_sum_with_negative_weights(loaded):
    combine_adapters(loaded, {"a": 0.7, "b": -1.3}, "c")
    a, b, c = (delta_weights(loaded, n) for n in "abc")
    assert c.keys() == b.keys() > a.keys()  # b adapts k and o too: a adds nothing there
    for name in c:
        expected = 0.7 * a.get(name, torch.zeros_like(b[name])) - 1.3 * b[name]
        torch.testing.assert_close(c[name], expected, atol=1e-6, rtol=0)
        assert torch.linalg.matrix_rank(c[name]) <= 6 and lora_modules(loaded)[name].slot("c").r == 6


def test_several_active_adapters_add_and_merge_exactly(two, loaded, batch):
    W0 = {n: m.weight.detach().clone() for n, m in lora_modules(loaded).items()}
    combine_adapters(loaded, {"a": 1.0, "b": 1.0}, "sum", head="a")
    set_adapter(loaded, "sum")
    expected = loaded(**batch).logits
    set_adapter(loaded, ["a", "b"])
    assert active_adapters(loaded) == ["a", "b"]
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=0)
    merge_lora(loaded)
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=0)
    unmerge_lora(loaded)
    assert all(torch.equal(m.weight, W0[n]) for n, m in lora_modules(loaded).items())  # W₀ bit for bit
    merge_lora(loaded)
    set_adapter(loaded, "b")  # switching unmerges first
    assert all(torch.equal(m.weight, W0[n]) and not m.merged for n, m in lora_modules(loaded).items())
    assert torch.equal(loaded(**batch).logits, alone(two[1])(**batch).logits)


def test_deleting_adapters_back_to_the_base_model(two, loaded, batch):
    base = tiny_bert()
    originals = {n: m.base_layer for n, m in lora_modules(loaded).items()}
    delete_adapter(loaded, "a")  # the active one: b, the one left, becomes active
    assert adapter_names(loaded) == ["b"] and active_adapters(loaded) == ["b"]
    assert torch.equal(loaded(**batch).logits, alone(two[1])(**batch).logits)
    delete_adapter(loaded, "b")
    assert not lora_modules(loaded) and not hasattr(loaded, "lora_adapters")
    assert all(loaded.get_submodule(n) is m for n, m in originals.items())  # the original nn.Linear objects
    assert loaded.state_dict().keys() == base.state_dict().keys()
    assert torch.equal(loaded(**batch).logits, base(**batch).logits)  # the model's own classifier back


def test_combined_adapter_saves_loads_and_merges(loaded, tmp_path, batch):
    combine_adapters(loaded, {"a": 0.5, "b": 0.5}, "mix", how="svd", rank=3, head="b")
    set_adapter(loaded, "mix")
    expected = loaded(**batch).logits
    save_adapter(loaded, tmp_path / "mix", name="mix")
    again = alone(tmp_path / "mix")
    torch.testing.assert_close(again(**batch).logits, expected, atol=1e-6, rtol=0)
    merge_lora(again)
    torch.testing.assert_close(again(**batch).logits, expected, atol=1e-5, rtol=0)


def test_multi_adapter_folders_both_ways_with_peft(loaded, tmp_path, batch):
    """Ours in PEFT's layout (every adapter in a subfolder, "default" at the top) loads in PEFT, and PEFT's in ours."""
    set_adapter(loaded, "b")
    expected_b = loaded(**batch).logits
    save_adapter(loaded, tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["a", "b"]
    peft_model = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours" / "a", adapter_name="a")
    peft_model.load_adapter(tmp_path / "ours" / "b", adapter_name="b")
    peft_model.set_adapter("b")
    torch.testing.assert_close(peft_model.eval()(**batch).logits, expected_b, atol=1e-5, rtol=0)

    peft_model.save_pretrained(tmp_path / "peft")  # PEFT's own layout: a/ and b/
    ours = tiny_bert()
    load_adapter(ours, tmp_path / "peft", name="a")
    load_adapter(ours, tmp_path / "peft", name="b")
    set_adapter(ours, "b")
    torch.testing.assert_close(ours(**batch).logits, expected_b, atol=1e-5, rtol=0)
    with pytest.raises(LoRAError, match=r"no adapter 'default' at .*subfolders \['a', 'b'\].*name=<subfolder>"):
        load_adapter(tiny_bert(), tmp_path / "peft")


def test_peft_cat_combination_agrees_on_logits(tmp_path):
    tokens = torch.randint(3, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(0))
    config_a = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(tiny_llama(), config_a, adapter_name="a")
    peft_model.add_adapter("b", peft.LoraConfig(r=3, lora_alpha=9, target_modules=["q_proj", "k_proj", "down_proj"],
                                                task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_" in name:
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(tmp_path)
    peft_model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "c", combination_type="cat")
    peft_model.set_adapter("c")
    expected = peft_model.eval()(tokens).logits

    model = tiny_llama()
    load_adapter(model, tmp_path, name="a")
    load_adapter(model, tmp_path, name="b")
    combine_adapters(model, {"a": 0.7, "b": -0.4}, "c", how="cat")
    set_adapter(model, "c")
    torch.testing.assert_close(model(tokens).logits, expected, atol=1e-5, rtol=0)
    assert lora_modules(model)["model.layers.0.self_attn.q_proj"].slot("c").r == 5


def test_dora_adapters_switch_exactly(tmp_path, batch):
    a, b = saved(tmp_path / "a", seed=3, use_dora=True), saved(tmp_path / "b", seed=4, use_dora=True)
    model = alone(a, name="a")
    load_adapter(model, b, name="b")
    set_adapter(model, "b")
    assert torch.equal(model(**batch).logits, alone(b)(**batch).logits)
    stashed, reference = delta_weights(model, "a"), delta_weights(alone(a))  # a waits aside; its ΔW needs W₀ too
    assert all(torch.equal(stashed[n], reference[n]) for n in reference)
    for bad, message in [(lambda: set_adapter(model, ["a", "b"]), "DoRA layers serve one adapter at a time"),
                         (lambda: combine_adapters(model, {"a": 1.0}, "c"), "combines plain LoRA adapters; these are "
                                                                           "DoRA adapters")]:
        before = snapshot(model, batch)
        with pytest.raises(LoRAError, match=message):
            bad()
        assert_unchanged(model, batch, before)


@pytest.mark.parametrize("action, message", [
    (lambda m, p: set_adapter(m, "zz"), r"set_adapter: no adapter named 'zz'; the model's adapters are \['a', 'b'\]"),
    (lambda m, p: set_adapter(m, []), r"name at least one adapter; the model's adapters are \['a', 'b'\]"),
    (lambda m, p: set_adapter(m, ["a", "a"]), r"names an adapter twice"),
    (lambda m, p: delete_adapter(m, "zz"), r"delete_adapter: no adapter named 'zz'; the model's adapters are"),
    (lambda m, p: delta_weights(m, "zz"), r"delta_weights: no adapter named 'zz'"),
    (lambda m, p: save_adapter(m, p / "x", name="zz"), r"save_adapter: no adapter named 'zz'"),
    (lambda m, p: load_adapter(m, p / "a", name="a.b"), r"adapter name 'a\.b' is not usable; accepted: a non-empty"),
    (lambda m, p: load_adapter(m, p / "b", name="a"), r"adapts 8 modules, the model's LoRA layers are 4 others"),
    (lambda m, p: combine_adapters(m, {}, "c"), r"weights must be a non-empty \{adapter name: weight\} mapping"),
    (lambda m, p: combine_adapters(m, ["a", "b"], "c"), r"weights must be a non-empty \{adapter name: weight\}"),
    (lambda m, p: combine_adapters(m, {"a": 1, "zz": 1}, "c"), r"combine_adapters: no adapter named 'zz'; the model's "
                                                               r"adapters are \['a', 'b'\]"),
    (lambda m, p: combine_adapters(m, {"a": "1"}, "c"), r"the weight of 'a' must be a finite number, got '1'"),
    (lambda m, p: combine_adapters(m, {"a": float("nan")}, "c"), r"the weight of 'a' must be a finite number"),
    (lambda m, p: combine_adapters(m, {"a": True}, "c"), r"the weight of 'a' must be a finite number, got True"),
    (lambda m, p: combine_adapters(m, {"a": 1}, "b"), r"an adapter named 'b' exists; delete_adapter it or pick"),
    (lambda m, p: combine_adapters(m, {"a": 1}, "c", how="mean"), r"unknown how='mean'; accepted: 'cat' .* or 'svd'"),
    (lambda m, p: combine_adapters(m, {"a": 1}, "c", rank=2), r"rank=2 is for how='svd'"),
    (lambda m, p: combine_adapters(m, {"a": 1}, "c", how="svd", rank=0), r"rank=0 is for how='svd' and must be a pos"),
    (lambda m, p: combine_adapters(m, {"a": 1}, "c", how="svd", rank=33), r"rank 33 exceeds min\(in, out\) = 32 of "),
    (lambda m, p: combine_adapters(m, {"a": 1}, "c", head="zz"), r"combine_adapters \(head\): no adapter named 'zz'"),
])
def test_bad_input_is_one_line_and_changes_nothing(loaded, two, batch, action, message):
    before = snapshot(loaded, batch)
    with pytest.raises(LoRAError, match=message) as info:
        action(loaded, two[0].parent)
    assert "\n" not in str(info.value)
    assert_unchanged(loaded, batch, before)


def test_a_load_refused_late_changes_nothing(tmp_path):
    """r=20 fits q_proj (32x32), which already holds an adapter, but not k_proj (16x32), which does not: refused
    before either layer changes."""
    peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=20, target_modules=["q_proj", "k_proj"])).save_pretrained(
        tmp_path / "big")
    model = tiny_llama()
    inject_lora(model, LoRAConfig(r=2, targets="qv", trainable=()))
    tokens = torch.randint(3, TINY["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    before = snapshot(model, {"input_ids": tokens})
    with pytest.raises(LoRAError, match=r"rank r=20 must be in \[1, min\(in, out\)\] = \[1, 16\] for a 16x32"):
        load_adapter(model, tmp_path / "big", name="big")
    assert_unchanged(model, {"input_ids": tokens}, before)


def test_pissa_model_holds_one_adapter(tmp_path, batch):
    path = saved(tmp_path / "a", seed=3)
    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=2, alpha=4, targets="qv", init="pissa"))
    before = snapshot(model, batch)
    with pytest.raises(LoRAError, match="hold a PiSSA adapter, whose frozen W is that adapter's residual"):
        load_adapter(model, path, name="other")
    with pytest.raises(LoRAError, match="'default' is a PiSSA adapter, whose layers hold the residual of W"):
        delete_adapter(model, "default")
    assert_unchanged(model, batch, before)

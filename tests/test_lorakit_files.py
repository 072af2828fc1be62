"""Adapter files: every malformed file is one LoRAError naming it, altered bytes are caught by the checksum, and
files are written with the user's permissions."""

import json
import os
import stat

import peft
import pytest
import torch
from conftest import tiny_bert
from helpers import perturb_trainable
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakit import (
    AdapterConfig,
    LoRAConfig,
    LoRAError,
    adapter_modules,
    inject_adapters,
    inject_lora,
    load_adapter,
    load_bottleneck_adapters,
    lora_modules,
    save_adapter,
    save_bottleneck_adapters,
)
from lorakit.files import CHECKSUM_KEY, atomic_write

LORA_CONFIG, LORA_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
HOULSBY_CONFIG, HOULSBY_WEIGHTS = "bottleneck_config.json", "bottleneck_model.safetensors"


@pytest.fixture
def lora_dir(tmp_path):
    model = tiny_bert()
    inject_lora(model, LoRAConfig(r=2, alpha=4, targets="qv"))
    return save_adapter(perturb_trainable(model), tmp_path / "lora")


@pytest.fixture
def houlsby_dir(tmp_path):
    model = tiny_bert()
    inject_adapters(model, AdapterConfig(size=4))
    return save_bottleneck_adapters(perturb_trainable(model), tmp_path / "houlsby")


def refused(load, path, file, message):
    """``load`` of ``path`` raises one line naming ``file`` and matching ``message``, and leaves the model as it was."""
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoRAError, match=message) as info:
        load(model, path)
    text = str(info.value)
    assert "\n" not in text and str(path / file) in text, text
    assert not lora_modules(model) and not adapter_modules(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def edit_json(file, change):
    content = json.loads(file.read_text())
    change(content)
    file.write_text(json.dumps(content))


def flip_byte(file, offset_from_data_start):
    data = bytearray(file.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + offset_from_data_start] ^= 0xFF
    file.write_bytes(bytes(data))


def resave(file, change_tensors=lambda t: t, keep_checksum=True):
    """Rewrite a safetensors file with changed tensors, keeping (or dropping) its metadata as it was."""
    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata())
    if not keep_checksum:
        metadata.pop(CHECKSUM_KEY)
    save_file({k: v.contiguous() for k, v in change_tensors(load_file(file)).items()}, file, metadata=metadata)


# --- LoRA (PEFT format) -------------------------------------------------------------------------------------------

def test_checksum_is_written_and_peft_still_loads(lora_dir, batch):
    with safe_open(str(lora_dir / LORA_WEIGHTS), framework="pt") as f:
        assert len(f.metadata()[CHECKSUM_KEY]) == 64
    model = tiny_bert()
    load_adapter(model, lora_dir)
    peft_model = peft.PeftModel.from_pretrained(tiny_bert(), lora_dir).eval()
    torch.testing.assert_close(peft_model(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_adapter_without_checksum_still_loads(lora_dir, batch):
    expected = tiny_bert()
    load_adapter(expected, lora_dir)
    resave(lora_dir / LORA_WEIGHTS, keep_checksum=False)
    model = tiny_bert()
    load_adapter(model, lora_dir)
    assert torch.equal(model(**batch).logits, expected(**batch).logits)


@pytest.mark.parametrize("offset", [0, 100, -1])
def test_altered_tensor_bytes_are_caught(lora_dir, offset):
    size = (lora_dir / LORA_WEIGHTS).stat().st_size
    header = int.from_bytes((lora_dir / LORA_WEIGHTS).read_bytes()[:8], "little")
    flip_byte(lora_dir / LORA_WEIGHTS, offset % (size - 8 - header))
    refused(load_adapter, lora_dir, LORA_WEIGHTS, "does not match its checksum .*tensor bytes were altered")


def test_tensors_rewritten_under_an_old_checksum_are_caught(lora_dir):
    resave(lora_dir / LORA_WEIGHTS, lambda t: {k: v * 1.001 for k, v in t.items()})
    refused(load_adapter, lora_dir, LORA_WEIGHTS, "does not match its checksum")


@pytest.mark.parametrize("keep", [0, 7, 200, -10])
def test_truncated_or_foreign_weights(lora_dir, keep):
    data = (lora_dir / LORA_WEIGHTS).read_bytes()
    (lora_dir / LORA_WEIGHTS).write_bytes(data[:keep] if keep >= 0 else data[:keep])
    refused(load_adapter, lora_dir, LORA_WEIGHTS,
            "is not a readable safetensors file .*truncated or not an adapter's weights")


def test_garbage_weights(lora_dir):
    (lora_dir / LORA_WEIGHTS).write_bytes(b"PK\x03\x04 this is a zip archive, not safetensors" * 4)
    refused(load_adapter, lora_dir, LORA_WEIGHTS, "is not a readable safetensors file")


@pytest.mark.parametrize("content, message", [
    (lambda text: text[: len(text) // 2], r"is not valid JSON \(.*: line \d+, column \d+\)"),
    (lambda text: "", r"is not valid JSON \(Expecting value: line 1, column 1\)"),
    (lambda text: "[1, 2]", "holds a JSON list, expected the adapter's config object"),
    (lambda text: "\udcff", r"cannot be read \(UnicodeDecodeError"),
])
def test_truncated_or_invalid_config(lora_dir, content, message):
    text = (lora_dir / LORA_CONFIG).read_text()
    (lora_dir / LORA_CONFIG).write_bytes(content(text).encode("utf-8", "surrogateescape"))
    refused(load_adapter, lora_dir, LORA_CONFIG, message)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("r"), r"has no 'r': a LoRA config needs r \(a positive integer\) and lora_alpha"),
    (lambda c: c.pop("lora_alpha"), r"has no 'lora_alpha'"),
    (lambda c: (c.pop("r"), c.pop("lora_alpha")), r"has no 'r' and no 'lora_alpha'"),
    (lambda c: c.update(r="2"), r"r must be a positive integer, got '2'"),
    (lambda c: c.update(r=True), r"r must be a positive integer, got True"),
    (lambda c: c.update(r=0), r"r must be a positive integer, got 0"),
    (lambda c: c.update(r=2.0), r"r must be a positive integer, got 2.0"),
    (lambda c: c.update(lora_alpha="4"), r"lora_alpha must be a positive number, got '4'"),
    (lambda c: c.update(lora_alpha=-4), r"lora_alpha must be a positive number, got -4"),
    (lambda c: c.update(lora_alpha=None), r"lora_alpha must be a positive number, got None"),
    (lambda c: c.update(lora_dropout=1.5), r"lora_dropout must be a number in \[0, 1\), got 1.5"),
    (lambda c: c.update(use_dora="no"), r"use_dora must be true or false, got 'no'"),
    (lambda c: c.update(use_rslora=1), r"use_rslora must be true or false, got 1"),
    (lambda c: c.update(modules_to_save="classifier"), r"modules_to_save must be a list of module names or null"),
    (lambda c: c.update(init_lora_weights=3), r"init_lora_weights must be true, false or a PEFT init name, got 3"),
])
def test_config_with_missing_or_mistyped_keys(lora_dir, change, message):
    edit_json(lora_dir / LORA_CONFIG, change)
    refused(load_adapter, lora_dir, LORA_CONFIG, message)


def test_config_with_another_rank_than_the_tensors(lora_dir):
    edit_json(lora_dir / LORA_CONFIG, lambda c: c.update(r=4))
    refused(load_adapter, lora_dir, "", r"has rank 2, config says r=4")


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: (v * 100).to(torch.int32) if k.endswith("lora_A.weight") else v for k, v in t.items()},
     r"lora_A\.weight has dtype int32; accepted: floating point"),
    (lambda t: {k: v.reshape(-1) if k.endswith("lora_B.weight") else v for k, v in t.items()},
     r"lora_B\.weight has shape \(64,\); LoRA factors are matrices"),
    (lambda t: {k: v.unsqueeze(0) if k.endswith("lora_A.weight") else v for k, v in t.items()},
     r"lora_A\.weight has shape \(1, 2, 32\); LoRA factors are matrices"),
    (lambda t: {k: v[:1] if k.endswith("lora_A.weight") else v for k, v in t.items()},
     r"has rank 1, config says r=2"),
    (lambda t: {k: v for k, v in t.items() if not k.endswith("query.lora_B.weight")}, r"is incomplete"),
])
def test_tensors_with_wrong_dtypes_or_shapes(lora_dir, change, message):
    resave(lora_dir / LORA_WEIGHTS, change, keep_checksum=False)  # consistent files, wrong contents
    refused(load_adapter, lora_dir, "", message)


# --- Houlsby adapters (lorakit's format) ---------------------------------------------------------------------------

def test_houlsby_checksum_written_and_verified(houlsby_dir, batch):
    with safe_open(str(houlsby_dir / HOULSBY_WEIGHTS), framework="pt") as f:
        assert len(f.metadata()[CHECKSUM_KEY]) == 64
    model = tiny_bert()
    load_bottleneck_adapters(model, houlsby_dir)
    flip_byte(houlsby_dir / HOULSBY_WEIGHTS, 10)
    refused(load_bottleneck_adapters, houlsby_dir, HOULSBY_WEIGHTS, "does not match its checksum")
    resave(houlsby_dir / HOULSBY_WEIGHTS, keep_checksum=False)  # without a checksum, the (altered) file loads
    load_bottleneck_adapters(tiny_bert(), houlsby_dir)


def test_houlsby_truncated_files(houlsby_dir):
    weights = (houlsby_dir / HOULSBY_WEIGHTS).read_bytes()
    (houlsby_dir / HOULSBY_WEIGHTS).write_bytes(weights[: len(weights) // 2])
    refused(load_bottleneck_adapters, houlsby_dir, HOULSBY_WEIGHTS, "is not a readable safetensors file")
    (houlsby_dir / HOULSBY_WEIGHTS).write_bytes(weights)
    config = (houlsby_dir / HOULSBY_CONFIG).read_text()
    (houlsby_dir / HOULSBY_CONFIG).write_text(config[:40])
    refused(load_bottleneck_adapters, houlsby_dir, HOULSBY_CONFIG, "is not valid JSON")


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("size"), r"has no 'size'; a Houlsby adapter config needs size, activation, targets"),
    (lambda c: c.pop("targets"), r"has no 'targets'"),
    (lambda c: c.update(size="4"), r"adapter size must be a positive integer, got '4'"),
    (lambda c: c.update(activation="swish"), r"unknown adapter activation 'swish'"),
    (lambda c: c.update(targets="output.dense"), r"targets must be a list of module names"),
    (lambda c: c.update(adapter_type="lora"), r"adapter_type is 'lora'; accepted: 'houlsby'"),
])
def test_houlsby_config_with_missing_or_mistyped_keys(houlsby_dir, change, message):
    edit_json(houlsby_dir / HOULSBY_CONFIG, change)
    refused(load_bottleneck_adapters, houlsby_dir, HOULSBY_CONFIG, message)


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v for k, v in t.items() if not k.endswith("layer.0.output.dense.adapter_up_bias")},
     r"layer\.0\.output\.dense\.adapter_up_bias is missing, expected \(32,\)"),
    (lambda t: {k: v[:, :3] if k.endswith("adapter_up") else v for k, v in t.items()},
     r"adapter_up is \(32, 3\), expected \(32, 4\) for size 4"),
    (lambda t: {k: v.to(torch.int64) if k.endswith("adapter_down_bias") else v for k, v in t.items()},
     r"adapter_down_bias has dtype int64; accepted: floating point"),
])
def test_houlsby_tensors_with_wrong_shapes_or_dtypes(houlsby_dir, change, message):
    resave(houlsby_dir / HOULSBY_WEIGHTS, change, keep_checksum=False)
    refused(load_bottleneck_adapters, houlsby_dir, HOULSBY_WEIGHTS, message)


# --- Permissions and atomic writes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_users_usual_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        model = tiny_bert()
        inject_lora(model, LoRAConfig(r=2))
        save_adapter(model, tmp_path / "lora")
        houlsby = tiny_bert()
        inject_adapters(houlsby, AdapterConfig(size=2))
        save_bottleneck_adapters(houlsby, tmp_path / "houlsby")
    finally:
        os.umask(old)
    files = [tmp_path / "lora" / LORA_CONFIG, tmp_path / "lora" / LORA_WEIGHTS,
             tmp_path / "houlsby" / HOULSBY_CONFIG, tmp_path / "houlsby" / HOULSBY_WEIGHTS]
    assert [oct(stat.S_IMODE(f.stat().st_mode)) for f in files] == [oct(mode)] * 4
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [LORA_CONFIG, LORA_WEIGHTS]  # no temp left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]

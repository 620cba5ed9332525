"""Llama-3.2's real tokenizer (Meta's BPE ranks, from llama-models) on a tiny random Llama, through every stage
CLI offline: data prep on the benchmarks' formats, CoT-SFT, latent SFT (coconut, simcot, atp), RL, evaluation
and explain. What a pretrained model changes: BOS, byte-level spaces, its own pad and EOS, three-digit numbers."""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch

from atp import config, modeling, paper_tiny
from atp.text import BOT, EOT, LATENT, PAD, cot_target, parse_answer, parse_equation, prompt_text
from conftest import ROOT

BOS_ID, EOS_ID, PAD_ID, VOCAB = 128000, 128001, 128004, 128256


@pytest.fixture(scope="module")
def tokenizer():
    return paper_tiny.llama32_tokenizer()


def test_the_tokenizer_is_llama_3_2s(tokenizer):
    assert len(tokenizer) == VOCAB
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert tokenizer.encode("Hello world") == [BOS_ID, 9906, 1917]  # Llama-3's ids; BOS from the post-processor
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(" 1234567 apples", add_special_tokens=False))
    assert tokens == ["Ġ", "123", "456", "7", "Ġapples"]  # numbers in groups of three, spaces as Ġ
    assert tokenizer.encode("<<", add_special_tokens=False) == [2501]


@pytest.mark.parametrize(
    ("text", "answer", "operands", "result"),
    [
        ("<<1,234*3=3,702>>\n### 3,702", "3702", ("1234", "3"), "3702"),
        ("<<12000-450=11550>>\n### 11550", "11550", ("12000", "450"), "11550"),
        ("<<7.5/2=3.75>>\n### 3.75", "3.75", ("7.5", "2"), "3.75"),
        ("<<-3+1=-2>>\n### -2", "-2", ("-3", "1"), "-2"),
        ("<<(1999+1)*2=4000>>\n### 4,000 apples", "4000", ("1999", "1", "2"), "4000"),
    ],
)
def test_answers_and_equations_parse_back_from_byte_level_text(tokenizer, text, answer, operands, result):
    """Decoded as evaluation decodes a generation (ids before EOS, special tokens skipped): spaces come back."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any(t.startswith("Ġ") for t in tokenizer.convert_ids_to_tokens(ids))
    decoded = tokenizer.decode(ids + [EOS_ID, PAD_ID], skip_special_tokens=True)
    assert decoded == text and parse_answer(decoded) == answer
    equation = parse_equation(decoded.splitlines()[0])
    assert equation.operands == operands and equation.result == result and equation.holds()


# ---------------------------------------------------------------- the stage CLIs on a tiny Llama-3.2-vocabulary model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny model and the benchmark-format files (atp.paper_tiny), and config/paper_tiny.yaml pointing at them."""
    folder = tmp_path_factory.mktemp("llama32")
    paper_tiny.write_model(folder / "model", hidden_size=32)
    paths = paper_tiny.write_data(folder, {"train": 24, "val": 4, "test": 4, "hard": 4, "varied": 4, "easy": 4})
    cfg = config.load(ROOT / "config" / "config.yaml", ROOT / "config" / "paper.yaml", ROOT / "config" / "paper_tiny.yaml")
    cfg["model"]["pretrained"] = str(folder / "model")
    for name, split in [("train", cfg["data"]["train"]), ("val", cfg["data"]["val"]), *cfg["data"]["suites"].items()]:
        assert split["format"] == paper_tiny.FILES[name][1]  # the overlay reads each file in its own format
        split["path"] = str(paths[name])
    for method in ("coconut", "simcot", "atp"):
        cfg["methods"][method]["train"]["steps"] = 4  # curriculum stage 4 of 10: stop labels on short problems
    cfg["methods"]["atp_rl"]["train"]["steps"] = 1
    cfg["train"]["val_samples"] = 0  # no validation decoding: evaluation decodes below
    cfg["eval"]["samples"] = 1
    config.dump(cfg, folder / "job.yaml")
    return folder


def _run(module: str, folder: Path, *args: str) -> None:
    """`python -m atp.stages.<module> --config <folder>/job.yaml --no-tracking [--data-dir <folder>/data] ARGS`, run
    in this process (the module's own command line; torch is imported once)."""
    data = ("--data-dir", str(folder / "data")) if module in ("sft", "latent_sft", "rl", "evaluate") else ()
    argv = [module, "--config", str(folder / "job.yaml"), "--no-tracking", *data, *args]
    saved = sys.argv
    try:
        sys.argv = argv
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
            runpy.run_module(f"atp.stages.{module}", run_name="__main__")
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def stages(llama):
    """Every stage on the tiny model, as the workflow chains them."""
    train = llama / "train"
    _run("prepare_data", llama, "--out-dir", str(llama / "data"))
    _run("sft", llama, "--method", "cot_sft", "--out-dir", str(train / "cot_sft"))
    for method in ("coconut", "simcot", "atp"):
        _run(
            "latent_sft", llama, "--method", method, "--out-dir", str(train / method), "--init", str(train / "cot_sft" / "model")
        )
    _run("rl", llama, "--method", "atp_rl", "--out-dir", str(train / "atp_rl"), "--init", str(train / "atp" / "model"))
    for method in ("cot_sft", "atp_rl"):
        _run(
            "evaluate",
            llama,
            "--method",
            method,
            "--model",
            str(train / method / "model"),
            "--suites",
            "test",
            "hard",
            "easy",
            "varied",
            "--out-dir",
            str(llama / "eval" / method),
        )
    return llama


@pytest.mark.slow  # `stages` runs every stage CLI on a 128k-vocabulary model (about 75 s)
def test_data_prep_reads_every_benchmark_format_and_keeps_the_tokenizers_own_specials(stages):
    card = json.loads((stages / "data" / "card.json").read_text())
    sources = {c["split"]: c["sources"] for c in card["splits"] if "/" not in c["split"]}
    expected = {"train": "gsm8k_aug_text", "val": "gsm8k_aug", "test": "gsm8k", "hard": "gsm_hard", "easy": "multiarith"}
    assert sources == {name: [fmt] for name, fmt in {**expected, "varied": "svamp"}.items()}
    hard = [json.loads(line) for line in (stages / "data" / "hard.jsonl").read_text().splitlines()]
    assert any(int(r["answer"]) > 999 for r in hard)
    tokenizer = modeling.load_tokenizer(stages / "data" / "tokenizer")
    assert len(tokenizer) == card["vocab_size"] == VOCAB + 3  # the three latent markers, once; no pad added
    assert tokenizer.pad_token_id == PAD_ID and PAD not in tokenizer.get_vocab()
    assert [tokenizer.convert_tokens_to_ids(t) for t in (BOT, LATENT, EOT)] == [VOCAB, VOCAB + 1, VOCAB + 2]
    for marker in (BOT, LATENT, EOT):
        assert tokenizer.encode(marker, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(marker)]


@pytest.mark.slow  # `stages` runs every stage CLI on a 128k-vocabulary model (about 75 s)
def test_the_latent_markers_start_from_the_embedding_of_chevrons_and_are_added_once(stages):
    from safetensors.torch import load_file

    tokenizer = modeling.load_tokenizer(stages / "data" / "tokenizer")
    model = modeling.build_model({"pretrained": str(stages / "model")}, tokenizer)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == VOCAB + 3
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()  # tied, as Llama-3.2-1B
    assert torch.equal(weight[VOCAB:], weight[2501].expand(3, -1)) and not torch.equal(weight[VOCAB - 1], weight[2501])
    for method in ("cot_sft", "coconut", "simcot", "atp", "atp_rl"):
        saved = modeling.load_tokenizer(stages / "train" / method / "model")
        weights = load_file(stages / "train" / method / "model" / "model.safetensors")
        assert len(saved) == VOCAB + 3 and weights["model.embed_tokens.weight"].shape[0] == VOCAB + 3, method
    decoder = json.loads((stages / "train" / "atp" / "model" / "decoder" / "config.json").read_text())
    assert (decoder["vocab_size"], decoder["eos_token_id"]) == (VOCAB + 3, EOS_ID)
    assert decoder.get("pad_token_id") in (PAD_ID, None)  # None: a copy of the backbone, whose config has no pad


@pytest.mark.slow  # `stages` runs every stage CLI on a 128k-vocabulary model (about 75 s)
def test_prompts_and_labels_are_laid_out_as_method_md_says_for_a_pretrained_model(stages):
    """BOS + question + newline, then the CoT target and EOS, loss on the target only; the latent stage the same."""
    from atp.batches import IGNORE
    from atp.data.records import read_jsonl
    from atp.latent import LatentConfig, encode_latent_records
    from atp.stages.sft import encode_examples

    tokenizer = modeling.load_tokenizer(stages / "data" / "tokenizer")
    record = read_jsonl(stages / "data" / "train.jsonl")[0]
    (example,), _ = encode_examples([record], tokenizer, "cot", 512)
    ids, labels = example.input_ids, example.labels
    prompt = [BOS_ID] + tokenizer.encode(prompt_text(record["question"]), add_special_tokens=False)
    assert ids[: len(prompt)] == prompt and ids.count(BOS_ID) == 1
    assert labels[: len(prompt)] == [IGNORE] * len(prompt) and labels[len(prompt) :] == ids[len(prompt) :]
    assert ids[-1] == EOS_ID and tokenizer.decode(ids[len(prompt) : -1]) == cot_target(record["steps"], record["answer"])
    (latent,), _ = encode_latent_records([record], tokenizer, 512, LatentConfig(c=2, max_steps=10))
    assert latent.prompt == prompt and latent.answer[-1] == EOS_ID
    assert tokenizer.decode(latent.answer[:-1]) == f"### {record['answer']}"
    assert [tokenizer.decode(s) for s in latent.step_texts] == record["steps"]


@pytest.mark.slow  # `stages` runs every stage CLI on a 128k-vocabulary model (about 75 s)
def test_eos_ends_generation_and_is_neither_decoded_nor_counted(stages, tmp_path):
    """CoT-SFT overfit on one problem: greedy decoding writes its CoT and stops at the tokenizer's EOS."""
    from atp.data.records import read_jsonl, write_jsonl
    from atp.evaluate import greedy_generate

    records = read_jsonl(stages / "data" / "train.jsonl")[:1]
    write_jsonl(tmp_path / "data" / "train.jsonl", records)
    modeling.load_tokenizer(stages / "data" / "tokenizer").save_pretrained(tmp_path / "data" / "tokenizer")
    cfg = config.load(stages / "job.yaml")
    cfg["train"].update({"steps": 60, "batch_size": 1, "lr": 0.01, "val_samples": 0})
    config.dump(cfg, tmp_path / "job.yaml")
    _run("sft", tmp_path, "--method", "cot_sft", "--out-dir", str(tmp_path / "cot"))
    model, tokenizer = modeling.load_model(tmp_path / "cot" / "model")
    generations = greedy_generate(model, tokenizer, [r["question"] for r in records], 64, 1, torch.device("cpu"))
    for record, (text, n_tokens) in zip(records, generations):
        target = cot_target(record["steps"], record["answer"])
        assert text == target and n_tokens == len(tokenizer.encode(target, add_special_tokens=False))
        assert parse_answer(text) == record["answer"]


@pytest.mark.slow  # `stages` runs every stage CLI on a 128k-vocabulary model (about 75 s)
def test_evaluation_and_explain_read_back_byte_level_generations(stages, capsys):
    from atp import explain

    for method in ("cot_sft", "atp_rl"):
        for suite in ("test", "hard", "easy", "varied"):
            predictions = stages / "eval" / method / suite / "predictions.jsonl"
            rows = [json.loads(line) for line in predictions.read_text().splitlines()]
            assert len(rows) == 4 and not any("Ġ" in r["generation"] or "Ċ" in r["generation"] for r in rows), (method, suite)
            assert all(r["prediction"] == parse_answer(r["generation"]) for r in rows)
    metrics = json.loads((stages / "eval" / "atp_rl" / "test" / "metrics.json").read_text())
    assert 0 <= metrics["latents"] <= 20 and metrics["samples"] == 1
    question = json.loads((stages / "data" / "test.jsonl").read_text().splitlines()[0])["question"]
    explain.main(["--model", str(stages / "train" / "atp_rl" / "model"), "--question", question])
    shown = capsys.readouterr().out
    assert "latents" in shown and "Ġ" not in shown

"""The paper's setting at toy size, offline: Llama-3.2's tokenizer on a tiny random Llama, and small files in the
benchmarks' own formats, for `config/paper_tiny.yaml` and the tests.

    python -m atp.paper_tiny --out data/paper_tiny

writes `model/` (Llama-3.2's 128,256-token tokenizer and a randomly initialised Llama-3.2-shaped model of
hidden size 32) and the splits `gsm8k_aug/train.txt` (iCoT text), `gsm8k_aug/validation.jsonl`,
`gsm8k/test.jsonl`, `gsm_hard/gsm_hard.jsonl`, `svamp/test.json` and `multiarith/test.jsonl`, drawn by the
synthetic generator (atp/data/synthetic.py) and written as the real datasets write them.

The tokenizer is Meta's own: the BPE ranks `tokenizer.model` shipped in the `llama-models` package (the
test extra), converted by transformers' TikTokenConverter with the special tokens of Llama-3.2-1B's
`tokenizer.json` (bos `<|begin_of_text|>`, eos `<|end_of_text|>`, pad `<|finetune_right_pad_id|>`). With
`--instruct`, those of Llama-3.2-1B-Instruct, the paper's model: eos `<|eot_id|>` (the end of a turn) and no pad
token, so that the pipeline adds its own (`<|pad|>`, vocabulary 128,260).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
EOT_ID = "<|eot_id|>"  # the Instruct model's eos
# Llama-3.2-1B's special tokens (ids 128000-128255) in hub order; the rest are reserved_special_token_2..246.
NAMED_SPECIALS = [
    BOS,
    EOS,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    PAD,
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
N_SPECIALS = 256


def llama32_tokenizer(instruct: bool = False):
    """Llama-3.2's tokenizer (transformers' fast tokenizer) from Meta's BPE ranks in `llama-models`: the base model's
    special tokens, or with `instruct` the Instruct model's (eos `<|eot_id|>`, no pad token)."""
    from llama_models.llama3 import tokenizer as meta
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(meta.__file__).parent / "tokenizer.model"
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=meta.Tokenizer.pat_str).converted()
    base = tok.get_vocab_size()
    specials = NAMED_SPECIALS + [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + N_SPECIALS - len(NAMED_SPECIALS))]
    ids = meta.Tokenizer(ranks).special_tokens  # Meta's own ids of the named ones must agree
    assert all(ids[name] == base + i for i, name in enumerate(NAMED_SPECIALS)), "llama-models changed its special tokens"
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, base)]),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT_ID if instruct else EOS,
        pad_token=None if instruct else PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


def write_model(folder: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, instruct: bool = False) -> Path:
    """A randomly initialised Llama shaped as Llama-3.2-1B (4:1 grouped-query attention, llama3 RoPE, tied
    embeddings) at `hidden_size`, with Llama-3.2's tokenizer (the Instruct model's with `instruct`: its config then
    lists the three ids that end generation, 128001, 128008 and 128009, as the hub's does), saved as a hub
    download is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = llama32_tokenizer(instruct)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in (EOS, "<|eom_id|>", EOT_ID)]
        if instruct
        else tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the benchmarks' formats


def _inner(step: str) -> str:
    return step[2:-2]


def _with_commas(answer: str) -> str:
    whole, _, frac = answer.partition(".")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


def _split_question(question: str) -> tuple[str, str]:
    """SVAMP's Body and Question: the question sentence (ending in `?`) and the others."""
    sentences = re.split(r"(?<=[.?!])\s+", question.strip())
    asked = next((s for s in reversed(sentences) if s.endswith("?")), sentences[-1])
    return " ".join(s for s in sentences if s is not asked), asked


def gsm8k_aug_text_line(r: dict) -> str:
    return f"{r['question']}||{' '.join(r['steps'])} #### {r['answer']}"


def gsm8k_aug_row(r: dict) -> dict:
    return {"question": r["question"], "cot": " ".join(r["steps"]), "answer": r["answer"]}


def gsm8k_row(r: dict) -> dict:
    """GSM8K: a worded solution with calculator annotations, the answer after `####` with thousands commas."""
    lines = [f"{_inner(s).split('=')[0]} = {s}{_inner(s).split('=')[1]}." for s in r["steps"]]
    return {"question": r["question"], "answer": "\n".join(lines + [f"#### {_with_commas(r['answer'])}"])}


def gsm_hard_row(r: dict) -> dict:
    code = "def solution():\n" + "".join(f"    # {_inner(s)}\n" for s in r["steps"]) + f"    return {r['answer']}\n"
    return {"input": r["question"], "code": code, "target": float(r["answer"])}


def svamp_row(r: dict) -> dict:
    body, question = _split_question(r["question"])
    equation = f"( {_inner(r['steps'][-1]).split('=')[0]} )"
    return {"Body": body, "Question": question, "Equation": equation, "Answer": float(r["answer"])}


def multiarith_row(r: dict) -> dict:
    return {"question": r["question"], "final_ans": r["answer"]}


# split name -> (file, its format, its row writer), as config/paper_tiny.yaml reads them
FILES = {
    "train": ("gsm8k_aug/train.txt", "gsm8k_aug_text", gsm8k_aug_text_line),
    "val": ("gsm8k_aug/validation.jsonl", "gsm8k_aug", gsm8k_aug_row),
    "test": ("gsm8k/test.jsonl", "gsm8k", gsm8k_row),
    "hard": ("gsm_hard/gsm_hard.jsonl", "gsm_hard", gsm_hard_row),
    "varied": ("svamp/test.json", "svamp", svamp_row),
    "easy": ("multiarith/test.jsonl", "multiarith", multiarith_row),
}

# Generator settings of each split: hard has numbers past 999 (commas in GSM8K's style), varied SVAMP's
# distractors and question-first wording.
SPECS = {
    "train": {"min_ops": 1, "max_ops": 3},
    "val": {"min_ops": 1, "max_ops": 3},
    "test": {"min_ops": 1, "max_ops": 3},
    "hard": {"min_ops": 2, "max_ops": 3, "max_quantity": 3000, "max_result": 9000},
    "varied": {"min_ops": 2, "max_ops": 3, "distractor": 1.0, "question_first": 0.5, "varied_phrasing": 0.15},
    "easy": {"min_ops": 1, "max_ops": 2},
}


def write_data(folder: str | Path, n: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    """Each split drawn by the synthetic generator and written in its benchmark's format; returns the paths."""
    from atp.data.synthetic import SuiteSpec, generate_split
    from atp.text import normalise_question

    folder = Path(folder)
    sizes = {"train": 64, "val": 8, "test": 8, "hard": 8, "varied": 8, "easy": 8, **(n or {})}
    seen: set[str] = set()
    paths = {}
    for name, (file, _, row) in FILES.items():
        records = generate_split(name, SuiteSpec(n=sizes[name], **SPECS[name]), seed, exclude=seen)
        if name in ("train", "val"):
            seen.update(normalise_question(r["question"]) for r in records)
        path = paths[name] = folder / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if file.endswith(".txt"):
            text = "".join(row(r) + "\n" for r in records)
        elif file.endswith(".json"):
            text = json.dumps([row(r) for r in records], indent=1) + "\n"
        else:
            text = "".join(json.dumps(row(r)) + "\n" for r in records)
        path.write_text(text, encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/paper_tiny", help="folder for model/ and the split files")
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--train", type=int, default=64, help="training problems")
    p.add_argument("--instruct", action="store_true", help="the Instruct model's tokenizer (eos <|eot_id|>, no pad)")
    args = p.parse_args(argv)
    out = Path(args.out)
    write_model(out / "model", hidden_size=args.hidden_size, instruct=args.instruct)
    for name, path in write_data(out, {"train": args.train}).items():
        print(f"{name}: {path}")
    print(f"model: {out / 'model'}")


if __name__ == "__main__":
    main()

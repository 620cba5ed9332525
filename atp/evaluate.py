"""Greedy decoding and scoring of language models (CoT and No-CoT) on contract records."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch

from atp.batches import left_pad
from atp.modeling import prompt_ids
from atp.text import numbers_equal, parse_answer


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    questions: list[str],
    max_new_tokens: int,
    batch_size: int,
    device,
    progress: bool = False,
    temperature: float | None = None,
) -> list[tuple[str, int]]:
    """(decoded text before EOS, number of generated tokens before EOS) per question.

    Batches are formed from length-sorted prompts and left-padded; results come back in input order.
    `temperature`: sample at that temperature (no top-k; seed torch's global generator first) instead of greedy.
    """
    from tqdm import tqdm

    model.eval()
    encoded = [prompt_ids(tokenizer, q) for q in questions]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[tuple[str, int] | None] = [None] * len(encoded)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc="decode", disable=not progress, mininterval=2.0):
        rows = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in rows], pad)
        width = ids.shape[1]
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            **({"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature, "top_k": 0}),
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for r, i in enumerate(rows):
            new = out[r, width:].tolist()
            n = new.index(eos) if eos in new else len(new)
            results[i] = (tokenizer.decode(new[:n], skip_special_tokens=True), n)
    return results  # type: ignore[return-value]


def score(records: list[dict], generations: Iterable[tuple[str, int]]) -> tuple[list[dict], dict]:
    """Per-example predictions and summary metrics (accuracy, tokens, answer-format rate)."""
    predictions = []
    for record, (text, n_tokens) in zip(records, generations):
        predicted = parse_answer(text)
        predictions.append(
            {
                "id": record["id"],
                "question": record["question"],
                "gold": record["answer"],
                "prediction": predicted,
                "correct": predicted is not None and numbers_equal(predicted, record["answer"]),
                "generated_tokens": n_tokens,
                "generation": text,
                "n_ops": record.get("n_ops", len(record["steps"])),
            }
        )
    n = len(predictions)
    metrics = {
        "n": n,
        "accuracy": sum(p["correct"] for p in predictions) / n if n else 0.0,
        "tokens": statistics.fmean(p["generated_tokens"] for p in predictions) if n else 0.0,
        "format_rate": sum(p["prediction"] is not None for p in predictions) / n if n else 0.0,
    }
    by_ops: dict[int, list[bool]] = {}
    for p in predictions:
        by_ops.setdefault(p["n_ops"], []).append(p["correct"])
    metrics["accuracy_by_steps"] = {str(k): sum(v) / len(v) for k, v in sorted(by_ops.items())}
    return predictions, metrics


# ---------------------------------------------------------------- latent models


@torch.no_grad()
def latent_generate(
    model,
    tokenizer,
    questions: list[str],
    mode: str,
    seed: int,
    batch_size: int,
    max_answer_tokens: int,
    device,
    progress: bool = False,
) -> list[dict]:
    """Latent reasoning + greedy answer per question: answer text, answer tokens, latents, decoded steps.

    `mode`: `sample` (latents drawn from the latent head's Gaussian with `seed`) or `mu`.
    """
    from tqdm import tqdm

    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    encoded = [prompt_ids(tokenizer, q) for q in questions]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[dict | None] = [None] * len(encoded)
    for start in tqdm(range(0, len(order), batch_size), desc=f"latent {mode}", disable=not progress, mininterval=2.0):
        rows = order[start : start + batch_size]
        outs = model.generate([encoded[i] for i in rows], mode=mode, generator=generator, max_answer_tokens=max_answer_tokens)
        steps = model.decode_steps([o["feeds"] for o in outs], tokenizer)
        for i, o, s in zip(rows, outs, steps):
            results[i] = {
                "text": tokenizer.decode(o["answer_ids"], skip_special_tokens=True),
                "answer_tokens": len(o["answer_ids"]),
                "latents": o["latents"],
                "steps": s,
            }
    return results  # type: ignore[return-value]


def latent_validation(model, tokenizer, records: list[dict], seed: int, device) -> dict[str, dict]:
    """Validation metrics of a latent model by mode: `mu`, and `sample` too for sampled-latent variants."""
    modes = ("mu", "sample") if model.cfg.spec.stochastic else ("mu",)
    questions = [r["question"] for r in records]
    return {
        mode: score_latent(records, latent_generate(model, tokenizer, questions, mode, seed, 250, 16, device))[1]
        for mode in modes
    }


def step_fidelity(step: str, gold_steps: list[str]) -> bool:
    """A decoded latent step is faithful when its equation is true and its result is one of the
    gold CoT's intermediate results (the same for every equivalent label of the problem)."""
    from atp.text import parse_equation

    equation = parse_equation(step)
    if equation is None or not equation.holds():
        return False
    golds = [parse_equation(g) for g in gold_steps]
    return any(g is not None and numbers_equal(equation.result, g.result) for g in golds)


def score_latent(records: list[dict], generations: list[dict]) -> tuple[list[dict], dict]:
    """`score` with the paper's #tokens (latents + answer tokens), plus latents, decoded steps and fidelity."""
    predictions, metrics = score(records, [(g["text"], g["latents"] + g["answer_tokens"]) for g in generations])
    by_index: dict[int, list[bool]] = {}
    for p, g, r in zip(predictions, generations, records):
        faithful = [step_fidelity(s, r["steps"]) for s in g["steps"]]
        p.update(latents=g["latents"], answer_tokens=g["answer_tokens"], latent_steps=g["steps"], faithful_steps=faithful)
        for i, f in enumerate(faithful, start=1):
            by_index.setdefault(i, []).append(f)
    n = len(predictions)
    metrics["latents"] = statistics.fmean(g["latents"] for g in generations) if n else 0.0
    metrics["answer_tokens"] = statistics.fmean(g["answer_tokens"] for g in generations) if n else 0.0
    flat = [f for v in by_index.values() for f in v]
    metrics["fidelity"] = sum(flat) / len(flat) if flat else None
    metrics["fidelity_by_step"] = {str(k): sum(v) / len(v) for k, v in sorted(by_index.items())}
    return predictions, metrics


def pass_at_k(model, tokenizer, records: list[dict], k: int, seed: int, device, temperature: float = 1.0) -> dict[str, float]:
    """Whether sampling gives RL anything to learn from: k samples per question (a latent model: latents drawn
    from its own Gaussian, answers greedy; a language model: its CoT and answer sampled at `temperature`).

    Returns `pass_at_1` (mean accuracy of the samples), `pass_at_<k>` (some sample right), `vote_at_<k>` (the most
    frequent answer right; ties to the first drawn), `uniform_groups` (share of questions whose k samples are all right
    or all wrong: GRPO gets no advantage from those) and `distinct_answers` per question.
    """
    questions = [r["question"] for r in records]
    latent = hasattr(model, "cfg") and hasattr(model.cfg, "spec")
    if latent and not model.cfg.spec.stochastic:
        raise ValueError(f"pass@k needs sampled latents; variant {model.cfg.variant!r} is deterministic")
    answers: list[list[str | None]] = [[] for _ in records]
    for i in range(k):
        if latent:
            texts = [g["text"] for g in latent_generate(model, tokenizer, questions, "sample", seed + i, 250, 16, device)]
        else:
            torch.manual_seed(seed + i)
            texts = [t for t, _ in greedy_generate(model, tokenizer, questions, 96, 250, device, temperature=temperature)]
        for row, text in enumerate(texts):
            answers[row].append(parse_answer(text))
    right = [[a is not None and numbers_equal(a, r["answer"]) for a in row] for row, r in zip(answers, records)]
    votes = majority_vote([list(chain) for chain in zip(*answers)])
    n = max(len(records), 1)
    return {
        "pass_at_1": sum(sum(r) / k for r in right) / n,
        f"pass_at_{k}": sum(any(r) for r in right) / n,
        f"vote_at_{k}": sum(v is not None and numbers_equal(v, rec["answer"]) for v, rec in zip(votes, records)) / n,
        "uniform_groups": sum(all(r) or not any(r) for r in right) / n,
        "distinct_answers": sum(len(set(row)) for row in answers) / n,
    }


def majority_vote(chains: list[list[str | None]]) -> list[str | None]:
    """Per question, the answer most of the chains gave (by value; ties to the earliest chain); None if none parsed.

    >>> majority_vote([["3", "1", None], ["4", "1.0", None], ["4", "2", "5"]])
    ['4', '1', '5']
    """
    from collections import Counter

    from atp.text import canonical_number

    out = []
    for answers in zip(*chains):
        counts = Counter(canonical_number(a) for a in answers if a is not None)
        out.append(counts.most_common(1)[0][0] if counts else None)
    return out

"""Show how a trained model reasons about one question: each latent step decoded to text, latents, answer.

    python -m atp.explain --model results/default/train/atp/seed0/model \
        --question "Ava has 3 boxes with 4 pens in each. How many pens does Ava have?"

For a latent model: every latent step as the step decoder reads it (when the
variant has a decoder), the number of latents spent and the answer, in the `mu`
mode and, for sampled latents, with `--samples` seeds. For a language model: the
generated chain of thought.
"""

from __future__ import annotations

import argparse
import sys


def explain(model_dir: str, question: str, samples: int = 1, max_answer_tokens: int = 16) -> list[dict]:
    """One entry per run (mu, then each sampled seed): latent steps, latents, answer text, parsed answer."""
    import torch

    from atp.evaluate import greedy_generate, latent_generate
    from atp.latent import is_latent, load_latent
    from atp.modeling import load_model
    from atp.text import parse_answer

    device = torch.device("cpu")
    if not is_latent(model_dir):
        model, tokenizer = load_model(model_dir)
        text, tokens = greedy_generate(model, tokenizer, [question], 128, 1, device)[0]
        return [
            {
                "mode": "language",
                "steps": text.splitlines()[:-1],
                "latents": 0,
                "tokens": tokens,
                "answer_text": text.splitlines()[-1] if text else "",
                "answer": parse_answer(text),
            }
        ]
    model, tokenizer = load_latent(model_dir)
    runs = [("mu", 0)] + ([("sample", seed) for seed in range(samples)] if model.cfg.spec.stochastic else [])
    out = []
    for mode, seed in runs:
        g = latent_generate(model, tokenizer, [question], mode, seed, 1, max_answer_tokens, device)[0]
        out.append(
            {
                "mode": mode if mode == "mu" else f"sample seed {seed}",
                "steps": g["steps"],
                "latents": g["latents"],
                "tokens": g["latents"] + g["answer_tokens"],
                "answer_text": g["text"],
                "answer": parse_answer(g["text"]),
            }
        )
    return out


def step_verdict(step: str) -> str:
    """How a decoded step reads as arithmetic: `true`, `false` or `not an equation` (atp.text.parse_equation).

    >>> step_verdict("<<(2+3)*4=20>>"), step_verdict("<<2+3=6>>"), step_verdict("<<2+3")
    ('true', 'false', 'not an equation')
    """
    from atp.text import parse_equation

    equation = parse_equation(step)
    return "not an equation" if equation is None else "true" if equation.holds() else "false"


def main(argv: list[str] | None = None) -> None:
    from atp.runtime import set_offline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a trained model directory (results/<exp>/train/<method>/seed<k>/model)")
    p.add_argument("--question", required=True)
    p.add_argument("--samples", type=int, default=1, help="sampled-latent runs besides the mu run")
    args = p.parse_args(argv)
    set_offline()
    from pathlib import Path

    if not (Path(args.model) / "config.json").exists():
        sys.exit(f"error: {args.model} is not a model directory (no config.json)")
    print(f"Question: {args.question}")
    for run in explain(args.model, args.question, args.samples):
        print(f"\n[{run['mode']}] {run['latents']} latents, {run['tokens']} tokens")
        for i, step in enumerate(run["steps"], start=1):
            print(f"  step {i}: {step}  ({step_verdict(step)})")
        print(f"  answer: {run['answer_text']!r} -> {run['answer']}")


if __name__ == "__main__":
    main()

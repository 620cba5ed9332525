"""Benchmark: the latent loop with the KV cache against full recomputation, at 2, 10 and 20 latents.

    python scripts/bench_latent_loop.py [--threads 2] [--batch 16] [--repeats 5] [--out bench.json]

The backbone has the default config's sizes (config/config.yaml), the prompts are
synthetic problems of the default generator. Times one forward pass of the loop
(prefix, every slot, then a 16-token suffix) with and without the cache, and the
same with the backward pass (training). Prints a table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def once(model, prefix, mask, state, suffix, suffix_mask, cache: bool, backward: bool) -> float:
    """Seconds of one pass of the loop (prefix, slots, suffix), with the KV cache or recomputing the sequence for every slot."""
    import torch

    from atp.latent.reference import recomputed_logits

    started = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if cache:
            logits = model.run_suffix(model.run_prefix_and_slots(prefix, mask, state), suffix, suffix_mask)
        else:
            logits = recomputed_logits(model, prefix, mask, state, suffix, suffix_mask, mode="sample")
        if backward:
            logits.float().logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--latents", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    from atp import modeling
    from atp.config import load
    from atp.data.synthetic import SuiteSpec, generate_split
    from atp.latent import ACTIVE, LatentConfig, LatentReasoner
    from atp.text import cot_target, prompt_text

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load(ROOT / "config" / "config.yaml")  # resolved: the model sizes are the schema's defaults
    problems = generate_split("bench", SuiteSpec(n=400), seed=0, exclude=set())
    tokenizer = modeling.build_tokenizer(
        (prompt_text(r["question"]) + cot_target(r["steps"], r["answer"]) for r in problems), config["model"]["vocab_size"]
    )
    backbone = modeling.build_model({**config["model"], "pretrained": None}, tokenizer)
    prompts = [modeling.prompt_ids(tokenizer, r["question"]) for r in problems[: args.batch]]
    rows = []
    for n in args.latents:
        model = LatentReasoner(backbone, LatentConfig(variant="coconut", c=1, max_steps=n), tokenizer)
        prefix, mask = model.prefix(prompts)
        state = torch.full((args.batch, n), ACTIVE)
        suffix = torch.randint(10, len(tokenizer), (args.batch, 16))
        suffix_mask = torch.ones_like(suffix)

        for backward in (False, True):
            timing = {}
            for cache in (True, False):
                inputs = (model, prefix, mask, state, suffix, suffix_mask)
                once(*inputs, cache, backward)  # warm-up
                timing[cache] = statistics.median(once(*inputs, cache, backward) for _ in range(args.repeats))
            row = {
                "latents": n,
                "pass": "forward+backward" if backward else "forward",
                "cached_s": round(timing[True], 4),
                "recomputed_s": round(timing[False], 4),
                "speedup": round(timing[False] / timing[True], 2),
            }
            rows.append(row)
            print(
                f"{n:3d} latents  {row['pass']:17s} cached {row['cached_s']:.4f}s  recomputed "
                f"{row['recomputed_s']:.4f}s  speedup {row['speedup']:.2f}x",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"threads": args.threads, "batch": args.batch, "model": config["model"], "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()

"""Supervised fine-tuning on language CoT (`cot`), question -> answer (`nocot`), or CoT whose tokens are removed
from the front on a schedule until none is left (`icot`, stepwise internalization: atp/internalize.py).

    python -m atp.stages.sft --config job.yaml --method cot_sft --seed 0 \
        --data-dir results/<exp>/data --out-dir results/<exp>/train/cot_sft/seed0 \
        [--init <model dir>] [--checkpoint-dir <dir>]

Runs unchanged on one process or under torchrun / accelerate launch on N. Writes
<out-dir>/model/ (safetensors, tokenizer, meta.json) and <out-dir>/metrics.json;
resumable checkpoints go to --checkpoint-dir, outside the declared outputs.
"""

from __future__ import annotations

import logging
import time

from atp import cli
from atp.data.records import read_jsonl
from atp.text import answer_text, cot_target

log = logging.getLogger("atp.sft")


def encode_examples(records: list[dict], tokenizer, fmt: str, max_length: int):
    """Tokenized (prompt, target + EOS) sequences with loss on the target only; too long ones are dropped.

    `icot` keeps the CoT and the answer line apart (CoTExample), for the removal schedule to shorten the CoT.
    """
    from atp.batches import IGNORE, Example
    from atp.internalize import CoTExample
    from atp.modeling import prompt_ids

    examples, dropped = [], 0
    for r in records:
        prompt = prompt_ids(tokenizer, r["question"])
        cot = []
        if fmt == "icot":  # the CoT lines alone, then the answer line as No-CoT writes it
            cot = tokenizer.encode("".join(step + "\n" for step in r["steps"]), add_special_tokens=False)
        text = cot_target(r["steps"], r["answer"]) if fmt == "cot" else answer_text(r["answer"])
        target = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(prompt) + len(cot) + len(target) > max_length:
            dropped += 1
            continue
        if fmt == "icot":
            examples.append(CoTExample(len(examples), prompt, cot, target))
        else:
            examples.append(Example(prompt + target, [IGNORE] * len(prompt) + target))
    return examples, dropped


def objective(method: dict, pad_id: int, seed: int):
    """The token loss; for `icot`, on the examples the removal schedule has shortened at each step."""
    from atp.batches import TokenObjective
    from atp.internalize import InternalizeObjective, RemovalSchedule

    if method["format"] != "icot":
        return TokenObjective(pad_id)
    removal = method["removal"]
    return InternalizeObjective(pad_id, RemovalSchedule(removal["every"], removal["smoothing"], seed))


def main(args, config: dict) -> None:
    from atp import modeling
    from atp.stages.common import (
        History,
        drop_checkpoints,
        language_validation,
        setup,
        stage_tracker,
        starting_model,
        write_metrics,
    )
    from atp.train import train

    s = setup(args, config)
    fmt = s.method["format"]
    model = starting_model(args, config, s.tokenizer).to(s.dist.device)
    if s.train_cfg.gradient_checkpointing:
        modeling.enable_gradient_checkpointing(model)
    examples, dropped = encode_examples(read_jsonl(s.data_dir / "train.jsonl"), s.tokenizer, fmt, s.train_cfg.max_length)
    log.info(
        "%s: %d parameters, %d training sequences (%d longer than %d dropped), %d steps of %d",
        args.method,
        modeling.count_parameters(model),
        len(examples),
        dropped,
        s.train_cfg.max_length,
        s.train_cfg.steps,
        s.train_cfg.batch_size,
    )
    started = time.time()
    with stage_tracker(args, config, s, f"sft_{fmt}") as tracker:
        tracker.log_metrics(
            {
                "data/train_sequences": len(examples),
                "data/dropped_too_long": dropped,
                "model/parameters": modeling.count_parameters(model),
            }
        )
        metrics = train(
            model,
            examples,
            s.train_cfg,
            s.dist,
            args.seed,
            s.ckpt_dir,
            objective(s.method, s.tokenizer.pad_token_id, args.seed),
            tracker,
            s.meta,
            history=History(s.out_dir / "history.jsonl", s.dist.is_main, s.ckpt_dir),
        )
        metrics["train/seconds"] = time.time() - started
        if s.dist.is_main:
            if s.train_cfg.val_samples:
                metrics.update(language_validation(model, s.tokenizer, s.data_dir, s.train_cfg.val_samples, s.dist.device))
            modeling.save_model(model, s.tokenizer, s.out_dir / "model", {**s.meta, "step": s.train_cfg.steps})
            write_metrics(metrics, s.out_dir, tracker, s.train_cfg.steps)
    if s.dist.is_main:  # only once the outputs are written and MLflow has them
        drop_checkpoints(s.ckpt_dir)
    log.info("done in %.1fs", time.time() - started)


if __name__ == "__main__":
    p = cli.training_parser("Supervised fine-tuning (language CoT or No-CoT).")
    cli.run(main, p)

"""Supervised fine-tuning on language CoT (`cot`) or question -> answer (`nocot`).

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
from pathlib import Path

from atp import cli
from atp.config import TrainConfig, config_hash, to_dataclass
from atp.data.records import read_jsonl
from atp.runtime import compute_init, seed_everything, write_json
from atp.text import answer_text, cot_target

log = logging.getLogger("atp.sft")


def encode_examples(records: list[dict], tokenizer, fmt: str, max_length: int):
    """Tokenized (prompt, target + EOS) sequences with loss on the target only; too long ones are dropped."""
    from atp.modeling import prompt_ids
    from atp.train import IGNORE, Example

    examples, dropped = [], 0
    for r in records:
        prompt = prompt_ids(tokenizer, r["question"])
        text = cot_target(r["steps"], r["answer"]) if fmt == "cot" else answer_text(r["answer"])
        target = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(prompt) + len(target) > max_length:
            dropped += 1
            continue
        examples.append(Example(prompt + target, [IGNORE] * len(prompt) + target))
    return examples, dropped


def main(args, config: dict) -> None:
    from atp import modeling
    from atp.evaluate import greedy_generate, score
    from atp.tracking import Tracker
    from atp.train import train

    dist = compute_init(args.threads)
    seed_everything(args.seed)
    method = config["methods"][args.method]
    train_cfg = to_dataclass(TrainConfig, config["train"], "train")
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    ckpt_dir = Path(args.checkpoint_dir or out_dir.parent / f".checkpoints_{out_dir.name}")
    tokenizer = modeling.load_tokenizer(data_dir / "tokenizer")
    if args.init:
        model, _ = modeling.load_model(args.init)
    else:
        model = modeling.build_model(config["model"], tokenizer)
    model = modeling.apply_lora(model, config["model"]["lora"]).to(dist.device)
    examples, dropped = encode_examples(read_jsonl(data_dir / "train.jsonl"), tokenizer, method["format"], train_cfg.max_length)
    log.info(
        "%s: %d parameters, %d training sequences (%d longer than %d dropped), %d steps of %d",
        args.method, modeling.count_parameters(model), len(examples), dropped, train_cfg.max_length, train_cfg.steps, train_cfg.batch_size,
    )
    meta = {"method": args.method, "seed": args.seed, "config_hash": config_hash(config), "config": config}
    tags = {"rule": args.rule or "train", "wildcards": args.wildcards, "seed": args.seed, "method": args.method}
    started = time.time()
    with Tracker(config, f"sft_{method['format']}", args.parent, f"train-{args.method}-seed{args.seed}", tags, enabled=dist.is_main and not args.no_tracking) as tracker:
        tracker.log_metrics({"data/train_sequences": len(examples), "data/dropped_too_long": dropped, "model/parameters": modeling.count_parameters(model)})
        metrics = train(model, examples, train_cfg, dist, args.seed, ckpt_dir, tokenizer.pad_token_id, tracker, meta)
        metrics["train/seconds"] = time.time() - started
        if dist.is_main:
            if train_cfg.val_samples:
                val = read_jsonl(data_dir / "val.jsonl")[: train_cfg.val_samples]
                generations = greedy_generate(model, tokenizer, [r["question"] for r in val], 96, 250, dist.device)
                _, val_metrics = score(val, generations)
                metrics.update({"val/accuracy": val_metrics["accuracy"], "val/tokens": val_metrics["tokens"]})
                log.info("val accuracy %.3f on %d problems", val_metrics["accuracy"], len(val))
            modeling.save_model(model, tokenizer, out_dir / "model", {**meta, "step": train_cfg.steps})
            # metrics.json holds only what a rerun reproduces exactly; timings go to MLflow and the benchmark file.
            stable = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items() if not k.endswith(("_per_s", "seconds"))}
            write_json(out_dir / "metrics.json", stable)
            tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith(("val/", "train/seconds"))}, step=train_cfg.steps)
            tracker.log_artifact(out_dir / "metrics.json")
            tracker.log_artifact(out_dir / "model" / "meta.json")
    log.info("done in %.1fs", time.time() - started)


if __name__ == "__main__":
    p = cli.parser("Supervised fine-tuning (language CoT or No-CoT).")
    p.add_argument("--method", required=True, help="method name in the config's `methods`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--init", default=None, help="model directory to start from (default: the base model)")
    p.add_argument("--checkpoint-dir", default=None)
    cli.run(main, p)

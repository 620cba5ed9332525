"""One point of the latent-regime search: train a method from a CoT model, score it on validation.

    python scripts/search/latent_search.py --data-dir results/default/data \
        --init results/default/train/cot_sft/seed0/model --setting '{"variant": "atp", "steps": 1200}' \
        --out search.jsonl

A setting names a latent `variant` (or `nocot` for the No-CoT fine-tuning control,
`cot` for CoT training, `icot` for iCoT with `removal_every` and `removal_smoothing`) and overrides any
`latent.*` or `train.*` key by its bare name (and `model_<key>` for the sizes of a model built from scratch).
Only the validation split is read. Prints and appends one JSON line: the setting, val accuracy (mu and sampled
latents), tokens, fidelity by step, seconds per step. Uses the pipeline's own code, without MLflow or Snakemake,
so that many points can run side by side (for example one per core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# What the searches set differently from the schema's `train` defaults (TrainConfig's own).
TRAIN_DEFAULTS = dict(steps=1200, min_lr_ratio=0.1, log_every=100, checkpoint_every=10**9, keep_checkpoints=1, val_samples=0)


class Quiet:
    def log_metrics(self, metrics, step=None):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument(
        "--init", default=None, help="the model the method starts from (default: a new model sized as config/config.yaml says)"
    )
    p.add_argument("--save", default=None, help="save the trained model here (cot/nocot settings)")
    p.add_argument("--setting", required=True, help="JSON object: variant and overrides")
    p.add_argument("--name", default=None, help="the point's name, copied into its result line")
    p.add_argument("--out", required=True, help="JSON-lines file the result is appended to")
    p.add_argument("--val", type=int, default=500, help="validation problems scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint-dir", default=None)
    args = p.parse_args()

    import torch

    from atp import modeling
    from atp.config import TrainConfig
    from atp.data.records import append_jsonl, read_jsonl
    from atp.evaluate import greedy_generate, latent_validation, score
    from atp.latent import LatentConfig, LatentObjective, LatentReasoner, encode_latent_records
    from atp.runtime import Dist, seed_everything
    from atp.stages.sft import encode_examples, objective
    from atp.train import train

    torch.set_num_threads(args.threads)
    setting = json.loads(args.setting)
    seed_everything(setting.get("seed", args.seed))
    device = torch.device(args.device)
    dist = Dist(rank=0, world_size=1, local_rank=0, device=device)
    data = Path(args.data_dir)
    tokenizer = modeling.load_tokenizer(data / "tokenizer")
    train_keys = {f.name for f in fields(TrainConfig)}
    latent_keys = {f.name for f in fields(LatentConfig)}
    removal_keys = {"removal_every", "removal_smoothing"}
    unknown = {k for k in setting if not k.startswith("model_")} - train_keys - latent_keys - removal_keys - {"variant", "seed"}
    if unknown:
        raise SystemExit(f"unknown setting keys: {sorted(unknown)}")
    seed = setting.get("seed", args.seed)
    train_cfg = TrainConfig(**{**TRAIN_DEFAULTS, **{k: v for k, v in setting.items() if k in train_keys}})
    variant = setting["variant"]
    records = read_jsonl(data / "train.jsonl")
    val = read_jsonl(data / "val.jsonl")[: args.val]
    if args.init:
        backbone = modeling.load_model(args.init)[0]
    else:
        from atp.config import load

        model_cfg = load(Path(__file__).resolve().parents[2] / "config" / "config.yaml")["model"]
        backbone = modeling.build_model(
            {**model_cfg, **{k[6:]: v for k, v in setting.items() if k.startswith("model_")}}, tokenizer
        )
    ckpt = Path(args.checkpoint_dir or f"/tmp/latent_search_{abs(hash(args.setting))}")
    started = time.time()
    result = {"setting": setting, "seed": seed, **({"name": args.name} if args.name else {})}
    if variant in ("cot", "nocot", "icot"):
        model = backbone.to(device)
        examples, _ = encode_examples(records, tokenizer, variant, train_cfg.max_length)
        removal = {"every": setting.get("removal_every"), "smoothing": setting.get("removal_smoothing", 4.0)}
        goal = objective({"format": variant, "removal": removal}, tokenizer.pad_token_id, seed)
        metrics = train(model, examples, train_cfg, dist, seed, ckpt, goal, Quiet(), {})
        seconds = time.time() - started
        _, m = score(val, greedy_generate(model, tokenizer, [r["question"] for r in val], 96, 250, device))
        result.update(val_accuracy=m["accuracy"], val_tokens=m["tokens"], by_steps=m["accuracy_by_steps"])
        if args.save:
            modeling.save_model(model, tokenizer, args.save, {"setting": setting, "seed": seed})
    else:
        cfg = LatentConfig(**{k: v for k, v in setting.items() if k in latent_keys})
        model = LatentReasoner(backbone, cfg, tokenizer).to(device)
        items, _ = encode_latent_records(records, tokenizer, train_cfg.max_length, cfg)
        lengths = [len(r.prompt) + sum(map(len, r.steps)) for r in items]
        metrics = train(
            model,
            items,
            train_cfg,
            dist,
            seed,
            ckpt,
            LatentObjective(cfg, seed, tokenizer.eos_token_id, model.eot_id),
            Quiet(),
            {},
            lengths=lengths,
        )
        seconds = time.time() - started
        for mode, m in latent_validation(model, tokenizer, val, seed, device).items():
            key = "" if mode == "mu" else "_sample"
            result.update(
                {
                    f"val_accuracy{key}": m["accuracy"],
                    f"val_tokens{key}": m["tokens"],
                    f"fidelity{key}": m["fidelity"],
                    f"fidelity_by_step{key}": m["fidelity_by_step"],
                    f"by_steps{key}": m["accuracy_by_steps"],
                }
            )
    result.update(
        train_seconds=round(seconds, 1),
        seconds_per_step=round(seconds / train_cfg.steps, 4),
        final_loss={k: round(v, 4) for k, v in metrics.items() if k.startswith("train/") and isinstance(v, float)},
    )
    print(append_jsonl(args.out, result), flush=True)


if __name__ == "__main__":
    main()

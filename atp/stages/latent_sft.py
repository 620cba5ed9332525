"""CVAE latent supervision (ATP-Latent SFT) and the latent baselines and controls, by variant.

    python -m atp.stages.latent_sft --config job.yaml --method atp --seed 0 \
        --data-dir results/<exp>/data --out-dir results/<exp>/train/atp/seed0 \
        --init results/<exp>/train/cot_sft/seed0/model [--checkpoint-dir <dir>]

Coconut-style curriculum: stage k makes the first k steps latent (`latent.stage_steps`
optimizer steps each), the last stage makes every step latent and pads to c*S
slots. The loss terms (ce, kl, dec, stop) are logged separately. Without --init the
latent stage starts from the base model (the paper's setting). Writes
<out-dir>/model/ (backbone, tokenizer, latent heads, step decoder, latent.json)
and <out-dir>/metrics.json.
"""

from __future__ import annotations

import logging
import time

from atp import cli
from atp.data.records import read_jsonl

log = logging.getLogger("atp.latent_sft")


def main(args, config: dict) -> None:
    from atp import modeling
    from atp.config import to_dataclass
    from atp.latent import LatentConfig, LatentObjective, LatentReasoner, encode_latent_records, save_latent
    from atp.stages.common import (
        History,
        drop_checkpoints,
        setup,
        stage_tracker,
        starting_model,
        validation_metrics,
        write_metrics,
    )
    from atp.train import train

    s = setup(args, config)
    latent_cfg = to_dataclass(LatentConfig, {**config["latent"], "variant": s.method["variant"]}, "latent")
    model = LatentReasoner(starting_model(args, config, s.tokenizer), latent_cfg, s.tokenizer).to(s.dist.device)
    if s.train_cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()  # KV-cache-safe for the latent loop (see LatentReasoner)
    records, dropped = encode_latent_records(
        read_jsonl(s.data_dir / "train.jsonl"), s.tokenizer, s.train_cfg.max_length, latent_cfg
    )
    lengths = [len(r.prompt) + sum(map(len, r.steps)) for r in records]
    log.info(
        "%s (variant %s, c=%d, S=%d, %d steps per curriculum stage): %d parameters, %d training problems (%d "
        "dropped), %d steps of %d",
        args.method,
        latent_cfg.variant,
        latent_cfg.c,
        latent_cfg.max_steps,
        latent_cfg.stage_steps,
        modeling.count_parameters(model),
        len(records),
        dropped,
        s.train_cfg.steps,
        s.train_cfg.batch_size,
    )
    objective = LatentObjective(latent_cfg, args.seed, s.tokenizer.eos_token_id, model.eot_id)
    started = time.time()
    with stage_tracker(args, config, s, "latent_sft") as tracker:
        tracker.log_metrics(
            {"data/train_problems": len(records), "data/dropped": dropped, "model/parameters": modeling.count_parameters(model)}
        )
        metrics = train(
            model,
            records,
            s.train_cfg,
            s.dist,
            args.seed,
            s.ckpt_dir,
            objective,
            tracker,
            s.meta,
            lengths=lengths,
            history=History(s.out_dir / "history.jsonl", s.dist.is_main, s.ckpt_dir),
        )
        metrics["train/seconds"] = time.time() - started
        metrics["train/final_stage_steps"] = max(0, s.train_cfg.steps - (latent_cfg.max_steps - 1) * latent_cfg.stage_steps)
        if s.dist.is_main:
            if s.train_cfg.val_samples:
                metrics.update(
                    validation_metrics(model, s.tokenizer, s.data_dir, s.train_cfg.val_samples, args.seed, s.dist.device)
                )
            save_latent(model, s.tokenizer, s.out_dir / "model", {**s.meta, "step": s.train_cfg.steps})
            write_metrics(metrics, s.out_dir, tracker, s.train_cfg.steps)
    if s.dist.is_main:  # only once the outputs are written and MLflow has them
        drop_checkpoints(s.ckpt_dir)
    log.info("done in %.1fs", time.time() - started)


if __name__ == "__main__":
    cli.run(main, cli.training_parser("Latent SFT (ATP-Latent and its baselines and controls)."))

"""RL with the coherence reward: GRPO over latent trajectories (docs/method.md, section 6), or over written CoT.

    python -m atp.stages.rl --config job.yaml --method atp_rl --seed 0 \
        --data-dir results/<exp>/data --out-dir results/<exp>/train/atp_rl/seed0 \
        --init results/<exp>/train/atp/seed0/model [--checkpoint-dir <dir>]

Each RL step draws `rl.questions` questions (from the RL split, `data.rl`, where data
prep wrote one, else from the training split), samples `rl.group_size`
trajectories for each (latents, stop decisions, answer), scores them with the
rewards of `rl.rewards`, normalises the rewards within each group, and takes
one pass of PPO-clip updates over the rollouts in minibatches of
`rl.minibatch_size`. The backbone, latent head and stop head train (LoRA on the
backbone if `model.lora.enabled`); the step decoder is frozen. Optimiser settings
(`steps` = RL steps, lr, schedule, clipping, checkpoints, bf16 autocast) come from `train`.

Runs unchanged on one process or under torchrun / accelerate launch on N: each
process rolls out `rl.questions / N` whole groups of every step (with its own
generator, from seed, step and rank), the rewards and advantages stay within
groups, and every update of `rl.minibatch_size` trajectories (N x minibatch_size / N)
is normalised over the global minibatch's actions and has its gradients summed
over processes, so it is the update one process would make on those rows. The
metrics are over all processes' rows; process 0 alone writes files, checkpoints
and MLflow. `rl.questions` and `rl.minibatch_size` must be multiples of N.

From a language model (`init` a CoT-SFT method) the same step is token-level GRPO
(atp.rl.tokens): the policy samples its CoT and answer at `rl.temperature`, every
written token is an action, and the coherence reward reads the written steps. It is
the RL machinery's positive control and the CoT + RL baseline.

Writes <out-dir>/model/, <out-dir>/metrics.json, <out-dir>/history.jsonl (one line
per RL step) and <out-dir>/trajectories/step_*.jsonl (sampled trajectories with
their decoded latent steps, also MLflow artifacts).
"""

from __future__ import annotations

import logging
import time

from atp import cli
from atp.data.records import read_jsonl

log = logging.getLogger("atp.rl")


def load_policy(init: str, lora_cfg: dict):
    """The starting policy, LoRA on the backbone if configured: an ATP-Latent model with its step decoder frozen,
    or a language model (CoT-SFT) as a token policy (atp.rl.tokens, the machinery's positive control)."""
    from atp.latent import is_latent, load_latent
    from atp.modeling import apply_lora, load_model
    from atp.rl import TokenPolicy, freeze_decoder

    if not is_latent(init):
        lm, tokenizer = load_model(init)
        return TokenPolicy(apply_lora(lm, lora_cfg), tokenizer.eos_token_id, tokenizer.pad_token_id), tokenizer
    model, tokenizer = load_latent(init)
    model.backbone = apply_lora(model.backbone, lora_cfg)
    return freeze_decoder(model), tokenizer


def rl_prompts(data_dir):
    """The RL questions: data prep's RL split (`data.rl`) where it wrote one, else the training split."""
    from pathlib import Path

    own = Path(data_dir) / "rl.jsonl"
    return own if own.exists() else Path(data_dir) / "train.jsonl"


def sampling_headroom(model, tokenizer, data_dir, samples: int, rl_cfg, seed: int, device) -> dict:
    """`val/pass_at_1`, `val/pass_at_<k>`, `val/vote_at_<k>`, `val/uniform_groups` and `val/distinct_answers` of the
    policy's samples (atp.evaluate.pass_at_k, k = `rl.pass_k`): a frozen control's are its start's, so every RL run
    says whether sampling left it anything to learn from. Written CoT is sampled at `rl.temperature`; latents from
    the head's own Gaussian."""
    from pathlib import Path

    from atp.evaluate import pass_at_k
    from atp.rl import TokenPolicy

    val = read_jsonl(Path(data_dir) / "val.jsonl")[:samples]
    token_policy = isinstance(model, TokenPolicy)
    target = model.lm if token_policy else model
    result = pass_at_k(target, tokenizer, val, rl_cfg.pass_k, seed, device, temperature=rl_cfg.temperature)
    log.info("val sampling, %d per question: %s", rl_cfg.pass_k, ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return {f"val/{k}": v for k, v in result.items()}


def main(args, config: dict) -> None:
    from atp import modeling
    from atp.checkpoints import checkpoint_writer, optimizer_and_resume
    from atp.config import ConfigError
    from atp.latent import save_latent
    from atp.rl import GRPOTask, TokenPolicy, check_world, reference_policy, rl_settings
    from atp.stages.common import (
        History,
        drop_checkpoints,
        language_validation,
        setup,
        stage_tracker,
        validation_metrics,
        write_metrics,
    )
    from atp.train import run_loop

    s = setup(args, config)
    if not args.init:
        raise ConfigError(
            f"config key 'methods.{args.method}.init': the rl stage starts from a trained ATP-Latent or CoT-SFT model"
        )
    rl_cfg, reward_cfg = rl_settings(config)
    check_world(rl_cfg, s.dist.world_size)
    model, tokenizer = load_policy(args.init, config["model"]["lora"])
    model.to(s.dist.device)
    token_policy = isinstance(model, TokenPolicy)
    if s.train_cfg.gradient_checkpointing:  # the replays recompute; rollouts (no gradient) do not
        modeling.enable_gradient_checkpointing(model.lm) if token_policy else model.enable_gradient_checkpointing()
    ref = reference_policy(model) if rl_cfg.kl_coef > 0 else None
    records = read_jsonl(rl_prompts(s.data_dir))
    prompts = [modeling.prompt_ids(tokenizer, r["question"]) for r in records]
    trainable, optimizer, start = optimizer_and_resume(model, s.train_cfg, s.ckpt_dir, s.meta)
    log.info(
        "%s from %s: %d trainable of %d parameters; %d RL steps of %d questions x %d rollouts, minibatches of %d; rewards %s",
        args.method,
        args.init,
        sum(p.numel() for p in trainable),
        modeling.count_parameters(model),
        s.train_cfg.steps,
        rl_cfg.questions,
        rl_cfg.group_size,
        rl_cfg.minibatch_size,
        reward_cfg,
    )
    history = History(s.out_dir / "history.jsonl", s.dist.is_main, s.ckpt_dir)
    started = time.time()
    with stage_tracker(args, config, s, "rl") as tracker:
        task = GRPOTask(
            model,
            optimizer,
            trainable,
            records,
            prompts,
            rl_cfg,
            reward_cfg,
            tokenizer,
            s.train_cfg,
            args.seed,
            s.dist,
            ref,
            tracker,
            s.out_dir / "trajectories",
        )
        strategy = (
            "ddp" if s.dist.world_size > 1 else "single"
        )  # gradients are summed by hand (atp.rl.sync_gradients), never sharded
        save = checkpoint_writer(s.ckpt_dir, model, optimizer, s.meta, s.train_cfg, s.dist, history, strategy)
        final = run_loop(task, optimizer, s.train_cfg, args.seed, s.dist, s.ckpt_dir, start, tracker, history, save)
        final["train/seconds"] = time.time() - started
        if s.dist.is_main:  # every process holds the same weights; one writes
            meta = {**s.meta, "step": s.train_cfg.steps, "init": str(args.init)}
            if s.train_cfg.val_samples and rl_cfg.pass_k:
                samples = s.train_cfg.val_samples
                final.update(sampling_headroom(model, tokenizer, s.data_dir, samples, rl_cfg, args.seed, s.dist.device))
            if token_policy:
                if s.train_cfg.val_samples:
                    final.update(language_validation(model.lm, tokenizer, s.data_dir, s.train_cfg.val_samples, s.dist.device))
                modeling.save_model(model.lm, tokenizer, s.out_dir / "model", meta)
            else:
                if s.train_cfg.val_samples:
                    final.update(
                        validation_metrics(model, tokenizer, s.data_dir, s.train_cfg.val_samples, args.seed, s.dist.device)
                    )
                save_latent(model, tokenizer, s.out_dir / "model", meta)
            write_metrics(final, s.out_dir, tracker, s.train_cfg.steps)
            tracker.log_artifact(s.out_dir / "history.jsonl")
    if s.dist.is_main:  # only once the outputs are written and MLflow has them
        drop_checkpoints(s.ckpt_dir)
    log.info("done in %.1fs", time.time() - started)


if __name__ == "__main__":
    cli.run(main, cli.training_parser("RL with the coherence reward (GRPO over latent trajectories)."))

"""Device check for the paper setting: throughput, peak memory and MFU of the three stages' inner loops.

    python scripts/gpu_check.py [--out check.json] [--peak-tflops 989]   # one GPU, Llama-3.2-1B shapes, bf16 autocast
    python scripts/gpu_check.py --tiny [--out check.json]                # CPU, a tiny model, in seconds

No hub and no data: the backbone is a randomly initialised LlamaForCausalLM with the shapes of
Llama-3.2-1B (scripts/llama-3.2-1b-config.json: 16 layers, hidden 2048, 32 heads with 8 KV heads, MLP
8192, vocabulary 128256, llama3 rope scaling, tied embeddings), batches are random token ids of
GSM8K-Aug-like lengths, and a small tokenizer built from synthetic problems supplies the special tokens
(its ids decode; ids past its vocabulary decode to nothing). What is measured is the project's own code
at the sizes of config/paper.yaml:

  sft     CoT-SFT optimizer steps through atp.train.train (AdamW, effective batch 32 in micro-batches
          of 16, gradient clipping), on prompt + CoT sequences;
  latent  the latent loop of atp.latent.LatentReasoner (variant atp, c=2, S=10: 20 latent slots) via
          run_prefix_and_slots on a batch (forward, as in evaluation and rollouts), and latent-SFT
          optimizer steps at the last curriculum stage (all 20 slots, step decoder, KL, stop head); the
          step decoder is config/paper.yaml's, a copy of the backbone (--decoder small: the 4 x 1024 one);
  rl      GRPO steps of atp.rl.grpo_step with RLConfig(questions=16, group_size=8,
          minibatch_size=16): 128 rollouts, decoding of every latent step, 8 PPO minibatch updates.

For each part it prints and writes (--out, JSON) tokens/s, seconds per step, peak memory
(torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on the CPU) and the model FLOPs
utilisation: FLOPs per token (6N for a training step, 2N for a forward pass, N the backbone's
parameters) x tokens/s over --peak-tflops (989: H100/H200 dense bf16; A100: 312). On the CPU the MFU is
n/a. `paper_hours` multiplies the time per step by the step budgets of config/paper.yaml (the latent
step is the last curriculum stage, the dearest, so that estimate is an upper bound).

--precision: autocast (default on a GPU: fp32 weights and AdamW state, bf16 autocast: what
train.bf16 does in every stage, RL included), fp32 (what the CPU miniature runs), bf16 (weights cast to
bf16: the memory floor, not what the pipeline does). The latent-SFT MFU counts the step decoder's FLOPs
too (a copy of the backbone reading each latent step's target). No part writes a checkpoint. Each part's
result goes to --out as soon as it is measured; a part that fails (out of memory, say) is recorded under
"errors" and the next one still runs; with --budget no part starts after that many seconds. At the
default sizes each part holds fp32 weights, gradients and AdamW state of 1.2-2.5B parameters (20-40 GB;
the latent part with the copied decoder 2.5B) plus activations; `--parts` runs a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

PAPER_STEPS = {"sft": 72300, "latent": 301250, "rl": 1000}  # config/paper.yaml's budgets
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 1024,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-05,
}
# Sizes: (the paper's, --tiny's).
SIZES = {
    "batch": (32, 4),  # effective batch of an SFT / latent-SFT optimizer step (train.batch_size)
    "micro_batch": (16, 2),  # train.micro_batch_size (config/paper.yaml)
    "prompt_len": (110, 24),  # mean question length in tokens (GSM8K questions in Llama-3 tokens)
    "cot_len": (45, 12),  # mean CoT + answer length in tokens
    "sft_steps": (5, 2),
    "latent_steps": (3, 1),
    "latent_batch": (128, 4),  # batch of the forward-only latent loop (the 128 rollouts of an RL step)
    "rl_questions": (16, 2),
    "rl_group": (8, 2),
    "rl_minibatch": (16, 2),
    "rl_steps": (2, 1),
    "decoder": (
        {"hidden_size": 1024, "num_layers": 4, "num_heads": 16, "intermediate_size": 4096},
        {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny model and batches (runs on a CPU in seconds)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the device's peak dense bf16 TFLOP/s (989: H100/H200 SXM; 312: A100)"
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available, else cpu)")
    p.add_argument(
        "--precision", choices=["autocast", "fp32", "bf16"], default=None, help="default: autocast on a GPU, fp32 on a CPU"
    )
    p.add_argument(
        "--config",
        default=str(ROOT / "scripts" / "llama-3.2-1b-config.json"),
        help="the backbone's HF config (ignored with --tiny)",
    )
    p.add_argument("--parts", nargs="+", choices=["sft", "latent", "rl"], default=["sft", "latent", "rl"])
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds: no part starts after this much time (the parts not run are listed as skipped)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each timed part")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: up to 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--decoder",
        choices=["copy", "small"],
        default="copy",
        help="step decoder: a copy of the backbone (config/paper.yaml) or the small one of SIZES",
    )
    for name, (full, tiny) in SIZES.items():
        if name != "decoder":
            p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {full} ({tiny} with --tiny)")
    args = p.parse_args(argv)
    for name, (full, tiny) in SIZES.items():
        if name != "decoder" and getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    return args


# ---------------------------------------------------------------- measuring


class Meter:
    """Peak memory of one part: CUDA's allocator peak, or the process's RSS high-water mark on a CPU."""

    def __init__(self, device):
        self.device = device

    def reset(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_mb(self) -> tuple[float, str]:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_memory_allocated"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def result(
    tokens_per_step: float,
    seconds: list[float],
    n_params: int,
    flops_factor: int,
    meter: Meter,
    peak_tflops: float | None,
    extra: dict,
    flops_per_step: float | None = None,
) -> dict:
    """tokens/s, s/step, peak memory and MFU of `len(seconds)` timed steps. The model FLOPs of a step are
    flops_factor x n_params per token, or `flops_per_step` where a step runs more than one model (the
    latent-SFT step's step decoder)."""
    step_s = statistics.fmean(seconds)
    tokens_per_s = tokens_per_step / step_s
    peak, kind = meter.peak_mb()
    flops = flops_per_step if flops_per_step is not None else flops_factor * n_params * tokens_per_step
    mfu = None if peak_tflops is None else flops / step_s / (peak_tflops * 1e12)
    return {
        "tokens_per_s": round(tokens_per_s, 2),
        "seconds_per_step": round(step_s, 5),
        "tokens_per_step": round(tokens_per_step, 1),
        "steps_timed": len(seconds),
        "peak_memory_mb": round(peak, 1),
        "memory_kind": kind,
        "flops_per_token": f"{flops_factor}N",
        "mfu": None if mfu is None else round(mfu, 4),
        **extra,
    }


# ---------------------------------------------------------------- set-up


class StandInTokenizer:
    """A small built tokenizer's special tokens and text with the backbone's vocabulary size.

    `len()` is the backbone's vocabulary (so the step decoder gets its real size); ids past the small
    tokenizer's vocabulary decode to nothing.
    """

    def __init__(self, small, vocab_size: int):
        self.small, self.vocab_size = small, vocab_size
        self.eos_token_id, self.pad_token_id, self.bos_token_id = small.eos_token_id, small.pad_token_id, None

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, tokens):
        return self.small.convert_tokens_to_ids(tokens)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        known = len(self.small)
        return self.small.decode([int(i) for i in ids if int(i) < known], skip_special_tokens=skip_special_tokens)


def build_tokenizer():
    from atp import modeling
    from atp.data.synthetic import SuiteSpec, generate_split
    from atp.text import cot_target, prompt_text

    problems = generate_split("gpu_check", SuiteSpec(n=64), seed=0, exclude=set())
    return modeling.build_tokenizer((prompt_text(r["question"]) + cot_target(r["steps"], r["answer"]) for r in problems), 300)


def backbone_config(args):
    from transformers import LlamaConfig

    raw = dict(TINY_CONFIG) if args.tiny else json.loads(Path(args.config).read_text(encoding="utf-8"))
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "model_type", "torch_dtype")}
    return LlamaConfig(**raw)


def new_backbone(config, device, precision: str):
    import torch
    from transformers import LlamaForCausalLM

    with torch.device(device):  # initialise on the device (a CPU init of 1.2B parameters takes minutes)
        model = LlamaForCausalLM(config)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    return model


def autocast(device, precision: str):
    import torch

    if precision == "autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NoTracker:
    def log_metrics(self, metrics, step=None):
        pass


def lengths(rng: random.Random, mean: int, n: int) -> list[int]:
    """GSM8K-like spread: uniform in [0.75, 1.25] x mean."""
    return [max(2, round(mean * rng.uniform(0.75, 1.25))) for _ in range(n)]


def random_ids(rng: random.Random, low: int, high: int, n: int) -> list[int]:
    return [rng.randrange(low, high) for _ in range(n)]


def timed_train(model, items, cfg, dist, objective, meter, warmup: int, lengths_=None) -> list[float]:
    """Run atp.train.train for warmup + timed steps, writing no checkpoint; the seconds of each timed step
    (device-synchronised)."""
    from atp.train import train

    stamps: list[float] = []

    def on_log(step, metrics):
        meter.sync()
        stamps.append(time.perf_counter())

    meter.sync()
    stamps.append(time.perf_counter())
    # ckpt_dir None: no checkpoint read or written (at the paper's shapes one is about 15 GB).
    train(model, items, cfg, dist, 0, None, objective, NoTracker(), {}, lengths=lengths_, on_log=on_log)
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]


def train_config(args, steps: int):
    from atp.config import TrainConfig

    return TrainConfig(  # the schema's defaults but for the shapes, a constant lr and a log line every step
        steps=steps,
        batch_size=args.batch,
        micro_batch_size=args.micro_batch,
        warmup_ratio=0.0,
        min_lr_ratio=1.0,
        max_length=4096,
        log_every=1,
        val_samples=0,
        bf16=args.precision == "autocast",
    )


# ---------------------------------------------------------------- the parts


def part_sft(args, config, tok, dist, meter, peak) -> dict:
    """CoT-SFT steps: prompt (no loss) + CoT and answer (loss), AdamW, accumulation, clipping."""
    from atp.batches import IGNORE, Example, TokenObjective
    from atp.modeling import count_parameters

    rng = random.Random(args.seed)
    steps = args.warmup + args.sft_steps
    n = args.batch * steps
    items = []
    for p_len, c_len in zip(lengths(rng, args.prompt_len, n), lengths(rng, args.cot_len, n)):
        ids = random_ids(rng, len(tok.small), config.vocab_size, p_len + c_len - 1) + [tok.eos_token_id]
        items.append(Example(input_ids=ids, labels=[IGNORE] * p_len + ids[p_len:]))
    meter.reset()
    model = new_backbone(config, dist.device, args.precision)
    seconds = timed_train(model, items, train_config(args, steps), dist, TokenObjective(tok.pad_token_id), meter, args.warmup)
    tokens = sum(len(e.input_ids) for e in items) / steps
    out = result(tokens, seconds, count_parameters(model), 6, meter, peak, {"batch": args.batch, "micro_batch": args.micro_batch})
    del model
    return out


def latent_records(args, config, tok, n: int, rng: random.Random):
    """Random problems in the latent stage's layout: prompt, 2-6 steps of ~12 tokens, answer."""
    from atp.latent import LatentRecord

    low = len(tok.small)
    records = []
    for i, p_len in enumerate(lengths(rng, args.prompt_len, n)):
        steps = [
            random_ids(rng, low, config.vocab_size, max(3, round(12 * rng.uniform(0.6, 1.4)))) for _ in range(rng.randint(2, 6))
        ]
        answer = random_ids(rng, low, config.vocab_size, 4)
        records.append(
            LatentRecord(
                index=i,
                prompt=random_ids(rng, low, config.vocab_size, p_len),
                steps=[s + [low - 1] for s in steps],
                step_texts=steps,
                answer=answer + [tok.eos_token_id],
                answer_text=answer,
            )
        )
    return records


def decoder_settings(args) -> dict:
    """`latent.decoder` of the check: the small decoder's sizes, with copy_backbone as --decoder says."""
    return {**SIZES["decoder"][1 if args.tiny else 0], "copy_backbone": args.decoder == "copy"}


def new_reasoner(args, config, tok, dist, cfg):
    """A LatentReasoner around a new backbone, on the device, cast to bf16 when --precision bf16."""
    import torch

    from atp.latent import LatentReasoner

    backbone = new_backbone(config, dist.device, args.precision)
    with torch.device(dist.device):
        model = LatentReasoner(backbone, cfg, tok)
    return model.to(torch.bfloat16) if args.precision == "bf16" else model


def part_latent(args, config, tok, dist, meter, peak) -> tuple[dict, object]:
    """The latent loop (forward, a batch) and latent-SFT steps at the last curriculum stage."""
    import torch

    from atp.latent import ACTIVE, LatentConfig, LatentObjective
    from atp.modeling import count_parameters

    rng = random.Random(args.seed + 1)
    decoder = decoder_settings(args)
    # stage_steps=0: every optimizer step at the last curriculum stage (all steps latent, 20 slots), the dearest.
    cfg = LatentConfig(
        variant="atp", c=2, max_steps=10, beta=1e-3, decoder_weight=1.0, rescale="none", decoder=decoder, stage_steps=0
    )
    meter.reset()
    model = new_reasoner(args, config, tok, dist, cfg)
    n_backbone = count_parameters(model.backbone)

    # 1. The loop alone, forward, as evaluation and rollouts run it.
    prompts = [r.prompt for r in latent_records(args, config, tok, args.latent_batch, rng)]
    prefix, prefix_mask = model.prefix(prompts)
    prefix, prefix_mask = prefix.to(dist.device), prefix_mask.to(dist.device)
    state = torch.full((len(prompts), cfg.slots), ACTIVE, dtype=torch.long, device=dist.device)
    model.eval()
    seconds = []
    with torch.no_grad():
        for i in range(args.warmup + args.latent_steps):
            meter.sync()
            start = time.perf_counter()
            with autocast(dist.device, args.precision):
                run = model.run_prefix_and_slots(prefix, prefix_mask, state, mode="sample")
            meter.sync()
            if i >= args.warmup:
                seconds.append(time.perf_counter() - start)
            del run
    loop_tokens = float(prefix_mask.sum()) + len(prompts) * cfg.slots
    out = result(loop_tokens, seconds, n_backbone, 2, meter, peak, {"batch": len(prompts), "slots": cfg.slots, "pass": "forward"})

    # 2. Latent-SFT optimizer steps (the atp objective: CE + KL + step decoder + stop head).
    meter.reset()
    steps = args.warmup + args.latent_steps
    records = latent_records(args, config, tok, args.batch * steps, rng)
    objective = LatentObjective(cfg, args.seed, tok.eos_token_id, model.eot_id)
    seconds = timed_train(
        model, records, train_config(args, steps), dist, objective, meter, args.warmup, lengths_=[len(r.prompt) for r in records]
    )
    per_row = [len(r.prompt) + 1 + cfg.slots + 1 + len(r.answer) for r in records]  # prompt, <bot>, slots, <eot>, answer
    # The step decoder reads, for each of the S latent steps, its c latents and its target (the step's tokens and
    # EOS; EOS alone for a surplus step): with config/paper.yaml's decoder, a second 1.24B model in the step.
    decoder_rows = [sum(cfg.c + len(s) + 1 for s in r.steps) + (cfg.max_steps - len(r.steps)) * (cfg.c + 1) for r in records]
    n_decoder = count_parameters(model.decoder)
    backbone_tokens, decoder_tokens = statistics.fmean(per_row) * args.batch, statistics.fmean(decoder_rows) * args.batch
    flops = 6 * (n_backbone * backbone_tokens + n_decoder * decoder_tokens)
    train_out = result(backbone_tokens, seconds, n_backbone, 6, meter, peak, {}, flops_per_step=flops)
    out["sft_step"] = {k: v for k, v in train_out.items()}
    out["sft_step"].update(
        {
            "batch": args.batch,
            "micro_batch": args.micro_batch,
            "stage": "last (all steps latent, 20 slots)",
            "decoder_tokens_per_step": round(decoder_tokens, 1),
            "flops_per_token": "6N backbone + 6N' decoder over the decoder's own tokens",
        }
    )
    out["parameters"] = {"backbone": n_backbone, "total": count_parameters(model), "decoder": count_parameters(model.decoder)}
    return out, model


def part_rl(args, config, tok, dist, meter, peak, model=None) -> dict:
    """GRPO steps through atp.rl.grpo_step (rollouts, rewards, 8 PPO minibatch updates)."""
    import torch

    from atp.latent import LatentConfig
    from atp.modeling import count_parameters
    from atp.rewards import RewardConfig
    from atp.rl import RLConfig, freeze_decoder, grpo_step

    rng = random.Random(args.seed + 2)
    meter.reset()
    if model is None:
        decoder = decoder_settings(args)
        model = new_reasoner(
            args, config, tok, dist, LatentConfig(variant="atp", c=2, max_steps=10, rescale="none", decoder=decoder)
        )
    model = freeze_decoder(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.01, betas=(0.9, 0.95))
    rl_cfg = RLConfig(
        questions=args.rl_questions,
        group_size=args.rl_group,
        minibatch_size=args.rl_minibatch,
        temperature=1.0,
        max_answer_tokens=16,
    )
    reward_cfg = RewardConfig(coherence_rule="substring")
    generator = torch.Generator(device=dist.device).manual_seed(args.seed)
    seconds, tokens, metrics = [], [], {}
    for i in range(args.warmup + args.rl_steps):
        questions = [
            random_ids(rng, len(tok.small), config.vocab_size, n) for n in lengths(rng, args.prompt_len, rl_cfg.questions)
        ]
        prompts = [q for q in questions for _ in range(rl_cfg.group_size)]
        answers = [str(rng.randint(1, 500)) for q in questions for _ in range(rl_cfg.group_size)]
        meter.sync()
        start = time.perf_counter()
        # grpo_step opens its own autocast (the RL stage's train.bf16), so the precision goes in as its flag.
        metrics, _ = grpo_step(
            model,
            optimizer,
            trainable,
            prompts,
            answers,
            rl_cfg,
            reward_cfg,
            tok,
            generator,
            grad_clip=1.0,
            bf16=args.precision == "autocast",
        )
        meter.sync()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
            # Trajectory tokens: prompt + <bot>, the latents used, <eot> + the sampled answer.
            tokens.append(
                sum(len(p) + 1 for p in prompts) + len(prompts) * (metrics["rl/latents"] + 1 + metrics["rl/answer_tokens"])
            )
    # FLOPs: rollout forward (2N) + replay forward and backward (6N) over the same tokens.
    out = result(
        statistics.fmean(tokens),
        seconds,
        count_parameters(model.backbone),
        8,
        meter,
        peak,
        {
            "questions": rl_cfg.questions,
            "group_size": rl_cfg.group_size,
            "rollouts": rl_cfg.rollouts,
            "minibatch_size": rl_cfg.minibatch_size,
            "updates_per_step": rl_cfg.updates_per_step,
            "latents_per_trajectory": round(metrics["rl/latents"], 3),
            "answer_tokens_per_trajectory": round(metrics["rl/answer_tokens"], 3),
            "trainable_parameters": sum(p.numel() for p in trainable),
        },
    )
    out["flops_per_token"] = "8N (rollout forward 2N + replay forward/backward 6N)"
    return out


# ---------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)

    import torch

    from atp.runtime import Dist

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    args.precision = args.precision or ("autocast" if device.type == "cuda" else "fp32")
    torch.manual_seed(args.seed)
    peak = args.peak_tflops if device.type == "cuda" else None
    meter = Meter(device)
    dist = Dist(rank=0, world_size=1, local_rank=0, device=device)
    config = backbone_config(args)
    tok = StandInTokenizer(build_tokenizer(), config.vocab_size)
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "precision": args.precision,
        "tiny": args.tiny,
        "decoder": args.decoder,
        "peak_tflops": peak,
        "backbone": {
            k: getattr(config, k)
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
            )
        },
        "parts": {},
    }
    started = time.perf_counter()

    def write() -> None:  # after every part, so that a later part's failure or a timeout keeps what was measured
        report["seconds"] = round(time.perf_counter() - started, 1)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    model = None
    for name in ("sft", "latent", "rl"):
        if name not in args.parts:
            continue
        if args.budget is not None and time.perf_counter() - started > args.budget:
            report.setdefault("skipped", []).append(name)
            continue
        try:
            if name == "sft":
                part = part_sft(args, config, tok, dist, meter, peak)
            elif name == "latent":
                part, model = part_latent(args, config, tok, dist, meter, peak)
            else:
                part = part_rl(args, config, tok, dist, meter, peak, model)
        except Exception as error:  # an out-of-memory error, say: recorded, and the next part still runs
            report.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"[:2000]
            print(f"{name}: {report['errors'][name]}", file=sys.stderr)
            model = None
            meter.reset()
            write()
            continue
        step = part["sft_step"] if name == "latent" else part
        part["paper_hours"] = None if args.tiny else round(step["seconds_per_step"] * PAPER_STEPS[name] / 3600, 1)
        report["parts"][name] = part
        write()
    del model
    write()

    print(f"{report['device']}, {args.precision}{' (tiny)' if args.tiny else ''}, backbone {report['backbone']}")
    print(f"{'part':<18}{'tokens/s':>12}{'s/step':>10}{'peak MB':>11}{'MFU':>8}")
    rows = []
    for name, part in report["parts"].items():
        rows.append(("latent loop (fwd)" if name == "latent" else name, part))
        if name == "latent":
            rows.append(("latent sft step", part["sft_step"]))
    for label, part in rows:
        mfu = "n/a" if part["mfu"] is None else f"{100 * part['mfu']:.1f}%"
        print(f"{label:<18}{part['tokens_per_s']:>12.1f}{part['seconds_per_step']:>10.3f}{part['peak_memory_mb']:>11.0f}{mfu:>8}")
    if report.get("errors"):
        raise SystemExit(f"parts that failed: {', '.join(report['errors'])} (the JSON names the errors)")
    if any(not math.isfinite(p["tokens_per_s"]) for p in report["parts"].values()):
        raise SystemExit("non-finite throughput")
    return report


if __name__ == "__main__":
    main()

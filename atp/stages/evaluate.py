"""Evaluate one trained model on every suite: decoding, answer parsing, accuracy, tokens.

    python -m atp.stages.evaluate --config job.yaml --method cot_sft --seed 0 \
        --model results/<exp>/train/cot_sft/seed0/model --data-dir results/<exp>/data \
        --suites test hard easy varied --out-dir results/<exp>/eval/cot_sft/seed0

Language models are decoded greedily. Latent models run the latent loop in the
deterministic `mu` mode and, for variants with sampled latents, `eval.samples` times
with sampled latents (seeds 0..R-1): accuracy is the mean over the sampled runs,
with its standard deviation; #tokens = latents + answer tokens (the paper's count).
`eval.bf16` decodes under bf16 autocast (weights stay fp32).
Writes <out-dir>/<suite>/predictions.jsonl and <out-dir>/<suite>/metrics.json.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path

from atp import cli
from atp.config import EvalConfig, to_dataclass
from atp.data.records import read_jsonl, write_jsonl
from atp.runtime import compute_init, read_json, seed_everything, write_json
from atp.text import numbers_equal

log = logging.getLogger("atp.evaluate")


def evaluate_language(model, tokenizer, records: list[dict], eval_cfg: EvalConfig, device) -> tuple[list[dict], dict]:
    from atp.evaluate import greedy_generate, score

    generations = greedy_generate(
        model, tokenizer, [r["question"] for r in records], eval_cfg.max_new_tokens, eval_cfg.batch_size, device, progress=True
    )
    return score(records, generations)


def evaluate_latent(model, tokenizer, records: list[dict], eval_cfg: EvalConfig, device) -> tuple[list[dict], dict]:
    """mu mode, then R sampled runs for stochastic variants; predictions from the first run that counts."""
    from atp.evaluate import latent_generate, score_latent

    questions = [r["question"] for r in records]

    def run(mode: str, seed: int):
        return score_latent(
            records,
            latent_generate(
                model, tokenizer, questions, mode, seed, eval_cfg.batch_size, eval_cfg.max_answer_tokens, device, progress=True
            ),
        )

    mu_predictions, mu_metrics = run("mu", 0)
    if not model.cfg.spec.stochastic:
        return mu_predictions, {**mu_metrics, "accuracy_mu": mu_metrics["accuracy"], "accuracy_std": 0.0, "samples": 0}
    chains = [run("sample", seed) for seed in range(max(eval_cfg.samples, eval_cfg.vote))]
    runs = chains[: eval_cfg.samples]
    predictions, metrics = runs[0]
    for p, q in zip(predictions, mu_predictions):
        p["correct_mu"] = q["correct"]
    accuracies = [m["accuracy"] for _, m in runs]
    for key in ("accuracy", "tokens", "latents", "answer_tokens", "format_rate"):
        metrics[key] = statistics.fmean(m[key] for _, m in runs)
    metrics["accuracy_std"] = statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0
    metrics["accuracy_runs"] = accuracies
    metrics["accuracy_mu"] = mu_metrics["accuracy"]
    metrics["tokens_mu"] = mu_metrics["tokens"]
    metrics["samples"] = len(runs)
    if eval_cfg.vote:
        from atp.evaluate import majority_vote

        voted = majority_vote([[p["prediction"] for p in chain] for chain, _ in chains[: eval_cfg.vote]])
        for p, answer, record in zip(predictions, voted, records):
            p["vote"] = answer
            p["correct_vote"] = answer is not None and numbers_equal(answer, record["answer"])
        metrics["accuracy_vote"] = sum(p["correct_vote"] for p in predictions) / max(len(predictions), 1)
        metrics["tokens_vote"] = eval_cfg.vote * statistics.fmean(m["tokens"] for _, m in chains[: eval_cfg.vote])
        metrics["vote"] = eval_cfg.vote
    return predictions, metrics


def main(args, config: dict) -> None:
    import torch

    from atp.latent import is_latent, load_latent
    from atp.modeling import load_model
    from atp.tracking import Tracker

    eval_cfg = to_dataclass(EvalConfig, config["eval"], "eval")
    dist = compute_init(args.threads)
    seed_everything(args.seed)
    latent = is_latent(args.model)
    model, tokenizer = load_latent(args.model) if latent else load_model(args.model)
    if latent and model.cfg.spec.compress and "latent" in config:  # CoLaR: the compression this row asks for
        model.cfg = dataclasses.replace(model.cfg, compression=config["latent"]["compression"])
    model.to(dist.device)
    evaluate = evaluate_latent if latent else evaluate_language
    trained_by = read_json(Path(args.model) / "meta.json").get("config_hash")  # the training job's config, for the table
    out_dir = Path(args.out_dir)
    tags = {"rule": args.rule or "evaluate", "wildcards": args.wildcards, "seed": args.seed, "method": args.method}
    with Tracker(
        config, "evaluate", args.parent, f"eval-{args.method}-seed{args.seed}", tags, enabled=not args.no_tracking
    ) as tracker:
        for suite in args.suites:
            records = read_jsonl(Path(args.data_dir) / f"{suite}.jsonl", check_steps=False)
            if eval_cfg.limit is not None:
                records = records[: eval_cfg.limit]
            started = time.time()
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=eval_cfg.bf16):
                predictions, metrics = evaluate(model, tokenizer, records, eval_cfg, dist.device)
            seconds = time.time() - started
            write_jsonl(out_dir / suite / "predictions.jsonl", predictions)
            write_json(
                out_dir / suite / "metrics.json",
                {"method": args.method, "seed": args.seed, "suite": suite, "model_config_hash": trained_by, **metrics},
            )
            log.info(
                "%s on %s: accuracy %.4f, %.1f tokens, %.1fs", args.method, suite, metrics["accuracy"], metrics["tokens"], seconds
            )
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}
            for key in ("fidelity_by_step", "accuracy_by_steps"):
                scalars.update({f"{key}/{k}": v for k, v in metrics.get(key, {}).items()})
            tracker.log_metrics({f"eval/{suite}/{k}": v for k, v in {**scalars, "seconds": seconds}.items()})
            tracker.log_artifact(out_dir / suite / "predictions.jsonl", f"predictions/{suite}")


if __name__ == "__main__":
    p = cli.parser("Evaluate a model on the test suites.")
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--suites", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    cli.run(main, p)

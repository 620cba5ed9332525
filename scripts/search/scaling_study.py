"""The scaling study: each latent method's margin over the better control against latent-stage compute.

    # 1. the grid (one CoT-SFT model per width, then every method x budget x seed from it):
    python scripts/search/scaling_study.py grid --data D4 --widths 64 96 --budgets 1 2 4 --seeds 0 1 \
        > docs/experiments/scaling-grid.jsonl
    python scripts/search/run_grid.py --grid docs/experiments/scaling-grid.jsonl --root /tmp/grid \
        --out docs/experiments/scaling-results.jsonl
    # 2. the table and the plot (validation accuracy only):
    python scripts/search/scaling_study.py plot --results docs/experiments/scaling-results.jsonl --out docs/scaling

A budget of k is k x 1200 optimizer steps of 16 and 300 steps per curriculum stage before the last (the
default latent stage until commit dec1cdb; config/config.yaml's default is now 4x); the controls (pause, No-CoT
fine-tuning) get the same number of steps from the same CoT model, so a margin compares equal training.
The plot's x axis is latent-stage optimizer steps, one line per method and width; a line that crosses 0
is where latent reasoning starts to beat its controls. Accuracy is the sampled-latent one where a method
samples (ATP-Latent), else greedy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METHODS = ("icot", "coconut", "codi", "simcot", "atp")
# iCoT's removal schedule at a budget: config/config.yaml's (a token every 60 of its 5100 steps), scaled to the steps.
ICOT_EVERY_PER_STEP = 60 / 5100
CONTROLS = ("pause", "nocot")
BASE_STEPS, BASE_STAGE_STEPS = 1200, 300
ROOT = Path(__file__).resolve().parents[2]
# Sizes of a width's model: the default's proportions (4 layers, MLP 4x, heads of 24 or 32 dims).
SIZES = {64: (4, 2, 256), 96: (4, 4, 384), 128: (4, 4, 512), 192: (4, 8, 768)}


def default_width() -> int:
    """config/config.yaml's model width (over the schema's defaults): drawn solid and filled, other widths dotted
    and hollow. Read from the config, so the plot follows the default when it moves."""
    sys.path.insert(0, str(ROOT))
    from atp import config

    return config.load(ROOT / "config" / "config.yaml")["model"]["hidden_size"]


def model_setting(width: int) -> dict:
    layers, heads, mlp = SIZES[width]
    return {"model_hidden_size": width, "model_num_layers": layers, "model_num_heads": heads, "model_intermediate_size": mlp}


def grid(args) -> None:
    tag = f"_{args.tag}" if args.tag else ""
    print("# The scaling study (scripts/search/scaling_study.py grid); names: <data>-w<width>-x<budget>-<method>-s<seed>.")
    for width in args.widths:
        cot = f"{args.data}/cot_w{width}"
        if not args.reuse_cot:
            print(
                json.dumps(
                    {
                        "name": f"{args.data}-w{width}-cot",
                        "data": args.data,
                        "init": None,
                        "save": cot,
                        "setting": {"variant": "cot", "steps": 3200, "min_lr_ratio": 0.0, **model_setting(width)},
                    }
                )
            )
        for budget in args.budgets:
            for seed in args.seeds:
                for method in args.methods:
                    setting = {"variant": method, "steps": BASE_STEPS * budget, "seed": seed}
                    if method == "icot":
                        setting["removal_every"] = max(1, round(ICOT_EVERY_PER_STEP * BASE_STEPS * budget))
                    elif method != "nocot":
                        setting.update(rescale="embedding_norm", stage_steps=BASE_STAGE_STEPS * budget, **args.latent)
                    if method == "codi":  # no curriculum
                        setting["stage_steps"] = 0
                    print(
                        json.dumps(
                            {
                                "name": f"{args.data}-w{width}-x{budget}-{method}{tag}-s{seed}",
                                "data": args.data,
                                "init": cot,
                                "save": None,
                                "setting": setting,
                            }
                        )
                    )


def parse(name: str) -> dict | None:
    parts = name.split("-")
    if len(parts) != 5 or not parts[1].startswith("w") or not parts[2].startswith("x"):
        return None
    return {"width": int(parts[1][1:]), "budget": int(parts[2][1:]), "method": parts[3], "seed": int(parts[4][1:])}


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(line) for f in args.results for line in Path(f).read_text().splitlines() if line.strip()]
    acc: dict[tuple, float] = {}
    for r in results:
        key = parse(r["name"]) if r.get("name") else None
        if key and "val_accuracy" in r:
            acc[(key["width"], key["budget"], key["method"], key["seed"])] = 100 * r.get("val_accuracy_sample", r["val_accuracy"])
    margins: dict[tuple, list[float]] = defaultdict(list)
    rows = []
    for (width, budget, method, seed), value in sorted(acc.items()):
        controls = [acc.get((width, budget, c, seed)) for c in CONTROLS]
        if method in CONTROLS or None in controls:
            continue
        margin = value - max(controls)
        margins[(width, method, budget)].append(margin)
        rows.append((width, budget, seed, method, value, *controls, margin))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| width | budget | seed | method | val acc | pause | No-CoT FT | margin over the better control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {w} | {b}x | {s} | {m} | {v:.1f} | {p:.1f} | {n:.1f} | {g:+.1f} |" for w, b, s, m, v, p, n, g in rows]
    lines += ["", "| width | method | budget | margin (mean +- std over seeds) |", "|---|---|---|---|"]
    for (width, method, budget), values in sorted(margins.items()):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {width} | {method} | {budget}x | {statistics.fmean(values):+.1f} +- {std:.1f} (n={len(values)}) |")
    (out / "scaling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    solid = default_width()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    markers = {"icot": "^", "coconut": "o", "codi": "v", "simcot": "s", "atp": "D"}
    colors = {"icot": "tab:purple", "coconut": "tab:blue", "codi": "tab:red", "simcot": "tab:orange", "atp": "tab:green"}
    for width in sorted({k[0] for k in margins}):
        for method in (*METHODS, *args.variants):
            points = sorted((b, v) for (w, m, b), v in margins.items() if w == width and m == method)
            if not points:
                continue
            base, variant = method.split("_")[0], method in args.variants
            x = [b * BASE_STEPS for b, _ in points]
            y = [statistics.fmean(v) for _, v in points]
            err = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
            ax.errorbar(
                x,
                y,
                yerr=err,
                fmt=markers[base] + ("--" if variant else "-" if width == solid else ":"),
                color=colors[base],
                markerfacecolor=colors[base] if width == solid else "white",
                capsize=3,
                label=f"{method}, width {width}",
                alpha=1.0 if variant else 0.6,
            )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    budgets = sorted({k[2] for k in margins})
    ax.set_xticks([b * BASE_STEPS for b in budgets], [f"{b * BASE_STEPS} ({b}x)" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("latent-stage optimizer steps (batch 16); the controls get as many")
    ax.set_ylabel("val accuracy minus the better control (points)")
    ax.set_title("Where does latent reasoning beat its controls? (validation, mean +- std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "scaling.png")
    print((out / "scaling.md").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid")
    g.add_argument("--data", required=True, help="data folder under run_grid's --root")
    g.add_argument("--widths", type=int, nargs="+", default=[96])
    g.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4])
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    g.add_argument(
        "--latent",
        type=json.loads,
        default={},
        help="JSON: latent settings for every method but No-CoT FT, e.g. the default config's "
        '\'{"head": "residual", "decoder_weight": 0.1}\' (absent: the paper\'s head and decoder weight, as the first grids ran)',
    )
    g.add_argument("--methods", nargs="+", default=list(CONTROLS + METHODS), choices=CONTROLS + METHODS)
    g.add_argument("--tag", default="", help="suffix of the method names, naming a --latent setting (e.g. residual_dec01)")
    g.add_argument("--reuse-cot", action="store_true", help="the CoT-SFT models exist already: no line to train them")
    q = sub.add_parser("plot")
    q.add_argument("--results", required=True, nargs="+", help="result files (run_grid's --out), read together")
    q.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="tagged methods to draw besides the base methods (e.g. atp_residual_dec01), dashed, in their base method's marker",
    )
    q.add_argument("--out", required=True)
    args = p.parse_args()
    (grid if args.command == "grid" else plot)(args)


if __name__ == "__main__":
    sys.exit(main())

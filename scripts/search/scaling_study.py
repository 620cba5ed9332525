"""The scaling study: each latent method's margin over the better control against latent-stage compute.

    # 1. the grid (one CoT-SFT model per width, then every method x budget x seed from it):
    python scripts/search/scaling_study.py grid --data D4 --widths 64 96 --budgets 1 2 4 --seeds 0 1 \
        > docs/experiments/scaling-grid.jsonl
    python scripts/search/run_grid.py --grid docs/experiments/scaling-grid.jsonl --root /tmp/grid \
        --out docs/experiments/scaling-results.jsonl
    # 2. the table and the plot (validation accuracy only):
    python scripts/search/scaling_study.py plot --results docs/experiments/scaling-results.jsonl --out docs/scaling

    # The config series: config/config.yaml's own methods and settings (any method that starts from CoT-SFT) at a
    # fraction of the config's budget, each point the method's pipeline stage (scripts/search/stage_point.py) from one
    # CoT-SFT model; the config's full budget is a Snakemake run of it, read by `collect`:
    python scripts/search/scaling_study.py grid --from-config config/config.yaml --data D --init D/cot \
        --budgets 1 2 --seeds 0 1 --methods icot codi colar pause nocot_ft > grid.jsonl
    python scripts/search/scaling_study.py collect --run results/default --methods icot codi colar pause nocot_ft \
        > full-budget.jsonl

A budget of k is k x 1200 optimizer steps of 16 and 300 steps per curriculum stage before the last (the
default latent stage until commit dec1cdb; config/config.yaml's default is now 4x); the controls (pause, No-CoT
fine-tuning) get the same number of steps from the same CoT model, so a margin compares equal training.
The plot's x axis is latent-stage optimizer steps, one line per method and width; a line that crosses 0
is where latent reasoning starts to beat its controls. Margins are taken within a series (the name's first part:
its data and starting model), so series with different CoT models can share a results file and a plot.
Accuracy is the sampled-latent one where a method samples (ATP-Latent, CoLaR), else greedy. In the config series the
controls get the config's own control budget at the same fraction (5100 steps at config/config.yaml's 4x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METHODS = ("icot", "coconut", "codi", "simcot", "atp")
# Drawn with a marker of their own; the config series can also hold CoLaR.
STYLE = {
    "icot": ("^", "tab:purple"),
    "coconut": ("o", "tab:blue"),
    "codi": ("v", "tab:red"),
    "colar": ("P", "tab:brown"),
    "simcot": ("s", "tab:orange"),
    "atp": ("D", "tab:green"),
}
# iCoT's removal schedule at a budget: config/config.yaml's (a token every 60 of its 5100 steps), scaled to the steps.
ICOT_EVERY_PER_STEP = 60 / 5100
CONTROLS = ("pause", "nocot")
# The pipeline's name of the No-CoT control (the config series' points are named by pipeline method).
CONTROL_ALIASES = {"nocot_ft": "nocot"}
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


def config_budget(cfg: dict) -> float:
    """A config's latent-stage budget in units of BASE_STEPS: its curriculum stage length over the 1x one (1200 / 300
    = 4 for config/config.yaml), so that every method's steps scale with the budget the config gives them."""
    return cfg["latent"]["stage_steps"] / BASE_STAGE_STEPS


def config_points(args) -> None:
    """One stage_point line per method x budget x seed: the method's config settings with its optimizer steps, its
    curriculum stage length (where it has a curriculum) and iCoT's removal pace scaled by budget / config budget."""
    sys.path.insert(0, str(ROOT))
    from atp import config
    from atp.variants import VARIANTS

    cfg = config.load(args.from_config)
    full = config_budget(cfg)
    width = cfg["model"]["hidden_size"]
    print(f"# The config series of {args.from_config} (scaling_study.py grid --from-config); its full budget: {full:g}x.")
    for budget in args.budgets:
        for seed in args.seeds:
            for method in args.methods:
                spec = cfg["methods"].get(method)
                if spec is None or spec.get("init") != "cot_sft":
                    raise SystemExit(f"{args.from_config}: methods.{method} is no method that starts from cot_sft")
                scale = budget / full
                overrides: dict = {"train": {"steps": round(spec["train"]["steps"] * scale)}}
                latent = config.merge(cfg["latent"], spec.get("latent", {}))
                variant = VARIANTS.get(spec.get("variant", ""))
                if spec["stage"] == "latent_sft" and latent["stage_steps"] > 0 and not variant.compress:
                    overrides["latent"] = {"stage_steps": round(latent["stage_steps"] * scale)}
                if spec.get("removal", {}).get("every"):
                    overrides["removal"] = {"every": max(1, round(spec["removal"]["every"] * scale))}
                point = {"data": args.data, "init": args.init, "method": method, "seed": seed, "overrides": overrides}
                point["config"] = args.from_config
                print(json.dumps({"name": f"{args.data}-w{width}-x{budget:g}-{method}-s{seed}", **point}))


def collect(args) -> None:
    """The config's full-budget points from a Snakemake run of it: each trained method's validation metrics, named
    as the config series names them (the run's data folder for the data part)."""
    sys.path.insert(0, str(ROOT))
    from atp import config

    run = Path(args.run)
    cfg = config.load(*(args.config or [ROOT / "config" / "config.yaml"]))
    name = args.data or run.name
    width, full = cfg["model"]["hidden_size"], config_budget(cfg)
    for method in args.methods:
        for metrics in sorted((run / "train" / method).glob("seed*/metrics.json")):
            seed = int(metrics.parent.name[4:])
            values = {k: v for k, v in json.loads(metrics.read_text()).items() if k.startswith("val/")}
            if values:
                line = {"name": f"{name}-w{width}-x{full:g}-{method}-s{seed}", "method": method, "seed": seed}
                print(json.dumps({**line, **values, "from": str(metrics)}))


def grid(args) -> None:
    if args.from_config:
        return config_points(args)
    unknown = sorted(set(args.methods) - set(CONTROLS + METHODS))
    if unknown:
        raise SystemExit(f"--methods: {', '.join(unknown)} not in the search grid's {', '.join(CONTROLS + METHODS)}")
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
    data, width, budget, method, seed = parts
    method = CONTROL_ALIASES.get(method, method)
    return {"data": data, "width": int(width[1:]), "budget": float(budget[1:]), "method": method, "seed": int(seed[1:])}


def accuracy(result: dict) -> float | None:
    """Validation accuracy in points: the sampled-latent one where a method samples, else greedy (latent_search's
    keys or the pipeline's `val/` metrics)."""
    for key in ("val_accuracy_sample", "val_accuracy", "val/accuracy_sample", "val/accuracy"):
        if key in result:
            return 100 * result[key]
    return None


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(line) for f in args.results for line in Path(f).read_text().splitlines() if line.strip()]
    acc: dict[tuple, float] = {}
    for r in results:
        key = parse(r["name"]) if r.get("name") else None
        if key and accuracy(r) is not None:
            acc[(key["data"], key["width"], key["budget"], key["method"], key["seed"])] = accuracy(r)
    several = len({k[0] for k in acc}) > 1

    def label(data: str, method: str) -> str:
        return f"{method} ({data})" if several else method

    margins: dict[tuple, list[float]] = defaultdict(list)
    rows = []
    for (data, width, budget, method, seed), value in sorted(acc.items()):
        controls = [acc.get((data, width, budget, c, seed)) for c in CONTROLS]
        if method in CONTROLS or None in controls:
            continue
        margin = value - max(controls)
        margins[(data, width, method, budget)].append(margin)
        rows.append((width, budget, seed, label(data, method), value, *controls, margin))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| width | budget | seed | method | val acc | pause | No-CoT FT | margin over the better control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {w} | {b:g}x | {s} | {m} | {v:.1f} | {p:.1f} | {n:.1f} | {g:+.1f} |" for w, b, s, m, v, p, n, g in rows]
    lines += ["", "| width | method | budget | margin (mean +- std over seeds) |", "|---|---|---|---|"]
    for (data, width, method, budget), values in sorted(margins.items()):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"| {width} | {label(data, method)} | {budget:g}x | {statistics.fmean(values):+.1f} +- {std:.1f} (n={len(values)}) |"
        )
    (out / "scaling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    solid = default_width()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for data, width in sorted({k[:2] for k in margins}):
        for method in (*STYLE, *args.variants):
            points = sorted((b, v) for (d, w, m, b), v in margins.items() if (d, w, m) == (data, width, method))
            if not points:
                continue
            base, variant = method.split("_")[0], method in args.variants
            marker, color = STYLE[base]
            x = [b * BASE_STEPS for b, _ in points]
            y = [statistics.fmean(v) for _, v in points]
            err = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
            ax.errorbar(
                x,
                y,
                yerr=err,
                fmt=marker + ("--" if variant else "-" if width == solid else ":"),
                color=color,
                markerfacecolor=color if width == solid else "white",
                capsize=3,
                label=f"{label(data, method)}, width {width}",
                alpha=1.0 if variant else 0.6,
            )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    budgets = sorted({k[3] for k in margins})
    ax.set_xticks([b * BASE_STEPS for b in budgets], [f"{b * BASE_STEPS:g} ({b:g}x)" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("latent-stage optimizer steps (batch 16); the controls get at least as many")
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
    g.add_argument(
        "--methods",
        nargs="+",
        default=list(CONTROLS + METHODS),
        help=f"of {', '.join(CONTROLS + METHODS)}; with --from-config, the config's method names (e.g. nocot_ft, colar)",
    )
    g.add_argument(
        "--from-config",
        default=None,
        help="the config series: the config's own methods and settings at each budget, run by stage_point.py",
    )
    g.add_argument("--init", default=None, help="with --from-config: the CoT-SFT model folder under run_grid's --root")
    g.add_argument("--tag", default="", help="suffix of the method names, naming a --latent setting (e.g. residual_dec01)")
    g.add_argument("--reuse-cot", action="store_true", help="the CoT-SFT models exist already: no line to train them")
    c = sub.add_parser("collect", help="a Snakemake run's trained methods as the config series' full-budget points")
    c.add_argument("--run", required=True, help="the run's results folder, e.g. results/default")
    c.add_argument("--methods", nargs="+", required=True)
    c.add_argument("--config", nargs="*", help="the run's config files (default: config/config.yaml)")
    c.add_argument("--data", default=None, help="the series' name (default: the run folder's name)")
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
    {"grid": grid, "collect": collect, "plot": plot}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

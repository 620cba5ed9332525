"""The comparison report's figures and the model registry entry of the best RL policy.

    python -m atp.stages.report --config job.yaml --table results/<exp>/table.csv \
        --rl-runs results/<exp>/train/atp_rl/seed0 ... --out-dir results/<exp>/report

Writes accuracy_vs_tokens.png (average accuracy against average #tokens, one point
per method, the paper's efficiency picture), rl_curves.png (total reward,
coherence reward, rollout accuracy and the gradient diagnostics' two-half cosine per
RL step, for each RL run, with the frozen-policy controls dashed), rl_vs_frozen.md (each RL run's rollout accuracy and
total reward over its last quarter against the frozen control of its seed, step by
step, with a standard error) and registry.json. The RL policy with the best *validation* accuracy (never a test
suite) is registered in the MLflow model registry under
`<mlflow experiment>-<experiment>-rl-policy` with the alias `best`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from atp import cli
from atp.runtime import read_json, write_json

log = logging.getLogger("atp.report")
CURVES = [
    ("rewards/total/mean", "total reward"),
    ("rewards/coherence/mean", "coherence reward"),
    ("rl/accuracy", "rollout accuracy"),
    ("rl/grad_cosine/all", "gradient cosine, two halves (0: noise)"),
]
ALIAS = "best"


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (the curves are noisy: each step sees a few questions)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_accuracy_vs_tokens(frame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    markers = "osD^v<>pPhX*"
    for i, (_, row) in enumerate(frame.iterrows()):  # a legend, not annotations: latent methods sit close together
        ax.errorbar(
            row["avg_tokens"],
            row["avg_acc"],
            yerr=row["avg_acc_std"],
            fmt=markers[i % len(markers)],
            capsize=3,
            label=row["label"],
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("average #tokens per question (log scale)")
    ax.set_ylabel("average accuracy over the suites (%)")
    ax.set_title("Accuracy against tokens spent")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_rl_curves(
    runs: dict[tuple[str, int], list[dict]],
    out: Path,
    window: int = 10,
    controls: dict[tuple[str, int], list[dict]] | None = None,
    starts: dict[tuple[str, int], str] | None = None,
) -> None:
    """Reward, coherence, rollout accuracy and the gradient cosine per RL step: one row per RL method, its seeds in
    colours, each seed's frozen-policy control (the one `against_frozen` reads it against) dashed in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    controls = controls or {}
    methods = list(dict.fromkeys(method for method, _ in runs)) or ["no RL methods in this run"]
    control_of = dict(paired_controls(runs, controls, starts))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(methods), len(CURVES), figsize=(17, 2.6 * len(methods) + 0.6), dpi=80, squeeze=False)
    for row, method in zip(axes, methods):
        mine = sorted((key for key in runs if key[0] == method), key=lambda key: key[1])
        for ax, (curve, title) in zip(row, CURVES):
            for key in mine:
                color = colors[key[1] % len(colors)]
                lines = [(runs[key], "-", f"seed {key[1]}")]
                if key in control_of:
                    lines.append((controls[control_of[key]], "--", f"seed {key[1]}, frozen twin"))
                for rows, style, label in lines:
                    steps = [r["step"] for r in rows if curve in r]
                    values = [r[curve] for r in rows if curve in r]
                    if steps:
                        ax.plot(steps, values, color=color, alpha=0.15, linewidth=0.7, linestyle=style)
                        ax.plot(steps, moving_average(values, window), color=color, linestyle=style, label=label)
            ax.set_title(f"{method}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
        if not mine:
            row[0].text(0.5, 0.5, method, ha="center", transform=row[0].transAxes)
    for ax in axes[-1]:
        ax.set_xlabel("RL step")
    if runs:
        axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"RL runs (solid) and their frozen twins (dashed): faint per step, bold the mean of the last {window} steps",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title
    fig.savefig(out)
    plt.close(fig)


def started_from(run_dir: Path) -> str | None:
    """The model folder an RL run started from (its model's meta.json), None when it is not recorded."""
    meta = run_dir / "model" / "meta.json"
    return read_json(meta).get("init") if meta.exists() else None


def run_label(method: str, seed: int) -> str:
    return f"{method} (seed {seed})"


def paired_controls(
    runs: dict[tuple[str, int], list[dict]],
    controls: dict[tuple[str, int], list[dict]],
    starts: dict[tuple[str, int], str] | None = None,
) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """(run, control) keys: each run with the frozen control of its seed and, where `starts` names them, its start."""
    starts = starts or {}
    return [
        (run, control) for run in runs for control in controls if control[1] == run[1] and starts.get(run) == starts.get(control)
    ]


def against_frozen(
    runs: dict[tuple[str, int], list[dict]],
    controls: dict[tuple[str, int], list[dict]],
    key: str = "rewards/total/mean",
    share: float = 0.25,
    starts: dict[tuple[str, int], str] | None = None,
) -> list[dict]:
    """Each RL run's `key` against its frozen-policy control over the last `share` of its steps.

    Runs and controls are keyed by (method, seed); a run is paired with the control of its seed, which drew
    the same questions at every step, and, where `starts` names the model each started from, of its start
    (RL from CoT-SFT is read against the frozen CoT-SFT policy, RL from ATP-Latent against the frozen ATP-Latent
    one). The difference is taken step by step (the question mix cancels) and its standard error is the
    per-step differences' standard deviation over sqrt(steps).
    """
    import math
    import statistics

    out = []
    for (method, seed), (control_method, control_seed) in paired_controls(runs, controls, starts):
        rows, control = runs[method, seed], controls[control_method, control_seed]
        mine, theirs = ({r["step"]: r[key] for r in h if key in r} for h in (rows, control))
        steps = sorted(set(mine) & set(theirs))
        last = steps[min(int(len(steps) * (1 - share)), len(steps) - 2) :]  # at least two steps for a standard error
        if len(last) < 2:
            continue
        diffs = [mine[t] - theirs[t] for t in last]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        out.append(
            {
                "run": run_label(method, seed),
                "control": run_label(control_method, control_seed),
                "steps": f"{last[0]}-{last[-1]}",
                "run_reward": statistics.fmean(mine[t] for t in last),
                "control_reward": statistics.fmean(theirs[t] for t in last),
                "difference": statistics.fmean(diffs),
                "standard_error": se,
                "z": statistics.fmean(diffs) / se if se > 0 else 0.0,
            }
        )
    return out


# What the RL runs are read against the frozen policy on: rollout accuracy means the same for every run; a total
# reward only for runs with the control's reward weights (an ablation's total leaves terms out by construction).
FROZEN_KEYS = [("rl/accuracy", "rollout accuracy"), ("rewards/total/mean", "total reward")]


def against_frozen_markdown(rows_by_key: dict[str, list[dict]]) -> str:
    lines = [
        "# RL runs against the frozen policy (last quarter of the RL steps)",
        "",
        "Each run is paired with the frozen-policy control of its seed, which rolled out the same questions at every",
        "step without updating; the difference is taken step by step. Beyond 2 standard errors: RL moved it. The",
        "total reward compares only runs with the control's reward weights: an ablation's total leaves terms out.",
    ]
    for key, title in FROZEN_KEYS:
        rows = rows_by_key.get(key, [])
        lines += [
            "",
            f"## {title} (`{key}`)",
            "",
            "| run | control | steps | run | frozen | difference | standard error | difference / SE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['run']} | {r['control']} | {r['steps']} | {r['run_reward']:.4f} | {r['control_reward']:.4f} | "
                f"{r['difference']:+.4f} "
                f"| {r['standard_error']:.4f} | {r['z']:+.2f} |"
            )
        if not rows:
            lines.append("| (no RL run with a frozen control of its seed) | | | | | | | |")
    return "\n".join(lines) + "\n"


# Whether RL can act, per run: the sampling headroom of its policy on validation at the end (a frozen control's is its
# start's) and how much its rollout groups differ, averaged over its steps.
HEADROOM_KEYS = [
    ("val/accuracy", "val greedy / mu"),
    ("val/pass_at_1", "pass@1"),
    ("val/pass_at_k", "pass@k"),
    ("val/vote_at_k", "vote@k"),
    ("val/uniform_groups", "val groups all right or all wrong"),
    ("rl/zero_advantage_groups", "rollout groups with one reward"),
    ("rl/informative_groups", "updated groups with differing rewards"),
    ("rl/distinct_chains", "distinct chains / group"),
    ("rl/distinct_valid_chains", "distinct valid chains / group"),
    ("rl/distinct_answers", "distinct answers / group"),
    ("rl/noise_over_mu", "latent noise / mu"),
]


def headroom_row(label: str, metrics: dict, history: list[dict]) -> dict:
    """One run's HEADROOM_KEYS: validation ones from its metrics.json (pass@k and vote@k whatever k), rollout ones
    averaged over its history; absent where the run did not measure them."""
    import re
    import statistics

    row = {"run": label}
    for name, value in metrics.items():  # pass@k and vote@k with the k the run used (pass@1 is its own key)
        match = re.fullmatch(r"val/(pass|vote)_at_(\d+)", name)
        if match and name != "val/pass_at_1":
            row[f"val/{match[1]}_at_k"], row["k"] = value, match[2]
    for key, _ in HEADROOM_KEYS:
        if key in metrics:
            row[key] = metrics[key]
        elif not key.startswith("val/"):
            values = [h[key] for h in history if key in h]
            if values:
                row[key] = statistics.fmean(values)
    return row


def headroom_markdown(rows: list[dict]) -> str:
    """The table of headroom_row's, a column per key that some run has."""
    keys = [(k, title) for k, title in HEADROOM_KEYS if any(k in r for r in rows)]
    if not rows or not keys:
        return ""
    k = next((r["k"] for r in rows if "k" in r), "k")
    header = ["run"] + [title.replace("@k", f"@{k}") for _, title in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["run"]]
        for key, _ in keys:
            value = r.get(key)
            scale = 100 if key.startswith("val/") or key.endswith("_groups") else 1
            cells.append("-" if value is None else f"{scale * value:.1f}" if scale == 100 else f"{value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "\n# Can RL act? Sampling headroom and group diversity\n\n"
        "Validation at the end of each run (a frozen control's policy is its start's): greedy (mu latents) accuracy, "
        "then k samples per question: pass@1, pass@k, the majority vote and the share of questions whose k samples "
        "are all right or all wrong (GRPO learns nothing from those), in %. Then the run's rollouts, averaged over its "
        "steps: the share of groups whose rewards are all equal, the share of the groups an update used whose rewards "
        "differ (dynamic sampling, rl.oversample, raises it), and per group the distinct chains (decoded latent "
        "steps, or written steps), valid chains (every step true and an intermediate result of the gold CoT: the "
        "equivalent orders) and answers; the latent noise's norm over mu's.\n\n" + "\n".join(lines) + "\n"
    )


def best_rl_run(run_dirs: list[Path]) -> tuple[Path, dict] | None:
    """The RL run with the highest validation accuracy (mu latents); ties go to the first listed."""
    scored = []
    for d in run_dirs:
        metrics = read_json(d / "metrics.json")
        if "val/accuracy" in metrics:
            scored.append((metrics["val/accuracy"], -len(scored), d, metrics))
    if not scored:
        return None
    _, _, d, metrics = max(scored, key=lambda t: (t[0], t[1]))
    return d, metrics


def register(tracker, config: dict, run_dir: Path, metrics: dict) -> dict:
    """Log the policy folder as artifacts of the report run and register it with the alias `best`."""
    name = f"{config['mlflow']['experiment_name']}-{config['experiment']}-rl-policy"
    method, seed = run_dir.parent.name, run_dir.name.removeprefix("seed")
    entry = {
        "registered": False,
        "model_name": name,
        "alias": ALIAS,
        "method": method,
        "seed": int(seed),
        "val_accuracy": metrics["val/accuracy"],
        "path": str(run_dir / "model"),
    }
    if not tracker.enabled:
        return entry
    client, run_id = tracker.client, tracker.run_id
    tracker.log_artifacts(run_dir / "model", "policy")

    def create_registered_model():
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(
                name, description="ATP-Latent RL policies; alias `best` = highest validation accuracy of the latest run."
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # registered by an earlier run: fine
                raise

    tracker.call(create_registered_model, "register model")
    run = tracker.call(lambda: client.get_run(run_id), "read run")
    source = f"{run.info.artifact_uri}/policy" if run else ""
    tags = {"method": method, "seed": seed, "val_accuracy": str(metrics["val/accuracy"])}
    version = tracker.call(
        lambda: client.create_model_version(name, source=source, run_id=run_id, tags=tags), "create model version"
    )
    if version is None:  # tracking switched itself off (mlflow.required: false)
        return entry
    tracker.call(lambda: client.set_registered_model_alias(name, ALIAS, version.version), "set alias")
    log.info(
        "registered %s (val accuracy %.3f) as %s version %s, alias %s",
        method,
        metrics["val/accuracy"],
        name,
        version.version,
        ALIAS,
    )
    return {**entry, "registered": True, "version": int(version.version), "source": source}


def main(args, config: dict) -> None:
    import pandas as pd

    from atp.latent import is_latent
    from atp.tracking import Tracker

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(args.table)
    plot_accuracy_vs_tokens(frame, out_dir / "accuracy_vs_tokens.png")
    run_dirs = [Path(d) for d in args.rl_runs]
    key_of = lambda d: (d.parent.name, int(d.name.removeprefix("seed")))  # noqa: E731 - train/<method>/seed<k>
    histories = {key_of(d): read_history(d / "history.jsonl") for d in run_dirs}
    controls = {key_of(d): read_history(d / "history.jsonl") for d in map(Path, args.frozen_runs)}
    starts = {key_of(d): started_from(d) for d in [*run_dirs, *map(Path, args.frozen_runs)]}
    plot_rl_curves(histories, out_dir / "rl_curves.png", controls=controls, starts=starts)
    paired = {key: against_frozen(histories, controls, key, starts=starts) for key, _ in FROZEN_KEYS}
    frozen_dirs = [Path(d) for d in args.frozen_runs]
    headroom = [
        headroom_row(run_label(*key_of(d)), read_json(d / "metrics.json"), read_history(d / "history.jsonl"))
        for d in [*frozen_dirs, *run_dirs]
        if (d / "metrics.json").exists()
    ]
    (out_dir / "rl_vs_frozen.md").write_text(against_frozen_markdown(paired) + headroom_markdown(headroom), encoding="utf-8")
    with Tracker(
        config, "report", args.parent, "report", {"rule": args.rule or "report"}, enabled=not args.no_tracking
    ) as tracker:
        best = best_rl_run([d for d in run_dirs if is_latent(d / "model")])  # the registry holds latent policies
        entry = (
            register(tracker, config, *best) if best else {"registered": False, "reason": "no RL run with a validation accuracy"}
        )
        write_json(out_dir / "registry.json", {k: v for k, v in entry.items() if k not in ("version", "source")})
        for name in ("accuracy_vs_tokens.png", "rl_curves.png", "rl_vs_frozen.md"):
            tracker.log_artifact(out_dir / name)
    log.info(
        "wrote %s",
        ", ".join(str(out_dir / f) for f in ("accuracy_vs_tokens.png", "rl_curves.png", "rl_vs_frozen.md", "registry.json")),
    )


if __name__ == "__main__":
    p = cli.parser("Figures of the comparison report and the registry entry of the best RL policy.")
    p.add_argument("--table", required=True, help="table.csv written by atp.stages.table")
    p.add_argument("--rl-runs", nargs="*", default=[], help="folders of the RL runs (train/<method>/seed<k>)")
    p.add_argument("--frozen-runs", nargs="*", default=[], help="folders of the frozen-policy controls (rl.frozen)")
    p.add_argument("--out-dir", required=True)
    cli.run(main, p)

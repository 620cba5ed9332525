# Config validation, wildcard constraints and the helpers that rules call.
import functools
import json
import os
import sys

import atp.config
from atp.runtime import OFFLINE_ENV, source_digest

# Validated and completed by the same code as a stage run by hand (atp.config.resolve, against
# workflow/schemas/config.schema.yaml), so a method's overrides are checked key by key, nested keys included.
try:
    config.update(atp.config.resolve(config))
    atp.config.check_pipeline(config)
except atp.config.ConfigError as error:
    raise WorkflowError(f"Invalid config: {error}")

# No hub look-ups from jobs unless the user asked for them (a failed look-up hangs ~50 s).
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


# Jobs call `python -m atp.stages...`: make that the interpreter running Snakemake (the project's environment).
envvars:
    "PATH",


_search_path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
os.environ.update(PATH=_search_path)
# Where multi-GPU training jobs find their accelerate configs (workflow/accelerate/<resources.accelerate>.yaml),
# as an environment variable rather than a path in the command: moving the checkout must not rerun jobs,
# and a job on a SLURM node re-reads this file, so it sees the variable too. A user's own value wins.
os.environ.setdefault("ATP_ACCELERATE_CONFIGS", os.path.join(workflow.basedir, "accelerate"))
EXP = config["experiment"]
ALL_METHODS = list(config["methods"])
# Methods the pipeline trains; a disabled method is still trained when an enabled one starts from it.
METHODS = [name for name, spec in config["methods"].items() if spec.get("enabled", True)]
# The table's rows: every method but the frozen-policy controls of RL (their model is their start's).
TABLE_METHODS = [name for name in METHODS if not atp.config.is_frozen_control(config, name)]
SUITES = list(config["data"]["suites"])


wildcard_constraints:
    exp=EXP,
    method="|".join(ALL_METHODS),
    seed=r"\d+",
    job=r"[a-z0-9_]+",


def all_targets():
    """The results table (which pulls in every model and evaluation) and the report's figures."""
    figures = [f"results/{EXP}/report/{name}" for name in ("accuracy_vs_tokens.png", "rl_curves.png", "registry.json")]
    return [f"results/{EXP}/table.md", f"results/{EXP}/table.csv"] + figures


def method_seeds(method):
    """The seeds a method is trained with: its own `seeds`, else the top-level ones."""
    return [str(seed) for seed in atp.config.method_seeds(config, method)]


def runs(exp, methods, suffix=""):
    """results/<exp>/train/<method>/seed<k><suffix> for every method and each of its seeds."""
    return [f"results/{exp}/train/{m}/seed{seed}{suffix}" for m in methods for seed in method_seeds(m)]


def rl_runs(wildcards):
    """The run folders of every enabled RL method and seed that trains (curves, metrics and models go into the report)."""
    return runs(wildcards.exp, [m for m in TABLE_METHODS if config["methods"][m]["stage"] == "rl"])


def frozen_runs(wildcards):
    """The run folders of the frozen-policy controls (rl.frozen), which the report reads the RL curves against."""
    return runs(wildcards.exp, [m for m in METHODS if atp.config.is_frozen_control(config, m)])


def rl_run_files(wildcards):
    """What the report reads of the RL runs: history, metrics and the model of each."""
    runs = [f"{run}/{name}" for run in rl_runs(wildcards) for name in ("history.jsonl", "metrics.json", "model")]
    frozen = [f"{run}/{name}" for run in frozen_runs(wildcards) for name in ("history.jsonl", "metrics.json", "model")]
    return runs + frozen


def job_config_json(wildcards):
    """The part of the config a job reads, as JSON (a rule parameter, so a change reruns that job only)."""
    return json.dumps(atp.config.job_config(config, wildcards.job), sort_keys=True)


def stage_module(wildcards):
    """The stage CLI that trains a method (atp.stages.<stage>)."""
    return config["methods"][wildcards.method]["stage"]


@functools.cache
def code_version(stage):
    """A hash of the code a stage runs (atp.stages.<stage> and every atp module it imports): a rule parameter,
    so that editing a stage's code reruns its jobs and what follows, and nothing that does not import it."""
    return source_digest(f"atp.stages.{stage}")


def train_code_version(wildcards):
    return code_version(stage_module(wildcards))


def init_model(wildcards):
    """The model a method starts from: another method's model (same seed, or the init's first seed when it was
    not trained with this one), or none (the base model)."""
    init = config["methods"][wildcards.method].get("init")
    if init is None:
        return []
    seeds = method_seeds(init)
    seed = wildcards.seed if wildcards.seed in seeds else seeds[0]
    return f"results/{wildcards.exp}/train/{init}/seed{seed}/model"


def eval_model(wildcards):
    """The model an evaluation reads: the method's own, or (`evaluates`) the model another method trained."""
    owner = config["methods"][wildcards.method].get("evaluates") or wildcards.method
    return f"results/{wildcards.exp}/train/{owner}/seed{wildcards.seed}/model"


def init_arg(wildcards, input):
    return f"--init {input.init}" if input.get("init") else ""


def data_dir(wildcards):
    """The folder of the prepared splits and the tokenizer."""
    return f"results/{wildcards.exp}/data"


def all_suite_metrics(wildcards):
    """Every table method's evaluation on every suite, for each of its seeds."""
    return [
        f"results/{wildcards.exp}/eval/{m}/seed{seed}/{suite}/metrics.json"
        for m in TABLE_METHODS
        for seed in method_seeds(m)
        for suite in SUITES
    ]


PARENT_RUN = f"results/{EXP}/tracking/parent_run.json"
_pipeline = {}  # what onstart learnt, for onsuccess/onerror (the same Snakemake process)


def pipeline_started():
    """onstart: a parent run made by an earlier invocation is RUNNING again while this one's jobs run.

    One parent per results/<exp>/ (its parent_run.json is every job's input): a partial rerun adds its
    child runs to it, and its metrics and table become the new ones. A first run has no parent yet (the
    tracking job creates it, RUNNING)."""
    import atp.tracking

    _pipeline["reopened"] = atp.tracking.reopen_parent(PARENT_RUN)


def pipeline_ended(status):
    """onsuccess/onerror: end the parent run, FINISHED with the table's summary metrics, the table and the config, or FAILED."""
    import atp.tracking

    table = f"results/{EXP}/table"
    atp.tracking.end_parent(PARENT_RUN, status, f"{table}.csv", f"{table}.md", config=config, reopened=_pipeline.get("reopened"))


def finished_message():
    """Where a finished run left its results (printed by `onsuccess`)."""
    uri = config["mlflow"]["tracking_uri"]
    store = uri if "://" in uri else f"sqlite:///{os.path.abspath(uri)}"
    parent = f"results/{EXP}/tracking/parent_run.json"
    # A fresh browser on MLflow 3.x lands on its GenAI overview: link the runs view itself.
    experiment = json.load(open(parent)).get("experiment_id") if os.path.exists(parent) else None
    runs = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs" if experiment else "http://127.0.0.1:5000"
    return (
        f"\nDone. Results table: results/{EXP}/table.md (and .csv); data card: results/{EXP}/data/card.md;"
        f"\nlogs: results/{EXP}/logs/; MLflow store: {store}"
        f"\nOpen it with: mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000"
        f"\nthen browse the runs at {runs}"
    )

"""Configuration: one schema (workflow/schemas/config.schema.yaml) is the single source of defaults and descriptions.

The pipeline config is validated and completed against it by `resolve`, in the
workflow (workflow/rules/common.smk) as for stages run by hand and for tests.
Each section is defined once; a method's overrides of `train`, `latent` and `rl`
are checked against that same definition with defaults and requirements stripped
(`overrides`), so a nested typo fails before any job and an override sets only
what it names. The config dataclasses below take each field's default and
description from the schema (`setting`), and their `__post_init__` rules are the
cross-key checks, run once per method by `check` before any job. Each job gets a *job
config*: the pipeline config cut down to what that job reads, so that changing
one stage's setting reruns only that stage and what depends on it. Stages turn
the sections they read into frozen dataclasses.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
SYNTHETIC_KEYS = (
    "n",
    "min_ops",
    "max_ops",
    "max_quantity",
    "max_operand",
    "max_result",
    "varied_phrasing",
    "distractor",
    "question_first",
)
# What a training or evaluation job reads of its method (a label or the enabled flag must not rerun it;
# `init` arrives as an input path, `train` and `latent` merged into their sections).
JOB_METHOD_KEYS = ("stage", "format", "variant", "removal")
# What the table reads of each method: its label and what orders the rows.
TABLE_METHOD_KEYS = ("stage", "format", "removal", "variant", "init", "label")
SOURCE_KEYS = ("format", "path", "hub_id", "hub_config", "hub_split", "limit")


class ConfigError(ValueError):
    """A configuration problem; the message names the key (dotted path) or file."""


def _schema() -> dict:
    """The schema file, with each `x-overrides: <section>` of a method replaced by `overrides` of that section."""
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        schema = yaml.safe_load(handle)
    method = schema["properties"]["methods"]["additionalProperties"]["properties"]
    for name, prop in method.items():
        if "x-overrides" in prop:
            kept = {k: v for k, v in prop.items() if k in ("default", "description")}
            method[name] = {**overrides(schema["properties"][prop["x-overrides"]], schema["$defs"]), **kept}
    return schema


def overrides(node: dict, defs: dict) -> dict:
    """A section's schema for a method's overrides, built from the section's one definition.

    The same keys and checks, nested objects included and closed to unknown keys (a typo such as
    `methods.atp.latent.decoder.hiden_size` fails validation), but no defaults and nothing required:
    an override sets only what it names, and a default filled into it would hide the section's value.
    """
    if "$ref" in node:
        node = {**defs[node["$ref"].rpartition("/")[2]], **{k: v for k, v in node.items() if k != "$ref"}}
    out = {k: v for k, v in node.items() if k not in ("default", "required", "x-overrides")}
    if "properties" in node:
        out["properties"] = {k: overrides(v, defs) for k, v in node["properties"].items()}
        out["additionalProperties"] = False
    return out


def _validator(schema: dict):
    """A Draft 2020-12 validator that also fills in defaults (the jsonschema FAQ recipe)."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def resolve(config: dict | None) -> dict:
    """Validate a (partial) pipeline config, fill defaults, run the cross-key checks; return a new dict."""
    config = copy.deepcopy(config or {})
    errors = sorted(_validator(_schema()).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ConfigError(_message(errors[0]))
    check(config)
    return config


def _message(error) -> str:
    """A validation error naming the full dotted key; an unknown key also gets the nearest known one."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and error.validator_value is False and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            return f"config key '{'.'.join([*path, unknown[0]])}': unknown key ('{unknown[0]}' was unexpected; {hint})"
    return f"config key '{'.'.join(path) or '<top level>'}': {error.message}"


def check(config: dict) -> None:
    """Checks a JSON schema cannot express; raises ConfigError naming the key."""
    data = config["data"]
    for name, spec in split_specs(config).items():
        try:
            split_source(spec)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config key '{split_key(name)}': {exc}") from None
    if set(data["suites"]) & {"train", "val"}:
        raise ConfigError("config key 'data.suites': suites may not be named 'train' or 'val'")
    methods = config["methods"]
    for name, method in methods.items():
        init = method.get("init")
        if init is not None and init not in methods:
            raise ConfigError(f"config key 'methods.{name}.init': unknown method {init!r}")
        seen, current = {name}, init
        while current is not None:
            if current in seen:
                raise ConfigError(f"config key 'methods.{name}.init': methods start from each other in a cycle")
            seen.add(current)
            current = methods[current].get("init")
        if method["stage"] == "latent_sft" and "variant" not in method:
            raise ConfigError(f"config key 'methods.{name}.variant': a latent_sft method needs a variant")
        if method["stage"] != "latent_sft" and ("variant" in method or method.get("latent")):
            raise ConfigError(f"config key 'methods.{name}.variant': only latent_sft methods take a variant or latent settings")
        owner = method.get("evaluates")
        if owner is not None:
            if owner not in methods or methods[owner].get("evaluates") is not None:
                raise ConfigError(f"config key 'methods.{name}.evaluates': {owner!r} is not a method that trains")
            same = ("stage", "variant", "format")
            if any(method.get(k) != methods[owner].get(k) for k in same) or method.get("init") is not None:
                raise ConfigError(f"config key 'methods.{name}.evaluates': needs the stage and variant of {owner!r} and no init")
            if not set(method_seeds(config, name)) <= set(method_seeds(config, owner)):
                raise ConfigError(f"config key 'methods.{name}.evaluates': {owner!r} is not trained with every seed of {name!r}")
        if (method.get("format") == "icot") != ("removal" in method):
            raise ConfigError(
                f"config key 'methods.{name}.removal': an sft method with format icot, and only one, takes a removal schedule"
            )
        if method["stage"] != "sft" and method.get("format", "cot") != "cot":
            raise ConfigError(f"config key 'methods.{name}.format': only sft methods take a format other than cot")
        if method["stage"] != "rl" and method.get("rl"):
            raise ConfigError(f"config key 'methods.{name}.rl': only rl methods take rl settings")
        if method["stage"] == "latent_sft":
            to_dataclass(LatentConfig, {**method_latent(config, name), "variant": method["variant"]}, f"methods.{name}.latent")
        if method["stage"] == "rl":
            check_rl(config, name)
        train = {**config["train"], **method.get("train", {})}
        micro = train.get("micro_batch_size")
        if micro is not None and train["batch_size"] % micro:
            raise ConfigError(
                f"config key 'methods.{name}.train.micro_batch_size': {micro} does not divide batch_size {train['batch_size']}"
            )
    model = config["model"]
    if model["pretrained"] is None and model["hidden_size"] % model["num_heads"]:
        raise ConfigError("config key 'model.num_heads': must divide model.hidden_size")


def rl_root_ok(spec: dict) -> bool:
    """What RL can start from: a latent_sft method with sampled latents, or a language-CoT sft method."""
    from atp.variants import VARIANTS

    if spec["stage"] == "sft":
        return spec.get("format", "cot") == "cot"
    if spec["stage"] != "latent_sft":
        return False
    return VARIANTS[spec["variant"]].stochastic


def rl_root(config: dict, name: str) -> str:
    """The method an rl method's chain of inits starts from (past other rl methods)."""
    methods = config["methods"]
    root = name
    while methods[root]["stage"] == "rl" and methods[root].get("init") is not None:
        root = methods[root]["init"]
    return root


def check_rl(config: dict, name: str) -> None:
    """An rl method's settings are consistent (and, in a pipeline config, it starts from a sampled-latent model).

    A job config carries no `init` (the model arrives as a path), so the start is checked
    only where `init` is given; `check_pipeline` insists on it.
    """
    methods = config["methods"]
    root = rl_root(config, name)
    if methods[name].get("init") is not None and not rl_root_ok(methods[root]):
        raise ConfigError(
            f"config key 'methods.{name}.init': an rl method starts from a latent_sft method with sampled latents "
            "(variant atp, atp_no_stop or colar) or from a CoT sft method (token-level GRPO on written CoT)"
        )
    rl = method_rl(config, name)
    to_dataclass(RewardConfig, rl.get("rewards") or {}, f"methods.{name}.rl.rewards")
    to_dataclass(RLConfig, rl, f"methods.{name}.rl")


def check_pipeline(config: dict) -> None:
    """`check` plus what only a whole pipeline config can tell: every rl method says what it starts from."""
    check(config)
    for name, method in config["methods"].items():
        if method["stage"] == "rl" and method.get("init") is None:
            raise ConfigError(
                f"config key 'methods.{name}.init': an rl method starts from a trained ATP-Latent or CoT-SFT method; name it"
            )
    # Missing local files fail here, before any job starts (paths are relative to the working directory).
    for name, spec in split_specs(config).items():
        if spec["source"] == "file" and not Path(spec["path"]).exists():
            raise ConfigError(f"config key '{split_key(name)}.path': file not found: {spec['path']}")
    pretrained = config["model"].get("pretrained")
    if pretrained and pretrained.startswith(("/", "./", "../", "~")) and not Path(pretrained).expanduser().exists():
        raise ConfigError(f"config key 'model.pretrained': model folder not found: {pretrained}")


OWN_SPLITS = ("train", "val", "rl")  # the splits configured under data.<name>; the rest are suites


def split_key(name: str) -> str:
    """Where a split is configured: `data.train`, `data.val`, `data.rl` or `data.suites.<name>`."""
    return f"data.{name}" if name in OWN_SPLITS else f"data.suites.{name}"


def split_specs(config: dict) -> dict[str, dict]:
    """Every split (train, val, the RL prompts when configured, each suite) with the synthetic defaults merged
    into synthetic ones, in the order they are drawn."""
    data = config["data"]
    specs = {"train": data["train"], "val": data["val"], **({"rl": data["rl"]} if data.get("rl") else {}), **data["suites"]}
    merged = {}
    for name, spec in specs.items():
        if spec.get("source", "synthetic") == "synthetic":
            extra = [k for k in spec if k in SOURCE_KEYS]
            if extra:
                raise ConfigError(f"config key '{split_key(name)}.{extra[0]}': not used by source 'synthetic'")
            merged[name] = {"source": "synthetic", **data["synthetic"], **spec}
        else:
            merged[name] = dict(spec)
    return merged


def split_source(spec: dict):
    """The generator settings (SuiteSpec) or the file/hub source (SourceSpec) of one merged split spec."""
    if spec["source"] == "synthetic":
        from atp.data.synthetic import SuiteSpec

        return SuiteSpec.from_dict({k: v for k, v in spec.items() if k != "source"})
    from atp.data.sources import SourceSpec

    if spec["source"] == "file" and "path" not in spec:
        raise ValueError("source 'file' needs 'path'")
    if spec["source"] == "hub" and "hub_id" not in spec:
        raise ValueError("source 'hub' needs 'hub_id'")
    # Only the chosen source's keys: an overlay that switches a split from hub to file (merged key by
    # key, as Snakemake merges) leaves the hub keys behind, and they must not count.
    keys = {"file": ("format", "path", "limit"), "hub": ("format", "hub_id", "hub_config", "hub_split", "limit")}[spec["source"]]
    return SourceSpec(**{k: v for k, v in spec.items() if k in keys})


def method_train(config: dict, method: str) -> dict:
    """The effective training settings of a method: `train` updated with its overrides."""
    return {**config["train"], **config["methods"][method].get("train", {})}


def method_latent(config: dict, method: str) -> dict:
    """The latent settings of a latent_sft method: `latent` updated with the method's overrides."""
    spec = config["methods"][method]
    merged = {**config["latent"], **spec.get("latent", {})}
    merged["decoder"] = {**config["latent"]["decoder"], **spec.get("latent", {}).get("decoder", {})}
    return merged


def method_rl(config: dict, method: str) -> dict:
    """The RL settings of an rl method: `rl` updated with the method's overrides (rewards merged key by key)."""
    return merge(config["rl"], config["methods"][method].get("rl", {}))


def method_seeds(config: dict, method: str) -> list[int]:
    """The training seeds of a method: its own `seeds`, else the top-level `seeds`."""
    return list(config["methods"][method].get("seeds") or config["seeds"])


def is_frozen_control(config: dict, method: str) -> bool:
    """An rl method that rolls out without updating (`rl.frozen`): a control for the RL curves, not a table row."""
    return config["methods"][method]["stage"] == "rl" and bool(method_rl(config, method).get("frozen"))


def job_config(config: dict, job: str) -> dict:
    """The part of the pipeline config one job reads (a valid pipeline config itself).

    Jobs: `tracking`, `data`, `train_<method>`, `eval_<method>`, `table`, `report`.
    """
    # Where results are tracked is not part of what a job computes: only the tracking rule (which
    # writes the store's address and `required` for every job) and the report (which names the
    # registered model after the MLflow experiment) read it, so a new store reruns only those two.
    base = {"experiment": config["experiment"]}
    if job in ("tracking", "report"):
        return {**base, "mlflow": config["mlflow"]}
    if job == "data":  # data prep also builds the tokenizer, which reads only these two model keys
        model = config["model"]
        return {**base, "data": config["data"], "model": {"pretrained": model["pretrained"], "vocab_size": model["vocab_size"]}}
    kind, _, method = job.partition("_")
    if kind == "train" and method in config["methods"]:
        spec = {k: v for k, v in config["methods"][method].items() if k in JOB_METHOD_KEYS}
        job = {**base, "model": config["model"], "train": method_train(config, method), "methods": {method: spec}}
        if spec["stage"] == "latent_sft":  # only latent methods read (and rerun on) the latent settings
            job["latent"] = method_latent(config, method)
        if spec["stage"] == "rl":
            job["rl"] = method_rl(config, method)
        return job
    if kind == "eval" and method in config["methods"]:
        spec = {k: v for k, v in config["methods"][method].items() if k in JOB_METHOD_KEYS}
        job = {**base, "eval": config["eval"], "methods": {method: spec}}
        from atp.variants import VARIANTS

        if spec["stage"] == "latent_sft" and VARIANTS[spec["variant"]].compress:  # the factor CoLaR asks for
            job["latent"] = {"compression": method_latent(config, method)["compression"]}
        return job
    if job == "table":  # the rows' names and order only: a method's budget must not rerun the table
        rows = {name: {k: v for k, v in spec.items() if k in TABLE_METHOD_KEYS} for name, spec in config["methods"].items()}
        return {**base, "methods": rows, "seeds": config["seeds"]}
    raise ConfigError(f"unknown job {job!r}")


def config_hash(config: dict) -> str:
    """Short stable hash of a config (tagged on every MLflow run)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged into `base` key by key, nested mappings included (as Snakemake merges --configfile)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def load(*paths: str | Path) -> dict:
    """Read YAML config files (a pipeline or job config, then overlays merged over it) and resolve them."""
    raw: dict = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as handle:
                raw = merge(raw, yaml.safe_load(handle) or {})
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    try:
        return resolve(raw)
    except ConfigError as exc:
        raise ConfigError(f"{', '.join(map(str, paths))}: {exc}") from None


def dump(config: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def to_dataclass(cls, values: dict, where: str):
    """Build a frozen config dataclass from a validated section; unknown keys are a ConfigError."""
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"config key '{where}.{sorted(unknown)[0]}': unknown")
    try:
        return cls(**{k: values[k] for k in names if k in values})
    except (TypeError, ValueError) as exc:
        # a rule's message opens with the field it concerns ("minibatch_size: ..."): name that key
        name, _, rest = str(exc).partition(": ")
        if name in names and rest:
            raise ConfigError(f"config key '{where}.{name}': {rest}") from None
        raise ConfigError(f"config key '{where}': {exc}") from None


@functools.cache
def _read_schema() -> dict:
    """The schema, read once for the dataclasses' fields (read only: `_schema()` gives a fresh copy to change)."""
    return _schema()


@functools.cache
def schema_defaults() -> dict:
    """Every section's defaults as the schema states them (the config `resolve({})` fills in, before any check)."""
    config: dict = {}
    for _ in _validator(_read_schema()).iter_errors(config):
        pass
    return config


def setting(section: str, name: str):
    """A config dataclass field whose default and description are the schema's `<section>.<name>` (the one place
    of both; `section` may be nested, as `rl.rewards`)."""
    schema = _read_schema()
    default, node = schema_defaults(), schema
    for part in section.split("."):
        default, node = default[part], node["properties"][part]
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rpartition("/")[2]]
    value, meta = default[name], {"description": node["properties"][name].get("description", "")}
    if isinstance(value, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(value), metadata=meta)
    return field(default=value, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings: the `train` section (each field's default and description are the schema's)."""

    steps: int = setting("train", "steps")
    batch_size: int = setting("train", "batch_size")
    micro_batch_size: int | None = setting("train", "micro_batch_size")
    lr: float = setting("train", "lr")
    weight_decay: float = setting("train", "weight_decay")
    warmup_ratio: float = setting("train", "warmup_ratio")
    min_lr_ratio: float = setting("train", "min_lr_ratio")
    grad_clip: float = setting("train", "grad_clip")
    max_length: int = setting("train", "max_length")
    log_every: int = setting("train", "log_every")
    checkpoint_every: int = setting("train", "checkpoint_every")
    keep_checkpoints: int = setting("train", "keep_checkpoints")
    val_samples: int = setting("train", "val_samples")
    bf16: bool = setting("train", "bf16")
    gradient_checkpointing: bool = setting("train", "gradient_checkpointing")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")

    def accumulation(self, world_size: int) -> tuple[int, int]:
        """(micro batch per process, accumulation steps) giving exactly `batch_size` per step."""
        micro = self.micro_batch_size or self.batch_size // world_size
        if micro < 1 or self.batch_size % (micro * world_size):
            raise ConfigError(
                f"config key 'train.batch_size': {self.batch_size} is not a multiple of "
                f"micro_batch_size ({micro}) x world size ({world_size})"
            )
        return micro, self.batch_size // (micro * world_size)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings: the `eval` section."""

    batch_size: int = setting("eval", "batch_size")
    max_new_tokens: int = setting("eval", "max_new_tokens")
    limit: int | None = setting("eval", "limit")
    samples: int = setting("eval", "samples")
    max_answer_tokens: int = setting("eval", "max_answer_tokens")
    bf16: bool = setting("eval", "bf16")
    vote: int = setting("eval", "vote")


@dataclass(frozen=True)
class LatentConfig:
    """Settings of the latent stage: the `latent` section with the method's overrides, and the method's variant."""

    variant: str = "atp"  # the method's (methods.<name>.variant), not the section's
    c: int = setting("latent", "c")
    max_steps: int = setting("latent", "max_steps")
    beta: float = setting("latent", "beta")
    decoder_weight: float = setting("latent", "decoder_weight")
    teacher_weight: float = setting("latent", "teacher_weight")
    distill_weight: float = setting("latent", "distill_weight")
    compression: int = setting("latent", "compression")
    max_compression: int = setting("latent", "max_compression")
    embed_weight: float = setting("latent", "embed_weight")
    rescale: str = setting("latent", "rescale")
    scale: float = setting("latent", "scale")
    head_hidden: int | None = setting("latent", "head_hidden")
    head: str = setting("latent", "head")
    choice: int = setting("latent", "choice")
    posterior: bool = setting("latent", "posterior")
    decoder: dict = setting("latent", "decoder")
    stage_steps: int = setting("latent", "stage_steps")
    stage_mix: float = setting("latent", "stage_mix")
    decode_tokens: int = setting("latent", "decode_tokens")

    def __post_init__(self) -> None:
        from atp.variants import VARIANTS

        if self.variant not in VARIANTS:
            raise ValueError(f"variant: unknown latent variant {self.variant!r} (one of {', '.join(VARIANTS)})")
        if self.c < 1 or self.max_steps < 1:
            raise ValueError("c and max_steps must be at least 1")
        if self.rescale not in ("none", "embedding_norm"):
            raise ValueError(f"rescale: must be 'none' or 'embedding_norm', not {self.rescale!r}")
        if self.head not in ("mlp", "residual"):
            raise ValueError(f"head: must be 'mlp' or 'residual', not {self.head!r}")
        if self.choice < 0:
            raise ValueError(f"choice: must be >= 0, got {self.choice}")
        if self.spec.compress and (self.head != "mlp" or self.choice):
            raise ValueError("head: colar predicts the next compressed embedding itself: needs head mlp and no choice")
        if self.posterior and not (self.choice and self.spec.feed in ("sample", "mu") and self.spec.kl):
            raise ValueError("posterior: needs latent.choice > 0 and a variant with sampled latents and a KL (atp)")

    @property
    def spec(self):
        """The variant's definition (atp.variants.Variant)."""
        from atp.variants import VARIANTS

        return VARIANTS[self.variant]

    @property
    def decoder_copies_backbone(self) -> bool:
        """`latent.decoder.copy_backbone`: the step decoder is a copy of the backbone (absent: false, the small decoder)."""
        return bool(self.decoder.get("copy_backbone", False))

    @property
    def slots(self) -> int:
        return self.c * self.max_steps

    def stage(self, step: int) -> int:
        """Curriculum stage (latent steps) at optimizer step `step`; the last stage is max_steps."""
        if self.stage_steps <= 0:
            return self.max_steps
        return min(self.max_steps, 1 + step // self.stage_steps)


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the total reward: the `rl.rewards` section."""

    correct: float = setting("rl.rewards", "correct")
    format: float = setting("rl.rewards", "format")
    coherence: float = setting("rl.rewards", "coherence")
    coherence_times_correct: bool = setting("rl.rewards", "coherence_times_correct")
    coherence_rule: str = setting("rl.rewards", "coherence_rule")

    def __post_init__(self) -> None:
        if self.coherence_rule not in ("strict", "substring"):
            raise ValueError(f"coherence_rule: must be 'strict' or 'substring', not {self.coherence_rule!r}")

    @property
    def needs_gold(self) -> bool:
        return self.correct != 0 or (self.coherence != 0 and self.coherence_times_correct)


@dataclass(frozen=True)
class RLConfig:
    """Settings of the RL stage: the `rl` section (optimiser settings come from `train`)."""

    questions: int = setting("rl", "questions")
    group_size: int = setting("rl", "group_size")
    minibatch_size: int = setting("rl", "minibatch_size")
    epochs: int = setting("rl", "epochs")
    oversample: int = setting("rl", "oversample")
    clip_eps: float = setting("rl", "clip_eps")
    log_ratio_clamp: float = setting("rl", "log_ratio_clamp")
    kl_coef: float = setting("rl", "kl_coef")
    temperature: float = setting("rl", "temperature")
    latent_temperature: float = setting("rl", "latent_temperature")
    max_answer_tokens: int = setting("rl", "max_answer_tokens")
    max_cot_tokens: int = setting("rl", "max_cot_tokens")
    trajectories_every: int = setting("rl", "trajectories_every")
    trajectories_logged: int = setting("rl", "trajectories_logged")
    loss: str = setting("rl", "loss")
    latent_logp: str = setting("rl", "latent_logp")
    latent_weight: float = setting("rl", "latent_weight")
    answer_weight: float = setting("rl", "answer_weight")
    frozen: bool = setting("rl", "frozen")
    pass_k: int = setting("rl", "pass_k")
    diagnostics_every: int = setting("rl", "diagnostics_every")
    rewards: dict | None = None  # the `rl.rewards` section; None: RewardConfig's defaults

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(
                f"group_size: must be at least 2 (a group-normalised advantage needs two rollouts), got {self.group_size}"
            )
        if self.pass_k == 1 or self.pass_k < 0:
            raise ValueError(f"pass_k: must be 0 (off) or at least 2, got {self.pass_k}")
        if self.questions < 1 or self.minibatch_size < 1 or self.epochs < 1 or self.oversample < 1:
            raise ValueError("questions, minibatch_size, epochs and oversample must be at least 1")
        if (self.questions * self.group_size) % self.minibatch_size:
            raise ValueError(
                f"minibatch_size: {self.minibatch_size} does not divide questions x group_size = "
                f"{self.questions * self.group_size}"
            )
        if self.temperature <= 0 or self.latent_temperature <= 0:
            raise ValueError(f"temperature and latent_temperature must be > 0, got {self.temperature}, {self.latent_temperature}")
        if self.loss not in ("sequence", "action"):
            raise ValueError(f"loss: must be 'sequence' or 'action', not {self.loss!r}")
        if self.latent_logp not in ("sum", "mean"):
            raise ValueError(f"latent_logp: must be 'sum' or 'mean', not {self.latent_logp!r}")
        if self.latent_weight < 0 or self.answer_weight < 0:
            raise ValueError(f"latent_weight and answer_weight must be >= 0, got {self.latent_weight}, {self.answer_weight}")

    @property
    def rollouts(self) -> int:
        """Trajectories an update pass sees a step (dynamic sampling rolls out `oversample` times as many)."""
        return self.questions * self.group_size

    @property
    def updates_per_step(self) -> int:
        return self.epochs * self.rollouts // self.minibatch_size


if __name__ == "__main__":  # python -m atp.config config/config.yaml [overlay.yaml ...]: every key, defaults filled in
    import sys

    print(yaml.safe_dump(load(*sys.argv[1:]), sort_keys=False), end="")

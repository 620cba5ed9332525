"""Config validation: defaults, errors that name the key, job configs."""

import re
import subprocess
from dataclasses import fields

import pytest
import yaml

from atp import config
from atp.config import ConfigError, EvalConfig, TrainConfig, job_config, resolve, to_dataclass
from conftest import PYTHON, ROOT, snakemake


def test_defaults_fill_an_empty_config():
    cfg = resolve({})
    assert cfg["experiment"] == "default"
    assert cfg["train"]["batch_size"] == 16
    assert set(cfg["data"]["suites"]) == {"test", "hard", "easy", "varied"}
    assert set(cfg["methods"]) == {"cot_sft", "nocot_sft"}
    assert cfg["methods"]["cot_sft"]["init"] is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"trian": {}}, "'trian'"),
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"data": {"train": {"n": -5}}}, "data.train.n"),
        ({"model": {"lora": {"enabled": "yes"}}}, "model.lora.enabled"),
        ({"methods": {"x": {"stage": "magic"}}}, "methods.x.stage"),
        ({"data": {"suites": {"t": {"source": "file"}}}}, "data.suites.t"),
        ({"methods": {"a": {"stage": "sft", "init": "b"}}}, "methods.a.init"),
        ({"methods": {"a": {"stage": "sft", "init": "b"}, "b": {"stage": "sft", "init": "a"}}}, "methods.a.init"),
        ({"train": {"batch_size": 32, "micro_batch_size": 5}}, "micro_batch_size"),
        ({"data": {"synthetic": {"min_ops": 3, "max_ops": 2}}}, "data.train"),
        ({"data": {"train": {"source": "synthetic", "path": "x.jsonl"}}}, "data.train.path"),
    ],
)
def test_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as error:
        resolve(raw)
    assert key in str(error.value)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'trian' was unexpected"):
        resolve({"trian": {}})


NESTED = {"cot_sft": {"stage": "sft"}, "atp": {"stage": "latent_sft", "variant": "atp", "init": "cot_sft"}}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"latent": {"decoder": {"hiden_size": 8}}}, "methods.atp.latent.decoder.hiden_size"),
        ({"latent": {"decoder": {"hidden_size": 4}}}, "methods.atp.latent.decoder.hidden_size"),
        ({"train": {"stpes": 8}}, "methods.atp.train.stpes"),
        ({"latent": {"rescale": "l2"}}, "methods.atp.latent.rescale"),
    ],
)
def test_a_methods_overrides_are_checked_against_the_section_itself(override, key):
    """One definition per section: a method's overrides take its keys and ranges, nested ones included."""
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        resolve({"methods": {**NESTED, "atp": {**NESTED["atp"], **override}}})


def test_an_override_sets_only_what_it_names():
    atp = {**NESTED["atp"], "latent": {"decoder": {"num_layers": 3}}, "train": {"steps": 5}}
    cfg = resolve({"methods": {**NESTED, "atp": atp}})
    assert cfg["methods"]["atp"]["latent"] == {"decoder": {"num_layers": 3}} and cfg["methods"]["atp"]["train"] == {"steps": 5}
    assert config.method_latent(cfg, "atp")["decoder"] == {**cfg["latent"]["decoder"], "num_layers": 3}


def test_an_unknown_key_gets_the_nearest_known_one():
    expected = re.escape("'methods.atp.latent.decoder.hiden_size': unknown key") + ".*did you mean 'hidden_size'"
    with pytest.raises(ConfigError, match=expected):
        resolve({"methods": {**NESTED, "atp": {**NESTED["atp"], "latent": {"decoder": {"hiden_size": 8}}}}})


def test_a_nested_override_typo_fails_the_dry_run_naming_the_key(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    result = snakemake(tmp_path, "-n", extra_config="methods: {atp: {latent: {decoder: {hiden_size: 8}}}}\n", check=False)
    assert result.returncode != 0
    assert "config key 'methods.atp.latent.decoder.hiden_size': unknown key" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()  # before any job


def test_the_config_dataclasses_take_their_defaults_and_descriptions_from_the_schema():
    """One place of defaults: every field of a config dataclass is a key of its section, with the schema's default
    and description (the method's variant aside), and a built instance holds what the schema says."""
    from atp.config import LatentConfig, RewardConfig, RLConfig, schema_defaults

    defaults = schema_defaults()
    sections = [
        (LatentConfig, "latent", {"variant"}),  # the variant is the method's, not the section's
        (RLConfig, "rl", {"rewards"}),  # RewardConfig's own section
        (RewardConfig, "rl.rewards", set()),
        (TrainConfig, "train", set()),
        (EvalConfig, "eval", set()),
    ]
    for cls, path, extra in sections:
        section = defaults
        for part in path.split("."):
            section = section[part]
        assert {f.name for f in fields(cls)} - extra == set(section) - extra, cls.__name__
        built = cls()
        for f in fields(cls):
            if f.name not in extra:
                assert getattr(built, f.name) == section[f.name] and f.metadata["description"], f"{cls.__name__}.{f.name}"
    assert RLConfig().rewards is None and LatentConfig().decoder is not LatentConfig().decoder  # no shared dict


def test_a_latent_rule_fails_the_config_naming_the_key():
    """A rule across latent keys is checked once, by LatentConfig, and already at config time."""
    bad = {"methods": {**NESTED, "atp": {**NESTED["atp"], "latent": {"posterior": True}}}}
    with pytest.raises(ConfigError, match=r"config key 'methods.atp.latent.posterior': needs latent.choice > 0"):
        resolve(bad)


def test_the_default_config_restates_no_default():
    """config/config.yaml holds what the miniature sets differently (its splits and methods aside): one value, one place."""
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    defaults = resolve({})
    definition = (["methods"], ["data", "train"], ["data", "val"], ["data", "rl"], ["data", "suites"])

    def repeats(section, default, path):
        for key, value in section.items():
            if path + [key] in definition:
                continue
            if isinstance(value, dict):
                yield from repeats(value, default[key], path + [key])
            elif value == default[key]:
                yield ".".join(path + [key])

    assert not list(repeats(raw, defaults, []))
    for key in ("latent", "rl"):
        assert raw[key], key  # and it does set something: the test reads the right file


def test_the_resolved_config_prints_from_the_command_line():
    command = [PYTHON, "-m", "atp.config", str(ROOT / "config" / "config.yaml")]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert yaml.safe_load(printed) == config.load(ROOT / "config" / "config.yaml")


def test_job_configs_hold_only_what_the_job_reads():
    cfg = resolve({"methods": {"cot_sft": {"stage": "sft", "train": {"steps": 7}}}})
    train = job_config(cfg, "train_cot_sft")
    assert train["train"]["steps"] == 7 and "eval" not in train and "data" not in train
    assert set(job_config(cfg, "eval_cot_sft")) == {"experiment", "eval", "methods"}
    # The store's address reaches jobs through the tracking rule's parent-run file, not their configs.
    assert "mlflow" in job_config(cfg, "tracking") and "mlflow" not in train and "mlflow" not in job_config(cfg, "table")
    data = job_config(cfg, "data")
    assert set(data["model"]) == {"pretrained", "vocab_size"}
    # A job config is itself a valid pipeline config, and resolving it keeps its content.
    assert resolve(train)["train"] == train["train"]
    with pytest.raises(ConfigError):
        job_config(cfg, "train_missing")


def test_changing_eval_changes_only_eval_job_configs():
    a, b = resolve({}), resolve({"eval": {"max_new_tokens": 10}})
    for job in ("data", "train_cot_sft", "train_nocot_sft", "table", "tracking"):
        assert job_config(a, job) == job_config(b, job)
    assert job_config(a, "eval_cot_sft") != job_config(b, "eval_cot_sft")


def test_train_dataclass_and_accumulation():
    cfg = resolve({"train": {"batch_size": 32, "micro_batch_size": 8}})
    train = to_dataclass(TrainConfig, cfg["train"], "train")
    assert train.accumulation(1) == (8, 4)
    assert train.accumulation(2) == (8, 2)
    assert train.accumulation(4) == (8, 1)
    with pytest.raises(ConfigError):
        train.accumulation(3)
    with pytest.raises(ConfigError, match="train.bogus"):
        to_dataclass(TrainConfig, {**cfg["train"], "bogus": 1}, "train")


def test_load_reports_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: -1}\n")
    with pytest.raises(ConfigError, match=str(path)):
        config.load(path)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(path)


def test_shipped_configs_are_valid():
    root = config.SCHEMA_PATH.parents[2]
    default = config.load(root / "config" / "config.yaml")
    config.check_pipeline(default)
    for overlay in (
        ".test/config/config.yaml",
        "config/extended.yaml",
        "config/ablations.yaml",
        "config/two_seeds.yaml",
        "config/three_seeds.yaml",
    ):  # merged over the default, as Snakemake does
        merged = config.load(root / "config" / "config.yaml", root / overlay)
        config.check_pipeline(merged)
        assert merged["experiment"] != "default" and merged["methods"].keys() == default["methods"].keys()


RL_METHODS = {
    "cot_sft": {"stage": "sft"},
    "atp": {"stage": "latent_sft", "variant": "atp", "init": "cot_sft"},
    "coconut": {"stage": "latent_sft", "variant": "coconut", "init": "cot_sft"},
}


@pytest.mark.parametrize(
    "rl_method, extra, key",
    [
        ({"stage": "rl"}, {}, "methods.atp_rl.init"),
        ({"stage": "rl", "init": "coconut"}, {}, "methods.atp_rl.init"),
        ({"stage": "rl", "init": "atp", "rl": {"group_size": 1}}, {}, "methods.atp_rl.rl.group_size"),
        (
            {"stage": "rl", "init": "atp"},
            {"rl": {"questions": 3, "group_size": 3, "minibatch_size": 2}},
            "methods.atp_rl.rl.minibatch_size",
        ),
        (
            {"stage": "rl", "init": "atp", "rl": {"rewards": {"coherence_rule": "fuzzy"}}},
            {},
            "methods.atp_rl.rl.rewards.coherence_rule",
        ),
    ],
)
def test_bad_rl_settings_fail_naming_the_key(rl_method, extra, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config.check_pipeline(config.resolve({"methods": {**RL_METHODS, "atp_rl": rl_method}, **extra}))


def test_rl_settings_belong_to_rl_methods_and_reach_only_their_jobs():
    with pytest.raises(ConfigError, match=re.escape("methods.coconut.rl")):
        config.resolve({"methods": {**RL_METHODS, "coconut": {**RL_METHODS["coconut"], "rl": {"epochs": 2}}}})
    cfg = config.resolve(
        {"methods": {**RL_METHODS, "atp_rl": {"stage": "rl", "init": "atp", "rl": {"rewards": {"coherence": 0.0}}}}}
    )
    job = config.job_config(cfg, "train_atp_rl")
    assert job["rl"]["rewards"] == {**cfg["rl"]["rewards"], "coherence": 0.0} and "latent" not in job
    assert "rl" not in config.job_config(cfg, "train_atp")
    config.resolve(job)  # a job config is a valid config by itself (it carries no init)


def test_an_overlay_switching_a_split_from_hub_to_file_leaves_the_hub_keys_behind():
    base = {
        "data": {
            "suites": {
                "gsm8k": {"source": "hub", "format": "gsm8k", "hub_id": "openai/gsm8k", "hub_config": "main", "hub_split": "test"}
            }
        }
    }
    merged = config.merge(base, {"data": {"suites": {"gsm8k": {"source": "file", "path": "data/gsm8k/test.jsonl"}}}})
    spec = config.split_source(config.split_specs(config.resolve(merged))["gsm8k"])
    assert spec.path == "data/gsm8k/test.jsonl" and spec.hub_id is None


def test_the_paper_configs_are_valid_with_and_without_the_hub():
    root = config.SCHEMA_PATH.parents[2]
    paper = config.load(root / "config" / "config.yaml", root / "config" / "paper.yaml")
    config.check_pipeline(paper)
    assert paper["model"]["pretrained"] and paper["latent"]["max_steps"] == 10 and paper["train"]["bf16"]
    assert paper["data"]["train"]["source"] == "hub"
    local = config.load(root / "config" / "config.yaml", root / "config" / "paper.yaml", root / "config" / "paper_local.yaml")
    config.check(local)
    with pytest.raises(config.ConfigError, match="'data.train.path': file not found: data/gsm8k_aug/train.jsonl"):
        config.check_pipeline(local)  # until the files are put there: a missing file fails before any job
    for name, spec in config.split_specs(local).items():
        assert spec["source"] == "file" and config.split_source(spec).hub_id is None, name

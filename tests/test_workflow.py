"""The whole DAG on the test-size config, for real: Snakemake, MLflow SQLite store, tiny models."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import pytest

from conftest import PYTHON, ROOT, job_counts, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(ROOT / "config", workdir / "config")
    snakemake(workdir)
    return workdir


def test_lint_is_clean():
    result = subprocess.run(
        [PYTHON, "-m", "snakemake", "--lint", "--cores", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert "good condition" in result.stdout + result.stderr, result.stdout + result.stderr


def test_dag_produces_the_table_and_per_example_predictions(pipeline):
    exp = pipeline / "results" / "test"
    table = (exp / "table.md").read_text()
    assert "CoT-SFT" in table and "No-CoT" in table
    for suite in ("test", "hard", "easy", "varied"):
        assert f"{suite} acc" in table
        metrics = json.loads((exp / "eval" / "cot_sft" / "seed0" / suite / "metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 40
        predictions = (exp / "eval" / "cot_sft" / "seed0" / suite / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == 40 and {"gold", "prediction", "generation"} <= set(json.loads(predictions[0]))
    csv = (exp / "table.csv").read_text().splitlines()
    assert csv[0].startswith("method,label,seeds") and len(csv) == 7
    rows = [line.split(",")[0] for line in csv[1:]]
    # baselines (CoT + RL after CoT-SFT), controls, latent methods, RL
    assert rows == ["cot_sft", "cot_rl", "nocot_sft", "pause", "atp", "atp_rl"]
    latent = json.loads((exp / "eval" / "atp" / "seed0" / "test" / "metrics.json").read_text())
    assert latent["samples"] == 2 and latent["tokens"] == pytest.approx(latent["latents"] + latent["answer_tokens"])
    assert latent["vote"] == 3 and 0 <= latent["accuracy_vote"] <= 1 and "## Majority vote" in table  # eval.vote
    assert (exp / "train" / "atp" / "seed0" / "model" / "latent.json").exists()
    assert "Step-decoding fidelity" in table
    assert (exp / "data" / "card.md").exists() and (exp / "data" / "tokenizer" / "tokenizer.json").exists()
    assert (exp / "train" / "cot_sft" / "seed0" / "model" / "model.safetensors").exists()
    assert (exp / "benchmarks" / "train" / "cot_sft" / "seed0.tsv").exists()
    # Provenance: the commit, and per row the config hash of the job that trained the model.
    trained = json.loads((exp / "train" / "cot_sft" / "seed0" / "model" / "meta.json").read_text())["config_hash"]
    assert "Produced from git commit" in table and f"CoT-SFT `{trained}`" in table


def test_mlflow_has_a_parent_run_and_a_tagged_child_per_job(pipeline):
    import mlflow

    parent = json.loads((pipeline / "results" / "test" / "tracking" / "parent_run.json").read_text())
    assert parent["tracking_uri"] == f"sqlite:///{pipeline / 'results' / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=parent["tracking_uri"])
    children = client.search_runs([parent["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    stages = sorted(run.data.tags["stage"] for run in children)
    assert stages == ["data"] + ["evaluate"] * 6 + ["latent_sft"] * 2 + ["report"] + ["rl"] * 4 + [
        "sft_cot",
        "sft_nocot",
        "table",
    ]  # rl: atp_rl, cot_rl and their frozen controls
    card = json.loads((pipeline / "results" / "test" / "data" / "card.json").read_text())
    digests = {f"data_digest.{c['split']}": c["sha256"][:16] for c in card["splits"]}
    # Provenance on every run: the code (commit, dirty flag), the job's config (hash) and the data (digests).
    parent_tags = client.get_run(parent["run_id"]).data.tags
    # a model-training experiment: MLflow's UI opens it on the runs table
    assert client.get_experiment(parent["experiment_id"]).tags.get("mlflow.experimentKind") == "custom_model_development"
    assert {"git_commit", "git_dirty", "data_digest"} <= set(parent_tags)
    for run in children:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert {"rule", "stage", "config_hash", "git_commit", "git_dirty"} <= set(tags)
        assert tags["data_digest"] == parent_tags["data_digest"] and digests.items() <= tags.items(), tags["stage"]
        assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
        if tags["stage"].startswith(("sft", "evaluate")):
            assert tags["seed"] == "0" and "method=" in tags["wildcards"]
    # The parent spans the pipeline and ends FINISHED after its last job (onsuccess), holding the table's
    # summary metrics (the table job's, read back from table.csv), the table and the resolved config.
    parent_run = client.get_run(parent["run_id"])
    assert parent_run.info.status == "FINISHED"
    assert parent_run.info.start_time <= min(r.info.start_time for r in children)
    assert parent_run.info.end_time >= max(r.info.end_time for r in children)
    with open(pipeline / "results" / "test" / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = {f"table/{r['method']}/{k}": float(r[k]) for r in rows for k in ("avg_acc", "avg_tokens")}
    table_run = next(r for r in children if r.data.tags["stage"] == "table")
    assert len(summary) == 12 and parent_run.data.metrics == summary == table_run.data.metrics  # 6 rows x 2
    assert {a.path for a in client.list_artifacts(parent["run_id"])} == {"table.md", "table.csv", "config.yaml"}
    train = next(r for r in children if r.data.tags["stage"] == "sft_cot")
    assert "train/loss" in train.data.metrics and train.data.params["train.steps"] == "12"
    history = client.get_metric_history(train.info.run_id, "train/loss")
    assert [m.step for m in history] == [4, 8, 12]
    data = next(r for r in children if r.data.tags["stage"] == "data")
    suites = {"test", "hard", "easy", "varied"}
    own = {"train", "val", "rl"}  # the test config draws an RL split (data.rl) too
    assert {d.dataset.name for d in data.inputs.dataset_inputs} == own | suites | {f"twins/{s}" for s in suites}
    artifacts = {a.path for a in client.list_artifacts(data.info.run_id)}
    assert {"card.json", "card.md"} <= artifacts


def test_a_second_run_from_scratch_gives_the_same_bytes_and_another_seed_does_not(pipeline, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(ROOT / "config", again / "config")
    finished = snakemake(again)
    # The closing message links MLflow's runs view (a fresh browser on MLflow 3.x lands on its GenAI overview).
    experiment = json.loads((again / "results" / "test" / "tracking" / "parent_run.json").read_text())["experiment_id"]
    assert f"http://127.0.0.1:5000/#/experiments/{experiment}/runs" in finished.stdout + finished.stderr
    produced = ("metrics.json", "history.jsonl", "predictions.jsonl", "table.md", "table.csv", "card.json", "train.jsonl")
    files = sorted(
        p.relative_to(pipeline)
        for p in (pipeline / "results" / "test").rglob("*")
        if p.name in produced or p.suffix == ".safetensors"
    )
    assert len(files) > 40
    for name in files:
        assert (pipeline / name).read_bytes() == (again / name).read_bytes(), name
    snakemake(again, "results/test/train/cot_sft/seed1/metrics.json", "results/test/train/atp/seed1/metrics.json")
    for method in ("cot_sft", "atp"):
        seeds = [(again / "results" / "test" / "train" / method / f"seed{k}" / "metrics.json").read_text() for k in (0, 1)]
        assert seeds[0] != seeds[1], method


def test_models_and_checkpoints_hold_no_pickle(pipeline):
    """Weights are safetensors and configs JSON; no finished run leaves a checkpoint behind."""
    results = pipeline / "results" / "test"
    files = [p for p in (results / "train").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
    assert not any((results / "checkpoints").rglob("step_*"))


def test_nothing_to_do_after_a_complete_run(pipeline):
    result = snakemake(pipeline, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_an_eval_setting_reruns_only_evaluation_and_table(pipeline):
    result = snakemake(pipeline, "-n", extra_config="eval: {batch_size: 64, max_new_tokens: 20}\n")
    counts = job_counts(result.stdout)
    assert counts.get("evaluate") == 6 and counts.get("table") == 1 and counts.get("report_figures") == 1
    assert "train" not in counts and "prepare_data" not in counts


def test_changing_a_latent_setting_reruns_only_the_latent_stages_their_evaluations_and_table(pipeline):
    result = snakemake(pipeline, "-n", extra_config="latent: {beta: 0.01}\n")
    counts = job_counts(result.stdout)
    # pause, atp, and atp_rl and its frozen control, which start from atp (the control is not evaluated: no table row)
    assert counts.get("train") == 4 and counts.get("evaluate") == 3 and counts.get("table") == 1
    assert "prepare_data" not in counts
    for method in ("pause", "atp", "atp_rl", "atp_rl_frozen"):
        assert f"method={method}, seed=0" in result.stdout
    for method in ("cot_sft", "nocot_sft"):
        assert f"wildcards: exp=test, method={method}," not in result.stdout


def test_editing_the_latent_loops_code_reruns_the_stages_that_import_it_and_nothing_else(pipeline, tmp_path):
    # The edited code is a copy of the package first on the path (and the checkout's folder kept off it), so
    # the repository is left alone; the package finds its config schema under ../workflow.
    shutil.copytree(ROOT / "atp", tmp_path / "atp", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "workflow").symlink_to(ROOT / "workflow")
    objective = tmp_path / "atp" / "latent" / "objective.py"
    objective.write_text(objective.read_text() + "\n# an edit\n")
    result = snakemake(pipeline, "-n", env={"PYTHONPATH": str(tmp_path), "PYTHONSAFEPATH": "1"})
    assert "Params have changed" in result.stdout
    counts = job_counts(result.stdout)
    # Latent SFT and RL train on it (pause, atp, atp_rl, cot_rl and the two frozen controls: the RL stage imports the
    # latent loop whatever its policy) and every evaluation imports it; CoT-SFT, No-CoT SFT and data prep do not.
    assert counts.get("train") == 6 and counts.get("evaluate") == 6 and counts.get("table") == 1
    assert "prepare_data" not in counts
    # Without the edit, nothing is out of date.
    unedited = snakemake(pipeline, "-n")
    assert "Nothing to be done" in unedited.stdout + unedited.stderr


def test_the_rl_stage_logs_rewards_and_trajectories_and_the_report_registers_the_policy(pipeline):
    import mlflow

    exp = pipeline / "results" / "test"
    run = exp / "train" / "atp_rl" / "seed0"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert {
        "rewards/total/mean",
        "rewards/coherence/mean",
        "rewards/total/group_std",
        "rl/accuracy",
        "rl/latents",
        "rl/clip_fraction",
        "rl/loss",
    } <= set(history[0])
    trajectories = [json.loads(line) for line in (run / "trajectories" / "step_000002.jsonl").read_text().splitlines()]
    assert len(trajectories) == 4 and {"question", "latent_steps", "completion", "reward_total", "advantage"} <= set(
        trajectories[0]
    )
    for png in ("accuracy_vs_tokens.png", "rl_curves.png"):
        assert (exp / "report" / png).read_bytes()[:4] == b"\x89PNG"
    # The frozen-policy control ran the same schedule without updating, and the report reads the RL run against it.
    frozen = [json.loads(line) for line in (exp / "train" / "atp_rl_frozen" / "seed0" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in frozen] == [1, 2, 3] and "rl/loss" not in frozen[0] and "rewards/total/mean" in frozen[0]
    against = (exp / "report" / "rl_vs_frozen.md").read_text()
    assert against.count("| atp_rl (seed 0) | atp_rl_frozen (seed 0) | 2-3 |") == 2  # accuracy, reward
    # Each RL run is read against the control that started from its model: CoT + RL against the frozen CoT-SFT policy.
    assert (
        against.count("| cot_rl (seed 0) | cot_rl_frozen (seed 0) | 1-2 |") == 2 and "| atp_rl (seed 0) | cot_rl" not in against
    )
    # Whether RL can act: every RL run's and control's sampling headroom (pass@k with rl.pass_k = 2) and group diversity.
    assert "pass@2" in against and "| cot_rl_frozen (seed 0) |" in against and "| atp_rl (seed 0) |" in against
    assert "rl/first_clip_fraction" in history[0] and history[0]["rl/first_clip_fraction"] == 0.0  # rollout and replay agree
    assert "rl/grad_cosine/all" in history[0]  # diagnostics at step 0 (rl.diagnostics_every)
    registry = json.loads((exp / "report" / "registry.json").read_text())
    assert registry["registered"] and registry["method"] == "atp_rl" and registry["alias"] == "best"
    parent = json.loads((exp / "tracking" / "parent_run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=parent["tracking_uri"])
    version = client.get_model_version_by_alias(registry["model_name"], "best")
    assert version.tags["method"] == "atp_rl"
    rl_runs = client.search_runs([parent["experiment_id"]], filter_string="tags.stage = 'rl'")
    # the atp_rl run itself (3 steps), not whichever RL run (cot_rl: 2 steps) the store lists first
    rl_run = next(r for r in rl_runs if r.data.tags["method"] == "atp_rl")
    assert [m.step for m in client.get_metric_history(rl_run.info.run_id, "rewards/total/mean")] == [1, 2, 3]
    assert "trajectories" in {a.path for a in client.list_artifacts(rl_run.info.run_id)}


def test_snakemake_report_writes_one_self_contained_page(pipeline):
    snakemake(pipeline, "--report", str(pipeline / "report.html"))
    page = (pipeline / "report.html").read_text(errors="replace")
    assert "accuracy_vs_tokens.png" in page and "rl_curves.png" in page and "table.md" in page


def test_an_overlay_changing_one_methods_budget_changes_no_other_method(pipeline):
    # nocot_ft (switched off here) and pause share one budget in config/config.yaml; Snakemake merges
    # overlays in place, so a shared YAML object would carry the change over to pause.
    result = snakemake(pipeline, "-n", extra_config="methods: {nocot_ft: {train: {steps: 9}}}\n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_the_three_seed_overlay_grows_a_finished_run_by_its_new_seeds_only(pipeline):
    """config/three_seeds.yaml pointed at a finished run's experiment keeps every seed-0 job: it trains and evaluates
    seeds 1 and 2 of the methods that have seeds (CoT-SFT and No-CoT train once) and remakes the table."""
    from conftest import TEST_CONFIG

    overlay = [TEST_CONFIG, ROOT / "config" / "three_seeds.yaml"]
    result = snakemake(pipeline, "-n", configs=overlay, extra_config="experiment: test\n")
    counts = job_counts(result.stdout)
    trained = [p.parent.name for p in (pipeline / "results" / "test" / "train").glob("*/seed0")]
    assert counts.get("train") == 2 * (len(trained) - 2) and counts.get("table") == 1 and "prepare_data" not in counts
    jobs = re.findall(r"wildcards: exp=test, method=(\w+), seed=(\d+)", result.stdout)
    assert jobs and all(seed in ("1", "2") and method not in ("cot_sft", "nocot_sft") for method, seed in jobs)


def test_changing_an_rl_setting_reruns_only_the_rl_stage_and_what_follows(pipeline):
    counts = job_counts(snakemake(pipeline, "-n", extra_config="rl: {clip_eps: 0.1}\n").stdout)
    assert (
        counts.get("train") == 4
        and counts.get("evaluate") == 2
        and counts.get("table") == 1
        and counts.get("report_figures") == 1
    )  # atp_rl, cot_rl and their frozen controls


def test_a_later_run_reopens_the_same_parent_and_ends_it_again(pipeline):
    """A partial rerun adds its jobs to the parent of results/test/ (RUNNING while they run) and ends it again
    with the new table's metrics; a run with nothing to do leaves it alone."""
    import mlflow

    parent = json.loads((pipeline / "results" / "test" / "tracking" / "parent_run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=parent["tracking_uri"])
    before = client.get_run(parent["run_id"]).info
    snakemake(pipeline)  # nothing to do: no hook runs
    assert client.get_run(parent["run_id"]).info.end_time == before.end_time
    snakemake(pipeline, "--forcerun", "table")
    assert json.loads((pipeline / "results" / "test" / "tracking" / "parent_run.json").read_text())["run_id"] == parent["run_id"]
    after = client.get_run(parent["run_id"]).info
    assert after.status == "FINISHED" and after.end_time > before.end_time
    children = client.search_runs([parent["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    tables = [r for r in children if r.data.tags["stage"] == "table"]
    assert len(tables) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert len(client.get_metric_history(parent["run_id"], "table/atp/avg_acc")) == 2


def test_a_failed_job_ends_the_parent_run_failed(tmp_path):
    """onerror: the parent run says FAILED (here data prep cannot load a model that is not on this machine)."""
    import mlflow

    shutil.copytree(ROOT / "config", tmp_path / "config")
    bad = "model: {pretrained: no-such-org/no-such-model}\n"
    result = snakemake(tmp_path, "results/test/data/card.json", extra_config=bad, check=False)
    assert result.returncode != 0
    parent = json.loads((tmp_path / "results" / "test" / "tracking" / "parent_run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=parent["tracking_uri"])
    assert client.get_run(parent["run_id"]).info.status == "FAILED"
    assert "offline mode" in (tmp_path / "results" / "test" / "logs" / "prepare_data.log").read_text()  # the hub is off
    assert not client.list_artifacts(parent["run_id"])  # no table: nothing logged on failure


def test_a_method_can_train_with_fewer_seeds_and_the_others_start_from_its_first(tmp_path):
    """seeds [0, 1] with the SFT baselines on seed 0 only: seed 1 of every method starting from CoT-SFT starts
    from CoT-SFT's seed-0 model, and the table reads each method's own seeds."""

    shutil.copytree(ROOT / "config", tmp_path / "config")
    extra = "seeds: [0, 1]\nmethods: {cot_sft: {seeds: [0]}, nocot_sft: {seeds: [0]}}\n"
    result = snakemake(tmp_path, "-n", extra_config=extra)
    jobs = result.stdout.split("\n\n")
    assert not [j for j in jobs if "method=cot_sft, seed=1" in j or "method=nocot_sft, seed=1" in j]
    (pause_1,) = [j for j in jobs if "rule train:" in j and "method=pause, seed=1" in j]
    assert "--init results/test/train/cot_sft/seed0/model" in pause_1
    (rl_1,) = [j for j in jobs if "rule train:" in j and "method=atp_rl, seed=1" in j]
    assert "--init results/test/train/atp/seed1/model" in rl_1  # atp has both seeds
    counts = job_counts(result.stdout)
    (cot_rl_1,) = [j for j in jobs if "rule train:" in j and "method=cot_rl, seed=1" in j]
    assert "--init results/test/train/cot_sft/seed0/model" in cot_rl_1
    # cot_sft, nocot_sft once; pause, atp, atp_rl, atp_rl_frozen, cot_rl, cot_rl_frozen twice
    assert counts["train"] == 2 + 6 * 2 and counts["evaluate"] == 2 + 4 * 2

"""Fault injection: killed stages resume to the same result, bad input is refused before anything runs
or leaves nothing behind, tracking faults lose nothing, and nothing is loaded through pickle.

Each fault is real: SIGKILL to the stage's process, a broken file, an unreachable tracking server,
eight processes writing to one SQLite store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT, snakemake, snakemake_cmd, tiny_config, write_data_dir

# ---------------------------------------------------------------- interruption

# Long enough to be killed part-way (tiny models train hundreds of steps a second); log windows (7)
# that do not line up with checkpoints (10), so a resumed run must carry an open window over.
KILL_CONFIG = """
train: {steps: 120, checkpoint_every: 10, log_every: 7}
methods:
  atp: {train: {steps: 60, checkpoint_every: 10, log_every: 7}}
  atp_rl: {train: {steps: 8, checkpoint_every: 2, log_every: 3}}
"""
CHAIN = ("cot_sft", "atp", "atp_rl")  # CoT-SFT -> latent SFT -> RL: one of each training stage
TARGET = "results/test/train/atp_rl/seed0/metrics.json"


def stage_pids(workdir: Path) -> list[int]:
    """The `python -m atp.stages.*` processes Snakemake started in `workdir`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd == str(workdir) and any(a.startswith(b"atp.stages.") for a in argv):
            pids.append(int(proc.name))
    return pids


def kill_when_checkpointed(workdir: Path, method: str, preempt: bool = False) -> int:
    """Run Snakemake towards TARGET; SIGKILL `method`'s training process as soon as it wrote its first
    checkpoint (and, with `preempt`, Snakemake itself first, as a node going away). Returns that step."""
    ckpt_dir = workdir / "results" / "test" / "checkpoints" / method / "seed0"
    with open(workdir / f"snakemake-{method}.out", "w") as out:
        proc = subprocess.Popen(snakemake_cmd(workdir, TARGET, extra_config=KILL_CONFIG), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline:
        done = sorted(int(d.name[5:]) for d in ckpt_dir.glob("step_*") if (d / "meta.json").exists())
        pids = stage_pids(workdir)
        if done and pids:
            if preempt:
                proc.send_signal(signal.SIGKILL)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=300)
            assert proc.returncode != 0
            return done[0]
        if proc.poll() is not None:
            raise AssertionError(
                f"Snakemake ended before {method} could be killed:\n{(workdir / f'snakemake-{method}.out').read_text()[-3000:]}"
            )
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"{method} wrote no checkpoint in time")


def resumed_step(workdir: Path, method: str) -> int:
    log = (workdir / "results" / "test" / "logs" / "train" / method / "seed0.log").read_text()
    found = re.findall(r"resuming from checkpoint \S+ \(step (\d+) of \d+\)", log)
    assert found, f"{method} did not resume:\n{log[-2000:]}"
    return int(found[-1])


@pytest.mark.slow
def test_each_training_stage_killed_part_way_resumes_to_the_same_result(tmp_path):
    """SIGKILL CoT-SFT, then latent SFT, then RL (with Snakemake: a preempted node) right after their
    first checkpoint; rerun Snakemake each time. Bit-identical to an uninterrupted run on CPU."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for workdir in (reference, killed):
        workdir.mkdir()
        shutil.copytree(ROOT / "config", workdir / "config")
    snakemake(reference, TARGET, extra_config=KILL_CONFIG)

    exp = killed / "results" / "test"
    kill_when_checkpointed(killed, "cot_sft")
    # The killed job left no output, and nothing downstream started on a partial one.
    assert not (exp / "train" / "cot_sft" / "seed0" / "model").exists()
    assert not (exp / "logs" / "train" / "atp" / "seed0.log").exists()
    kill_when_checkpointed(killed, "atp")
    assert 10 <= resumed_step(killed, "cot_sft") < 120
    assert not (exp / "train" / "atp" / "seed0" / "model").exists() and not (exp / "logs" / "train" / "atp_rl").exists()
    kill_when_checkpointed(killed, "atp_rl", preempt=True)
    assert 10 <= resumed_step(killed, "atp") < 60
    snakemake(killed, "--unlock", extra_config=KILL_CONFIG)  # Snakemake's own lock, left by the killed Snakemake
    snakemake(killed, TARGET, extra_config=KILL_CONFIG)  # the profile's rerun-incomplete redoes the RL job
    assert 2 <= resumed_step(killed, "atp_rl") < 8

    for method in CHAIN:
        a, b = (d / "results" / "test" / "train" / method / "seed0" for d in (reference, killed))
        for name in ("metrics.json", "history.jsonl", "model/model.safetensors"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{method}/{name}"
        assert not (killed / "results" / "test" / "checkpoints" / method / "seed0").exists()  # dropped once finished
    heads = "train/atp_rl/seed0/model/latent_heads.safetensors"
    assert (reference / "results" / "test" / heads).read_bytes() == (exp / heads).read_bytes()


@pytest.mark.slow
def test_a_tracking_failure_after_training_loses_no_training(tiny_data, tmp_path, monkeypatch):
    """MLflow fails (after its retries) while the stage logs its results: the job fails, the trained
    weights stay in the final checkpoint, and the rerun finishes without training again."""
    from atp import cli, config
    from atp.stages import sft
    from atp.tracking import Tracker, TrackingError, start_parent

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    job = config.resolve(
        {
            **{k: cfg[k] for k in ("data", "model")},
            "train": {**cfg["train"], "steps": 12, "checkpoint_every": 5, "log_every": 5},
            "mlflow": {"tracking_uri": str(tmp_path / "mlflow.db")},
            "methods": {"cot_sft": {"stage": "sft", "format": "cot"}},
        }
    )
    config.dump(job, tmp_path / "job.yaml")
    start_parent(job["mlflow"], "test", tmp_path / "parent.json")
    argv = ["--config", str(tmp_path / "job.yaml"), "--method", "cot_sft", "--data-dir", str(data)]
    parser = cli.training_parser("sft")
    cli.run(sft.main, parser, argv + ["--out-dir", str(tmp_path / "clean" / "run"), "--no-tracking"])

    def unreachable(self, *args, **kwargs):
        raise TrackingError("MLflow log artifact failed after 6 attempts against the store (simulated)")

    monkeypatch.setattr(Tracker, "log_artifact", unreachable)
    out = ["--out-dir", str(tmp_path / "run"), "--parent", str(tmp_path / "parent.json")]
    with pytest.raises(SystemExit) as failed:
        cli.run(sft.main, parser, argv + out)
    assert failed.value.code == 4
    assert (tmp_path / "run" / "metrics.json").exists()  # written before MLflow was asked to store it
    assert sorted(p.name for p in (tmp_path / ".checkpoints_run").glob("step_*"))[-1] == "step_0000012"
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "run")  # as Snakemake deletes a failed job's outputs
    cli.run(sft.main, parser, argv + out)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == (tmp_path / "clean" / "run" / "metrics.json").read_bytes()
    assert (tmp_path / "run" / "history.jsonl").read_bytes() == (tmp_path / "clean" / "run" / "history.jsonl").read_bytes()
    assert not (tmp_path / ".checkpoints_run").exists()


# ---------------------------------------------------------------- bad configuration


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overlay", "named"),
    [
        ("trian: {steps: 3}\n", "config key 'trian': unknown key ('trian' was unexpected; did you mean 'train'?)"),
        ("train: {steps: many}\n", "config key 'train.steps': 'many' is not of type 'integer'"),
        ("train: {lr: -1.0}\n", "config key 'train.lr': -1.0 is less than or equal to the minimum of 0"),
        ("latent: {c: 0}\n", "config key 'latent.c': 0 is less than the minimum of 1"),
        ("rl: {group_size: 1}\n", "config key 'rl.group_size': 1 is less than the minimum of 2"),
        (
            "methods: {atp: {latent: {decoder: {hiden_size: 8}}}}\n",
            "config key 'methods.atp.latent.decoder.hiden_size': unknown key",
        ),
        (
            "data: {train: {source: file, format: contract, path: missing/train.jsonl}}\n",
            "'data.train.path': file not found: missing/train.jsonl",
        ),
    ],
    ids=["unknown-key", "wrong-type", "negative-lr", "c-zero", "group-size-one", "nested-override-typo", "missing-file"],
)
def test_a_bad_config_fails_before_any_job_naming_the_key(tmp_path, overlay, named):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    result = snakemake(tmp_path, extra_config=overlay, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_missing_config_file_is_named(tmp_path):
    cmd = snakemake_cmd(tmp_path) + ["--configfile", str(tmp_path / "nope.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "nope.yaml" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- bad data

GOOD = {"id": "a", "question": "Ann has 2 apples and buys 3. How many?", "steps": ["<<2+3=5>>"], "answer": "5", "source": "x"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "c", "question": "Q", "steps": [], "answer": "5", "sour', "invalid JSON"),
        (json.dumps({**GOOD, "answer": "five"}), "is not a number"),
    ],
    ids=["truncated-json", "non-numeric-answer"],
)
def test_bad_data_fails_naming_file_and_line_and_leaves_no_partial_output(tmp_path, line, problem):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "b"}) + "\n" + line + "\n")
    overlay = f"data: {{train: {{source: file, format: contract, path: {bad}}}}}\n"
    result = snakemake(tmp_path, "results/test/data/card.md", extra_config=overlay, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results" / "test" / "logs" / "prepare_data.log").read_text()
    assert f"{bad}:3" in log and problem in log
    data = tmp_path / "results" / "test" / "data"
    assert not data.exists() or not any(p.is_file() for p in data.rglob("*"))


# ---------------------------------------------------------------- tracking

WRITER = """
import sys
from atp.tracking import Tracker
with Tracker({"experiment": "test"}, "writer", sys.argv[1], f"writer-{sys.argv[2]}") as tracker:
    for step in range(1, 21):
        tracker.log_metrics({"x": step, "y": step * 2}, step=step)
    tracker.log_artifact(sys.argv[3])
"""


@pytest.mark.slow
def test_eight_jobs_log_at_once_to_one_sqlite_store(tmp_path):
    import mlflow

    from atp.tracking import start_parent

    parent = start_parent(
        {"tracking_uri": str(tmp_path / "mlflow.db"), "experiment_name": "concurrency"}, "test", tmp_path / "parent.json"
    )
    (tmp_path / "note.txt").write_text("an artifact\n")
    writers = [
        subprocess.Popen(
            [PYTHON, "-c", WRITER, str(tmp_path / "parent.json"), str(i), str(tmp_path / "note.txt")],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    errors = [w.communicate(timeout=300)[1] for w in writers]
    assert all(w.returncode == 0 for w in writers), errors
    client = mlflow.MlflowClient(tracking_uri=parent["tracking_uri"])
    runs = client.search_runs([parent["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    assert sorted(r.info.run_name for r in runs) == [f"writer-{i}" for i in range(8)]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.value for m in client.get_metric_history(run.info.run_id, "x")] == [float(s) for s in range(1, 21)]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]


@pytest.mark.slow
def test_an_unreachable_tracking_server_fails_the_pipeline_clearly_unless_tracking_is_optional(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    unreachable = "mlflow: {tracking_uri: 'http://127.0.0.1:9'}\n"  # the discard port: connection refused
    started = time.time()
    result = snakemake(tmp_path, "results/test/data/card.md", extra_config=unreachable, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results" / "test" / "logs" / "tracking.log").read_text()
    assert "failed after 6 attempts against http://127.0.0.1:9" in log and "mlflow.required: false" in log
    assert not (tmp_path / "results" / "test" / "data").exists()  # the first rule failed: no job ran
    assert time.time() - started < 120

    optional = "mlflow: {tracking_uri: 'http://127.0.0.1:9', required: false}\n"
    snakemake(tmp_path, "results/test/data/card.md", extra_config=optional)
    assert (tmp_path / "results" / "test" / "data" / "card.md").exists()
    assert "tracking is off" in (tmp_path / "results" / "test" / "logs" / "prepare_data.log").read_text()


def test_without_the_mlflow_package_tracking_is_off_when_optional_and_a_clear_error_when_required(tmp_path, monkeypatch):
    """A stock GPU image may lack mlflow (scripts/device_check.sh runs the DAG there with mlflow.required: false)."""
    import sys

    from atp import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    cfg = {"tracking_uri": str(tmp_path / "mlflow.db"), "experiment_name": "atp"}
    started = time.time()
    with pytest.raises(tracking.TrackingError, match="mlflow package cannot be imported"):
        tracking.start_parent({**cfg, "required": True}, "test", tmp_path / "parent.json")
    assert time.time() - started < 5  # not retried
    info = tracking.start_parent({**cfg, "required": False}, "test", tmp_path / "parent.json")
    assert "mlflow package cannot be imported" in info["disabled"]
    job = {"mlflow": {**cfg, "required": False}, "experiment": "test"}
    with tracking.Tracker(job, "sft", tmp_path / "parent.json", "run") as tracker:
        tracker.log_metrics({"x": 1.0}, step=1)
        assert not tracker.enabled


# ---------------------------------------------------------------- safe loading


def test_nothing_is_loaded_through_pickle():
    """torch.load only with weights_only=True; no pickle, joblib or MLflow's pickled model flavours."""
    sources = [
        p
        for folder in ("atp", "scripts", "workflow")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".smk") or p.name == "Snakefile"
    ]
    assert len(sources) > 20
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        for unsafe in ("import pickle", "pickle.load", "import joblib", "mlflow.pytorch", "mlflow.transformers", "dill"):
            assert unsafe not in text, f"{path}: {unsafe}"


def test_mlflow_ui_instructions_bind_to_localhost():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if "mlflow ui" in line or "mlflow server" in line]
    assert commands and all("--host 127.0.0.1" in line for line in commands), commands
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text(encoding="utf-8")
    assert "mlflow ui --backend-store-uri {store} --host 127.0.0.1" in common


@pytest.mark.slow
def test_a_diverging_stage_exits_with_a_clear_message_and_keeps_its_last_checkpoint(tiny_data, tmp_path):
    """A learning rate of 1e30 blows the loss up: exit code 3, the step named, the last good checkpoint kept."""
    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    job = tiny_config(
        train={
            **cfg["train"],
            "steps": 30,
            "lr": 1e30,
            "warmup_ratio": 0.0,
            "grad_clip": 0.0,
            "checkpoint_every": 1,
            "log_every": 1,
        }
    )
    from atp import config

    config.dump(job, tmp_path / "job.yaml")
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "atp.stages.sft",
            "--config",
            str(tmp_path / "job.yaml"),
            "--method",
            "cot_sft",
            "--data-dir",
            str(data),
            "--out-dir",
            str(tmp_path / "run"),
            "--no-tracking",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 3, result.stderr[-2000:]
    message = re.search(r"training diverged: loss (\S+), gradient norm (\S+) at step (\d+)", result.stderr)
    assert message, result.stderr[-2000:]
    step = int(message.group(3))
    kept = sorted((tmp_path / ".checkpoints_run").glob("step_*"))
    assert kept and int(kept[-1].name[5:]) == step - 1
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.json").exists()

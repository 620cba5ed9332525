"""Cluster execution for real: the SLURM profile's dry run of the paper config, and pipeline jobs
submitted with sbatch to a single-node SLURM cluster started on this machine.

The cluster comes from Debian's slurm-wlm and munge (installed by the fixture with apt-get when
missing, as root; about 20 s) and scripts/slurm/start_slurm.sh. Where that is impossible (not root,
no apt-get, no package registry) the cluster test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT, TEST_CONFIG, job_counts

pytestmark = pytest.mark.slow
SCRIPTS = ROOT / "scripts" / "slurm"
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")


def test_the_slurm_profile_dry_runs_the_paper_config_offline(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cmd = [
        PYTHON,
        "-m",
        "snakemake",
        "-n",
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--workflow-profile",
        str(ROOT / "profiles" / "slurm"),
        "--configfile",
        str(tmp_path / "config" / "paper.yaml"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert (
        counts["train"] == 19 and counts["evaluate"] == 16 and counts["prepare_data"] == 1
    )  # + cot_rl, iCoT, CODI, CoLaR (and CoLaR-5, evaluated only), CoLaR's RL, and the three frozen RL controls, not evaluated


def _install_slurm() -> str | None:
    """Install slurm-wlm and munge if missing; the reason it is impossible, or None."""
    if all(os.path.exists(d) for d in DAEMONS):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "SLURM is not installed and cannot be here (needs root and apt-get: apt-get install -y slurm-wlm munge)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {(done.stdout + done.stderr)[-500:]}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "ATP_SLURM_DIR": str(state)}
    started = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh")], env=env, capture_output=True, text=True, timeout=180)
    try:
        if started.returncode == 2:  # not root, not installed, or someone else's /etc/slurm/slurm.conf
            pytest.skip(started.stderr.strip())
        assert started.returncode == 0, started.stdout + started.stderr + _logs(state)
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], env=env, capture_output=True, text=True, timeout=180)


def _logs(state: Path) -> str:
    return "".join(f"\n== {log}\n{log.read_text()[-3000:]}" for log in sorted((state / "log").glob("*.log")))


def test_pipeline_jobs_run_through_sbatch_on_a_single_node_cluster(slurm_cluster, tmp_path):
    """Data prep and CoT-SFT of the test config as SLURM jobs (the local rules stay local)."""
    workdir = tmp_path / "pipeline"
    shutil.copytree(ROOT / "config", workdir / "config")
    target = "results/test/train/cot_sft/seed0/metrics.json"
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}  # sbatch --export=ALL
    cmd = [
        PYTHON,
        "-m",
        "snakemake",
        target,
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TEST_CONFIG),
        "--executor",
        "slurm",
        "--workflow-profile",
        "none",
        "--jobs",
        "2",
        "--default-resources",
        "slurm_partition=debug",
        "runtime=30",
        "mem_mb=2000",
        "--slurm-no-account",
        "--slurm-keep-successful-logs",
        # No slurmdbd on this cluster: sacct answers "Slurm accounting storage is disabled", and the plugin,
        # polling with sacct by default, would never see a job finish. squeue works (MinJobAge=600).
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:] + _logs(slurm_cluster)
    assert (workdir / target).exists() and (
        workdir / "results" / "test" / "train" / "cot_sft" / "seed0" / "model" / "model.safetensors"
    ).exists()
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.parent.parent.name for p in logs} == {"rule_prepare_data", "rule_train"}, logs
    jobs = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%j %T"], capture_output=True, text=True, timeout=30)
    assert jobs.stdout.split().count("COMPLETED") >= 2, jobs.stdout

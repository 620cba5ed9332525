"""The paper's DAG (config/paper.yaml) run for real on a CPU at toy size: config/paper_tiny.yaml, a tiny Llama with
Llama-3.2's tokenizer and small files in the benchmarks' formats, all written by `python -m atp.paper_tiny`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import PYTHON, ROOT, job_counts, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """(workdir, the dry run's job counts, the config files) after the whole paper DAG ran."""
    workdir = tmp_path_factory.mktemp("paper_tiny")
    shutil.copytree(ROOT / "config", workdir / "config")
    prepare = [PYTHON, "-m", "atp.paper_tiny", "--out", str(workdir / "data" / "paper_tiny")]
    subprocess.run(prepare, cwd=workdir, check=True, capture_output=True, timeout=300)
    configs = [workdir / "config" / "paper.yaml", workdir / "config" / "paper_tiny.yaml"]
    planned = job_counts(snakemake(workdir, "-n", configs=configs).stdout)
    snakemake(workdir, configs=configs)
    return workdir, planned, configs


def test_every_job_of_the_paper_dag_runs_and_writes_the_table(paper):
    from atp import config

    workdir, planned, configs = paper
    cfg = config.load(ROOT / "config" / "config.yaml", *configs)
    enabled = [m for m, spec in cfg["methods"].items() if spec["enabled"] or m == "atp_e15"]
    rows = [m for m in enabled if m != "atp_e15" and not config.is_frozen_control(cfg, m)]
    trained = [m for m in enabled if not cfg["methods"][m].get("evaluates")]  # CoLaR-5 evaluates CoLaR's model
    assert trained != enabled and planned["train"] == len(trained) and planned["evaluate"] == len(rows)
    assert planned["prepare_data"] == planned["table"] == planned["report_figures"] == 1
    assert "Nothing to be done" in snakemake(workdir, "-n", configs=configs).stdout  # every planned job ran
    exp = workdir / "results" / "paper_tiny"
    for method in trained:
        assert (exp / "train" / method / "seed0" / "model" / "meta.json").exists(), method
    csv = (exp / "table.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in csv[1:]) == sorted(rows)  # in the table's order
    table = (exp / "table.md").read_text()
    for suite in ("test", "hard", "easy", "varied"):
        assert f"{suite} acc" in table
        metrics = json.loads((exp / "eval" / "atp_rl" / "seed0" / suite / "metrics.json").read_text())
        assert metrics["n"] == 8 and metrics["samples"] == cfg["eval"]["samples"] == 3
    card = json.loads((exp / "data" / "card.json").read_text())
    assert card["vocab_size"] == 128256 + 3
    assert (exp / "report" / "rl_vs_frozen.md").exists()


def test_the_rl_start_was_trained_on_stop_labels_and_its_stop_head_stops_on_some_rows(paper):
    """What would have caught the stop-label bug: the RL start (curriculum stage 8 of 10) saw "stop" labels, and
    its stop head, by argmax as in evaluation, ends reasoning before the c*S budget on some rows."""
    import torch

    from atp import config
    from atp.data.records import read_jsonl
    from atp.latent import LatentConfig, load_latent
    from atp.modeling import prompt_ids

    workdir, _, configs = paper
    cfg = config.load(ROOT / "config" / "config.yaml", *configs)
    start = cfg["methods"]["atp_rl"]["init"]
    latent = LatentConfig(**{**config.method_latent(cfg, start), "variant": cfg["methods"][start]["variant"]})
    assert 2 <= latent.stage(config.method_train(cfg, start)["steps"] - 1) < latent.max_steps
    run = workdir / "results" / "paper_tiny" / "train" / start / "seed0"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    shares = [h["train/stop_share"] for h in history if "train/stop_share" in h]
    assert shares and shares[0] == 0 and shares[-1] > 0.3  # stage 1 has no surplus slot; stage 8 mostly surplus
    model, tokenizer = load_latent(run / "model")
    questions = [r["question"] for r in read_jsonl(workdir / "results" / "paper_tiny" / "data" / "val.jsonl")]
    with torch.no_grad():
        used = [g["latents"] for g in model.generate([prompt_ids(tokenizer, q) for q in questions], mode="mu")]
    assert all(n % latent.c == 0 for n in used) and min(used) < latent.slots, used


def test_the_instruct_tokenizer_path_runs_cot_sft_latent_sft_rl_and_evaluation(tmp_path):
    """The paper's model is Llama-3.2-1B-Instruct, whose tokenizer has no pad token (the pipeline adds `<|pad|>`: a
    vocabulary of 128,260) and ends a turn with `<|eot_id|>` (128009), not the base model's `<|end_of_text|>`. Its
    path through CoT-SFT, the latent stage, RL and evaluation, at toy size."""
    import math

    from atp.latent import load_latent
    from atp.modeling import load_tokenizer
    from atp.text import PAD

    shutil.copytree(ROOT / "config", tmp_path / "config")
    prepare = [PYTHON, "-m", "atp.paper_tiny", "--instruct", "--out", str(tmp_path / "data" / "paper_tiny")]
    subprocess.run(prepare, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    configs = [tmp_path / "config" / "paper.yaml", tmp_path / "config" / "paper_tiny.yaml"]
    exp = tmp_path / "results" / "paper_tiny"
    targets = [
        "results/paper_tiny/eval/cot_sft/seed0/test/metrics.json",
        "results/paper_tiny/eval/atp_rl/seed0/test/metrics.json",
    ]
    snakemake(tmp_path, *targets, configs=configs)
    card = json.loads((exp / "data" / "card.json").read_text())
    assert card["vocab_size"] == 128256 + 4  # the three latent markers and <pad>
    tokenizer = load_tokenizer(exp / "data" / "tokenizer")
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.eos_token_id == 128009 and tokenizer.pad_token == PAD
    model, latent_tokenizer = load_latent(exp / "train" / "atp_rl" / "seed0" / "model")
    assert model.eos_id == 128009 and len(latent_tokenizer) == 128260
    for method in ("cot_sft", "atp_rl"):
        metrics = json.loads((exp / "eval" / method / "seed0" / "test" / "metrics.json").read_text())
        assert metrics["n"] == 8 and all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics

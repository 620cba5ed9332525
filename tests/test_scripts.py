"""The search and benchmark scripts run (so that what docs/experiments/README.md reports can be rerun)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import PYTHON, ROOT

ATP_POINT = {
    "variant": "atp",
    "steps": 3,
    "stage_steps": 1,
    "batch_size": 4,
    "decoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
}
ICOT_POINT = {"variant": "icot", "steps": 3, "batch_size": 4, "removal_every": 1}


@pytest.mark.slow
@pytest.mark.parametrize("setting", [ATP_POINT, ICOT_POINT], ids=["atp", "icot"])
def test_latent_search_scores_one_point_on_validation(tiny_data, tmp_path, setting):
    from atp import modeling
    from conftest import write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "cot", {})
    out = tmp_path / "points.jsonl"
    subprocess.run(
        [
            PYTHON,
            str(ROOT / "scripts" / "search" / "latent_search.py"),
            "--data-dir",
            str(data),
            "--init",
            str(tmp_path / "cot"),
            "--setting",
            json.dumps(setting),
            "--out",
            str(out),
            "--val",
            "4",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    point = json.loads(out.read_text().splitlines()[-1])
    assert point["setting"] == setting and 0.0 <= point["val_accuracy"] <= 1.0
    assert ("val_accuracy_sample" in point) == (setting["variant"] == "atp")


def test_the_scaling_grid_gives_icot_a_scaled_removal_schedule_and_codi_no_curriculum():
    out = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "scaling_study.py"), "grid", "--data", "D", "--widths", "64", "--budgets", "2"]
        + ["--seeds", "0", "--reuse-cot", "--methods", "icot", "codi", "coconut"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    points = {p["setting"]["variant"]: p["setting"] for p in (json.loads(x) for x in out.splitlines() if x.startswith("{"))}
    assert points["icot"]["removal_every"] == 28 and "stage_steps" not in points["icot"]  # 60/5100 of 2400 steps
    assert points["codi"]["stage_steps"] == 0 and points["coconut"]["stage_steps"] == 600


def test_the_config_series_scales_each_methods_steps_curriculum_and_removal_pace_by_the_budget():
    """config/config.yaml's budget is 4x (1200-step curriculum stages): at 1x every method gets a quarter of its steps,
    pause a quarter of its stage length, iCoT a quarter of its removal interval; CODI (no curriculum) and CoLaR (no
    curriculum stages) get no stage override."""
    out = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "scaling_study.py"), "grid", "--from-config", "config/config.yaml"]
        + ["--data", "default", "--init", "default/cot", "--budgets", "1", "--seeds", "0"]
        + ["--methods", "icot", "codi", "colar", "pause", "nocot_ft"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    points = {p["method"]: p for p in (json.loads(x) for x in out.splitlines() if x.startswith("{"))}
    assert points["icot"]["overrides"] == {"train": {"steps": 1275}, "removal": {"every": 15}}
    assert points["pause"]["overrides"] == {"train": {"steps": 1275}, "latent": {"stage_steps": 300}}
    assert points["codi"]["overrides"] == points["colar"]["overrides"] == {"train": {"steps": 1200}}
    assert points["nocot_ft"]["name"] == "default-w128-x1-nocot_ft-s0" and points["nocot_ft"]["init"] == "default/cot"
    bad = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "scaling_study.py"), "grid", "--from-config", "config/config.yaml"]
        + ["--data", "default", "--methods", "cot_sft"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "methods.cot_sft" in bad.stderr


@pytest.mark.slow
def test_the_config_series_runs_through_run_grid_collect_and_plot(tiny_data, tmp_path):
    """Two budgets of a tiny config's iCoT and No-CoT FT, each its pipeline stage through run_grid; the full budget read
    from a run's folder by `collect`; margins taken within the series even beside another series' controls."""
    from atp import config, modeling
    from conftest import tiny_config, write_data_dir

    cfg, splits, tok = tiny_data
    write_data_dir(tmp_path / "root" / "D", splits, tok)
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "root" / "D" / "cot", {})
    pause = {"stage": "latent_sft", "variant": "pause", "init": "cot_sft", "train": {"steps": 6}}
    methods = {
        "cot_sft": {"stage": "sft"},
        "icot": {"stage": "sft", "format": "icot", "init": "cot_sft", "removal": {"every": 4}, "train": {"steps": 6}},
        "nocot_ft": {"stage": "sft", "format": "nocot", "init": "cot_sft", "train": {"steps": 6}},
        "pause": pause,
    }
    # A 2x config (curriculum stages of 600): at 1x, half of every method's steps and of iCoT's removal interval.
    pipeline = tiny_config(methods=methods, train={"val_samples": 4}, latent={"stage_steps": 600})
    config.dump(pipeline, tmp_path / "config.yaml")
    script = str(ROOT / "scripts" / "search" / "scaling_study.py")
    grid = subprocess.run(
        [PYTHON, script, "grid", "--from-config", str(tmp_path / "config.yaml"), "--data", "D", "--init", "D/cot"]
        + ["--budgets", "1", "--seeds", "0", "--methods", "icot", "nocot_ft", "pause"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (tmp_path / "grid.jsonl").write_text(grid)
    assert json.loads(grid.splitlines()[1])["overrides"] == {"train": {"steps": 3}, "removal": {"every": 2}}
    results = tmp_path / "results.jsonl"
    subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "run_grid.py"), "--grid", str(tmp_path / "grid.jsonl")]
        + ["--root", str(tmp_path / "root"), "--out", str(results), "--deadline", "600"],
        check=True,
        capture_output=True,
        text=True,
        timeout=700,
    )
    lines = {x["name"]: x for x in map(json.loads, results.read_text().splitlines())}
    assert set(lines) == {"D-w32-x1-icot-s0", "D-w32-x1-nocot_ft-s0", "D-w32-x1-pause-s0"}
    assert all(x["rc"] == 0 and 0 <= x["val/accuracy"] <= 1 for x in lines.values())
    job = config.load(tmp_path / "root" / "points" / "D-w32-x1-icot-s0" / "job.yaml")
    assert job["train"]["steps"] == 3 and job["methods"]["icot"]["removal"]["every"] == 2
    # The full budget: a run folder with the pipeline's metrics for two seeds.
    for method, seed, acc in [("icot", 0, 0.6), ("icot", 1, 0.7), ("nocot_ft", 0, 0.5), ("pause", 0, 0.55)]:
        folder = tmp_path / "run" / "train" / method / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"val/accuracy": acc, "train/loss": 1.0}))
    collected = subprocess.run(
        [PYTHON, script, "collect", "--run", str(tmp_path / "run"), "--methods", "icot", "nocot_ft", "pause"]
        + ["--config", str(tmp_path / "config.yaml"), "--data", "D"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    full = tmp_path / "full.jsonl"
    full.write_text(collected)
    assert [json.loads(x)["name"] for x in collected.splitlines()] == [
        "D-w32-x2-icot-s0",
        "D-w32-x2-icot-s1",
        "D-w32-x2-nocot_ft-s0",
        "D-w32-x2-pause-s0",
    ]
    # Another series at the same width, budget and seed, whose controls must not be used for this one's margins.
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(json.dumps({"name": f"E-w32-x2-{m}-s0", "val_accuracy": v}) + "\n" for m, v in [("pause", 0.9), ("nocot", 0.9)])
    )
    subprocess.run(
        [PYTHON, script, "plot", "--results", str(results), str(full), str(other), "--out", str(tmp_path / "plot")],
        check=True,
        capture_output=True,
        text=True,
    )
    table = (tmp_path / "plot" / "scaling.md").read_text()
    assert "| 32 | 2x | 0 | icot (D) | 60.0 | 55.0 | 50.0 | +5.0 |" in table  # seed 1 has no controls: no row
    assert "| 32 | icot (D) | 2x | +5.0 +- 0.0 (n=1) |" in table and "(E)" not in table


@pytest.mark.slow
def test_the_kv_cache_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            PYTHON,
            str(ROOT / "scripts" / "bench_latent_loop.py"),
            "--latents",
            "2",
            "--repeats",
            "1",
            "--batch",
            "2",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["pass"] for r in rows] == ["forward", "forward+backward"] and all(r["speedup"] > 0 for r in rows)


def test_the_scaling_study_computes_each_methods_margin_over_the_better_control(tmp_path):
    """Hand-made results: at budget 1, seed 0, Coconut 60 against pause 55 and No-CoT FT 57: margin +3."""
    grid = subprocess.run(
        [
            PYTHON,
            str(ROOT / "scripts" / "search" / "scaling_study.py"),
            "grid",
            "--data",
            "D",
            "--widths",
            "64",
            "--budgets",
            "1",
            "2",
            "--seeds",
            "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    points = [json.loads(line) for line in grid.splitlines() if line.startswith("{")]
    assert len(points) == 1 + 2 * 7 and points[0]["save"] == "D/cot_w64" and all(p["init"] == "D/cot_w64" for p in points[1:])
    assert {p["setting"]["steps"] for p in points[1:]} == {1200, 2400}
    results = tmp_path / "results.jsonl"
    rows = [("pause", 0.55), ("nocot", 0.57), ("coconut", 0.60), ("simcot", 0.50)]
    results.write_text("".join(json.dumps({"name": f"D-w64-x1-{m}-s0", "val_accuracy": v}) + "\n" for m, v in rows))
    subprocess.run(
        [
            PYTHON,
            str(ROOT / "scripts" / "search" / "scaling_study.py"),
            "plot",
            "--results",
            str(results),
            "--out",
            str(tmp_path / "out"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    table = (tmp_path / "out" / "scaling.md").read_text()
    assert (
        "| 64 | 1x | 0 | coconut | 60.0 | 55.0 | 57.0 | +3.0 |" in table and "| 64 | simcot | 1x | -7.0 +- 0.0 (n=1) |" in table
    )
    assert (tmp_path / "out" / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # A tagged variant (a --latent setting under its own name), read from a second results file against the same controls.
    tagged = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "scaling_study.py"), "grid", "--data", "D", "--widths", "64", "--budgets", "1"]
        + ["--seeds", "0", "--reuse-cot", "--methods", "simcot", "--latent", '{"decoder_weight": 0.1}', "--tag", "dec01"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (point,) = [json.loads(line) for line in tagged.splitlines() if line.startswith("{")]
    assert point["name"] == "D-w64-x1-simcot_dec01-s0" and point["setting"]["decoder_weight"] == 0.1
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"name": point["name"], "val_accuracy": 0.62}) + "\n")
    subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "scaling_study.py"), "plot", "--results", str(results), str(more)]
        + ["--out", str(tmp_path / "out2"), "--variants", "simcot_dec01"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "| 64 | simcot_dec01 | 1x | +5.0 +- 0.0 (n=1) |" in (tmp_path / "out2" / "scaling.md").read_text()


@pytest.mark.slow
def test_suite_twins_scores_a_model_on_candidate_suite_settings(tiny_data, tmp_path):
    from atp import modeling
    from conftest import write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "cot", {})
    out = tmp_path / "suites.jsonl"
    subprocess.run(
        [
            PYTHON,
            str(ROOT / "scripts" / "search" / "suite_twins.py"),
            "--data-dir",
            str(data),
            "--model",
            str(tmp_path / "cot"),
            "--n",
            "6",
            "--out",
            str(out),
            "--candidate",
            'hard:q30={"min_ops": 2, "max_quantity": 30, "max_result": 180}',
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["suite"] == "hard" and line["label"] == "q30" and line["n"] == 6 and 0.0 <= line["accuracy"] <= 1.0


def test_paired_flips_counts_the_questions_two_models_disagree_on():
    sys.path.insert(0, str(ROOT / "scripts" / "search"))
    from paired_flips import paired_flips

    base = [True] * 80 + [False] * 20
    other = [True] * 70 + [False] * 10 + [True] * 15 + [False] * 5  # 10 lost, 15 gained
    result = paired_flips(base, other)
    assert (result["gained"], result["lost"], result["n"]) == (15, 10, 100)
    assert result["difference"] == pytest.approx(5.0) and result["accuracy"] - result["base_accuracy"] == pytest.approx(5.0)
    assert result["standard_error"] == pytest.approx(5.0) and result["z"] == pytest.approx(1.0)
    assert paired_flips(base, base)["z"] == 0.0
    with pytest.raises(ValueError, match="equally long"):
        paired_flips(base, other[:-1])


def test_why_flipped_finds_the_false_equations_behind_lost_and_gained_answers():
    sys.path.insert(0, str(ROOT / "scripts" / "search"))
    from paired_flips import why_flipped

    base = ["<<2*6=12>>\n<<12-4=8>>\n### 8", "<<3+4=8>>\n### 8", "<<5+5=10>>\n### 10"]
    other = ["<<6*2=12>>\n<<12-4=6>>\n### 6", "<<3+4=7>>\n### 7", "<<5+5=10>>\n### 10"]
    result = why_flipped(base, other, [True, False, True], [False, True, True])
    assert result == {
        "chains_changed": 2,
        "lost_with_a_false_step": 1,  # 12-4=6 in the new chain
        "gained_from_a_false_step": 1,  # 3+4=8 in the base's
        "false_chains_base": 1,
        "false_chains": 1,
    }


def test_paired_flips_decodes_validation_with_each_model(tiny_data, tmp_path):
    from atp import modeling
    from conftest import write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "cot", {})
    out = tmp_path / "flips.jsonl"
    script = str(ROOT / "scripts" / "search" / "paired_flips.py")
    args = ["--data-dir", str(data), "--base", str(tmp_path / "cot"), "--model", str(tmp_path / "cot"), "--out", str(out)]
    subprocess.run([PYTHON, script, *args, "--max-new-tokens", "8"], check=True, capture_output=True, text=True, timeout=300)
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["splits"] == ["val"] and line["n"] == len(splits["val"]) and "by_split" not in line
    assert line["gained"] == line["lost"] == 0 and line["z"] == 0.0 and line["chains_changed"] == 0
    pooled = [*args, "--split", "val", "--split", "train", "--max-new-tokens", "8"]
    subprocess.run([PYTHON, script, *pooled], check=True, capture_output=True, text=True, timeout=300)
    line = json.loads(out.read_text().splitlines()[-1])
    assert line["n"] == len(splits["val"]) + len(splits["train"]) and sorted(line["by_split"]) == ["train", "val"]
    refused = subprocess.run([PYTHON, script, *args, "--split", "test"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "read once" in refused.stderr


def test_rl_search_pairs_a_run_with_the_frozen_control_that_samples_as_it_does():
    """The schedule is read from the resolved settings: a point stating the default temperature pairs with a control
    that leaves it out, and one at another temperature or length does not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rl_search", ROOT / "scripts" / "search" / "rl_search.py")
    rl_search = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_search)
    from atp import config

    default_temperature = config.method_rl(config.resolve(config.load(ROOT / "config" / "config.yaml")), "atp_rl")["temperature"]
    control = rl_search.schedule({"name": "frozen", "rl": {"frozen": True}})
    assert rl_search.schedule({"name": "run", "rl": {"temperature": default_temperature}}) == control
    assert rl_search.schedule({"name": "hot", "rl": {"temperature": default_temperature + 0.3}}) != control
    assert rl_search.schedule({"name": "long", "train": {"steps": 10 * control["steps"]}}) != control
    assert rl_search.schedule({"name": "seed1", "seed": 1, "rl": {"frozen": True}}) != control


@pytest.mark.slow
def test_stage_point_runs_a_methods_own_stage_with_overrides_and_scores_validation(tiny_data, tmp_path):
    from atp import config, modeling
    from conftest import tiny_config, write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "cot", {})
    icot = {"stage": "sft", "format": "icot", "init": "cot_sft", "removal": {"every": 5}}
    pipeline = tiny_config(methods={"cot_sft": {"stage": "sft"}, "icot": icot}, train={"val_samples": 4})
    config.dump(pipeline, tmp_path / "config.yaml")
    results = tmp_path / "results.jsonl"
    overrides = {"removal": {"every": 1}, "train": {"steps": 3}}
    subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "search" / "stage_point.py"), "--method", "icot", "--overrides", json.dumps(overrides)]
        + ["--config", str(tmp_path / "config.yaml"), "--init", str(tmp_path / "cot"), "--data-dir", str(data)]
        + ["--out-dir", str(tmp_path / "point"), "--results", str(results)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (line,) = [json.loads(x) for x in results.read_text().splitlines()]
    assert line["rc"] == 0 and line["overrides"] == overrides and 0 <= line["val/accuracy"] <= 1
    job = config.load(tmp_path / "point" / "job.yaml")
    assert job["methods"]["icot"]["removal"]["every"] == 1 and job["train"]["steps"] == 3

"""The search and benchmark scripts run (so that what docs/miniature.md reports can be rerun)."""

from __future__ import annotations

import json
import subprocess

from conftest import PYTHON, ROOT


def test_latent_search_scores_one_point_on_validation(tiny_data, tmp_path):
    from atp import modeling
    from conftest import write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "cot", {})
    setting = {"variant": "atp", "steps": 3, "stage_steps": 1, "batch_size": 4, "decoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}}
    out = tmp_path / "points.jsonl"
    subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "latent_search.py"), "--data-dir", str(data), "--init", str(tmp_path / "cot"), "--setting", json.dumps(setting),
         "--out", str(out), "--val", "4", "--checkpoint-dir", str(tmp_path / "ckpt")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    point = json.loads(out.read_text().splitlines()[-1])
    assert point["setting"] == setting and 0.0 <= point["val_accuracy"] <= 1.0 and "val_accuracy_sample" in point


def test_the_kv_cache_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([PYTHON, str(ROOT / "scripts" / "bench_latent_loop.py"), "--latents", "2", "--repeats", "1", "--batch", "2", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert [r["pass"] for r in rows] == ["forward", "forward+backward"] and all(r["speedup"] > 0 for r in rows)

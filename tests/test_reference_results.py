"""The reference results in docs/results/ and the README's table made from them."""

from __future__ import annotations

import json

import pytest

from atp import reference_results as ref

TABLE_CSV = (
    "label,seeds,test_acc,hard_acc,avg_acc,avg_acc_std,avg_tokens\n"
    "CoT-SFT,2,80.25,20.0,50.125,1.5,30.5\n"
    "ATP-Latent (SFT),2,70.0,30.0,50.0,2.25,9.0\n"
)


def reference(tmp_path, seeds_column=TABLE_CSV):
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "table.md").write_text("# Results\n\nProduced from git commit abc1234 (dirty: False), job config hash x.\n")
    (run / "table.csv").write_text(seeds_column)
    (run / "report" / "accuracy_vs_tokens.png").write_bytes(b"\x89PNG")
    (run / "report" / "rl_vs_frozen.md").write_text("| run |\n")
    (run / "report" / "registry.json").write_text("{}")
    return run


def test_save_copies_the_table_and_report_and_records_where_the_run_came_from(tmp_path):
    out = tmp_path / "docs" / "results" / "default"
    saved = ref.save(reference(tmp_path), out, "2-core VM", 2871.4, "2026-12-06")
    assert saved == {"commit": "abc1234", "dirty": False, "machine": "2-core VM", "seconds": 2871, "date": "2026-12-06"}
    assert json.loads((out / "run.json").read_text()) == saved
    assert sorted(p.name for p in (out / "report").iterdir()) == ["accuracy_vs_tokens.png", "rl_vs_frozen.md"]
    assert (out / "table.csv").read_text() == TABLE_CSV


def test_save_refuses_a_table_without_its_commit_line(tmp_path):
    run = reference(tmp_path)
    (run / "table.md").write_text("# Results\n")
    with pytest.raises(ValueError, match="table.md"):
        ref.save(run, tmp_path / "out", "vm", 1.0)


def test_the_readme_block_is_rendered_from_the_reference_and_a_changed_figure_is_caught(tmp_path):
    out = tmp_path / "ref"
    ref.save(reference(tmp_path), out, "2-core VM", 2871, "2026-12-06")
    block = ref.render(out)
    assert "| CoT-SFT | 80.2 | 20.0 | 50.1 ± 1.5 | 30.5 |" in block  # two seeds: the average carries its spread
    assert "at commit abc1234" in block and "47 min 51 s of Snakemake on 2-core VM" in block
    readme = f"# Title\n\nText.\n\n{ref.BEGIN.format(source='old')}\nstale\n{ref.END}\n\nAfter.\n"
    updated = ref.replace_block(readme, block)
    assert ref.readme_block(updated) == block and updated.endswith("\n\nAfter.\n") and "stale" not in updated
    (out / "table.csv").write_text(TABLE_CSV.replace("80.25", "81.25"))
    assert ref.readme_block(updated) != ref.render(out)


def test_a_row_trained_once_shows_no_spread_beside_rows_over_seeds(tmp_path):
    out = tmp_path / "ref"
    table = TABLE_CSV.replace("CoT-SFT,2,80.25,20.0,50.125,1.5", "CoT-SFT,1,80.25,20.0,50.125,0.0")
    ref.save(reference(tmp_path, table), out, "2-core VM", 2871, "2026-12-06")
    block = ref.render(out)
    assert "| CoT-SFT | 80.2 | 20.0 | 50.1 | 30.5 |" in block  # one model, every seed's start: no "± 0.0"
    assert "| ATP-Latent (SFT) | 70.0 | 30.0 | 50.0 ± 2.2 | 9.0 |" in block
    assert "mean ± std over 2 training seeds (CoT-SFT: trained once)" in block


def test_the_readme_table_equals_its_reference():
    """The README quotes no figure the committed reference does not hold: rerun `python -m atp.reference_results
    readme` after saving a new reference run."""
    assert ref.main(["readme", "--check"]) == 0

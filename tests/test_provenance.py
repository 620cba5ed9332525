"""The code version the workflow gives each job: which edits change it, and which do not."""

import shutil
from pathlib import Path

import pytest

from atp.runtime import source_digest


def _package(root: Path) -> Path:
    """pkg.stage imports pkg.helpers inside a function; pkg.helpers imports .core relatively; pkg.other is unused."""
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""pkg."""\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("import json\n\n\ndef main():\n    from pkg.sub.helpers import value\n\n    return value\n")
    (pkg / "sub" / "helpers.py").write_text("from .core import value\n")
    (pkg / "sub" / "core.py").write_text("value = 1\n")
    (pkg / "other.py").write_text("value = 2\n")
    return pkg


def test_an_edit_to_a_module_the_stage_imports_changes_its_digest_and_others_do_not(tmp_path):
    pkg = _package(tmp_path)
    before = source_digest("pkg.stage", pkg)
    assert before == source_digest("pkg.stage", pkg)
    (pkg / "other.py").write_text("value = 3\n")
    assert source_digest("pkg.stage", pkg) == before
    (pkg / "sub" / "core.py").write_text("value = 1  # reached through a relative import inside a lazy one\n")
    after = source_digest("pkg.stage", pkg)
    assert after != before
    (pkg / "sub" / "__init__.py").write_text('"""A parent package runs on import too."""\n')
    assert source_digest("pkg.stage", pkg) != after


def test_an_unknown_module_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="pkg.missing"):
        source_digest("pkg.missing", _package(tmp_path))


def test_the_stages_depend_on_what_they_run_and_not_on_each_other(tmp_path):
    import atp

    root = Path(atp.__file__).parent
    sft, latent = source_digest("atp.stages.sft"), source_digest("atp.stages.latent_sft")
    assert len({sft, latent, source_digest("atp.stages.rl"), source_digest("atp.stages.prepare_data")}) == 4
    # The SFT stage does not import the latent loop, so editing the loop must not rerun CoT-SFT (on a copy).
    shutil.copytree(root, tmp_path / "atp", ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest("atp.stages.sft", tmp_path / "atp") == sft
    objective = tmp_path / "atp" / "latent" / "objective.py"
    objective.write_text(objective.read_text() + "\n# edited\n")
    assert source_digest("atp.stages.sft", tmp_path / "atp") == sft
    assert source_digest("atp.stages.latent_sft", tmp_path / "atp") != latent

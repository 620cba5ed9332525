"""The two commands: ranges in pyproject.toml, the exact set in requirements.lock that the README's commands, .ci/run and
environment.yml install."""

import re
import tomllib

import yaml

from conftest import ROOT

LOCK = ROOT / "requirements.lock"


def _lock() -> dict[str, str]:
    """requirements.lock's exact versions by canonical name."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_pyproject_ranges_admit_the_lock_and_the_supported_pythons():
    """pyproject.toml holds ranges with lower bounds (Python 3.11 and 3.12, torch from the stock CUDA image's 2.11);
    requirements.lock pins every dependency, direct and transitive, at a version inside its range."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = SpecifierSet(project["requires-python"])
    assert "3.11.9" in python and "3.12.3" in python
    lock = _lock()
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    for req in requirements:
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: no lower bound"
        assert canonicalize_name(req.name) in lock, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(lock[canonicalize_name(req.name)]), (
            f"{req}: the lock's {lock[canonicalize_name(req.name)]} is outside"
        )
    torch = next(r for r in requirements if r.name == "torch")
    assert "2.11.0" in torch.specifier and lock["torch"] == "2.13.0"  # the CPU build here; a range alone pulls CUDA


def test_this_environment_is_the_lock():
    """What the two commands installed is the lock, package for package (a hand install that the lock lacks
    would be missed only by this check's other direction, which a fresh CI clone covers)."""
    import importlib.metadata

    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(d.metadata["Name"]): d.version.split("+")[0] for d in importlib.metadata.distributions()}
    differ = {name: (version, installed.get(name)) for name, version in _lock().items() if installed.get(name) != version}
    assert not differ, f"installed versions differ from requirements.lock (lock, installed): {differ}"


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-c requirements.lock" in pip_section and "python=3.11" in env["dependencies"]


def _readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    commands = _readme_commands()
    install_and_run, install_and_test = commands[:2]  # the first installs and runs the default pipeline, the second the tests
    assert install_and_run.endswith(".venv/bin/snakemake") and "pip install -c requirements.lock -e ." in install_and_run
    assert "pip install -c requirements.lock -e '.[test]'" in install_and_test
    demo = re.search(r"`([^`]*snakemake --configfile .test/config/config.yaml)`", (ROOT / "README.md").read_text())
    assert demo and "pip install" in demo.group(1)  # the test-size demo, inline before them
    assert "snakemake" in install_and_run and "pip install" in install_and_run
    assert "pytest" in install_and_test and "pip install" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test in ci

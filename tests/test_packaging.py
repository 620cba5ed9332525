"""The two commands: pins agree between pyproject.toml and environment.yml; .ci/run runs the README's test command."""

import re
import tomllib

import yaml

from conftest import ROOT


def _pins(requirements):
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", req.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_pyproject_pins_are_exact_and_match_environment_yml():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    pyproject = _pins(requirements)
    assert len(pyproject) == len(requirements), "every dependency is pinned with =="
    assert pyproject["torch"] == "2.13.0"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == pyproject
    assert "python=3.11" in env["dependencies"]
    assert project["requires-python"] == "==3.11.*"


def _readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    commands = _readme_commands()
    install_and_run, install_and_test = commands[:2]  # the first installs and runs the default pipeline, the second the tests
    assert install_and_run.endswith(".venv/bin/snakemake") and "pip install" in install_and_run
    demo = re.search(r"`([^`]*snakemake --configfile .test/config/config.yaml)`", (ROOT / "README.md").read_text())
    assert demo and "pip install" in demo.group(1)  # the test-size demo, inline before them
    assert "snakemake" in install_and_run and "pip install" in install_and_run
    assert "pytest" in install_and_test and "pip install" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test in ci

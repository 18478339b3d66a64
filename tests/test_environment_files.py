"""The install paths agree: one constraints file, the exact torch pins, Python 3.11."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower()] = version
    return pins


def test_torch_pins_are_exact():
    pins = constraints()
    assert pins["torch"] == "2.14.1"
    assert pins["torchvision"] == "0.29.1"


def test_environment_yml_uses_python_311_and_the_constraints_file():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-c constraints.txt" in pip_section
    assert any(item.startswith("-e .[dev]") for item in pip_section)


def test_pyproject_agrees_with_the_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"].startswith(">=3.11")
    pins = constraints()
    declared = project["dependencies"] + [
        d for extra in project["optional-dependencies"].values() for d in extra
    ]
    for requirement in declared:
        name = re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower()
        if name == "hdmnet-core":
            continue
        assert name in pins, (
            f"{name} is declared in pyproject.toml but not pinned in constraints.txt"
        )
        if "==" in requirement:
            assert requirement.split("==")[1] == pins[name]


def test_every_install_path_uses_the_constraints_file():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme

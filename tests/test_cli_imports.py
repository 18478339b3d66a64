"""Issue 12 problem 5: the CLI imports a command's module only when that command runs.

Measured as the modules a real ``python -m hdmnet_core ...`` process imports
(``-X importtime`` lists every one), not as time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hdmnet_core import cli

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "matplotlib", "datasets", "scipy"}


def imported_top_level_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hdmnet_core", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, result


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("prepare", "--help"),
        ("prepare", "pascal", "--help"),
        ("export-hf", "--help"),
        ("train", "--help"),
    ],
)
def test_help_imports_no_heavy_module(args: tuple[str, ...]) -> None:
    modules, result = imported_top_level_modules(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: python -m hdmnet_core" in result.stdout
    assert "hdmnet_core" in modules  # the measurement itself works
    if args[0] == "train":  # its module is the lead's: only check what the CLI adds
        return
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_verify_imports_no_heavy_module(tmp_path: Path) -> None:
    modules, result = imported_top_level_modules(
        "prepare", "pascal", "--root", str(tmp_path), "--verify"
    )
    assert result.returncode == 1  # nothing prepared there
    assert "prepared.json missing" in result.stdout
    assert "PIL" in modules  # it did run the check
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_help_lists_every_command_of_the_table() -> None:
    _, result = imported_top_level_modules("--help")
    for name in cli.COMMANDS:
        assert name in result.stdout


def test_the_table_help_is_the_modules_own_help() -> None:
    for name, entry in cli.COMMANDS.items():
        try:
            parser = cli.build_parser(name)
        except cli.CommandUnavailable:
            continue  # listed ahead of its module (checked below)
        action = next(a for a in parser._subparsers._group_actions)  # type: ignore[union-attr]
        helps = {choice.dest: choice.help for choice in action._choices_actions}  # type: ignore[attr-defined]
        assert helps[name] == entry.help, name


def test_a_listed_command_without_its_module_is_not_available(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(
        cli.COMMANDS, "ghost", cli.Command("hdmnet_core.engine.no_such_module", "a later command")
    )
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    assert "a later command" in capsys.readouterr().out
    assert cli.main(["ghost", "--anything"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: command 'ghost' is not available in this version "
        "(hdmnet_core.engine.no_such_module is missing)\n"
    )
    with pytest.raises(SystemExit):  # the other commands still work
        cli.main(["prepare", "pascal", "--help"])


def test_an_import_error_inside_an_existing_module_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "broken_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "command.py").write_text(
        textwrap.dedent(
            """
            import a_dependency_that_is_not_installed  # noqa: F401

            def add_parser(subparsers):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "broken", cli.Command("broken_pkg.command", "broken"))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        cli.main(["broken"])


def test_expected_errors_are_one_tuple(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class CheckpointError(RuntimeError):
        pass

    def fail(args: object) -> int:
        raise CheckpointError("run.pt: not a checkpoint")

    import argparse

    monkeypatch.setattr(cli, "EXPECTED_ERRORS", (*cli.EXPECTED_ERRORS, CheckpointError))
    assert cli.run_command(argparse.Namespace(func=fail)) == 2
    assert capsys.readouterr().err == "error: run.pt: not a checkpoint\n"

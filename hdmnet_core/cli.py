"""``python -m hdmnet_core``: one command-line interface over the package.

Each command lives next to the code it drives and exposes
``add_parser(subparsers) -> None``; the parser sets ``func`` to a callable taking the
parsed namespace and returning an exit code. This module only lists them in
:data:`COMMANDS` (name -> module, one-line help), so it shows at a glance which
commands exist, and it imports a command's module only when that command runs:
``--help`` and ``prepare ... --help`` answer without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple

from hdmnet_core.config import ConfigError
from hdmnet_core.data.source import DataError
from hdmnet_core.errors import UserError


class Command(NamedTuple):
    module: str
    """The module holding ``add_parser``."""
    help: str
    """The one line ``--help`` shows (the module's own parser uses the same words)."""


COMMANDS: dict[str, Command] = {
    "reproduce": Command(
        "hdmnet_core.engine.reproduce",
        "execute the notebooks headlessly (papermill), or with --folds/--shots the training "
        "and evaluation chain, and write a results table",
    ),
    "train": Command(
        "hdmnet_core.engine.train",
        "train the base learner (stage 1) or the meta learner (stage 2)",
    ),
    "evaluate": Command(
        "hdmnet_core.engine.evaluate",
        "evaluate a meta-trained checkpoint with the official multi-seed protocol",
    ),
    "predict": Command(
        "hdmnet_core.predict",
        "segment your own query image given annotated support images and a meta checkpoint",
    ),
    "make-synthetic": Command(
        "hdmnet_core.data.synthetic", "generate the synthetic few-shot benchmark"
    ),
    "prepare": Command(
        "hdmnet_core.data.prepare",
        "download, convert and index PASCAL-5i / COCO-20i / FSS-1000, or --verify a tree",
    ),
    "export-hf": Command(
        "hdmnet_core.data.hf",
        "write a prepared dataset's splits as Hugging Face datasets (save_to_disk)",
    ),
    "convert-checkpoint": Command(
        "hdmnet_core.model.convert",
        "import official HDMNet/BAM/ImageNet weights (or export back)",
    ),
    "benchmark": Command(
        "hdmnet_core.benchmark",
        "run the benchmarks in benchmarks/ (tables and JSON with the machine's facts)",
    ),
}
"""Every command, in the order ``--help`` lists them."""

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    FileNotFoundError,
    FileExistsError,
    UserError,
)
"""User errors: printed as one ``error:`` line naming the file or key, exit code 2."""


class CommandUnavailable(RuntimeError):
    """A listed command whose module is not part of this version of the package."""


def load_command(name: str) -> ModuleType:
    """Import the module of command ``name``. A module that does not exist is
    :class:`CommandUnavailable`; any other ImportError (a bug, a missing dependency of
    an existing module) is raised as it is."""
    module = COMMANDS[name].module
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        raise CommandUnavailable(
            f"command {name!r} is not available in this version ({module} is missing)"
        ) from error


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named by ``argv`` (its first word that is not an option)."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command`` (if given) gets its real sub-parser, the
    others are listed by name and help without importing their modules."""
    parser = argparse.ArgumentParser(
        prog="python -m hdmnet_core",
        description="HDMNet workspace: prepare data, train, evaluate and reproduce the paper.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, entry in COMMANDS.items():
        if name == command:
            load_command(name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=entry.help, add_help=False)
    return parser


def error_text(error: BaseException) -> str:
    """The message of an expected error. One raised in a ``DataLoader`` worker arrives
    re-raised by torch with the worker's whole traceback in its message: keep only the
    original message (after the traceback's last ``module.Class:``)."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        kind = type(error)
        marker = f"{kind.__module__}.{kind.__qualname__}: "
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker) :].strip()
    return text


def run_command(args: argparse.Namespace) -> int:
    """Call ``args.func``; expected errors become one line and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as error:
        # Expected user errors: one clear line naming the file or key, no traceback.
        print(f"error: {error_text(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    try:
        parser = build_parser(command)
    except CommandUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_command(parser.parse_args(argv))

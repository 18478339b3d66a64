"""``python -m hdmnet_core``: one command-line interface over the package.

Each subcommand lives next to the code it drives and exposes
``add_parser(subparsers) -> None``; the parser sets ``func`` to a callable taking the
parsed namespace and returning an exit code. This module only lists them, so it
shows at a glance which subcommands exist.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hdmnet_core.config import ConfigError
from hdmnet_core.data.source import DataError

# (module holding add_parser) in the order --help lists them. Only working commands.
COMMAND_MODULES: tuple[str, ...] = (
    "hdmnet_core.engine.reproduce",
    "hdmnet_core.data.synthetic",
    "hdmnet_core.data.prepare",
    "hdmnet_core.model.convert",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hdmnet_core",
        description="HDMNet workspace: prepare data, train, evaluate and reproduce the paper.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as error:
        # Expected user errors: one clear line naming the file or key, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

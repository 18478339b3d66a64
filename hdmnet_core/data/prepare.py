"""``python -m hdmnet_core prepare {pascal,coco,fss1000}``: prepare or verify a real dataset.

Each dataset is its own sub-command with only the flags that apply to it; a flag that
does not apply (``--download`` with ``--verify``, ``--deep`` without it) is an error.
The format of a prepared tree is :mod:`.prepared`, the safe writing :mod:`.staging`,
the conversions :mod:`.pascal`, :mod:`.coco` and :mod:`.fss1000`; this module only
parses, dispatches and reports, and imports them when a command runs (``--help``
imports none of them).

Exit codes: 0 done / no problem; 1 ``--verify`` found problems; 2 bad input (one
``error:`` line naming the file and the problem, from :mod:`hdmnet_core.cli`).
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path
from typing import Any

from hdmnet_core.data.source import DataError

DATASETS: tuple[str, ...] = ("pascal", "coco", "fss1000")
HELP = "download, convert and index PASCAL-5i / COCO-20i / FSS-1000, or --verify a tree"
DATASET_HELP = {
    "pascal": "PASCAL-5i from VOC2012 + SBD (--download, or --voc and --sbd)",
    "coco": "COCO-20i from COCO 2014 (--download, or --coco)",
    "fss1000": "FSS-1000 from HSNet's zip or folder (--fss)",
}
PREPARE_ONLY: dict[str, tuple[str, ...]] = {
    "pascal": ("download", "voc", "sbd", "sbd_list", "train_set", "workers"),
    "coco": ("download", "coco", "crowd", "workers"),
    "fss1000": ("fss",),
}
"""Per dataset, the options that only preparation reads (errors with ``--verify``);
``--copy-images`` and ``--quiet`` are added to every dataset's list."""


# ----------------------------------------------------------------------------- parsers
def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help=HELP,
        description=(
            "Prepare a real dataset under ROOT/<dataset> (see docs/data.md), or check an "
            "existing one with --verify (reads only). One sub-command per dataset: "
            "`prepare pascal --help` lists its options."
        ),
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for dataset in DATASETS:
        sub = datasets.add_parser(
            dataset, help=DATASET_HELP[dataset], description=_description(dataset)
        )
        add_dataset_arguments(sub, dataset)


def dataset_parser(dataset: str, prog: str) -> argparse.ArgumentParser:
    """A stand-alone parser for one dataset (``data_scripts/prepare_<dataset>.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=_description(dataset))
    add_dataset_arguments(parser, dataset)
    return parser


def _description(dataset: str) -> str:
    return (
        f"Prepare {DATASET_HELP[dataset].split(' from ')[0]} under ROOT/{dataset} (ROOT may "
        f"also be that {dataset}/ folder itself), or check it with --verify (reads only)."
    )


def add_dataset_arguments(parser: argparse.ArgumentParser, dataset: str) -> None:
    """The options of ``prepare <dataset>``."""
    parser.add_argument(
        "--root",
        default="data",
        help=f"data root holding {dataset}/, or the {dataset}/ folder itself (default: data)",
    )
    check = parser.add_argument_group("checking (reads only)")
    check.add_argument("--verify", action="store_true", help="check a prepared tree")
    check.add_argument(
        "--deep",
        action="store_true",
        help="with --verify: also convert every source annotation again and compare it "
        "with the prepared mask (slow: reads every source)",
    )
    build = parser.add_argument_group("preparation (not with --verify)")
    if dataset in ("pascal", "coco"):
        build.add_argument("--download", action="store_true", help="fetch the official archives")
    if dataset == "pascal":
        build.add_argument("--voc", help="VOCtrainval_11-May-2012.tar or its extracted tree")
        build.add_argument("--sbd", help="SBD benchmark.tgz or its extracted tree")
        build.add_argument("--sbd-list", help="SBD train_noval.txt (official train list)")
        build.add_argument(
            "--train-set",
            choices=("official", "trainaug"),
            help="'official' (default) = VOC train + SBD train_noval, duplicates removed "
            "(PFENet/BAM voc_sbd_merge_noduplicate, 5953 images); 'trainaug' = VOC train + "
            "all SBD minus VOC val (10582 images)",
        )
    if dataset == "coco":
        build.add_argument(
            "--coco",
            help="folder with train2014/val2014 (.zip or folders) and "
            "annotations_trainval2014.zip or annotations/",
        )
        build.add_argument(
            "--crowd",
            choices=("class", "ignore"),
            help="crowd regions: 'class' = painted with their class like any object "
            "(default, as a plain pycocotools conversion does), 'ignore' = 255",
        )
    if dataset == "fss1000":
        build.add_argument("--fss", help="the FSS-1000 zip or the folder of 1000 class folders")
    if dataset in ("pascal", "coco"):
        build.add_argument("--workers", type=int, help="conversion processes (default 1)")
    build.add_argument(
        "--copy-images",
        action="store_true",
        help="hard-link (or copy, across file systems) the source images into the tree, so "
        "that moving or deleting the source folders does not break it",
    )
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_prepare, dataset=dataset, parser=parser)


def _check_flags(args: argparse.Namespace) -> None:
    """``parser.error`` (exit code 2) for a flag that does not apply."""
    parser: argparse.ArgumentParser = args.parser
    prepare_only = (*PREPARE_ONLY[args.dataset], "copy_images", "quiet")
    if args.verify:
        given = [name for name in prepare_only if getattr(args, name) not in (None, False)]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            parser.error(f"{flags}: not with --verify (it reads the prepared tree only)")
    elif args.deep:
        parser.error("--deep: only with --verify")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: must be at least 1")


# ----------------------------------------------------------------------------- running
def run_prepare(args: argparse.Namespace) -> int:
    """Entry point of ``prepare``: 0 = done, 1 = ``--verify`` found problems; bad input
    raises :class:`DataError` (the CLI prints it as one line, exit code 2)."""
    _check_flags(args)
    root = Path(args.root)
    if args.verify:
        return run_verify(root, args.dataset, deep=args.deep)
    from hdmnet_core.data.staging import print_summary

    marker = prepare_dataset(args, root)
    print_summary(marker)
    return 0


def prepare_dataset(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run the dataset's prepare function; an ``OSError`` (read-only root, disk full,
    permission) becomes a :class:`DataError` naming the file."""
    from hdmnet_core.data.prepared import dataset_folder

    start = time.perf_counter()
    folder = dataset_folder(root, args.dataset)
    try:
        marker = _dispatch(args, root)
    except OSError as error:
        raise DataError(describe_os_error(error, folder)) from error
    print(f"prepared {folder} in {time.perf_counter() - start:.1f} s")
    return marker


def _dispatch(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    progress = not args.quiet
    if args.dataset == "pascal":
        from hdmnet_core.data.pascal import prepare_pascal

        return prepare_pascal(
            root,
            voc=args.voc,
            sbd=args.sbd,
            sbd_list=args.sbd_list,
            download=args.download,
            train_set=args.train_set or "official",
            workers=args.workers or 1,
            progress=progress,
            copy_images=args.copy_images,
        )
    if args.dataset == "coco":
        from hdmnet_core.data.coco import prepare_coco

        return prepare_coco(
            root,
            coco=args.coco,
            download=args.download,
            crowd=args.crowd or "class",
            workers=args.workers or 1,
            progress=progress,
            copy_images=args.copy_images,
        )
    from hdmnet_core.data.fss1000 import prepare_fss1000

    return prepare_fss1000(root, fss=args.fss, progress=progress, copy_images=args.copy_images)


def describe_os_error(error: OSError, folder: Path) -> str:
    """One line: the file, the system's reason, and what to check."""
    where = error.filename if error.filename is not None else folder
    reason = error.strerror or str(error)
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    hint = ""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f" (prepare writes into {folder}: is it writable, not read-only or immutable?)"
    elif error.errno == errno.ENOSPC:
        hint = f" (free some space on the disk of {folder})"
    return f"{where}: {reason}{hint}"


def run_verify(root: Path, dataset: str, deep: bool = False) -> int:
    """Print every problem of the prepared tree (0: none, 1: some); writes nothing."""
    from hdmnet_core.data.prepared import dataset_folder, read_marker, verify_prepared

    folder = dataset_folder(root, dataset)
    problems = verify_prepared(folder, dataset)
    marker: dict[str, Any] = {}
    try:
        marker = read_marker(folder, dataset)
    except DataError:
        pass
    if deep and marker:
        problems.extend(_deep_problems(folder, dataset, marker))
    if not problems:
        checked = " and every mask matches its source annotation" if deep else ""
        print(f"{folder}: OK, every file present, readable and consistent{checked}")
        return 0
    print(f"{folder}: {len(problems)} problem(s):")
    for problem in problems:
        print(f"  {problem}")
    if marker.get("command"):
        print(f"to rebuild it with the options it was made with, run: {marker['command']}")
    return 1


def _deep_problems(folder: Path, dataset: str, marker: dict[str, Any]) -> list[str]:
    """Every prepared mask compared with a fresh conversion of its source annotation."""
    from hdmnet_core.data.prepared import PreparedSource

    if dataset == "fss1000":
        return []  # its masks are the original files: the default check reads them
    problems: list[str] = []
    for split in marker.get("counts", {}):
        try:
            source = PreparedSource(folder, dataset, split)
        except DataError as error:
            problems.append(str(error))
            continue
        if dataset == "pascal":
            from hdmnet_core.data import pascal

            problems.extend(pascal.deep_problems(source))
        else:
            from hdmnet_core.data import coco

            problems.extend(coco.deep_problems(source, marker))
    return problems


def main_for_script(dataset: str, prog: str, argv: list[str] | None = None) -> int:
    """``data_scripts/prepare_<dataset>.py``: the same command with the script's usage."""
    from hdmnet_core.cli import run_command

    args = dataset_parser(dataset, prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run_command(args)

"""The main job: execute the ordered notebooks headlessly with papermill and tabulate results.

With ``--folds`` / ``--shots`` the same command runs the headless chain instead
(:mod:`hdmnet_core.engine.pipeline`: base training, meta training and evaluation per fold
and shot count, skipping finished stages and resuming interrupted ones), the code the
training and evaluation notebooks call for their fold.

``python -m hdmnet_core reproduce --profile cpu-tiny`` (what ``make reproduce`` runs)
executes every notebook of :data:`NOTEBOOKS` in order into ``runs/<UTC timestamp>/``
with the papermill parameters ``profile``, ``data_root``, ``output_dir`` and
``overrides``. Notebooks report their numbers with :func:`record_result`; the runner
gathers them into ``results.json`` and ``results.md`` in the run folder. The full-size
reproduction is the same command with another profile and data root on a GPU machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdmnet_core.atomic import atomic_write_json, atomic_write_text
from hdmnet_core.config import (
    PROFILES,
    Config,
    ConfigError,
    parse_assignments,
    parse_overrides,
    profile_argument,
)
from hdmnet_core.runlock import output_folder_lock

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"

# The ordered notebooks of the main job. Later notebooks join this list.
NOTEBOOKS: tuple[str, ...] = (
    "00_episodes_and_data.ipynb",
    "01_backbone_and_priors.ipynb",
    "02_decoupled_hierarchy.ipynb",
    "03_correlation_matching.ipynb",
    "04_correlation_distillation.ipynb",
    "05_ensemble.ipynb",
    "06_training.ipynb",
    "07_evaluation.ipynb",
    "08_ablations.ipynb",
    "09_your_own_images.ipynb",
    "10_report.ipynb",
)

RESULTS_SUBDIR = "results"

RUNNER_PARAMETERS: tuple[str, ...] = ("profile", "data_root", "output_dir", "overrides")
"""The papermill parameters the runner itself passes to every notebook."""


@dataclass
class NotebookRun:
    notebook: str
    seconds: float
    output: str
    results: list[dict[str, Any]] = field(default_factory=list)


def record_result(
    output_dir: str | os.PathLike[str] | None,
    notebook: str,
    key: str,
    value: float | int | str,
    description: str = "",
) -> None:
    """Record one number of ``notebook`` for the run's results table.

    Interactive sessions pass ``output_dir=None`` (the papermill default), which records
    nothing. Records of the same ``key`` replace each other, so re-running a cell is safe.
    """
    if output_dir is None:
        return
    if not isinstance(value, (int, float, str)):
        raise TypeError(
            f"record_result({key!r}): value must be a number or string, got {type(value).__name__}"
        )
    path = Path(output_dir) / RESULTS_SUBDIR / f"{Path(notebook).stem}.json"
    records = json.loads(path.read_text()) if path.exists() else []
    records = [r for r in records if r["key"] != key]
    records.append(
        {"notebook": Path(notebook).stem, "key": key, "value": value, "description": description}
    )
    atomic_write_json(path, records)


def read_results(output_dir: Path, notebook: str) -> list[dict[str, Any]]:
    path = output_dir / RESULTS_SUBDIR / f"{Path(notebook).stem}.json"
    if not path.exists():
        return []
    records: list[dict[str, Any]] = json.loads(path.read_text())
    return records


def notebook_parameters(notebooks: tuple[str, ...]) -> dict[str, list[str]]:
    """The papermill parameters each notebook's ``parameters`` cell declares, in order."""
    import papermill

    return {nb: list(papermill.inspect_notebook(str(NOTEBOOK_DIR / nb))) for nb in notebooks}


def close_matches(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a mistyped ``name``, else ``""``."""
    found = difflib.get_close_matches(name, choices, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, found))}?)" if found else ""


def parameters_per_notebook(
    declared: dict[str, list[str]], extra: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The ``--param`` values each notebook receives: those its parameters cell declares.

    A name no notebook of the run declares, or one the runner sets itself, is a
    :class:`ConfigError` listing the valid names (with a close match when there is one);
    so is a notebook without one of :data:`RUNNER_PARAMETERS`."""
    for notebook, names in declared.items():
        lacking = [name for name in RUNNER_PARAMETERS if name not in names]
        if lacking:
            raise ConfigError(
                f"{NOTEBOOK_DIR / notebook}: its parameters cell lacks {lacking}, which the "
                "runner passes; add them to the cell tagged 'parameters'"
            )
    valid = sorted({name for names in declared.values() for name in names} - set(RUNNER_PARAMETERS))
    for name in extra:
        if name in RUNNER_PARAMETERS:
            flag = "--set" if name == "overrides" else f"--{name.replace('_', '-')}"
            raise ConfigError(
                f"--param {name}: the runner sets {name!r} itself; use {flag} instead"
            )
        if name not in valid:
            raise ConfigError(
                f"--param {name}: no notebook of this run has a parameter {name!r}"
                f"{close_matches(name, valid)}; valid names: {', '.join(valid)}"
            )
    return {
        notebook: {k: v for k, v in extra.items() if k in names}
        for notebook, names in declared.items()
    }


def run_notebooks(
    profile: str,
    data_root: str,
    out_root: Path,
    notebooks: tuple[str, ...] = NOTEBOOKS,
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
    log_output: bool = False,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Execute ``notebooks`` in order into a new run folder; return that folder.

    ``parameters``: further papermill parameters (``--param NAME=VALUE``), each given to
    the notebooks whose parameters cell declares it; an unknown name is refused."""
    import papermill  # local import: only this command needs it

    overrides = dict(overrides or {})
    Config.from_profile(profile, **overrides)  # fail fast on a bad profile or override
    missing = [nb for nb in notebooks if not (NOTEBOOK_DIR / nb).exists()]
    if missing:
        raise FileNotFoundError(f"notebook(s) not found in {NOTEBOOK_DIR}: {missing}")
    extra = parameters_per_notebook(notebook_parameters(notebooks), dict(parameters or {}))

    run_name = run_name or dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out_root.resolve() / run_name  # absolute: the notebooks run in notebooks/
    if run_dir.exists():
        raise FileExistsError(f"run folder {run_dir} exists already; choose another --run-name")
    run_dir.mkdir(parents=True)
    data_root_abs = str(Path(data_root).resolve())

    runs: list[NotebookRun] = []
    with output_folder_lock(run_dir):
        for notebook in notebooks:
            print(f"[reproduce] {notebook} (profile {profile}) ...", flush=True)
            start = time.perf_counter()
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / notebook),
                str(run_dir / notebook),
                parameters={
                    "profile": profile,
                    "data_root": data_root_abs,
                    "output_dir": str(run_dir),
                    "overrides": overrides,
                    **extra[notebook],
                },
                cwd=str(NOTEBOOK_DIR),
                log_output=log_output,
                progress_bar=False,
            )
            seconds = time.perf_counter() - start
            runs.append(NotebookRun(notebook, seconds, notebook, read_results(run_dir, notebook)))
            print(f"[reproduce] {notebook} done in {seconds:.1f} s", flush=True)

        write_summary(run_dir, profile, data_root_abs, overrides, runs)
    return run_dir


def parse_parameters(pairs: list[str]) -> dict[str, Any]:
    """``["steps=5", "device=cpu"]`` (``--param NAME=VALUE``) -> dict, values as JSON when
    they parse, else strings (:func:`config.parse_assignments`)."""
    return parse_assignments(pairs, "--param", "NAME", "steps=20")


def write_summary(
    run_dir: Path,
    profile: str,
    data_root: str,
    overrides: dict[str, Any],
    runs: list[NotebookRun],
) -> None:
    """Write ``results.json`` (everything) and ``results.md`` (a readable table)."""
    summary = {
        "profile": profile,
        "data_root": data_root,
        "overrides": overrides,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": environment_facts(),
        "notebooks": [
            {"notebook": r.notebook, "seconds": round(r.seconds, 1), "results": r.results}
            for r in runs
        ],
    }
    atomic_write_json(run_dir / "results.json", summary)

    lines = [
        f"# Results of run `{run_dir.name}`",
        "",
        f"Profile `{profile}`, data root `{data_root}`, overrides `{json.dumps(overrides)}`.",
        f"Environment: {summary['environment']}.",
        "",
        "| notebook | result | value | meaning |",
        "|---|---|---|---|",
    ]
    for run in runs:
        for record in run.results:
            value = record["value"]
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            lines.append(
                f"| {record['notebook']} | {record['key']} | {shown} | {record['description']} |"
            )
    lines += ["", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {r.notebook} | {r.seconds:.1f} |" for r in runs]
    atomic_write_text(run_dir / "results.md", "\n".join(lines) + "\n")


def environment_facts() -> dict[str, str]:
    import torch

    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores)",
    }
    from hdmnet_core.engine.checkpoint import code_version

    facts["commit"] = code_version()["commit"]
    return facts


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="execute the notebooks headlessly (papermill), or with --folds/--shots the "
        "training and evaluation chain, and write a results table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--profile",
        default="cpu-tiny",
        type=profile_argument,
        metavar="NAME",
        help=f"configuration profile: {', '.join(sorted(PROFILES))} (default: cpu-tiny)",
    )
    parser.add_argument(
        "--data-root", default="data", help="folder of prepared datasets (default: data)"
    )
    parser.add_argument("--out", default="runs", help="folder that receives runs/<timestamp>/")
    parser.add_argument(
        "--run-name", default=None, help="name of the run folder (default: UTC timestamp)"
    )
    parser.add_argument(
        "--notebooks",
        nargs="+",
        default=list(NOTEBOOKS),
        metavar="NOTEBOOK",
        help="notebooks to run, in order",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override",
    )
    parser.add_argument(
        "--param",
        "-p",
        dest="parameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a papermill parameter of the notebooks that declare it (e.g. steps=20, "
        "course=short; docs/notebooks.md lists them); an unknown name is refused",
    )
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    chain = parser.add_argument_group(
        "headless chain (instead of the notebooks): base -> meta -> evaluation per fold and shots"
    )
    chain.add_argument("--folds", type=int, nargs="+", default=None, metavar="F")
    chain.add_argument("--shots", type=int, nargs="+", default=None, metavar="K")
    chain.add_argument(
        "--protocol",
        nargs="+",
        choices=["official", "fair"],
        default=["official"],
        help="official = BAM/HDMNet (novel-class images filtered, selection on the novel "
        "classes); fair = images kept, selection on base classes; both for a side-by-side table",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.folds is not None or args.shots is not None:
        if args.parameters:
            raise ConfigError("--param is for the notebooks; the chain (--folds/--shots) has none")
        return _main_chain(args)
    run_dir = run_notebooks(
        profile=args.profile,
        data_root=args.data_root,
        out_root=Path(args.out),
        notebooks=tuple(args.notebooks),
        overrides=parse_overrides(args.overrides),
        run_name=args.run_name,
        log_output=args.log_output,
        parameters=parse_parameters(args.parameters),
    )
    print(f"[reproduce] executed notebooks and results in {run_dir}")
    print((run_dir / "results.md").read_text())
    return 0


def _main_chain(args: argparse.Namespace) -> int:
    from hdmnet_core.engine.pipeline import reproduce_chain

    overrides = parse_overrides(args.overrides)
    overrides["data.root"] = args.data_root
    config = Config.from_profile(args.profile, **overrides)
    folds = args.folds if args.folds is not None else [config.data.fold]
    shots = args.shots if args.shots is not None else [config.data.shots]
    out_dir = Path(args.out) / (args.run_name or f"chain-{args.profile}")
    with output_folder_lock(out_dir):  # a second chain into out_dir is refused
        chain = reproduce_chain(config, out_dir, folds, shots, args.protocol)
    print(chain.table())
    print(f"[reproduce] results in {out_dir / 'results.md'} and results.json")
    return 0

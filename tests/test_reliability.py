"""Issue 11 "Reliability" and two of its faults, through the command line.

Every bad input is one ``error:`` line naming the file or value and what to do, exit code
2, and every file already in the output folder is left as it was (bytes and mtimes).

Items covered elsewhere (not repeated here):
- predict: corrupt / truncated / zero-byte image or mask, mask of another size, mask
  values outside {0, 255, class ids}, empty support mask, a wrong or truncated checkpoint:
  tests/test_predict.py::test_bad_input_is_one_line_exit_2_and_nothing_written and
  ::test_wrong_checkpoints_and_arguments_are_refused (ENOSPC on the mask:
  ::test_a_failed_write_keeps_the_previous_file);
- prepare: corrupt JPEG, bad palette values, mask size, missing list entries:
  tests/test_data_pascal.py::test_bad_inputs_raise_named_errors_and_keep_the_old_tree,
  tests/test_data_prepare_safety.py, tests/test_prepare_cli.py (missing / partial tree:
  ::test_verify_reports_problems_and_exit_code, ::test_bad_input_is_one_error_line...);
- interrupted download (.part resume, checksum): tests/test_download.py;
- corrupt / truncated checkpoint, another stage or architecture, another shot count:
  tests/test_train.py::test_unreadable_checkpoints_get_clear_errors,
  ::test_loading_another_stage_or_architecture_is_refused,
  ::test_resume_with_other_shots_is_refused_naming_the_key,
  tests/test_evaluate.py::test_cli_evaluates_saves_and_guards_the_shot_count;
- NaN/inf loss: tests/test_train.py::test_nan_loss_stops_naming_step_and_terms;
- class id not in the fold / no supports: tests/test_episodes.py::test_error_on_*.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import train_helpers
from data_formats import make_sbd_tree, make_voc_tree
from test_data_pascal import SBD_MASKS, VOC_MASKS, S

from hdmnet_core import atomic, cli
from hdmnet_core.config import ModelConfig
from hdmnet_core.data.pascal import prepare_pascal
from hdmnet_core.engine import checkpoint as ckpt
from hdmnet_core.engine import evaluate as evaluate_module
from hdmnet_core.engine import reproduce
from hdmnet_core.engine import train as train_module
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.runlock import OutputFolderBusy, output_folder_lock

PROJECT = Path(__file__).resolve().parents[1]

PASCAL_TINY = [
    "--profile", "cpu-tiny", "--fold", "3", "--device", "cpu",
    "--set", "data.dataset=pascal", "--set", "data.train_size=64", "--set", "data.eval_size=64",
    "--set", "train.base_learner_steps=2", "--set", "train.base_learner_batch_size=2",
    "--set", "train.base_learner_crop=64", "--set", "train.base_learner_val_images=2",
    "--set", "train.base_learner_val_every=1", "--set", "train.checkpoint_every=1",
]  # fmt: skip
"""Stage 1 on a prepared 64 px PASCAL tree (fold 3: three training images), 2 steps."""


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: bytes and mtime (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    return lines[0]


def make_pascal(root: Path) -> Path:
    """A prepared 64 px PASCAL tree under ``root/data`` (sources in ``root/in``)."""
    voc = make_voc_tree(
        root / "in",
        VOC_MASKS,
        train=["2007_000001", "2007_000002"],
        val=["2007_000003", "2007_000004"],
        extra_images={"2008_000010": (S, S), "2008_000011": (S, S)},
    )
    sbd = make_sbd_tree(
        root / "in",
        SBD_MASKS,
        train=["2008_000010", "2007_000002", "2007_000003"],
        val=["2008_000011"],
        train_noval=["2008_000010", "2007_000002", "2007_000003"],
    )
    prepare_pascal(root / "data", voc=str(voc), sbd=str(sbd), progress=False)
    return voc


@pytest.fixture(scope="module")
def pascal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared tiny PASCAL tree and a finished 2-step stage-1 run on it."""
    root = tmp_path_factory.mktemp("pascal")
    voc = make_pascal(root)
    run = root / "run"
    argv = ["train", "base", *PASCAL_TINY, "--data-root", str(root / "data"), "--out", str(run)]
    assert cli.main(argv) == 0
    return {"root": root, "data": root / "data", "voc": voc, "run": run}


# ------------------------------------------------------------- dataset files in training
TRAIN_NAMES = ("2007_000001", "2007_000002", "2008_000010")
"""Every training image of fold 3: the first batch reads one of them whatever the order."""


def damage(kind: str, voc: Path, data: Path) -> str:
    """Spoil every training file of fold 3 in one way; return the pattern the error
    must match (the file named, then the problem)."""
    from PIL import Image

    for name in TRAIN_NAMES:
        image = voc / "JPEGImages" / f"{name}.jpg"
        mask = data / "pascal" / "masks" / f"{name}.png"
        if kind == "truncated image":
            image.write_bytes(image.read_bytes()[:300])
        elif kind == "zero-byte image":
            image.write_bytes(b"")
        elif kind == "missing image":
            image.unlink()
        elif kind == "mask of another size":
            Image.fromarray(torch.zeros(S, S - 4, dtype=torch.uint8).numpy()).save(mask)
        elif kind == "mask values":
            Image.fromarray(torch.full((S, S), 77, dtype=torch.uint8).numpy()).save(mask)
    jpeg = rf"{voc}/JPEGImages/20\d\d_\d+\.jpg: "
    png = rf"{data}/pascal/masks/20\d\d_\d+\.png: "
    return {
        "truncated image": jpeg + "corrupt or truncated image",
        "zero-byte image": jpeg + "corrupt or truncated image",
        "missing image": jpeg + "image file is missing",
        "mask of another size": png + "mask is 64x60 but its image is 64x64",
        "mask values": png + r"mask has values \[77\] outside 0..20 and 255",
    }[kind]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    "kind",
    ["truncated image", "zero-byte image", "missing image", "mask of another size", "mask values"],
)
def test_a_bad_dataset_file_stops_training_with_one_line_naming_it(
    kind: str,
    workers: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re

    data = tmp_path / "data"
    pattern = damage(kind, make_pascal(tmp_path), data)
    run = tmp_path / "run"
    argv = ["train", "base", *PASCAL_TINY, "--data-root", str(data), "--out", str(run)]
    assert cli.main([*argv, "--workers", str(workers)]) == 2  # 1: read in a DataLoader worker
    line = one_error_line(capsys)
    assert re.search(pattern, line), line
    assert "Traceback" not in line
    assert not (run / "last.pt").exists() and not (run / ".lock").exists()


def test_a_new_run_over_a_finished_one_is_refused_and_changes_nothing(
    pascal: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = folder_state(pascal["run"])
    argv = ["train", "base", *PASCAL_TINY, "--data-root", str(pascal["data"])]
    assert cli.main([*argv, "--out", str(pascal["run"])]) == 2
    assert "last.pt: this folder holds a run already; pass --resume" in one_error_line(capsys)
    assert folder_state(pascal["run"]) == before


def test_a_missing_dataset_tree_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "base", *PASCAL_TINY, "--data-root", str(tmp_path / "nope")]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "nope") in line and "prepare pascal" in line, line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- config and params
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--set", "train.bath_size=2"], "unknown configuration key 'train.bath_size' (did "
         "you mean 'train.batch_size'"),
        (["--set", "trian.lr=1"], "no section 'trian'"),
        (["--set", "data.fold=7"], "data.fold=7: must be in 0..3"),
    ],
)  # fmt: skip
def test_a_mistyped_config_key_or_value_is_named_with_close_matches(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train", "base", "--out", str(tmp_path / "r"), *argv]) == 2
    assert fragment in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "command", [["train", "base"], ["train", "meta"], ["reproduce"]], ids=" ".join
)
def test_an_unknown_profile_is_refused_with_close_matches_and_the_list(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse: exit code 2
        cli.main([*command, "--profile", "cpu-tny"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --profile: unknown profile 'cpu-tny' (did you mean 'cpu-tiny'?)" in err
    assert "choose one of coco-r50, coco-vgg, cpu-tiny, pascal-r101" in err
    assert "Traceback" not in err
    from hdmnet_core.config import Config, ConfigError

    with pytest.raises(ConfigError, match=r"unknown profile 'cpu-tny' \(did you mean 'cpu-tiny'"):
        Config.from_profile("cpu-tny")  # the notebooks' `profile` parameter


def tiny_notebook(path: Path, extra: str = "steps = 3") -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(
        f'profile = "cpu-tiny"\ndata_root = "data"\noutput_dir = None\noverrides = {{}}\n{extra}'
    )
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [
        cell,
        nbformat.v4.new_code_cell(
            "from hdmnet_core.engine.reproduce import record_result\n"
            "record_result(output_dir, '00_p', 'steps', steps)"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.mark.parametrize(
    ("param", "fragment"),
    [
        ("stpes=5", "--param stpes: no notebook of this run has a parameter 'stpes' (did you "
         "mean 'steps'?); valid names: steps"),
        ("profile=x", "--param profile: the runner sets 'profile' itself; use --profile"),
        ("steps", "--param 'steps': expected NAME=VALUE"),
    ],
)  # fmt: skip
def test_an_unknown_papermill_parameter_is_refused_with_the_valid_names(
    param: str,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "nb").mkdir()
    tiny_notebook(tmp_path / "nb" / "00_p.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path / "nb")
    argv = ["reproduce", "--notebooks", "00_p.ipynb", "--out", str(tmp_path / "runs")]
    assert cli.main([*argv, "--param", param, "--run-name", "r"]) == 2
    assert fragment in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_known_papermill_parameter_reaches_the_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nb").mkdir()
    tiny_notebook(tmp_path / "nb" / "00_p.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path / "nb")
    run = reproduce.run_notebooks(
        "cpu-tiny",
        "data",
        tmp_path / "runs",
        ("00_p.ipynb",),
        run_name="r",
        parameters={"steps": 7},
    )
    summary = json.loads((run / "results.json").read_text())
    assert summary["notebooks"][0]["results"][0]["value"] == 7
    assert not (run / ".lock").exists()


def test_a_notebook_without_the_runner_parameters_is_named(tmp_path: Path) -> None:
    from hdmnet_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"00_p.ipynb: its parameters cell lacks \['overrides'\]"):
        reproduce.parameters_per_notebook(
            {"00_p.ipynb": ["profile", "data_root", "output_dir"]}, {}
        )


# ------------------------------------------------------------------- empty support mask
def test_an_all_zero_support_mask_gives_finite_outputs_from_the_model() -> None:
    """Decision: HDMNet.forward stays as official (training crops can empty a support;
    the priors and matching then see no foreground and still give finite logits). The
    public boundary refuses an empty mask instead: predict (tests/test_predict.py, "empty
    support mask") and the episode sampler (supports need min_class_area pixels)."""
    torch.manual_seed(0)
    model = HDMNet(ModelConfig(backbone="tiny", width=16), num_base_classes=15, shots=1).eval()
    query, supports = torch.randn(1, 3, 32, 32), torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        out = model(query, supports, torch.zeros(1, 1, 32, 32, dtype=torch.long))
    for logits in (out.final_logits, out.meta_logits, out.base_logits, *out.distill_maps):
        assert torch.isfinite(logits).all()


# ------------------------------------------------------------------- out of memory
def raise_out_of_memory(*_args: Any, **_kwargs: Any) -> Any:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_in_a_training_step_names_the_sizes_and_what_to_lower(
    pascal: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(train_module, "base_learner_loss", raise_out_of_memory)
    argv = ["train", "base", *PASCAL_TINY, "--data-root", str(pascal["data"])]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    for fragment in (
        "out of memory on cpu during base training step 1",
        "global batch 2, micro-batch 2, image size 64 x 64, amp off",
        "Tried to allocate 2.00 GiB",
        "--set train.base_learner_batch_size=1",
        "--grad-accum 2",
        "--amp bf16",
    ):
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_out_of_memory_in_an_evaluation_forward_names_the_sizes(
    meta_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(evaluate_module, "score_batch", raise_out_of_memory)
    out = tmp_path / "eval"
    argv = ["evaluate", "--ckpt", str(meta_checkpoint), "--device", "cpu", "--seeds", "1"]
    assert cli.main([*argv, "--episodes", "2", "--cache", "off", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "out of memory on cpu during evaluation of seed" in line, line
    assert "batch 1 episode(s) of 1 shot(s), image size 64 x 64, amp off" in line
    assert "--amp bf16" in line
    assert not out.exists()


# ------------------------------------------------------------------- disk full
@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hdmnet_core.engine.train import ensure_base_learner, ensure_meta_learner

    root = tmp_path_factory.mktemp("meta")
    config = train_helpers.tiny_config(
        root / "data",
        **{"model.width": 16, "train.batch_size": 2, "train.max_steps": 2,
           "train.base_learner_steps": 2, "train.base_learner_batch_size": 2,
           "train.base_learner_val_images": 2},
    )  # fmt: skip
    base = ensure_base_learner(config, root / "base", device="cpu", progress=False)
    return ensure_meta_learner(config, root / "meta", base, device="cpu", progress=False)


class FullDisk:
    """Stand-ins for the writing steps of :func:`atomic.atomic_write` that fail with
    ``ENOSPC`` once ``target`` already exists (the first write succeeds)."""

    def __init__(self, target: str, stage: str) -> None:
        self.target, self.stage = target, stage
        self.real_fdopen, self.real_fsync, self.real_replace = os.fdopen, os.fsync, os.replace

    def full(self, name: str) -> bool:
        return Path(self.target).exists() and Path(name).name.startswith(f".{self.target_name}.")

    @property
    def target_name(self) -> str:
        return Path(self.target).name

    def fdopen(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if self.stage == "write" and self.full(name):
            return LimitedFile(fd)
        return self.real_fdopen(fd, mode, *args, **kwargs)

    def fsync(self, fd: int) -> None:
        if self.stage == "fsync" and self.full(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real_fsync(fd)

    def replace(self, src: str, dst: str) -> None:
        if self.stage == "replace" and self.full(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real_replace(src, dst)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(atomic.os, "fdopen", self.fdopen)
        monkeypatch.setattr(atomic.os, "fsync", self.fsync)
        monkeypatch.setattr(atomic.os, "replace", self.replace)


class LimitedFile(io.FileIO):
    """A file on a disk with 64 bytes left."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "wb", closefd=True)
        self.left = 64

    def write(self, data: Any) -> int:
        size = len(memoryview(data))
        if size > self.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= size
        return super().write(data)


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*.tmp")]


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(
    stage: str,
    pascal: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    FullDisk(str(run / "last.pt"), stage).install(monkeypatch)
    argv = ["train", "base", *PASCAL_TINY, "--data-root", str(pascal["data"])]
    assert cli.main([*argv, "--out", str(run)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: disk full while writing {run / 'last.pt'}"), line
    assert "the previous file is unchanged" in line
    assert ckpt.progress_of(ckpt.read_checkpoint(run / "last.pt")).step == 1  # valid, loadable
    assert no_temporary_files(run)
    assert not (run / ".lock").exists()
    monkeypatch.undo()
    assert cli.main([*argv, "--out", str(run), "--resume"]) == 0  # and it resumes from there
    assert ckpt.progress_of(ckpt.read_checkpoint(run / "last.pt")).step == 2


@pytest.mark.parametrize(("name", "stage"), [("fold0_1shot.json", "write"),
                                             ("fold0_1shot.csv", "replace")])  # fmt: skip
def test_disk_full_while_saving_results_keeps_the_previous_ones(
    name: str,
    stage: str,
    meta_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--ckpt", str(meta_checkpoint), "--device", "cpu", "--seeds", "1"]
    argv += ["--episodes", "2", "--cache", "off", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    before = folder_state(out)[name]
    FullDisk(str(out / name), stage).install(monkeypatch)
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: disk full while writing {out / name}"), line
    assert folder_state(out)[name] == before  # old bytes, old mtime
    assert no_temporary_files(out) and not (out / ".lock").exists()
    json.loads((out / "fold0_1shot.json").read_text())  # still whole


def test_disk_full_keeps_an_os_error_for_callers_that_catch_one(tmp_path: Path) -> None:
    error = atomic.DiskFull(tmp_path / "x.json")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(error).startswith(f"disk full while writing {tmp_path / 'x.json'}")


# ------------------------------------------------------------------- output-folder lock
HOLD = textwrap.dedent(
    """
    import sys, time
    from hdmnet_core.runlock import output_folder_lock
    with output_folder_lock(sys.argv[1], "train base --out held"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def start_holder(folder: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(seconds)],
        cwd=PROJECT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(
    pascal: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's file")
    holder = start_holder(run, 60)
    try:
        before = {k: v for k, v in folder_state(run).items() if k != ".lock"}
        argv = ["train", "base", *PASCAL_TINY, "--data-root", str(pascal["data"])]
        assert cli.main([*argv, "--out", str(run)]) == 2
        line = one_error_line(capsys)
        assert f"{run}: another run is writing into this output folder (pid {holder.pid}" in line
        assert "train base --out held" in line and "--out" in line
        assert folder_state(run) == {**before, ".lock": folder_state(run)[".lock"]}
        with pytest.raises(OutputFolderBusy):  # evaluate and reproduce take the same lock
            with output_folder_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the holder died holding it (SIGKILL): its lock is stale and the next run takes it over
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    with output_folder_lock(run, "next run") as lock:
        assert json.loads(lock.read_text())["command"] == "next run"
    assert "took over the stale lock" in capsys.readouterr().err
    assert not (run / ".lock").exists()  # released and removed on exit
    assert (run / "notes.txt").read_text() == "the user's file"


def test_the_lock_is_released_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), output_folder_lock(tmp_path / "out"):
        raise RuntimeError("a failing run")
    with output_folder_lock(tmp_path / "out"):  # free again
        (tmp_path / "out" / "kept.txt").write_text("x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["kept.txt"]
    with output_folder_lock(tmp_path / "never-used"):
        pass
    assert not (tmp_path / "never-used").exists()  # an empty folder it made is removed

"""``python -m hdmnet_core prepare ...``: summary, --verify, named errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_data_coco import make_coco
from test_data_pascal import make_inputs

from hdmnet_core.cli import main

PROJECT = Path(__file__).resolve().parents[1]


def test_prepare_pascal_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    root = tmp_path / "data"
    code = main(
        ["prepare", "pascal", "--root", str(root), "--voc", str(voc), "--sbd", str(sbd), "--quiet"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "pascal: images per split: train 3, val 2" in out
    assert "VOC val images removed from train: 1" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("id class"))
    assert lines[header].split()[2:] == ["fold", "0", "fold", "1", "fold", "2", "fold", "3"]
    # aeroplane: novel in fold 0 (1 evaluation pair), training pairs in folds 1-3 = 0, 1, 1
    # (fold 1 drops 2007_000001 for its novel class 6; folds 2-3 keep it).
    assert lines[header + 1].split() == ["1", "aeroplane", "1*", "0", "1", "1"]

    assert main(["prepare", "pascal", "--root", str(root), "--verify"]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_reports_problems_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_coco(tmp_path)
    root = tmp_path / "data"
    assert (
        main(
            [
                "prepare",
                "coco",
                "--root",
                str(root),
                "--coco",
                str(base),
                "--quiet",
                "--crowd",
                "ignore",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "COCO-20i interleaved folds (official default)" in out
    assert "COCO-20i contiguous folds (PANet style)" in out
    (root / "coco" / "masks" / "val2014" / "COCO_val2014_000000000007.png").write_bytes(b"")
    image = base / "train2014" / "COCO_train2014_000000000001.jpg"
    image.write_bytes(image.read_bytes()[:200])
    assert main(["prepare", "coco", "--root", str(root), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out
    assert "COCO_val2014_000000000007.png: empty file (0 bytes)" in out
    assert "COCO_train2014_000000000001.jpg: corrupt or truncated image" in out


def test_bad_input_is_one_error_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["prepare", "fss1000", "--root", str(tmp_path / "data"), "--fss", str(tmp_path / "nope")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "nope: no such file or folder" in err
    assert "Traceback" not in err


def test_module_entry_point_verify_on_an_empty_root(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdmnet_core",
            "prepare",
            "pascal",
            "--root",
            str(tmp_path),
            "--verify",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "prepared.json missing" in result.stdout
    assert f"python -m hdmnet_core prepare pascal --root {tmp_path}" in result.stdout


def test_prepare_pascal_download_fetches_verifies_and_extracts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import replace

    from data_formats import make_tar

    from hdmnet_core.data.download import ARCHIVES, file_digest

    voc, sbd = make_inputs(tmp_path)
    noval = sbd / "train_noval.txt"
    served = tmp_path / "served"
    served.mkdir()
    (served / "train_noval.txt").write_bytes(noval.read_bytes())
    noval.unlink()  # not inside the SBD archive: it must come from its own download
    files = {
        "voc2012": make_tar(voc.parent, served / "VOCtrainval_11-May-2012.tar", "VOCdevkit"),
        "sbd": make_tar(sbd.parent, served / "benchmark.tgz", "benchmark_RELEASE"),
        "sbd_train_noval": served / "train_noval.txt",
    }
    for key, path in files.items():
        fake = replace(
            ARCHIVES[key],
            url=path.as_uri(),
            size=path.stat().st_size,
            md5=file_digest(path, "md5"),
            sha256=None,
        )
        monkeypatch.setitem(ARCHIVES, key, fake)
    root = tmp_path / "data"
    assert main(["prepare", "pascal", "--root", str(root), "--download", "--quiet"]) == 0
    assert "pascal: images per split: train 3, val 2" in capsys.readouterr().out
    for path in files.values():
        assert (root / "pascal" / "downloads" / path.name).read_bytes() == path.read_bytes()
    assert (root / "pascal" / "raw" / "VOCtrainval_11-May-2012" / "VOCdevkit").is_dir()

    # A wrong checksum in the table is caught, names the file, and leaves the tree alone.
    (root / "pascal" / "downloads" / "benchmark.tgz").unlink()
    monkeypatch.setitem(ARCHIVES, "sbd", replace(ARCHIVES["sbd"], md5="f" * 32))
    assert main(["prepare", "pascal", "--root", str(root), "--download", "--quiet"]) == 2
    assert "benchmark.tgz.part: md5" in capsys.readouterr().err
    assert (root / "pascal" / "prepared.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "pascal", "--crowd", "ignore"], "unrecognized arguments: --crowd"),
        (["prepare", "pascal", "--coco", "x"], "unrecognized arguments: --coco"),
        (["prepare", "coco", "--train-set", "trainaug"], "unrecognized arguments: --train-set"),
        (["prepare", "fss1000", "--download"], "unrecognized arguments: --download"),
        (["prepare", "fss1000", "--workers", "2"], "unrecognized arguments: --workers"),
        (["prepare", "pascal", "--verify", "--download"], "--download: not with --verify"),
        (["prepare", "coco", "--verify", "--workers", "4"], "--workers: not with --verify"),
        (["prepare", "pascal", "--deep"], "--deep: only with --verify"),
        (["prepare", "coco", "--workers", "0"], "--workers 0: must be at least 1"),
    ],
)
def test_a_flag_that_does_not_apply_is_an_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["pascal", "coco", "fss1000"])
def test_each_dataset_help_shows_only_its_flags(
    dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["prepare", dataset, "--help"])
    out = capsys.readouterr().out
    own = {"pascal": "--voc", "coco": "--crowd", "fss1000": "--fss"}
    assert out.startswith(f"usage: python -m hdmnet_core prepare {dataset} ")
    for name, flag in own.items():
        assert (flag in out) == (name == dataset)
    assert ("--download" in out) == (dataset != "fss1000")


@pytest.mark.parametrize("dataset", ["pascal", "coco", "fss1000"])
def test_data_scripts_show_their_own_usage(dataset: str, tmp_path: Path) -> None:
    script = f"data_scripts/prepare_{dataset}.py"
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: python {script} [-h] [--root ROOT]")
    verify = subprocess.run(
        [sys.executable, script, "--root", str(tmp_path), "--verify"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 1 and "prepared.json missing" in verify.stdout


def test_the_verify_hint_is_the_command_that_made_the_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_coco(tmp_path)
    root = tmp_path / "data"
    argv = ["prepare", "coco", "--root", str(root), "--coco", str(base), "--crowd", "ignore"]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    (root / "coco" / "masks" / "val2014" / "COCO_val2014_000000000007.png").unlink()
    assert main(["prepare", "coco", "--root", str(root), "--verify"]) == 1
    out = capsys.readouterr().out
    recorded = f"python -m hdmnet_core prepare coco --root {root} --coco {base} --crowd ignore"
    assert f"to rebuild it with the options it was made with, run: {recorded}" in out
    assert "--download" not in out


def test_coco_verify_names_changed_annotations_and_deep_names_the_masks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    base = make_coco(tmp_path)
    root = tmp_path / "data"
    assert main(["prepare", "coco", "--root", str(root), "--coco", str(base), "--quiet"]) == 0
    assert main(["prepare", "coco", "--root", str(root), "--verify", "--deep"]) == 0
    capsys.readouterr()
    annotations = base / "annotations" / "instances_train2014.json"
    content = json.loads(annotations.read_text())
    content["annotations"] = [a for a in content["annotations"] if a["category_id"] != 3]
    annotations.write_text(json.dumps(content))  # the car of image 1 is removed
    assert main(["prepare", "coco", "--root", str(root), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"{annotations}: annotation file changed since prepare" in out
    assert main(["prepare", "coco", "--root", str(root), "--verify", "--deep"]) == 1
    out = capsys.readouterr().out
    assert "COCO_train2014_000000000001.png: " in out and "pixel(s) differ" in out
    assert "COCO_train2014_000000000002.png" not in out

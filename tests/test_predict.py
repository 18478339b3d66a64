"""``predict``: your own images through a trained checkpoint (issue 10 notebook 09,
issue 11 reliability list).

One tiny checkpoint is trained here (a few stage-1 and stage-2 steps); images and masks
are written as real PNG / JPEG files in ``tmp_path``. The prediction must equal the
evaluation path's on the same episode, and every bad input must be one ``error:`` line
naming the file, exit code 2, with no file written or changed.
"""

from __future__ import annotations

import errno
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorm
from PIL import Image

from hdmnet_core import cli
from hdmnet_core.config import Config
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import binary_mask, build_episode_dataset, collate_episodes
from hdmnet_core.data.source import DataError
from hdmnet_core.data.transforms import logits_to_label_geometry
from hdmnet_core.engine.checkpoint import Progress, load_trained_model, save_checkpoint
from hdmnet_core.engine.feature_cache import evaluation_model
from hdmnet_core.engine.train import ensure_base_learner, ensure_meta_learner
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.predict import (
    Box,
    Predictor,
    Support,
    UploadPanel,
    binary_support_mask,
    load_support,
    read_image,
    read_mask_values,
    upload_value,
)
from tests import train_helpers

PROJECT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def tiny_config(root: Path) -> Config:
    """The engine tests' tiny settings, narrower and shorter (a checkpoint in seconds)."""
    return train_helpers.tiny_config(
        root,
        **{
            "model.width": 16,
            "train.batch_size": 2,
            "train.max_steps": 2,
            "train.val_every": 2,
            "train.base_learner_steps": 2,
            "train.base_learner_batch_size": 2,
            "train.base_learner_val_images": 2,
        },
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A 1-shot meta checkpoint after 2 + 2 training steps, and its config."""
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config(root / "data")
    base = ensure_base_learner(config, root / "base", device="cpu", progress=False)
    meta = ensure_meta_learner(config, root / "meta", base, device="cpu", progress=False)
    return meta, config


@pytest.fixture(scope="module")
def episode(trained: tuple[Path, Config]) -> dict:
    """Episode 0 of the validation episodes (evaluation transform), collated."""
    _, config = trained
    dataset = build_episode_dataset(config, "val", open_source(config, "val"), seed=0)
    return {
        "dataset": dataset,
        "spec": dataset.episode_spec(0),
        "batch": collate_episodes([dataset[0]]),
    }


def save_png(path: Path, values: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(values, mode=mode).save(path, format="PNG")
    return path


def episode_files(episode: dict, folder: Path) -> dict[str, Path]:
    """The episode's query, support and support mask (0/1/255) as PNG files."""
    source, spec = episode["dataset"].source, episode["spec"]
    (support,) = spec.supports
    return {
        "query": save_png(folder / "query.png", source.load_image(spec.query)),
        "support": save_png(folder / "support.png", source.load_image(support)),
        "mask": save_png(
            folder / "support_mask.png", binary_mask(source.load_mask(support), spec.class_id)
        ),
    }


def predict_args(ckpt: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "predict", "--ckpt", str(ckpt), "--support", str(files["support"]),
        "--support-mask", str(files["mask"]), "--query", str(files["query"]),
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def folder_state(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------ the prediction
def seeded_checkpoint(config: Config, path: Path) -> Path:
    """A meta checkpoint of seeded weights with random BatchNorm statistics: its
    predictions mix object and background, so the label comparison means something
    (two training steps still predict background everywhere; seed 3 marks about 13% of
    this episode's query)."""
    torch.manual_seed(3)
    model = HDMNet(config.model, 15, config.data.shots).eval()
    randomise_batchnorm(model.pspnet, 3)
    return save_checkpoint(path, stage="meta", config=config, model=model, progress=Progress())


def evaluation_prediction(ckpt: Path, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Label and object probability of the evaluation's own path: the batch of the
    episode dataset, the inference copy, the original-size scoring geometry."""
    model, _ = load_trained_model(ckpt)
    runner = evaluation_model(model, CPU, fast=True)
    with torch.no_grad():
        logits = runner(
            batch["query_image"], batch["support_images"], batch["support_masks"]
        ).final_logits
    original = batch["query_original_mask"][0]
    scored, _ = logits_to_label_geometry(logits, original)  # (1, 2, L, L), 255 padding
    height, width = original.shape
    scored = scored[..., :height, :width]
    return scored.argmax(dim=1)[0].numpy(), scored.softmax(dim=1)[0, 1].numpy()


@pytest.mark.parametrize("weights", ["trained", "seeded"])
def test_prediction_equals_the_evaluation_path(
    weights: str,
    trained: tuple[Path, Config],
    episode: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, config = trained
    if weights == "seeded":
        ckpt = seeded_checkpoint(config, tmp_path / "seeded.pt")
    files = episode_files(episode, tmp_path)
    out = tmp_path / "prediction.png"
    assert cli.main(predict_args(ckpt, files, out, "--overlay", str(tmp_path / "fig.png"))) == 0
    assert f"saved {out}" in capsys.readouterr().out
    written = np.array(Image.open(out))
    assert set(np.unique(written)) <= {0, 255}
    assert Image.open(tmp_path / "fig.png").format == "PNG"

    label, probability = evaluation_prediction(ckpt, episode["batch"])
    assert written.shape == label.shape
    np.testing.assert_array_equal(written // 255, label)
    if weights == "seeded":
        assert 0 < label.mean() < 1  # both values occur
    support = load_support(files["support"], files["mask"], 20)
    prediction = Predictor.from_checkpoint(ckpt)([support], read_image(files["query"]))
    np.testing.assert_allclose(prediction.probability, probability, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(prediction.mask, label)


def test_a_box_is_the_same_support_as_its_mask_file_and_jpeg_is_read(
    trained: tuple[Path, Config], episode: dict, tmp_path: Path
) -> None:
    ckpt, _ = trained
    source, spec = episode["dataset"].source, episode["spec"]
    photo = Image.fromarray(source.load_image(spec.query)).resize((80, 56))
    photo.save(tmp_path / "query.jpg", quality=90)
    support = save_png(tmp_path / "support.png", source.load_image(spec.supports[0]))
    box_mask = np.zeros((64, 64), dtype=np.uint8)
    box_mask[10:40, 5:30] = 255
    save_png(tmp_path / "box.png", box_mask)
    files = {"query": tmp_path / "query.jpg", "support": support, "mask": tmp_path / "box.png"}
    assert cli.main(predict_args(ckpt, files, tmp_path / "a.png")) == 0
    files["mask"] = Path("box:5,10,30,40")
    assert cli.main(predict_args(ckpt, files, tmp_path / "b.png")) == 0
    a, b = np.array(Image.open(tmp_path / "a.png")), np.array(Image.open(tmp_path / "b.png"))
    assert a.shape == (56, 80)  # the JPEG query's original size
    np.testing.assert_array_equal(a, b)


def test_k_supports_need_a_k_shot_checkpoint_or_the_explicit_flag(
    trained: tuple[Path, Config], episode: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = trained
    files = episode_files(episode, tmp_path)
    two = [*predict_args(ckpt, files, tmp_path / "out.png"),
           "--support", str(files["support"]), "--support-mask", "box:0,0,30,30"]  # fmt: skip
    assert cli.main(two) == 2
    err = capsys.readouterr().err
    assert f"{ckpt} was trained for 1 shot(s) but 2 support(s)" in err
    assert not (tmp_path / "out.png").exists()
    assert cli.main([*two, "--allow-untrained-shots"]) == 0
    assert np.array(Image.open(tmp_path / "out.png")).shape == (64, 64)


# ------------------------------------------------------------------ mask rules
def test_mask_value_conventions() -> None:
    box = np.zeros((4, 5), dtype=np.int64)
    box[1:3, 1:4] = 255
    assert binary_support_mask(box, "m", 20).tolist() == (box // 255).tolist()  # 255 = object
    one = box // 255
    assert binary_support_mask(one, "m", 20).tolist() == one.tolist()
    voc = np.array([[0, 3, 3, 255, 0]] * 2)  # class 3, an ignored border
    assert binary_support_mask(voc, "m", 20).tolist() == [[0, 1, 1, 255, 0]] * 2
    several = np.array([[0, 3, 7, 255]])
    with pytest.raises(
        DataError, match=r"m: the mask holds several class ids \[3, 7\].*--class-id"
    ):
        binary_support_mask(several, "m", 20)
    assert binary_support_mask(several, "m", 20, class_id=7).tolist() == [[0, 0, 1, 255]]
    with pytest.raises(
        DataError, match=r"m: mask values 21, 128 are outside 0, 255 and the class ids 1..20"
    ):
        binary_support_mask(np.array([[0, 21, 128, 1]]), "m", 20)
    with pytest.raises(DataError, match="m: the support mask has no object pixel"):
        binary_support_mask(np.zeros((3, 3), dtype=np.int64), "m", 20)
    with pytest.raises(DataError, match="m: the support mask has no class id 5 pixel"):
        binary_support_mask(voc, "m", 20, class_id=5)


def test_mask_files_in_palette_bilevel_and_colour_png(tmp_path: Path) -> None:
    ids = np.zeros((6, 8), dtype=np.uint8)
    ids[2:5, 1:6] = 15
    ids[1, :] = 255
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask_values(tmp_path / "palette.png"), ids)
    Image.fromarray(ids == 15).save(tmp_path / "bilevel.png")  # mode "1"
    assert set(np.unique(read_mask_values(tmp_path / "bilevel.png"))) == {0, 255}
    rgb = np.stack([(ids == 15) * 255] * 3, axis=-1).astype(np.uint8)
    save_png(tmp_path / "white.png", rgb)
    image = np.zeros((6, 8, 3), dtype=np.uint8)
    save_png(tmp_path / "image.png", image)
    support = load_support(tmp_path / "image.png", tmp_path / "white.png", 20)
    np.testing.assert_array_equal(support.mask, (ids == 15).astype(np.uint8))


def test_images_are_read_as_displayed(tmp_path: Path) -> None:
    picture = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    picture.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (30, 10, 3)


def test_a_decompression_bomb_or_a_folder_is_a_named_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_png(tmp_path / "big.png", np.zeros((64, 64, 3), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then a "bomb"
    with pytest.raises(DataError, match=r"big.png: not a readable image .*decompression bomb"):
        read_image(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"is a folder; give the image file"):
        read_image(tmp_path)


def test_boxes_are_parsed_and_bounded() -> None:
    assert Box.parse("box:1, 2,3,4") == Box(1, 2, 3, 4)
    assert Box(1, 2, 3, 4).mask((5, 5), "s").sum() == 4
    with pytest.raises(
        DataError, match=r"s: box x 0..9, y 0..2 is empty or leaves the 5 x 5 image"
    ):
        Box(0, 0, 9, 2).mask((5, 5), "s")


# ------------------------------------------------------------------ bad input
def write_bad_input(kind: str, files: dict[str, Path], folder: Path) -> tuple[dict[str, Path], str]:
    """Replace one input by a bad file; return the files and the text the error must hold."""
    files = dict(files)
    if kind == "missing support":
        files["support"] = folder / "nope.jpg"
        return files, f"{folder / 'nope.jpg'}: image file does not exist"
    if kind == "zero-byte query":
        (folder / "empty.jpg").write_bytes(b"")
        files["query"] = folder / "empty.jpg"
        return files, f"{folder / 'empty.jpg'}: image file is empty (0 bytes)"
    if kind == "truncated query":
        buffer = folder / "full.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buffer
        )
        (folder / "cut.jpg").write_bytes(buffer.read_bytes()[:600])
        files["query"] = folder / "cut.jpg"
        return files, f"{folder / 'cut.jpg'}: not a readable image"
    if kind == "corrupt mask":
        (folder / "junk.png").write_bytes(b"\x89PNG not really a png")
        files["mask"] = folder / "junk.png"
        return files, f"{folder / 'junk.png'}: not a readable image"
    if kind == "mask of another size":
        save_png(folder / "small.png", np.zeros((32, 48), dtype=np.uint8))
        files["mask"] = folder / "small.png"
        return files, f"{folder / 'small.png'}: the mask is 48 x 32 pixels but its image"
    if kind == "mask values":
        save_png(folder / "grey.png", np.full((64, 64), 128, dtype=np.uint8))
        files["mask"] = folder / "grey.png"
        return files, f"{folder / 'grey.png'}: mask values 128 are outside 0, 255"
    if kind == "empty support mask":
        save_png(folder / "black.png", np.zeros((64, 64), dtype=np.uint8))
        files["mask"] = folder / "black.png"
        return files, f"{folder / 'black.png'}: the support mask has no object pixel"
    if kind == "vanishing object":
        big = np.zeros((640, 640), dtype=np.uint8)
        big[3, 3] = 255
        save_png(folder / "dot.png", big)
        save_png(folder / "big.png", np.zeros((640, 640, 3), dtype=np.uint8))
        files["support"], files["mask"] = folder / "big.png", folder / "dot.png"
        return (
            files,
            f"{folder / 'big.png'}: the object (1 pixels) vanishes when the image is resized",
        )
    if kind == "box outside":
        files["mask"] = Path("box:0,0,65,10")
        return files, "(box): box x 0..65, y 0..10 is empty or leaves the 64 x 64 image"
    if kind == "malformed box":
        files["mask"] = Path("box:1,2,3")
        return files, "--support-mask 'box:1,2,3': write a box as box:X0,Y0,X1,Y1"
    raise AssertionError(kind)


BAD_INPUTS = [
    "missing support", "zero-byte query", "truncated query", "corrupt mask",
    "mask of another size", "mask values", "empty support mask", "vanishing object",
    "box outside", "malformed box",
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    kind: str,
    trained: tuple[Path, Config],
    episode: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, _ = trained
    files, message = write_bad_input(kind, episode_files(episode, tmp_path), tmp_path)
    before = folder_state(tmp_path)
    out = tmp_path / "out.png"
    assert cli.main(predict_args(ckpt, files, out, "--overlay", str(tmp_path / "fig.png"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert folder_state(tmp_path) == before  # no output, no temporary file, inputs intact


def test_wrong_checkpoints_and_arguments_are_refused(
    trained: tuple[Path, Config], episode: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = trained
    files = episode_files(episode, tmp_path)
    base = ckpt.parent.parent / "base" / "best.pt"
    (tmp_path / "broken.pt").write_bytes(ckpt.read_bytes()[:1000])
    (tmp_path / "existing.png").write_bytes(b"the user's file")
    (tmp_path / "folder.png").mkdir()
    cases = {
        "is a 'base' checkpoint; this needs a 'meta' one": predict_args(base, files, tmp_path / "o.png"),
        "broken.pt: not a readable checkpoint": predict_args(tmp_path / "broken.pt", files, tmp_path / "o.png"),
        "missing.pt: no such checkpoint file": predict_args(tmp_path / "missing.pt", files, tmp_path / "o.png"),
        "1 --support image(s) but 2 --support-mask(s)": [
            *predict_args(ckpt, files, tmp_path / "o.png"), "--support-mask", "box:0,0,4,4"
        ],
        "is the input file": predict_args(ckpt, files, files["query"]),
        "existing.png: exists; choose another name or pass --overwrite": predict_args(
            ckpt, files, tmp_path / "existing.png"
        ),
        "is a folder": predict_args(ckpt, files, tmp_path / "folder.png"),
        "o.jpg: name it *.png": predict_args(ckpt, files, tmp_path / "o.jpg"),
        "f.txt: name it *.png or *.jpg": [*predict_args(ckpt, files, tmp_path / "o.png"), "--overlay", str(tmp_path / "f.txt")],
    }  # fmt: skip
    before = folder_state(tmp_path)
    for message, args in cases.items():
        assert cli.main(args) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (message, err)
    assert folder_state(tmp_path) == before
    assert cli.main([*predict_args(ckpt, files, tmp_path / "existing.png"), "--overwrite"]) == 0
    assert Image.open(tmp_path / "existing.png").size == (64, 64)


def test_a_failed_write_keeps_the_previous_file(
    trained: tuple[Path, Config],
    episode: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt, _ = trained
    files = episode_files(episode, tmp_path)
    out = tmp_path / "previous.png"
    out.write_bytes(b"an earlier prediction")
    before = folder_state(tmp_path)

    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hdmnet_core.atomic.os.replace", disk_full)
    assert cli.main([*predict_args(ckpt, files, out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: cannot write the mask (No space left on device)\n"
    assert folder_state(tmp_path) == before  # the old file, no temporary file left


def test_the_command_line_exits_with_2(
    trained: tuple[Path, Config], episode: dict, tmp_path: Path
) -> None:
    ckpt, _ = trained
    files = episode_files(episode, tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    files["mask"] = tmp_path / "empty.png"
    result = subprocess.run(
        [sys.executable, "-m", "hdmnet_core", *predict_args(ckpt, files, tmp_path / "o.png")],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        result.stderr
        == f"error: {tmp_path / 'empty.png'}: mask file is empty (0 bytes); save it again\n"
    )


def test_predictor_serves_the_notebook_with_arrays(
    trained: tuple[Path, Config], episode: dict, tmp_path: Path
) -> None:
    ckpt, _ = trained
    predictor = Predictor.from_checkpoint(ckpt)
    source, spec = episode["dataset"].source, episode["spec"]
    image = source.load_image(spec.supports[0])
    support = load_support(
        episode_files(episode, tmp_path)["support"], Box(5, 5, 40, 40), predictor.max_class
    )
    prediction = predictor([support], source.load_image(spec.query))
    assert prediction.mask.shape == image.shape[:2] and prediction.mask.dtype == np.uint8
    assert np.all((prediction.probability >= 0) & (prediction.probability <= 1))
    np.testing.assert_array_equal(prediction.mask, prediction.probability > 0.5)


# ------------------------------------------------------------------ notebook widget
def test_the_upload_panel_segments_uploads_and_says_what_is_wrong(
    trained: tuple[Path, Config], episode: dict
) -> None:
    ckpt, _ = trained
    predictor = Predictor.from_checkpoint(ckpt)
    source, spec = episode["dataset"].source, episode["spec"]
    support_image, query = source.load_image(spec.supports[0]), source.load_image(spec.query)
    panel = UploadPanel(predictor, support=np.zeros((40, 50, 3), np.uint8), query=query)
    assert panel.prediction is not None and panel.prediction.mask.shape == query.shape[:2]
    first_picture = bytes(panel.image.value)

    panel.support_upload.value = upload_value("support.png", support_image)
    panel.mask_from.value = "mask file"  # nothing uploaded yet
    assert panel.prediction is None
    assert panel.message.value == "error: no support mask uploaded yet: upload one, or choose 'box'"
    assert bytes(panel.image.value) != first_picture  # a blank, not the stale picture
    panel.mask_upload.value = upload_value("small.png", np.zeros((8, 8), np.uint8))
    assert panel.message.value.startswith("error: uploaded small.png: the mask is 8 x 8 pixels")
    panel.mask_upload.value = upload_value("grey.png", np.full((64, 64), 77, np.uint8))
    assert "error: uploaded grey.png: mask values 77 are outside" in panel.message.value

    truth = binary_mask(source.load_mask(spec.supports[0]), spec.class_id)
    panel.mask_upload.value = upload_value("mask.png", truth)
    expected = predictor([load_support(io_png(support_image), io_png(truth), 20)], query)
    assert panel.prediction is not None
    np.testing.assert_array_equal(panel.prediction.probability, expected.probability)
    with_mask = panel.prediction.probability

    panel.mask_from.value = "box"  # the sliders' box in percent of the 64 x 64 support
    panel.box_x.value, panel.box_y.value = (0, 50), (50, 100)
    box = Support(support_image, Box(0, 32, 32, 64).mask((64, 64), "s"), "s")
    assert panel.prediction is not None
    np.testing.assert_array_equal(panel.prediction.probability, predictor([box], query).probability)
    assert not np.array_equal(panel.prediction.probability, with_mask)  # the input changed it
    panel.query_upload.value = upload_value("query.png", query[:40])
    assert panel.prediction is not None and panel.prediction.mask.shape == (40, 64)
    assert "-> query 64 x 40" in panel.message.value


def io_png(array: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer

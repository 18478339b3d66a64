"""The synthetic benchmark: determinism, content, on-disk tree, source protocol, CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hdmnet_core.cli import main as cli_main
from hdmnet_core.config import Config, DataConfig
from hdmnet_core.data import synthetic
from hdmnet_core.data.source import DataError, SegmentationSource, compute_class_areas
from hdmnet_core.data.splits import class_names, novel_classes
from hdmnet_core.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSource,
    ensure_synthetic,
    generate_image,
    generate_scene,
    scaled_min_area,
    write_synthetic,
)

SMALL: dict[str, Any] = {
    "image_size": 40,
    "train_images": 24,
    "val_images": 20,
    "seed": 3,
    "progress": False,
}


def small_config(**changes: int) -> DataConfig:
    config = DataConfig(
        synthetic_image_size=40,
        synthetic_images_train=24,
        synthetic_images_val=20,
        synthetic_seed=3,
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# ----------------------------------------------------------------------- classes
def test_twenty_distinct_classes_and_folds_mix_shapes_and_textures() -> None:
    assert len(SYNTHETIC_CLASSES) == 20 and len(set(SYNTHETIC_CLASSES)) == 20
    assert class_names("synthetic") == SYNTHETIC_CLASSES
    for fold in range(4):
        names = [SYNTHETIC_CLASSES[c - 1] for c in novel_classes("synthetic", fold)]
        assert len({n.split("-")[1] for n in names}) == 5  # every shape
        assert len({n.split("-")[0] for n in names}) == 4  # every texture


def test_colour_pairs_never_identify_a_class_alone() -> None:
    by_pair: dict[tuple[str, str], list[int]] = {}
    for k, pair in enumerate(synthetic.CLASS_COLOURS):
        by_pair.setdefault(pair, []).append(k)
    for members in by_pair.values():
        assert len(members) == 2
        a, b = (SYNTHETIC_CLASSES[k].split("-") for k in members)
        assert a[0] != b[0] and a[1] != b[1]  # sharing colours, differing in texture and shape


def test_scaled_min_area() -> None:
    assert scaled_min_area(473) == 2 * 32 * 32
    assert scaled_min_area(96) == 84 and scaled_min_area(128) == 150
    tiny = Config.from_profile("cpu-tiny").data
    assert tiny.min_class_area == scaled_min_area(tiny.synthetic_image_size)


# ----------------------------------------------------------------------- generation
def test_generation_is_deterministic_and_varies_with_index_split_and_seed() -> None:
    image, mask = generate_image(0, "train", 5)
    again_image, again_mask = generate_image(0, "train", 5)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(mask, again_mask)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    for other in (
        generate_image(0, "train", 6),
        generate_image(0, "val", 5),
        generate_image(1, "train", 5),
    ):
        assert not np.array_equal(image, other[0])


def test_image_size_is_configurable() -> None:
    image, mask = generate_image(0, "train", 0, image_size=64)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)


def test_unknown_split_is_named() -> None:
    with pytest.raises(ValueError, match="split='test'"):
        generate_image(0, "test", 0)


def test_every_class_appears_with_usable_area() -> None:
    min_area = scaled_min_area(96)
    usable: dict[int, int] = {}
    objects_per_image = []
    for i in range(300):
        scene = generate_scene(0, "train", i)
        objects_per_image.append(len(scene.instance_classes))
        for class_id, area in compute_class_areas(scene.mask).items():
            if area >= min_area:
                usable[class_id] = usable.get(class_id, 0) + 1
    assert sorted(usable) == list(range(1, 21))
    assert min(usable.values()) >= 10
    assert set(objects_per_image) == {1, 2, 3, 4}


def test_mask_values_are_background_classes_or_ignore() -> None:
    for i in range(20):
        scene = generate_scene(0, "val", i)
        values = set(np.unique(scene.mask).tolist())
        assert values <= set(range(0, 21)) | {255}
        assert set(np.unique(scene.labels).tolist()) - {0} <= set(scene.instance_classes)


def _label_change_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (computed independently of the generator)."""
    padded = np.pad(labels.astype(np.int32), 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    return np.any([n != centre for n in neighbours], axis=0)


def test_ignore_band_lies_exactly_on_label_borders() -> None:
    for i in range(30):
        scene = generate_scene(0, "train", i)
        border = _label_change_pixels(scene.labels)
        ignored = scene.mask == 255
        assert border.any()
        np.testing.assert_array_equal(ignored, border)  # present at every border, only there
        np.testing.assert_array_equal(scene.mask[~ignored], scene.labels[~ignored])
        # no two 4-adjacent kept pixels carry different labels
        kept = np.where(ignored, -1, scene.mask.astype(np.int32))
        for a, b in ((kept[1:], kept[:-1]), (kept[:, 1:], kept[:, :-1])):
            both = (a >= 0) & (b >= 0)
            assert np.all(a[both] == b[both])


def test_ignore_band_is_two_pixels_across_a_straight_edge() -> None:
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[:, 5:] = 7
    band = synthetic._ignore_border(labels)
    expected = np.zeros((10, 10), dtype=bool)
    expected[:, 4:6] = True
    np.testing.assert_array_equal(band, expected)


def test_occlusion_later_objects_cover_earlier_ones() -> None:
    found = 0
    for i in range(200):
        scene = generate_scene(0, "train", i)
        for first in range(len(scene.instance_masks)):
            for later in range(first + 1, len(scene.instance_masks)):
                overlap = scene.instance_masks[first] & scene.instance_masks[later]
                if (
                    overlap.sum() < 20
                    or scene.instance_classes[first] == scene.instance_classes[later]
                ):
                    continue
                hidden = overlap.copy()
                for k in range(later + 1, len(scene.instance_masks)):
                    hidden &= ~scene.instance_masks[k]
                assert np.all(scene.labels[hidden] == scene.instance_classes[later])
                found += 1
    assert found >= 10  # occlusion is common, not a rare accident


# ----------------------------------------------------------------------- on disk
def test_write_produces_manifest_arrays_and_areas(tmp_path: Path) -> None:
    tree = write_synthetic(tmp_path, **SMALL)
    assert tree == tmp_path / "synthetic"
    manifest = json.loads((tree / "manifest.json").read_text())
    assert manifest["version"] == synthetic.GENERATOR_VERSION
    assert manifest["seed"] == 3 and manifest["image_size"] == 40
    assert manifest["counts"] == {"train": 24, "val": 20}
    images = np.load(tree / "train" / "images.npy")
    masks = np.load(tree / "train" / "masks.npy")
    assert images.shape == (24, 40, 40, 3) and masks.shape == (24, 40, 40)
    image, mask = generate_image(3, "train", 7, image_size=40)
    np.testing.assert_array_equal(images[7], image)
    np.testing.assert_array_equal(masks[7], mask)
    areas = json.loads((tree / "train" / "class_areas.json").read_text())
    assert {int(k): v for k, v in areas[7].items()} == compute_class_areas(mask)
    assert manifest["splits"]["val"]["sha256"]["masks.npy"] == synthetic._sha256(
        tree / "val" / "masks.npy"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temporary folders left


def test_failed_write_leaves_the_old_tree_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = write_synthetic(tmp_path, **SMALL)
    before = (tree / "manifest.json").read_text()
    original = synthetic._write_split

    def failing(folder: Path, seed: int, split: str, *args: object) -> object:
        if split == "val":
            raise RuntimeError("disk full")
        return original(folder, seed, split, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "_write_split", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic(tmp_path, **{**SMALL, "seed": 4})
    assert (tree / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


def test_ensure_reuses_a_matching_tree(tmp_path: Path) -> None:
    tree = ensure_synthetic(tmp_path, small_config())
    stamp = (tree / "train" / "images.npy").stat().st_mtime_ns
    inode = (tree / "train" / "images.npy").stat().st_ino
    assert ensure_synthetic(tmp_path, small_config()) == tree
    assert (tree / "train" / "images.npy").stat().st_ino == inode
    assert (tree / "train" / "images.npy").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "change", [{"synthetic_seed": 4}, {"synthetic_image_size": 48}, {"synthetic_images_val": 21}]
)
def test_ensure_regenerates_on_manifest_mismatch(tmp_path: Path, change: dict[str, int]) -> None:
    tree = ensure_synthetic(tmp_path, small_config())
    ensure_synthetic(tmp_path, small_config(**change))
    manifest = json.loads((tree / "manifest.json").read_text())
    config = small_config(**change)
    assert manifest["seed"] == config.synthetic_seed
    assert manifest["image_size"] == config.synthetic_image_size
    assert manifest["counts"] == {"train": 24, "val": config.synthetic_images_val}
    assert SyntheticSource(tmp_path, "val").load_image(0).shape[0] == config.synthetic_image_size


def test_ensure_regenerates_an_old_generator_version(tmp_path: Path) -> None:
    tree = ensure_synthetic(tmp_path, small_config())
    manifest = json.loads((tree / "manifest.json").read_text())
    manifest["version"] = synthetic.GENERATOR_VERSION - 1
    (tree / "manifest.json").write_text(json.dumps(manifest))
    ensure_synthetic(tmp_path, small_config())
    assert (
        json.loads((tree / "manifest.json").read_text())["version"] == synthetic.GENERATOR_VERSION
    )


@pytest.mark.parametrize("damage", ["delete", "truncate_shape"])
def test_ensure_regenerates_a_damaged_tree_of_ours(tmp_path: Path, damage: str) -> None:
    tree = ensure_synthetic(tmp_path, small_config())
    masks = tree / "val" / "masks.npy"
    if damage == "delete":
        masks.unlink()
    else:
        np.save(masks, np.zeros((3, 40, 40), dtype=np.uint8))
    with pytest.raises(DataError, match="masks.npy"):
        SyntheticSource(tmp_path, "val")
    ensure_synthetic(tmp_path, small_config())
    assert np.load(masks).shape == (20, 40, 40)


def test_ensure_with_hashes_regenerates_modified_arrays(tmp_path: Path) -> None:
    tree = ensure_synthetic(tmp_path, small_config())
    images = tree / "train" / "images.npy"
    np.save(images, np.zeros((24, 40, 40, 3), dtype=np.uint8))
    ensure_synthetic(tmp_path, small_config())  # shapes fine: reused without hashing
    assert not np.load(images).any()
    ensure_synthetic(tmp_path, small_config(), verify_hashes=True)
    assert np.load(images).any()


def test_ensure_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "synthetic"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"manifest\.json: missing"):
        ensure_synthetic(tmp_path, small_config())
    (foreign / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable manifest"):
        ensure_synthetic(tmp_path, small_config())
    (foreign / "manifest.json").write_text(json.dumps({"generator": "someone-else"}))
    with pytest.raises(DataError, match="generator"):
        ensure_synthetic(tmp_path, small_config())
    assert (foreign / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------- source
def test_source_protocol(tmp_path: Path) -> None:
    write_synthetic(tmp_path, **SMALL)
    source = SyntheticSource(tmp_path, "train")
    assert isinstance(source, SegmentationSource)
    assert source.name == "synthetic/train" and source.dataset == "synthetic"
    assert len(source) == 24
    assert SyntheticSource(tmp_path / "synthetic", "val").name == "synthetic/val"
    image, mask = generate_image(3, "train", 11, image_size=40)
    np.testing.assert_array_equal(source.load_image(11), image)
    np.testing.assert_array_equal(source.load_mask(11), mask)
    assert source.load_image(11).flags.writeable
    assert source.class_areas(11) == compute_class_areas(mask)
    assert len({source.image_name(i) for i in range(len(source))}) == 24
    with pytest.raises(IndexError, match="index 24 out of range"):
        source.load_mask(24)


def test_source_pickles_without_its_memory_maps(tmp_path: Path) -> None:
    write_synthetic(tmp_path, **SMALL)
    source = SyntheticSource(tmp_path, "val")
    source.load_image(0)  # maps the arrays in this process
    clone = pickle.loads(pickle.dumps(source))
    assert clone._arrays is None
    np.testing.assert_array_equal(clone.load_mask(3), source.load_mask(3))


def test_source_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest.json: missing"):
        SyntheticSource(tmp_path, "train")
    write_synthetic(tmp_path, **SMALL)
    areas = tmp_path / "synthetic" / "train" / "class_areas.json"
    areas.write_text("[]")
    with pytest.raises(DataError, match="class_areas.json"):
        SyntheticSource(tmp_path, "train")
    areas.write_text(json.dumps([{"x": 1}] * 24))
    with pytest.raises(DataError, match="class_areas.json: entries must map"):
        SyntheticSource(tmp_path, "train")
    with pytest.raises(ValueError, match="split='test'"):
        SyntheticSource(tmp_path, "test")


# ----------------------------------------------------------------------- CLI
def test_make_synthetic_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "make-synthetic",
        "--root",
        str(tmp_path),
        "--size",
        "40",
        "--train",
        "20",
        "--val",
        "20",
        "--seed",
        "1",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"area >= {scaled_min_area(40)}" in out
    assert "striped-disc" in out and "train 20, val 20" in out
    assert len(SyntheticSource(tmp_path, "train")) == 20


def test_make_synthetic_rejects_a_tiny_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["make-synthetic", "--root", str(tmp_path), "--size", "16"]) == 2
    assert "image_size=16" in capsys.readouterr().err
    assert not (tmp_path / "synthetic").exists()


def test_two_processes_generating_the_same_tree_at_once_both_succeed(tmp_path: Path) -> None:
    """pytest workers and DDP ranks may ask for the tree at the same time: one generates,
    the other waits and reuses it; neither fails on the other's rename."""
    import subprocess
    import sys

    code = (
        "import sys; from hdmnet_core.config import Config;"
        "from hdmnet_core.data.synthetic import ensure_synthetic, SyntheticSource;"
        "c = Config.from_profile('cpu-tiny', **{'data.synthetic_images_train': 300,"
        " 'data.synthetic_images_val': 40});"
        "t = ensure_synthetic(sys.argv[1], c.data); print(len(SyntheticSource(t, 'train')))"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["300", "300"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", "synthetic"]

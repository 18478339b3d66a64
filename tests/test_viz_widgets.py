import numpy as np
import pytest
import torch

from hdmnet_core.config import Config
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import build_episode_dataset
from hdmnet_core.data.transforms import normalize
from hdmnet_core.viz import colour_class_mask, overlay_mask, show_episode, to_uint8_image
from hdmnet_core.widgets import EpisodeBrowser, episode_of_class, find_episode


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return Config.from_profile(
        "cpu-tiny",
        **{
            "data.root": str(root),
            "data.synthetic_image_size": 64,
            "data.train_size": 64,
            "data.eval_size": 64,
            "data.min_class_area": 40,
            "data.synthetic_images_train": 120,
            "data.synthetic_images_val": 60,
            "eval.episodes": 40,
        },
    )


def test_to_uint8_image_inverts_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    tensor = normalize(torch.from_numpy(image).permute(2, 0, 1).float())
    assert np.array_equal(to_uint8_image(tensor), image)
    assert np.array_equal(to_uint8_image(image), image)
    with pytest.raises(ValueError, match=r"\(3,H,W\) or \(H,W,3\)"):
        to_uint8_image(np.zeros((4, 4)))


def test_overlay_colours_foreground_and_ignore_only():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0], mask[1, 1] = 1, 255
    out = overlay_mask(image, mask, colour=(1.0, 0.0, 0.0), alpha=0.5)
    assert tuple(out[0, 0]) == (128, 0, 0)
    assert tuple(out[1, 1]) == (128, 128, 128)
    assert out[2:].sum() == 0
    with pytest.raises(ValueError, match="differ in size"):
        overlay_mask(image, np.zeros((3, 4)))


def test_colour_class_mask_gives_each_class_its_colour():
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    rgb = colour_class_mask(mask, 20)
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) != tuple(rgb[1, 0])


def test_find_episode_and_episode_of_class(tiny_config):
    source = open_source(tiny_config, "val")
    dataset = build_episode_dataset(tiny_config, "val", source, seed=3)
    wanted = dataset.episode_spec(5).class_id
    position = find_episode(dataset, wanted)
    assert position is not None and position <= 5
    assert dataset.episode_spec(position).class_id == wanted
    assert find_episode(dataset, 999) is None
    batch = episode_of_class(tiny_config, source, wanted, seed=3)
    assert batch is not None and int(batch["class_id"][0]) == wanted
    assert batch["support_images"].shape == (1, 1, 3, 64, 64)
    figure = show_episode(batch, 0, prediction=batch["query_mask"][0])
    assert len(figure.axes) == 3


def test_episode_browser_follows_its_controls(tiny_config):
    source = open_source(tiny_config, "val")
    browser = EpisodeBrowser(tiny_config, source)
    assert [c for _, c in browser.class_choice.options] == [1, 2, 3, 4, 5]
    assert browser.current is not None
    assert int(browser.current["class_id"][0]) == browser.class_choice.value == 1
    browser.fold.value = 2
    assert [c for _, c in browser.class_choice.options] == [11, 12, 13, 14, 15]
    assert int(browser.current["class_id"][0]) == browser.class_choice.value
    browser.shots.value = 2
    assert browser.current["support_images"].shape[1] == 2
    assert bytes(browser.image.value).startswith(b"\x89PNG")
    browser.class_choice.value = 12
    assert int(browser.current["class_id"][0]) == 12
    assert browser.message.value.startswith("episode ")

import numpy as np
import pytest
import torch

from hdmnet_core.config import Config
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import build_episode_dataset
from hdmnet_core.data.transforms import normalize
from hdmnet_core.viz import colour_class_mask, overlay_mask, show_episode, to_uint8_image
from hdmnet_core.widgets import (
    EpisodeBrowser,
    episode_of_class,
    episode_positions,
    find_episode,
    png_size,
)


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


def test_episode_number_box_is_bounded_and_out_of_range_is_said(tiny_config):
    source = open_source(tiny_config, "val")
    browser = EpisodeBrowser(tiny_config, source)
    dataset = build_episode_dataset(tiny_config, "val", source, seed=0)
    count = len(episode_positions(dataset, browser.class_choice.value))
    assert count >= 2 and browser.episode_count == count
    assert browser.occurrence.max == count - 1
    browser.occurrence.value = count + 5  # typed past the end: the box clamps it
    assert browser.occurrence.value == count - 1
    last = episode_positions(dataset, browser.class_choice.value)[-1]
    assert browser.current["query_name"][0] == dataset[last]["query_name"]
    # a seed with fewer episodes of a class leaves a number out of range: clamped, said
    datasets = [build_episode_dataset(tiny_config, "val", source, seed=s) for s in range(20)]
    varied = {}
    for class_id in (1, 2, 3, 4, 5):
        counts = {s: len(episode_positions(d, class_id)) for s, d in enumerate(datasets)}
        if len(set(counts.values()) - {0}) > 1:
            varied[class_id] = counts
    class_id, counts = next(iter(varied.items()))
    many = max(counts, key=counts.__getitem__)
    fewer = min((s for s in counts if counts[s] > 0), key=counts.__getitem__)
    browser.class_choice.value = class_id
    browser.seed.value = many
    browser.occurrence.value = counts[many] - 1
    assert browser.message.value.startswith(f"episode {counts[many] - 1} of {counts[many]}")
    browser.seed.value = fewer
    assert browser.occurrence.max == counts[fewer] - 1
    assert "out of range" in browser.message.value
    assert f"showing # {counts[fewer] - 1}" in browser.message.value
    assert browser.current is not None


def test_episode_browser_without_episode_clears_the_picture(tiny_config):
    source = open_source(tiny_config, "val")
    browser = EpisodeBrowser(tiny_config, source)
    before = bytes(browser.image.value)
    browser.class_choice.options = [("999: none", 999)]  # a class no episode has
    assert browser.current is None
    assert "has no episode" in browser.message.value and "try another seed" in browser.message.value
    assert bytes(browser.image.value) != before  # the stale picture is gone
    assert png_size(bytes(browser.image.value))[1] == png_size(before)[1]


def test_episode_browser_panels_keep_one_pixel_size(tiny_config):
    source = open_source(tiny_config, "val")
    browser = EpisodeBrowser(tiny_config, source)
    one = png_size(bytes(browser.image.value))
    assert browser.image.layout.width == f"{one[0]}px" and browser.image.width == str(one[0])
    browser.shots.value = 2
    three = png_size(bytes(browser.image.value))
    assert three[1] == one[1]  # same height: panels are not shrunk to fit
    assert three[0] * 2 == one[0] * 3  # 3 panels vs 2 panels of the same width
    assert browser.image.layout.width == f"{three[0]}px"


def test_episode_browser_offers_a_static_preview(tiny_config):
    import base64

    source = open_source(tiny_config, "val")
    browser = EpisodeBrowser(tiny_config, source)
    bundle = browser._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == bytes(browser.image.value)
    assert "static preview" in bundle["text/plain"]


def test_episode_browser_says_when_a_class_has_too_few_supports(tiny_config):
    source = open_source(tiny_config, "val")
    browser = EpisodeBrowser(tiny_config, source)
    browser.shots.value = 5  # the tiny split has fewer usable images of some class
    assert browser.current is None
    assert "cannot draw 5 support(s)" in browser.message.value
    browser.shots.value = 1
    assert browser.current is not None and browser.message.value.startswith("episode ")


def test_live_figure_recomputes_on_every_change():
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from hdmnet_core.widgets import LiveFigure

    def draw(scale, label):
        figure, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, scale])
        ax.set_title(label)
        figure.result = {"scale": scale, "label": label}
        return figure

    live = LiveFigure(
        draw, scale=widgets.FloatSlider(value=1.0, min=0, max=2), label=widgets.Text("a")
    )
    first = bytes(live.image.value)
    assert live.draws == 1 and live.result == {"scale": 1.0, "label": "a"}
    assert png_size(first) == (160, 160) and live.image.layout.width == "160px"
    live.controls["scale"].value = 2.0
    assert live.draws == 2 and live.result["scale"] == 2.0
    assert bytes(live.image.value) != first
    live.controls["label"].value = "b"
    assert live.result["label"] == "b"
    bundle = live._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert "scale=2.0" in bundle["text/plain"]
    with pytest.raises(ValueError, match="at least one control"):
        LiveFigure(draw)


def test_blank_panel_and_upsample_map():
    from hdmnet_core.viz import blank_panel, upsample_map
    from hdmnet_core.widgets import figure_png

    assert png_size(figure_png(blank_panel("none", 3, size=1.0), dpi=50)) == (150, 50)
    up = upsample_map(np.array([[0.0, 1.0], [1.0, 0.0]]), (4, 4))
    assert up.shape == (4, 4) and up.min() >= 0 and up.max() <= 1
    with pytest.raises(ValueError, match=r"\(h, w\) map"):
        upsample_map(np.zeros((2, 2, 2)), (4, 4))
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a")

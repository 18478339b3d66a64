"""Interactive notebook controls (ipywidgets) over the package's real code paths.

The widgets only choose arguments; every episode they show comes from
:class:`hdmnet_core.data.episodes.EpisodeDataset`, exactly as training and evaluation
draw it, so what a reader browses is what the model sees.
"""

from __future__ import annotations

import io
from typing import Any

from hdmnet_core.config import Config
from hdmnet_core.data import splits
from hdmnet_core.data.episodes import EpisodeDataset, build_episode_dataset, collate_episodes
from hdmnet_core.data.source import SegmentationSource


def find_episode(dataset: EpisodeDataset, class_id: int, occurrence: int = 0) -> int | None:
    """Position of the ``occurrence``-th episode of ``dataset`` whose class is ``class_id``."""
    seen = 0
    for i in range(len(dataset)):
        if dataset.episode_spec(i).class_id == class_id:
            if seen == occurrence:
                return i
            seen += 1
    return None


def episode_of_class(
    config: Config,
    source: SegmentationSource,
    class_id: int,
    seed: int,
    split: str = "val",
    occurrence: int = 0,
) -> dict[str, Any] | None:
    """A batch of one episode of ``class_id`` drawn with ``seed`` (``None`` if the class
    does not occur among the split's episodes)."""
    dataset = build_episode_dataset(config, "val" if split == "val" else "train", source, seed=seed)
    position = find_episode(dataset, class_id, occurrence)
    if position is None:
        return None
    return collate_episodes([dataset[position]])


class EpisodeBrowser:
    """Browse episodes by fold, class, shots and seed.

    ``EpisodeBrowser(config, source).widget`` is the ``ipywidgets.VBox`` to display;
    ``current`` holds the batch on screen (``None`` when the class does not occur).
    The figure is sent as PNG bytes of an ``ipywidgets.Image`` rather than displayed
    inside an ``Output`` widget: capturing output while a cell runs can stall headless
    notebook execution (papermill, nbval), while setting an image value cannot.
    """

    def __init__(self, config: Config, source: SegmentationSource, split: str = "val") -> None:
        import ipywidgets as widgets

        self.config, self.source, self.split = config, source, split
        self.names = splits.class_names(config.data.dataset)
        self.current: dict[str, Any] | None = None
        self.fold = widgets.Dropdown(
            options=list(range(4)), value=config.data.fold, description="fold"
        )
        self.class_choice = widgets.Dropdown(options=self._class_options(), description="class")
        self.shots = widgets.IntSlider(value=config.data.shots, min=1, max=5, description="shots")
        self.seed = widgets.BoundedIntText(value=0, min=0, max=10**6, description="seed")
        self.occurrence = widgets.BoundedIntText(value=0, min=0, max=1000, description="episode #")
        self.image = widgets.Image(format="png")
        self.message = widgets.Label()
        self.fold.observe(self._on_fold, names="value")
        for control in (self.class_choice, self.shots, self.seed, self.occurrence):
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.fold, self.class_choice]),
                widgets.HBox([self.shots, self.seed, self.occurrence]),
                self.message,
                self.image,
            ]
        )
        self.redraw()

    def _class_options(self) -> list[tuple[str, int]]:
        data = self.config.data
        fold = self.fold.value if hasattr(self, "fold") else data.fold
        if self.split == "val":
            ids = splits.novel_classes(data.dataset, fold, data.coco_split)
        else:
            ids = splits.base_classes(data.dataset, fold, data.coco_split)
        return [(f"{c}: {self.names[c - 1]}", c) for c in ids]

    def _on_fold(self, _change: Any) -> None:
        with self.class_choice.hold_trait_notifications():
            self.class_choice.options = self._class_options()
        self.redraw()

    def redraw(self) -> None:
        import matplotlib.pyplot as plt

        from hdmnet_core.viz import show_episode

        if self.class_choice.value is None:  # options are being replaced
            return
        cfg = self.config.with_overrides(
            **{"data.fold": self.fold.value, "data.shots": self.shots.value}
        )
        self.current = episode_of_class(
            cfg,
            self.source,
            self.class_choice.value,
            self.seed.value,
            self.split,
            self.occurrence.value,
        )
        if self.current is None:
            self.message.value = f"class {self.class_choice.value} does not occur in these episodes; try another seed"
            return
        self.message.value = f"episode {self.current['query_name'][0]}"
        figure = show_episode(self.current, 0, self.names)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        self.image.value = buffer.getvalue()


def episode_browser(config: Config, source: SegmentationSource, split: str = "val") -> Any:
    """The episode browser's widget (see :class:`EpisodeBrowser`)."""
    return EpisodeBrowser(config, source, split).widget

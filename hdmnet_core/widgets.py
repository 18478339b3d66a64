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
from hdmnet_core.data.episodes import (
    EpisodeDataset,
    Mode,
    build_episode_dataset,
    collate_episodes,
)
from hdmnet_core.data.source import DataError, SegmentationSource

BROWSER_DPI = 80
"""Pixels per inch of the browser's PNG; with ``show_episode``'s panel size this fixes
every panel at the same number of screen pixels whatever the number of shots."""


def episode_positions(dataset: EpisodeDataset, class_id: int) -> list[int]:
    """Positions of the episodes of ``dataset`` whose class is ``class_id``, in order."""
    return [i for i in range(len(dataset)) if dataset.episode_spec(i).class_id == class_id]


def find_episode(dataset: EpisodeDataset, class_id: int, occurrence: int = 0) -> int | None:
    """Position of the ``occurrence``-th episode of ``dataset`` whose class is ``class_id``."""
    positions = episode_positions(dataset, class_id)
    return positions[occurrence] if 0 <= occurrence < len(positions) else None


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


def figure_png(figure: Any, dpi: int = BROWSER_DPI) -> bytes:
    """The figure as PNG bytes at ``dpi`` (no tight bounding box: the pixel size is exactly
    ``figsize * dpi``); the figure is closed so notebooks do not show it twice."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


class EpisodeBrowser:
    """Browse episodes by fold, class, shots, seed and episode number.

    ``EpisodeBrowser(config, source)`` displays itself in a notebook (``widget`` is the
    ``ipywidgets.VBox``); ``current`` holds the batch on screen (``None`` when nothing
    is shown). The episode number box is bounded by the number of episodes of the
    chosen class; a number left out of range by a change of class, seed or shots is
    clamped and the message says so. The figure is sent as PNG bytes of an
    ``ipywidgets.Image`` shown at its own pixel size (every panel has the same size for
    any number of shots), rather than inside an ``Output`` widget: capturing output
    while a cell runs can stall headless execution (papermill, nbval), setting an image
    value cannot. Displayed, the browser also offers a static PNG of the first episode
    and a sentence for viewers without a kernel (GitHub, nbviewer).
    """

    def __init__(self, config: Config, source: SegmentationSource, split: str = "val") -> None:
        import ipywidgets as widgets

        self.config, self.source, self.split = config, source, split
        self.names = splits.class_names(config.data.dataset)
        self.current: dict[str, Any] | None = None
        self.episode_count = 0
        """Episodes of the chosen class with the chosen seed (the box allows 0..count-1)."""
        self._updating = False
        self.fold = widgets.Dropdown(
            options=list(range(4)), value=config.data.fold, description="fold"
        )
        self.class_choice = widgets.Dropdown(options=self._class_options(), description="class")
        self.shots = widgets.IntSlider(value=config.data.shots, min=1, max=5, description="shots")
        self.seed = widgets.BoundedIntText(value=0, min=0, max=10**6, description="seed")
        self.occurrence = widgets.BoundedIntText(value=0, min=0, max=0, description="episode #")
        self.image = widgets.Image(format="png")
        self.message = widgets.Label()
        self.fold.observe(self._on_fold, names="value")
        for control in (self.class_choice, self.shots, self.seed, self.occurrence):
            control.observe(self._on_change, names="value")
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

    def _on_change(self, _change: Any) -> None:
        if not self._updating:  # the browser's own box updates do not redraw twice
            self.redraw()

    def _set_occurrence_bound(self, count: int) -> None:
        """Bound the episode box to 0..count-1 (it clamps its value) without a redraw."""
        self._updating = True
        try:
            self.occurrence.max = max(count - 1, 0)
        finally:
            self._updating = False

    def redraw(self) -> None:
        from hdmnet_core.viz import show_episode

        if self.class_choice.value is None:  # options are being replaced
            return
        cfg = self.config.with_overrides(
            **{"data.fold": self.fold.value, "data.shots": self.shots.value}
        )
        class_id, seed, wanted = self.class_choice.value, self.seed.value, self.occurrence.value
        mode: Mode = "val" if self.split == "val" else "train"
        try:
            dataset = build_episode_dataset(cfg, mode, self.source, seed=seed)
        except DataError as err:  # e.g. more shots than a class has images
            self._show_nothing(str(err))
            return
        positions = episode_positions(dataset, class_id)
        self.episode_count = len(positions)
        self._set_occurrence_bound(len(positions))
        if not positions:
            self._show_nothing(
                f"class {class_id} has no episode among the {len(dataset)} episodes of seed "
                f"{seed}; try another seed"
            )
            return
        shown = min(wanted, len(positions) - 1)
        self.current = collate_episodes([dataset[positions[shown]]])
        note = ""
        if wanted != shown:
            note = (
                f"episode # {wanted} is out of range (0..{len(positions) - 1}); showing # {shown}: "
            )
        self.message.value = (
            f"{note}episode {shown} of {len(positions)} of class {class_id} with seed {seed}: "
            f"query {self.current['query_name'][0]}"
        )
        self.image.value = figure_png(show_episode(self.current, 0, self.names))
        self._fit_image()

    def _show_nothing(self, why: str) -> None:
        """Say ``why`` and replace the picture by a blank of the same height."""
        from hdmnet_core.viz import blank_panel

        self.current = None
        self.message.value = why
        self.image.value = figure_png(blank_panel("no episode", self.shots.value + 1))
        self._fit_image()

    def _fit_image(self) -> None:
        """Show the PNG at its own pixel size: never stretched to the output width."""
        width, height = png_size(bytes(self.image.value))
        self.image.width, self.image.height = str(width), str(height)
        self.image.layout.width, self.image.layout.height = f"{width}px", f"{height}px"
        self.image.layout.max_width = "none"
        self.image.layout.object_fit = "none"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The widget view for Jupyter, plus a static PNG and a sentence for viewers
        without a widget manager (they pick the richest output they can show)."""
        import base64

        bundle = self.widget._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        bundle["image/png"] = base64.b64encode(bytes(self.image.value)).decode("ascii")
        bundle["text/plain"] = (
            "Episode browser (static preview of the first episode: run the notebook in "
            "Jupyter to change fold, class, shots, seed and episode)"
        )
        return dict(bundle)


def episode_browser(config: Config, source: SegmentationSource, split: str = "val") -> Any:
    """The episode browser (displays as its widget; see :class:`EpisodeBrowser`)."""
    return EpisodeBrowser(config, source, split)


class LiveFigure:
    """Controls and a figure that ``draw(**values)`` recomputes on every change.

    ``LiveFigure(draw, temperature=FloatSlider(...), ...)``: each keyword is a widget
    whose ``value`` is passed to ``draw`` under that name; ``draw`` returns a matplotlib
    figure, shown as a PNG of an ``ipywidgets.Image`` at its own pixel size (as in
    :class:`EpisodeBrowser`). ``result`` is what ``draw`` attached to the figure as
    ``figure.result`` (e.g. the numbers it plotted), ``None`` otherwise; ``draws``
    counts the redraws. Displayed, it also offers a static PNG for viewers without widgets.
    """

    def __init__(self, draw: Any, dpi: int = BROWSER_DPI, **controls: Any) -> None:
        import ipywidgets as widgets

        if not controls:
            raise ValueError("LiveFigure needs at least one control")
        self.draw, self.dpi, self.controls = draw, dpi, controls
        self.image = widgets.Image(format="png")
        self.result: Any = None
        self.draws = 0
        for control in controls.values():
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox(list(controls.values())), self.image])
        self.redraw()

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def redraw(self) -> None:
        figure = self.draw(**self.values())
        self.result = getattr(figure, "result", None)
        self.image.value = figure_png(figure, self.dpi)
        width, height = png_size(bytes(self.image.value))
        self.image.width, self.image.height = str(width), str(height)
        self.image.layout.width, self.image.layout.height = f"{width}px", f"{height}px"
        self.image.layout.max_width = "none"
        self.draws += 1

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        import base64

        bundle = self.widget._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        bundle["image/png"] = base64.b64encode(bytes(self.image.value)).decode("ascii")
        shown = ", ".join(f"{name}={value}" for name, value in self.values().items())
        bundle["text/plain"] = (
            f"Interactive figure (static preview at {shown}: run the notebook in Jupyter "
            "to move the controls)"
        )
        return dict(bundle)

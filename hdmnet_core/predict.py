"""Segment your own images with a trained checkpoint (issue 10, notebook 09).

``python -m hdmnet_core predict --ckpt C --support S --support-mask M --query Q --out P``
reads K annotated support images and one query image, runs the meta-trained HDMNet of
``C`` exactly as the evaluation does, and writes the predicted mask of the query at
the query's original size as a PNG (0 = background, 255 = the supports' object).
Notebook 09 calls the same functions.

The evaluation geometry (``engine.evaluate``): query and supports are resized directly
to ``data.eval_size`` (:class:`~hdmnet_core.data.transforms.EvalTransform`), the model
runs as :func:`~hdmnet_core.model.inference.inference_copy`, and its logits are brought
back to the query's original size by
:func:`~hdmnet_core.data.transforms.logits_to_label_geometry` before the arg-max.

Support masks (``--support-mask``, one per ``--support``, same order):

- a mask file of the same size as its image (PNG: grey, palette or black-and-white; any
  other format Pillow reads, but lossy JPEG masks are usually refused for their values);
- or a box ``box:X0,Y0,X1,Y1`` in pixels of the image (right and bottom edges excluded).

Mask values must lie in {0, 255} and the class ids 1..N of the checkpoint's dataset
(N = 20 for PASCAL). A mask holding only 0 and 255 is black-and-white: 255 is the
object. Otherwise 255 means "ignore" (as in the datasets), 0 is background and the
object is the one class id present, or ``--class-id`` when a mask holds several.

Images are read as they are displayed (EXIF orientation applied). Every input problem
(missing, empty or corrupt file, mask of another size, values outside that set, a
support mask without object pixels, a wrong checkpoint or number of supports) is one
error line naming the file and what to do; the output is written atomically, an
existing file is replaced only with ``--overwrite``, and an input never.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from hdmnet_core.atomic import atomic_write, atomic_write_bytes
from hdmnet_core.config import Config
from hdmnet_core.data import splits
from hdmnet_core.data.source import DataError
from hdmnet_core.data.transforms import IGNORE_INDEX, EvalTransform, logits_to_label_geometry
from hdmnet_core.errors import UserError
from hdmnet_core.model.hdmnet import HDMNet

Output = Literal["final", "meta"]
ImageFile = str | os.PathLike[str] | IO[bytes]
"""A path, or an open binary stream (an uploaded file) named by ``where``."""

FSS1000_CLASSES = 1000
FIGURE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg")
BOX_PATTERN = re.compile(r"^box:\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*$")


class PredictError(UserError, ValueError):
    """The arguments of a prediction do not fit together (counts, paths, checkpoint)."""


# ----------------------------------------------------------------------------- reading
def _name(file: ImageFile, where: str | os.PathLike[str] | None) -> str:
    if where is not None:
        return os.fspath(where)
    return os.fspath(file) if isinstance(file, str | os.PathLike) else "<uploaded file>"


def _open_checked(file: ImageFile, name: str, what: str) -> Image.Image:
    """Open ``file`` with Pillow: a missing or empty file is named as such."""
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        if path.is_dir():
            raise DataError(f"{name}: is a folder; give the {what} file")
        if not path.is_file():
            raise DataError(f"{name}: {what} file does not exist")
        if path.stat().st_size == 0:
            raise DataError(f"{name}: {what} file is empty (0 bytes); save it again")
    else:
        position = file.tell()
        empty = not file.read(1)
        file.seek(position)
        if empty:
            raise DataError(f"{name}: {what} file is empty (0 bytes); upload it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                image.load()  # decode now: a truncated file fails here, not later
                return ImageOps.exif_transpose(image)  # a copy, turned as displayed
    except (OSError, SyntaxError, ValueError, Warning, Image.DecompressionBombError) as error:
        raise DataError(
            f"{name}: not a readable image (corrupt, truncated or not an image: {error}); "
            f"give a PNG or JPEG {what}"
        ) from error


def read_image(file: ImageFile, where: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A photograph -> ``(H, W, 3)`` uint8 RGB, as displayed (EXIF orientation applied)."""
    name = _name(file, where)
    with _open_checked(file, name, "image") as image:
        return np.array(image.convert("RGB"))


def read_mask_values(file: ImageFile, where: str | os.PathLike[str] | None = None) -> np.ndarray:
    """The raw values of a mask file -> ``(H, W)`` int64.

    Palette PNGs give their palette indices (VOC class ids), grey PNGs their values;
    colour and black-and-white (mode ``1``) files are turned to grey (0..255)."""
    name = _name(file, where)
    with _open_checked(file, name, "mask") as image:
        if image.mode in ("P", "L", "I", "I;16"):
            return np.array(image).astype(np.int64)
        if image.mode in ("1", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
            return np.array(image.convert("L")).astype(np.int64)
        raise DataError(f"{name}: mask mode {image.mode!r} is not supported; save a grey PNG")


def max_class_id(dataset: str) -> int:
    """The largest class id a class-index mask of ``dataset`` may hold."""
    return FSS1000_CLASSES if dataset == "fss1000" else splits.NUM_CLASSES[dataset]


def binary_support_mask(
    values: np.ndarray, where: str, max_class: int, class_id: int | None = None
) -> np.ndarray:
    """Raw mask values -> ``(H, W)`` uint8 with 1 = object, 0 = background, 255 = ignore.

    See the module docstring for the rules; values outside {0, 255, 1..max_class} and a
    mask without object pixels are :class:`DataError`."""
    present = {int(v) for v in np.unique(values)}
    allowed = set(range(max_class + 1)) | {IGNORE_INDEX}
    wrong = sorted(present - allowed)
    if wrong:
        shown = ", ".join(map(str, wrong[:8])) + (" ..." if len(wrong) > 8 else "")
        raise DataError(
            f"{where}: mask values {shown} are outside 0, 255 and the class ids 1..{max_class}; "
            "save the mask as a PNG with 0 = background and 255 (or 1) = the object "
            "(colour and lossy JPEG masks give such values)"
        )
    ids = sorted(present - {0, IGNORE_INDEX})
    if class_id is not None:
        if class_id not in range(1, max_class + 1):
            raise DataError(f"{where}: --class-id {class_id} is not a class id 1..{max_class}")
        foreground = class_id
    elif not ids:
        foreground = IGNORE_INDEX  # black and white: 255 is the object
    elif len(ids) == 1:
        foreground = ids[0]
    else:
        raise DataError(
            f"{where}: the mask holds several class ids {ids}; say which one is the object "
            "with --class-id"
        )
    mask = (values == foreground).astype(np.uint8)
    if foreground != IGNORE_INDEX:
        mask[values == IGNORE_INDEX] = IGNORE_INDEX
    if not (mask == 1).any():
        said = f"class id {class_id}" if class_id is not None else "object"
        raise DataError(
            f"{where}: the support mask has no {said} pixel (values found: "
            f"{sorted(present)}); mark the object with 255 (or 1), or draw a box"
        )
    return mask


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: columns ``x0 <= x < x1``, rows ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def parse(cls, text: str) -> Box:
        """``"box:X0,Y0,X1,Y1"`` -> :class:`Box` (:class:`PredictError` otherwise)."""
        match = BOX_PATTERN.match(text)
        if match is None:
            raise PredictError(f"--support-mask {text!r}: write a box as box:X0,Y0,X1,Y1")
        x0, y0, x1, y1 = (int(v) for v in match.groups())
        return cls(x0, y0, x1, y1)

    def mask(self, shape: tuple[int, int], where: str) -> np.ndarray:
        """``(H, W)`` uint8, 1 inside the box; a box outside the image or empty is an error."""
        height, width = shape
        if not (0 <= self.x0 < self.x1 <= width and 0 <= self.y0 < self.y1 <= height):
            raise DataError(
                f"{where}: box x {self.x0}..{self.x1}, y {self.y0}..{self.y1} is empty or "
                f"leaves the {width} x {height} image; need 0 <= X0 < X1 <= {width} and "
                f"0 <= Y0 < Y1 <= {height}"
            )
        mask = np.zeros(shape, dtype=np.uint8)
        mask[self.y0 : self.y1, self.x0 : self.x1] = 1
        return mask


@dataclass(frozen=True)
class Support:
    """One annotated support: ``image`` (H, W, 3) uint8 and ``mask`` (H, W) 0/1/255."""

    image: np.ndarray
    mask: np.ndarray
    name: str


def make_support(image: np.ndarray, mask: np.ndarray, name: str) -> Support:
    """A :class:`Support` from arrays, checking that the mask has the image's size."""
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"{name}: the mask is {mask.shape[1]} x {mask.shape[0]} pixels but its image is "
            f"{image.shape[1]} x {image.shape[0]}; give the mask drawn on this image"
        )
    return Support(image, mask, name)


def load_support(
    image_file: ImageFile,
    mask: ImageFile | Box,
    max_class: int,
    class_id: int | None = None,
    *,
    image_name: str | None = None,
    mask_name: str | None = None,
) -> Support:
    """Read a support image and its mask file (or box) into a :class:`Support`."""
    image_where = _name(image_file, image_name)
    image = read_image(image_file, image_where)
    if isinstance(mask, Box):
        return Support(image, mask.mask(image.shape[:2], f"{image_where} (box)"), image_where)
    mask_where = _name(mask, mask_name)
    values = read_mask_values(mask, mask_where)
    if values.shape != image.shape[:2]:
        raise DataError(
            f"{mask_where}: the mask is {values.shape[1]} x {values.shape[0]} pixels but its "
            f"image {image_where} is {image.shape[1]} x {image.shape[0]}; give the mask drawn "
            "on this image"
        )
    return Support(image, binary_support_mask(values, mask_where, max_class, class_id), image_where)


def parse_mask_argument(text: str) -> Path | Box:
    """``--support-mask`` value: ``box:X0,Y0,X1,Y1`` or a mask file path."""
    return Box.parse(text) if text.startswith("box:") else Path(text)


# ----------------------------------------------------------------------------- model
@dataclass
class Prediction:
    """The predicted mask of one query at its original size."""

    mask: np.ndarray
    """(H, W) uint8: 1 = the supports' object, 0 = background."""
    probability: np.ndarray
    """(H, W) float32: softmax of the chosen output's two channels, object channel."""
    output: Output

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean())


class Predictor:
    """A trained HDMNet ready to segment queries given K annotated supports.

    ``Predictor.from_checkpoint(path)`` loads a meta checkpoint; ``predictor(supports,
    query)`` returns a :class:`Prediction`. The model runs as
    :func:`~hdmnet_core.model.inference.inference_copy` (``fast``) on ``device``,
    as in the evaluation."""

    def __init__(
        self,
        model: HDMNet,
        config: Config,
        device: torch.device | str = "cpu",
        fast: bool = True,
    ) -> None:
        from hdmnet_core.engine.feature_cache import evaluation_model

        self.config, self.device = config, torch.device(device)
        self.shots = model.shots
        self.max_class = max_class_id(config.data.dataset)
        self.transform = EvalTransform(config.data.eval_size)
        self.model = evaluation_model(model.eval(), self.device, fast).eval()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "cpu",
        shots: int | None = None,
        allow_untrained_shots: bool = False,
        fast: bool = True,
    ) -> Predictor:
        """Load the meta checkpoint ``path``; ``shots`` (the number of supports that will be
        given) must be its trained count unless ``allow_untrained_shots``."""
        from hdmnet_core.engine.checkpoint import load_trained_model
        from hdmnet_core.engine.evaluate import load_for_evaluation

        model, config = load_trained_model(path, map_location="cpu")
        if shots is not None and shots != model.shots:
            if not allow_untrained_shots:
                raise PredictError(
                    f"{path} was trained for {model.shots} shot(s) but {shots} support(s) were "
                    f"given: give exactly {model.shots} --support/--support-mask pair(s), or "
                    "pass --allow-untrained-shots"
                )
            model, config = load_for_evaluation(os.fspath(path), shots, True)
        return cls(model, config, device, fast)

    def inputs(
        self, supports: Sequence[Support], query: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation-geometry tensors: query (1,3,S,S), supports (1,K,3,S,S), masks (1,K,S,S)."""
        if len(supports) != self.shots:
            raise PredictError(
                f"the model takes {self.shots} support(s); {len(supports)} were given"
            )
        no_mask = np.zeros(query.shape[:2], dtype=np.uint8)
        query_t, _ = self.transform(query, [no_mask])  # (3,S,S)
        images, masks = [], []
        for support in supports:
            image_t, (mask_t,) = self.transform(support.image, [support.mask])
            if not (mask_t == 1).any():
                size = self.config.data.eval_size
                raise DataError(
                    f"{support.name}: the object ({int((support.mask == 1).sum())} pixels) "
                    f"vanishes when the image is resized to {size} x {size}; mark a larger "
                    "region"
                )
            images.append(image_t)
            masks.append(mask_t)
        return query_t[None], torch.stack(images)[None], torch.stack(masks)[None]

    @torch.no_grad()
    def __call__(
        self, supports: Sequence[Support], query: np.ndarray, output: Output = "final"
    ) -> Prediction:
        """Segment ``query`` ((H, W, 3) uint8) given ``supports``; the mask is (H, W)."""
        query_t, images, masks = self.inputs(supports, query)
        out = self.model(query_t.to(self.device), images.to(self.device), masks.to(self.device))
        logits = out.final_logits if output == "final" else out.meta_logits  # (1,2,S,S)
        original = torch.zeros(query.shape[:2], dtype=torch.int64)
        scored, _ = logits_to_label_geometry(logits, original, pad_to_square=False)  # (1,2,H,W)
        label = scored.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)  # (H, W)
        probability = scored.softmax(dim=1)[0, 1].float().cpu().numpy()
        return Prediction(label, probability, output)


# ----------------------------------------------------------------------------- writing
def mask_png(mask: np.ndarray) -> bytes:
    """A (H, W) 0/1 mask as the bytes of a grey PNG with 0 / 255."""
    buffer = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def check_output_path(
    out: Path,
    inputs: Sequence[Path],
    overwrite: bool,
    flag: str = "--out",
    suffixes: Sequence[str] = (".png",),
) -> None:
    """Refuse to write over an input, a folder, or (without ``overwrite``) any file, and
    a name whose suffix is not one of ``suffixes`` (the file's format)."""
    if out.suffix.lower() not in suffixes:
        raise PredictError(f"{flag} {out}: name it *{' or *'.join(suffixes)}")
    if out.is_dir():
        raise PredictError(f"{flag} {out}: is a folder; give a file name such as {out}/mask.png")
    for source in inputs:
        same = out.exists() and source.exists() and os.path.samefile(out, source)
        if same or out.resolve() == source.resolve():
            raise PredictError(f"{flag} {out}: is the input file {source}; choose another name")
    if out.exists() and not overwrite:
        raise PredictError(f"{flag} {out}: exists; choose another name or pass --overwrite")


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Write ``mask`` as a 0/255 PNG, atomically (a reader never sees half a file)."""
    try:
        return atomic_write_bytes(path, mask_png(mask))
    except OSError as error:  # read-only folder, disk full ...: the old file stays
        raise PredictError(f"{path}: cannot write the mask ({error.strerror or error})") from error


def overlay_figure(
    supports: Sequence[Support],
    query: np.ndarray,
    prediction: Prediction,
    size: float = 2.4,
    probability: bool = True,
) -> Figure:
    """Supports with their masks, the query with the predicted object and (``probability``)
    the object probability, side by side."""
    import matplotlib.pyplot as plt

    from hdmnet_core.viz import overlay_mask

    columns = len(supports) + 1 + int(probability)
    figure, axes = plt.subplots(1, columns, figsize=(size * columns, size), squeeze=False)
    for ax, support in zip(axes[0], supports, strict=False):
        ax.imshow(overlay_mask(support.image, support.mask))
        ax.set_title(f"support: {Path(support.name).name}"[:32], fontsize=8)
    query_ax = axes[0, len(supports)]
    query_ax.imshow(overlay_mask(query, prediction.mask))
    query_ax.set_title(
        f"query: {100 * prediction.foreground_fraction:.1f}% object ({prediction.output})",
        fontsize=8,
    )
    if probability:
        axes[0, -1].imshow(prediction.probability, cmap="magma", vmin=0.0, vmax=1.0)
        axes[0, -1].set_title("object probability (0..1)", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    figure.tight_layout()
    return figure


def write_figure(path: str | os.PathLike[str], figure: Figure, dpi: int = 100) -> Path:
    """Save ``figure`` (format from the suffix) atomically and close it."""
    import matplotlib.pyplot as plt

    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in FIGURE_FORMATS:
        plt.close(figure)
        raise PredictError(f"{path}: name the figure *.png, *.jpg, *.pdf or *.svg")
    try:
        return atomic_write(path, lambda handle: figure.savefig(handle, format=suffix, dpi=dpi))
    except OSError as error:
        raise PredictError(
            f"{path}: cannot write the figure ({error.strerror or error})"
        ) from error
    finally:
        plt.close(figure)


# ------------------------------------------------------------------- notebook widget
def uploaded_file(upload: Any) -> tuple[IO[bytes], str] | None:
    """The last file of an ``ipywidgets.FileUpload`` as (stream, name), or None."""
    files = upload.value
    if not files:
        return None
    last = files[-1]
    return io.BytesIO(bytes(last["content"])), f"uploaded {last['name']}"


def upload_value(name: str, array: np.ndarray) -> tuple[dict[str, Any], ...]:
    """``array`` as a PNG in the shape of a ``FileUpload`` value (to drive the panel in
    code: tests, the notebook's demonstration)."""
    import datetime as dt

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    content = memoryview(buffer.getvalue())
    stamp = dt.datetime.fromtimestamp(0, tz=dt.UTC)
    return ({"name": name, "type": "image/png", "size": len(content), "content": content,
             "last_modified": stamp},)  # fmt: skip


class UploadPanel:
    """Upload a support image, its mask (or mark a box with sliders) and a query; the
    :class:`Predictor` segments the query on every change.

    The box sliders are in percent of the support image (its size is unknown until the
    upload). Until something is uploaded the panel uses ``support`` / ``query`` (arrays).
    A K-shot predictor gets the one support K times. ``message`` says what was segmented
    or, for a bad upload, the error (the same words as ``predict``); ``prediction`` is the
    last :class:`Prediction` (None after an error)."""

    def __init__(self, predictor: Predictor, support: np.ndarray, query: np.ndarray) -> None:
        import ipywidgets as widgets

        self.predictor, self.default_support, self.default_query = predictor, support, query
        self.prediction: Prediction | None = None
        upload = {"accept": "image/*", "multiple": False}
        self.support_upload = widgets.FileUpload(description="support image", **upload)
        self.mask_upload = widgets.FileUpload(description="support mask", **upload)
        self.query_upload = widgets.FileUpload(description="query image", **upload)
        self.mask_from = widgets.ToggleButtons(options=["box", "mask file"], value="box")
        self.box_x = widgets.IntRangeSlider(value=(30, 70), min=0, max=100, description="box x %")
        self.box_y = widgets.IntRangeSlider(value=(30, 70), min=0, max=100, description="box y %")
        self.message = widgets.Label()
        self.image = widgets.Image(format="png")
        for control in (self.support_upload, self.mask_upload, self.query_upload,
                        self.mask_from, self.box_x, self.box_y):  # fmt: skip
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.support_upload, self.mask_upload, self.query_upload]),
                widgets.HBox([self.mask_from, self.box_x, self.box_y]),
                self.message,
                self.image,
            ]
        )
        self.redraw()

    def box(self, shape: tuple[int, int]) -> Box:
        """The sliders' box in pixels of an image of ``shape`` (H, W)."""
        height, width = shape
        (x0, x1), (y0, y1) = self.box_x.value, self.box_y.value
        return Box(x0 * width // 100, y0 * height // 100, x1 * width // 100, y1 * height // 100)

    def support(self) -> Support:
        """The uploaded (or default) support with the mask file or the box."""
        upload = uploaded_file(self.support_upload)
        if upload is None:
            image, name = self.default_support, "the default support"
        else:
            image, name = read_image(*upload), upload[1]
        if self.mask_from.value == "box":
            return Support(image, self.box(image.shape[:2]).mask(image.shape[:2], name), name)
        mask_upload = uploaded_file(self.mask_upload)
        if mask_upload is None:
            raise DataError("no support mask uploaded yet: upload one, or choose 'box'")
        values = read_mask_values(*mask_upload)
        make_support(image, values, mask_upload[1])  # the size check
        mask = binary_support_mask(values, mask_upload[1], self.predictor.max_class)
        return Support(image, mask, name)

    def redraw(self) -> None:
        from hdmnet_core.viz import blank_panel

        try:
            support = self.support()
            upload = uploaded_file(self.query_upload)
            query = self.default_query if upload is None else read_image(*upload)
            supports = [support] * self.predictor.shots
            self.prediction = self.predictor(supports, query)
        except (DataError, PredictError) as error:
            self.prediction = None
            self.message.value = f"error: {error}"
            self._show(blank_panel("no prediction: see the message above", 3, size=2.2))
            return
        self._show(overlay_figure(supports[:1], query, self.prediction, size=2.2))
        self.message.value = (
            f"{support.name} -> query {query.shape[1]} x {query.shape[0]}: "
            f"{100 * self.prediction.foreground_fraction:.1f}% object"
        )

    def _show(self, figure: Figure) -> None:
        """The figure as the panel's PNG, at its own pixel size."""
        from hdmnet_core.widgets import figure_png, png_size

        self.image.value = figure_png(figure)
        width, height = png_size(bytes(self.image.value))
        self.image.layout.width, self.image.layout.height = f"{width}px", f"{height}px"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The widget, plus a static PNG and a sentence for viewers without widgets."""
        import base64

        bundle = self.widget._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        bundle["image/png"] = base64.b64encode(bytes(self.image.value)).decode("ascii")
        bundle["text/plain"] = (
            "Upload panel (static preview of the default images: run the notebook in Jupyter "
            "to upload your own support, mask and query)"
        )
        return dict(bundle)


# --------------------------------------------------------------------------- CLI
HELP = "segment your own query image given annotated support images and a meta checkpoint"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help=HELP,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="a meta (stage 2) checkpoint, e.g. best.pt")
    parser.add_argument("--support", action="append", required=True, metavar="IMAGE",
                        help="a support image (repeat K times for a K-shot checkpoint)")  # fmt: skip
    parser.add_argument("--support-mask", action="append", required=True, metavar="MASK",
                        help="its mask file, or box:X0,Y0,X1,Y1 (one per --support, same order)")  # fmt: skip
    parser.add_argument("--query", required=True, help="the image to segment")
    parser.add_argument("--out", required=True, help="the predicted mask (PNG, 0 / 255)")
    parser.add_argument("--overlay", default=None,
                        help="also save a figure of supports and query with the masks (PNG/PDF/SVG)")  # fmt: skip
    parser.add_argument("--class-id", type=int, default=None,
                        help="the object's id in class-index masks holding several ids")  # fmt: skip
    parser.add_argument("--output", default="final", choices=["final", "meta"],
                        help="ensemble (final, default) or the meta learner alone")  # fmt: skip
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--allow-untrained-shots", action="store_true",
                        help="use a shot count the checkpoint was not trained for")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out / --overlay file")  # fmt: skip
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from hdmnet_core.engine.build import resolve_device

    if len(args.support) != len(args.support_mask):
        raise PredictError(
            f"{len(args.support)} --support image(s) but {len(args.support_mask)} "
            "--support-mask(s): give one mask (or box) per support, in the same order"
        )
    masks = [parse_mask_argument(text) for text in args.support_mask]
    ckpt, query_path, out = Path(args.ckpt), Path(args.query), Path(args.out)
    if not ckpt.is_file():
        raise PredictError(f"--ckpt {ckpt}: no such checkpoint file")
    inputs = [
        ckpt,
        query_path,
        *map(Path, args.support),
        *(m for m in masks if isinstance(m, Path)),
    ]
    check_output_path(out, inputs, args.overwrite)
    overlay = Path(args.overlay) if args.overlay else None
    if overlay is not None:
        formats = tuple(f".{suffix}" for suffix in FIGURE_FORMATS)
        check_output_path(overlay, [*inputs, out], args.overwrite, "--overlay", formats)
    device = resolve_device(args.device)
    predictor = Predictor.from_checkpoint(
        ckpt, device, shots=len(args.support), allow_untrained_shots=args.allow_untrained_shots
    )
    supports = [
        load_support(image, mask, predictor.max_class, args.class_id)
        for image, mask in zip(args.support, masks, strict=True)
    ]
    query = read_image(query_path)
    prediction = predictor(supports, query, args.output)
    write_mask(out, prediction.mask)
    print(
        f"saved {out}: {query.shape[1]} x {query.shape[0]}, "
        f"{100 * prediction.foreground_fraction:.1f}% object ({args.output} output of {ckpt})"
    )
    if overlay is not None:
        write_figure(overlay, overlay_figure(supports, query, prediction))
        print(f"saved {overlay}")
    return 0


__all__ = [
    "Box",
    "PredictError",
    "Prediction",
    "Predictor",
    "Support",
    "UploadPanel",
    "upload_value",
    "binary_support_mask",
    "load_support",
    "make_support",
    "max_class_id",
    "overlay_figure",
    "read_image",
    "read_mask_values",
    "write_figure",
    "write_mask",
]

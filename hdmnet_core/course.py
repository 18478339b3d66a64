"""The training, evaluation and report notebooks (06, 07, 10) on top of the engine.

Nothing here trains or scores in its own way: :func:`train_course` is the headless chain's
:func:`~hdmnet_core.engine.pipeline.run_fold` (so a notebook run and
``python -m hdmnet_core reproduce --folds F --shots K`` make the same files), and the
helpers below only read what it wrote (``metrics.csv``, ``evaluation.json``) or re-run
the evaluation's forward pass on a few episodes to show them.

Course length (the notebooks' ``course`` parameter):

- ``"full"``: the profile's training lengths and evaluation protocol (``make reproduce``);
- ``"short"``: :data:`SHORT_COURSE`, a one-minute demonstration of the same code with
  tiny lengths (what nbval runs in ``make test``, and a first interactive look);
- ``"auto"``: ``"full"`` when the runner executes the notebook (``output_dir`` is set),
  else ``"short"``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hdmnet_core.config import Config, ConfigError

CourseLength = Literal["auto", "short", "full"]

SHORT_COURSE: dict[str, Any] = {
    "train.base_learner_steps": 100,
    "train.base_learner_val_every": 100,
    "train.base_learner_val_images": 50,
    "train.max_steps": 60,
    "train.batch_size": 8,
    "train.val_every": 30,
    "train.val_episodes": 50,
    "eval.episodes": 100,
    "eval.seeds": 2,
}
"""Lengths of the short course: seconds per stage on two CPU cores. They show every step
of the real course (both stages, validation, selection, the multi-seed protocol) but do
not train long enough to segment well; the numbers they give are labelled as such."""


def resolve_course(course: str, output_dir: str | Path | None) -> Literal["short", "full"]:
    """``auto`` -> ``full`` under the runner (``output_dir`` set), else ``short``."""
    if course == "auto":
        return "full" if output_dir is not None else "short"
    if course in ("short", "full"):
        return course  # type: ignore[return-value]
    raise ConfigError(f"course={course!r}: choose 'auto', 'short' or 'full'")


def course_config(
    profile: str,
    data_root: str,
    overrides: Mapping[str, Any] | None,
    course: str,
    output_dir: str | Path | None,
    *,
    fold: int | None = None,
    shots: int | None = None,
) -> Config:
    """The notebooks' config: profile, the short lengths when the course is short, then
    the runner's ``overrides``, then the notebook's own ``fold`` / ``shots``."""
    lengths = SHORT_COURSE if resolve_course(course, output_dir) == "short" else {}
    named: dict[str, Any] = {}
    if fold is not None:
        named["data.fold"] = fold
    if shots is not None:
        named["data.shots"] = shots
    return Config.from_profile(
        profile, **{"data.root": data_root, **lengths, **dict(overrides or {}), **named}
    )


def course_dir(output_dir: str | Path | None, course: str, config: Config | None = None) -> Path:
    """Where the course trains: ``<output_dir>/course`` under the runner (a new folder per
    run), else ``.cache/notebook-runs/course-<short|full>[-<digest>]`` in the project: one
    per length, and with ``config`` one per setting (:func:`settings_digest`), so that a
    changed setting or profile trains anew instead of meeting checkpoints it cannot resume."""
    from hdmnet_core.engine.reproduce import PROJECT_ROOT

    length = resolve_course(course, output_dir)
    if output_dir is not None:
        return Path(output_dir).resolve() / "course"
    suffix = "" if config is None else f"-{settings_digest(config)}"
    return PROJECT_ROOT / ".cache" / "notebook-runs" / f"course-{length}{suffix}"


@dataclass
class CourseRun:
    """Where the stages of one (fold, shots) course run live, and its evaluation."""

    out_dir: Path
    base_dir: Path
    meta_dir: Path
    base_checkpoint: Path
    meta_checkpoint: Path
    result: Any
    """The chain's :class:`~hdmnet_core.engine.pipeline.FoldResult`."""


def train_course(
    config: Config,
    out_dir: str | Path,
    protocol: str = "official",
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> CourseRun:
    """Both stages and the official evaluation for ``config``'s fold and shots, exactly as
    the headless chain runs them (finished stages reused, interrupted ones resumed).

    A file lock in ``out_dir`` lets notebooks that run at the same time (nbval with two
    workers) share the run: the second one waits and then reuses what the first trained.
    """
    from filelock import FileLock

    from hdmnet_core.engine.pipeline import run_fold

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = config.data
    with FileLock(str(out / ".course.lock")):
        result = run_fold(config, out, d.fold, d.shots, protocol, progress=progress, log=log)
    meta_checkpoint = Path(result.checkpoint)
    base_dir = out / f"fold{d.fold}" / "base"  # the chain's layout (engine/pipeline.py)
    return CourseRun(
        out, base_dir, meta_checkpoint.parent, base_dir / "best.pt", meta_checkpoint, result
    )


# ------------------------------------------------------------------ metrics.csv
def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` of a training run as columns (float arrays, NaN where a row has no
    value: ``val/...`` columns are only filled at validations)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.csv (has this stage been trained?)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: metrics.csv has a header but no rows")
    return {
        name: np.array(
            [float(r[name]) if r.get(name) not in ("", None) else math.nan for r in rows]
        )  # fmt: skip
        for name in rows[0]
    }


def loss_columns(metrics: Mapping[str, np.ndarray]) -> list[str]:
    """The loss terms of a run (``train/...`` columns other than lr, speed and memory)."""
    skip = re.compile(r"lr_group|episodes_per_s|images_per_s|per_s$|peak_memory")
    return [k for k in metrics if k.startswith("train/") and not skip.search(k)]


# ------------------------------------------------------------------ evaluation
def protocol_result(evaluation: Mapping[str, Any]) -> Any:
    """A saved ``evaluation.json`` (``ProtocolResult.to_dict()``) as a
    :class:`~hdmnet_core.engine.evaluate.ProtocolResult` again (tables, statistics)."""
    from hdmnet_core.engine.evaluate import ProtocolResult

    p = evaluation["protocol"]
    return ProtocolResult(
        p["dataset"],
        p["fold"],
        p["shots"],
        p["episodes_per_seed"],
        p["seed_generator"],
        list(p["seeds"]),
        list(evaluation["runs"]),
        float(evaluation.get("seconds", 0.0)),
        evaluation.get("cache"),
    )


@dataclass
class EpisodeIoU:
    """Foreground IoU of one evaluation episode, scored as the protocol scores it."""

    index: int
    class_id: int
    final: float
    meta: float
    final_prediction: np.ndarray
    """``(H, W)`` 0/1 prediction of the final output at the network input's size."""


def episode_ious(
    model: torch.nn.Module, dataset: Any, indices: Sequence[int], device: torch.device
) -> list[EpisodeIoU]:
    """Per-episode foreground IoU of the final and meta outputs on ``dataset[indices]``.

    Scoring geometry as :func:`~hdmnet_core.engine.evaluate.score_batch` (logits to the
    original label size, 255 padding ignored); the protocol's mIoU sums intersections and
    unions over episodes instead, so these numbers only rank episodes (failure cases).
    """
    from hdmnet_core.data.episodes import collate_episodes
    from hdmnet_core.data.transforms import logits_to_label_geometry

    was_training = model.training
    model.eval()
    found: list[EpisodeIoU] = []
    with torch.no_grad():
        for index in indices:
            batch = collate_episodes([dataset[index]])
            out = model(
                batch["query_image"].to(device),
                batch["support_images"].to(device),
                batch["support_masks"].to(device),
            )
            mask = batch["query_original_mask"][0]
            scores = [
                foreground_iou(*logits_to_label_geometry(logits[:1].cpu(), mask))
                for logits in (out.final_logits, out.meta_logits)
            ]
            prediction = out.final_logits[0].argmax(dim=0).cpu().numpy().astype(np.uint8)
            found.append(
                EpisodeIoU(index, int(batch["class_id"][0]), scores[0], scores[1], prediction)
            )
    model.train(was_training)
    return found


def foreground_iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    """IoU of class 1 between ``argmax(logits)`` ``(1, 2, H, W)`` and ``target`` ``(1, H, W)``
    (255 = ignore); NaN when neither has a foreground pixel."""
    valid = target != 255
    predicted, truth = (logits.argmax(dim=1) == 1) & valid, (target == 1) & valid
    union = int((predicted | truth).sum())
    return math.nan if union == 0 else int((predicted & truth).sum()) / union


# ------------------------------------------------------------------ baselines
BASELINE_METHODS: tuple[str, ...] = ("prior", "prototype")


def baseline_scores(
    config: Config, base_episodes: int = 200, seeds: int | None = None
) -> dict[str, dict[str, Any]]:
    """Each training-free baseline's novel-class mIoU on the protocol seeds of ``config``
    (the same episodes as the trained model's evaluation; ``seeds``: only the first that
    many, the baselines' fixed features are slow on a CPU); its threshold is chosen on
    base-class episodes of the train split, never on the novel classes."""
    from torch.utils.data import DataLoader

    from hdmnet_core.baselines import (
        DEFAULT_GRID,
        best_threshold,
        evaluate_baseline,
        make_scores_fn,
        threshold_curve,
    )
    from hdmnet_core.data.datasets import open_source
    from hdmnet_core.data.episodes import (
        EpisodeDataset,
        build_episode_dataset,
        collate_episodes,
        fold_classes_for,
    )
    from hdmnet_core.data.transforms import EvalTransform
    from hdmnet_core.engine.evaluate import protocol_seeds

    train_source, val_source = open_source(config, "train"), open_source(config, "val")
    d = config.data
    base_data = EpisodeDataset(
        train_source,
        fold_classes_for(config, "train", train_source),
        d.shots,
        "val",
        EvalTransform(d.eval_size),
        seed=config.eval.seed_generator,
        episodes=base_episodes,
        min_class_area=d.min_class_area,
        filter_intersection=True,
    )
    base_batches = list(DataLoader(base_data, batch_size=8, collate_fn=collate_episodes))
    chosen = protocol_seeds(config.eval.seed_generator, config.eval.seeds)[:seeds]
    novel = fold_classes_for(config, "val", val_source)
    out: dict[str, dict[str, Any]] = {}
    for method in BASELINE_METHODS:
        scores_fn = make_scores_fn(method)  # type: ignore[arg-type]
        threshold = best_threshold(threshold_curve(scores_fn, base_batches, DEFAULT_GRID))
        per_seed = []
        for seed in chosen:
            episodes = build_episode_dataset(config, "val", val_source, seed=seed)
            batches = DataLoader(episodes, batch_size=8, collate_fn=collate_episodes)
            per_seed.append(evaluate_baseline(scores_fn, batches, threshold, novel)["miou"])
        out[method] = {"threshold": threshold, "values": per_seed,
                       "mean": sum(per_seed) / len(per_seed)}  # fmt: skip
    return out


# ------------------------------------------------------------------ the training widget
PANEL_KEYS: dict[str, str] = {
    "learning_rate": "train.lr",
    "steps": "train.max_steps",
    "shots": "data.shots",
    "distillation": "model.distillation",
    "ensemble": "model.ensemble",
    "matching": "model.matching",
}
"""Training-panel control -> the config key it sets."""


def settings_digest(config: Config) -> str:
    """8 hex digits of every setting that decides what stage 2 trains (all but where
    data lives, speed-only switches and the evaluation): runs with other settings get
    other folders instead of meeting a checkpoint they cannot resume."""
    import hashlib
    import json

    from hdmnet_core.engine.checkpoint import RESUME_FREE_KEYS

    values = config.to_dict()
    values.pop("eval", None)
    for key in RESUME_FREE_KEYS:
        section, _, name = key.partition(".")
        values.get(section, {}).pop(name, None)
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def panel_run_name(values: Mapping[str, Any], config: Config) -> str:
    """A folder name that says which settings a panel run trained with (and the digest of
    all of ``config``'s, so that any other setting trains into another folder)."""
    return (
        f"lr{values['learning_rate']:g}-steps{values['steps']}-{values['shots']}shot-"
        f"distill{int(values['distillation'])}-ens{int(values['ensemble'])}-{values['matching']}-"
        f"{settings_digest(config)}"
    )


class TrainingPanel:
    """Controls that choose what stage 2 trains, a button that trains it, and its curves.

    Pressing **train** runs :func:`~hdmnet_core.engine.train.ensure_meta_learner` with the
    chosen learning rate, steps, shots and ablation flags from ``base_checkpoint`` into
    ``out_dir/<settings>`` (reused when the same settings ran before) and draws its loss
    and validation curves beside those of ``reference_dir`` (the course's run).
    ``last_config`` is the config of the last training, ``draws`` counts redraws.
    """

    def __init__(
        self,
        config: Config,
        base_checkpoint: str | Path,
        out_dir: str | Path,
        reference_dir: str | Path,
        *,
        max_steps: int = 200,
        device: str | None = None,
    ) -> None:
        import ipywidgets as widgets

        self.config, self.base_checkpoint = config, Path(base_checkpoint)
        self.out_dir, self.reference_dir, self.device = Path(out_dir), Path(reference_dir), device
        steps = min(config.train.max_steps or max_steps, max_steps)
        style = {"description_width": "initial"}
        self.controls: dict[str, Any] = {
            "learning_rate": widgets.FloatLogSlider(
                value=config.train.lr, base=10, min=-5, max=-1, step=0.5,
                description="learning rate", style=style, continuous_update=False,
            ),  # fmt: skip
            "steps": widgets.IntSlider(
                value=steps, min=1, max=max_steps, description="steps", style=style,
                continuous_update=False,
            ),  # fmt: skip
            "shots": widgets.Dropdown(options=[1, 5], value=config.data.shots, description="shots"),
            "distillation": widgets.Checkbox(value=config.model.distillation, description="distillation"),
            "ensemble": widgets.Checkbox(value=config.model.ensemble, description="ensemble"),
            "matching": widgets.Dropdown(
                options=["cosine", "dot"], value=config.model.matching, description="matching"
            ),
        }  # fmt: skip
        self.button = widgets.Button(description="train", button_style="primary")
        self.button.on_click(lambda _button: self.train())
        self.status = widgets.Label("Choose the settings and press train.")
        self.image = widgets.Image(format="png")
        self.last_config: Config | None = None
        self.last_run: Path | None = None
        self.draws = 0
        rows = list(self.controls.values())
        self.widget = widgets.VBox(
            [widgets.HBox(rows[:3]), widgets.HBox(rows[3:] + [self.button]), self.status,
             self.image]
        )  # fmt: skip
        self.redraw()

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def chosen_config(self) -> Config:
        """The course config with the panel's settings (validation once, at the end)."""
        values = self.values()
        overrides = {PANEL_KEYS[name]: value for name, value in values.items()}
        overrides["train.val_every"] = values["steps"]
        return self.config.with_overrides(**overrides)

    def train(self) -> Path:
        """Train (or reuse) stage 2 with the chosen settings; redraw; return its best.pt."""
        from hdmnet_core.engine.train import ensure_meta_learner

        config = self.chosen_config()
        run_dir = self.out_dir / panel_run_name(self.values(), config)
        self.status.value = f"training {config.train.max_steps} steps into {run_dir.name} ..."
        best = ensure_meta_learner(
            config, run_dir, self.base_checkpoint, device=self.device, progress=False
        )
        self.last_config, self.last_run = config, run_dir
        self.status.value = f"trained: {run_dir.name}"
        self.redraw()
        return best

    def redraw(self) -> None:
        from hdmnet_core.viz import plot_training_runs
        from hdmnet_core.widgets import figure_png, png_size

        runs = {"course run": read_metrics(self.reference_dir)}
        if self.last_run is not None:
            runs[f"panel: {self.last_run.name}"] = read_metrics(self.last_run)
        self.image.value = figure_png(plot_training_runs(runs))
        width, height = png_size(bytes(self.image.value))
        self.image.layout.width, self.image.layout.height = f"{width}px", f"{height}px"
        self.draws += 1

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        import base64

        bundle = self.widget._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        bundle["image/png"] = base64.b64encode(bytes(self.image.value)).decode("ascii")
        bundle["text/plain"] = (
            "Training panel (static preview: the course run's curves; run the notebook in "
            "Jupyter to choose settings and train)"
        )
        return dict(bundle)


# ------------------------------------------------------------------ the report
@dataclass
class ReportRow:
    """One number of the run: what it is, its value, the paper's, and how it was made."""

    quantity: str
    value: str
    paper: str
    how: str


def paper_miou_text(config: Config, shots: int) -> str:
    """The paper's HDMNet mIoU for ``config``'s dataset and backbone, or a dash that names
    the nearest published setting (the synthetic benchmark has no published number)."""
    from hdmnet_core.engine.pipeline import PAPER_MIOU

    column = 0 if shots == 1 else 1
    published = PAPER_MIOU.get((config.data.dataset, config.model.backbone))
    if published is not None and shots in (1, 5):
        return f"{published[column]:.1f}"
    pascal = PAPER_MIOU[("pascal", "resnet50")]
    return f"— (PASCAL-5i R50: {pascal[column]:.1f})" if shots in (1, 5) else "—"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def report_rows(
    config: Config, run: CourseRun, records: Sequence[Mapping[str, Any]] = ()
) -> list[ReportRow]:
    """Every number of the run, read from its files: both stages' ``summary.json``, the
    protocol's ``evaluation.json``, the ablations' ``ablations/*/evaluation.json``, and the
    notebooks' :func:`~hdmnet_core.engine.reproduce.record_result` ``records``."""
    import json

    from hdmnet_core.ablations import VARIANTS

    d = config.data
    where = f"{config.profile}, {d.dataset} fold {d.fold}, {d.shots}-shot"
    rows: list[ReportRow] = []
    for stage, folder in (("base", run.base_dir), ("meta", run.meta_dir)):
        summary = json.loads((folder / "summary.json").read_text())
        rows.append(ReportRow(f"stage {stage}: training time (s)", f"{summary['seconds']:.0f}",
                              "—", f"{summary['steps']} steps, {where}, wall time on this machine"))  # fmt: skip
        if summary["best_score"] is not None:
            what = (
                "base-class mIoU on val images" if stage == "base" else config.train.selection_split
            )
            rows.append(ReportRow(f"stage {stage}: best validation score (%)",
                                  _pct(summary["best_score"]), "—",
                                  f"{what}, step {summary['best_step']}, selects best.pt"))  # fmt: skip
    evaluation = run.result.evaluation
    protocol = evaluation["protocol"]
    made = f"{len(protocol['seeds'])} seeds x {protocol['episodes_per_seed']} episodes, {where}"
    paper = paper_miou_text(config, d.shots)
    for output in ("final", "meta"):
        m = evaluation["summary"][output]["miou"]
        label = "final (ensemble)" if output == "final" else "meta"
        rows.append(ReportRow(f"{label} mIoU (%), mean ± std", f"{_pct(m['mean'])} ± {_pct(m['std'])}",
                              paper if output == "final" else "—", f"official protocol, {made}"))  # fmt: skip
        rows.append(ReportRow(f"{label} mIoU (%), best seed", _pct(m["best"]), "—",
                              f"maximum over the seeds (seed {m['best_seed']})"))  # fmt: skip
    fb = evaluation["summary"]["final"]["fbiou"]
    rows.append(
        ReportRow("final FB-IoU (%), mean", _pct(fb["mean"]), "—", f"official protocol, {made}")
    )
    base = evaluation["summary"]["base"]["miou"]
    rows.append(ReportRow("base learner mIoU on base classes (%), mean", _pct(base["mean"]), "—",
                          f"frozen stage-1 model on the query images, {made}"))  # fmt: skip
    saved_variants: dict[str, dict[str, Any]] = {}
    found = (run.out_dir / "ablations").glob("*/evaluation.json")
    for saved in sorted(found, key=lambda path: path.stat().st_mtime_ns):
        result = json.loads(saved.read_text())
        if result.get("config", {}).get("data", {}).get("fold") == d.fold:
            saved_variants[result.get("variant", "")] = result  # the newest per variant name
    for variant in VARIANTS:
        result = saved_variants.get(variant.name)
        if result is None:
            continue
        cfg = result["config"]
        rows.append(ReportRow(
            f"ablation {variant.table} {variant.name}: final mIoU (%)",
            _pct(result["summary"]["final"]["miou"]["mean"]),
            f"{variant.paper_miou:.1f} (COCO-20i R50)",
            f"short run: {cfg['train']['max_steps']} steps x {cfg['train']['batch_size']} episodes, "
            f"{len(result['protocol']['seeds'])} seed x {result['protocol']['episodes_per_seed']} episodes",
        ))  # fmt: skip
    for record in records:
        value = record["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        rows.append(ReportRow(f"{record['notebook']}: {record['key']}", shown, "—",
                              str(record["description"])))  # fmt: skip
    return rows


def report_markdown(rows: Sequence[ReportRow]) -> str:
    lines = ["| quantity | this run | paper | how it was made |", "|---|---|---|---|"]
    lines += [f"| {r.quantity} | {r.value} | {r.paper} | {r.how} |" for r in rows]
    return "\n".join(lines)

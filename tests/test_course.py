"""Helpers of the training, evaluation, ablation and report notebooks (06, 07, 08, 10)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hdmnet_core import ablations
from hdmnet_core import course as course_tools
from hdmnet_core.config import Config, ConfigError
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import build_episode_dataset, collate_episodes
from hdmnet_core.engine.build import build_meta_model
from hdmnet_core.engine.checkpoint import load_trained_model
from hdmnet_core.engine.evaluate import score_batch
from hdmnet_core.metrics import BaseLearnerMeter, SegmentationMeter
from tests.test_train import tiny_config


def course_test_config(root: Path) -> Config:
    return tiny_config(
        root,
        **{
            "train.max_steps": 3,
            "train.val_every": 3,
            "train.val_episodes": 8,
            "eval.episodes": 10,
            "eval.seeds": 2,
        },
    )


@pytest.fixture(scope="module")
def course_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Any]:
    root = tmp_path_factory.mktemp("course")
    config = course_test_config(root / "data")
    return config, course_tools.train_course(config, root / "run", log=lambda _line: None)


# ------------------------------------------------------------------ lengths and folders
def test_auto_course_is_full_under_the_runner_and_short_otherwise() -> None:
    assert course_tools.resolve_course("auto", "runs/x") == "full"
    assert course_tools.resolve_course("auto", None) == "short"
    assert course_tools.resolve_course("full", None) == "full"
    with pytest.raises(ConfigError, match="course='long'"):
        course_tools.resolve_course("long", None)


def test_course_config_applies_short_lengths_then_overrides_then_fold() -> None:
    short = course_tools.course_config("cpu-tiny", "d", {"train.max_steps": 7}, "short", None,
                                       fold=2, shots=5)  # fmt: skip
    assert short.train.max_steps == 7  # the runner's override wins over the short length
    assert short.train.base_learner_steps == course_tools.SHORT_COURSE["train.base_learner_steps"]
    assert (short.data.fold, short.data.shots, short.data.root) == (2, 5, "d")
    full = course_tools.course_config("cpu-tiny", "d", {}, "auto", "runs/x")
    profile = Config.from_profile("cpu-tiny")
    assert full.train.max_steps == profile.train.max_steps
    assert full.eval.seeds == profile.eval.seeds


def test_course_dir_separates_runner_and_lengths(tmp_path: Path) -> None:
    assert course_tools.course_dir(tmp_path, "auto") == tmp_path.resolve() / "course"
    short, full = course_tools.course_dir(None, "short"), course_tools.course_dir(None, "full")
    assert short.name == "course-short" and full.name == "course-full"
    assert short.parent == full.parent and short.parent.name == "notebook-runs"
    config = Config.from_profile("cpu-tiny")
    tagged = course_tools.course_dir(None, "short", config)
    assert tagged.name == f"course-short-{course_tools.settings_digest(config)}"
    other = config.with_overrides(**{"train.lr": 0.5})
    assert course_tools.course_dir(None, "short", other) != tagged
    assert course_tools.course_dir(tmp_path, "auto", config) == tmp_path.resolve() / "course"


# ------------------------------------------------------------------ metrics.csv
def test_read_metrics_fills_missing_values_with_nan(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(
        "step,train/ce,train/lr_group0,train/images_per_s,train/peak_memory_mb,val/score\n"
        "10,1.5,0.1,20,100,\n20,1.0,0.05,21,100,0.4\n"
    )
    metrics = course_tools.read_metrics(tmp_path)
    assert metrics["step"].tolist() == [10.0, 20.0]
    assert math.isnan(metrics["val/score"][0]) and metrics["val/score"][1] == 0.4
    assert course_tools.loss_columns(metrics) == ["train/ce"]
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        course_tools.read_metrics(tmp_path / "missing")


def test_foreground_iou_ignores_255() -> None:
    logits = torch.zeros(1, 2, 2, 3)
    logits[0, 1, 0, :] = 1.0  # predicts foreground on the first row
    target = torch.tensor([[[1, 1, 255], [1, 0, 0]]])
    # predicted fg {00, 01} (02 ignored), truth fg {00, 01, 10}: I = 2, U = 3
    assert course_tools.foreground_iou(logits, target) == pytest.approx(2 / 3)
    assert math.isnan(course_tools.foreground_iou(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1)))


# ------------------------------------------------------------------ one course run
def test_train_course_uses_the_chain_layout_and_reuses_it(course_run: Any, tmp_path: Path) -> None:
    config, run = course_run
    assert run.base_checkpoint == run.out_dir / "fold0" / "base" / "best.pt"
    assert run.meta_dir == run.out_dir / "official" / "fold0" / "meta-1shot"
    assert run.meta_checkpoint.exists() and (run.meta_dir / "evaluation.json").exists()
    before = run.meta_checkpoint.stat().st_mtime_ns
    messages: list[str] = []
    again = course_tools.train_course(config, run.out_dir, log=messages.append)
    assert again.meta_checkpoint.stat().st_mtime_ns == before
    assert any("reusing the evaluation" in m for m in messages)


def test_protocol_result_reads_back_the_saved_evaluation(course_run: Any) -> None:
    _, run = course_run
    saved = json.loads((run.meta_dir / "evaluation.json").read_text())
    result = course_tools.protocol_result(saved)
    assert result.statistics() == saved["summary"]
    assert json.loads(json.dumps(result.per_class_statistics())) == saved["per_class"]
    assert f"{len(saved['protocol']['seeds'])} seed(s)" in result.table()


def test_episode_ious_score_as_the_protocol_does(course_run: Any) -> None:
    config, run = course_run
    model, _ = load_trained_model(run.meta_checkpoint)
    dataset = build_episode_dataset(config, "val", open_source(config, "val"), seed=1)
    device = torch.device("cpu")
    found = course_tools.episode_ious(model, dataset, [0, 3], device)
    assert [e.index for e in found] == [0, 3]
    for episode in found:
        batch = collate_episodes([dataset[episode.index]])
        classes = [episode.class_id]
        final, meta = SegmentationMeter(classes), SegmentationMeter(classes)
        model.eval()
        with torch.no_grad():
            out = model(batch["query_image"], batch["support_images"], batch["support_masks"])
        score_batch(out, batch, final, meta, BaseLearnerMeter(model.num_base_classes + 1))
        assert episode.final == pytest.approx(final.miou(), abs=1e-6)
        assert episode.meta == pytest.approx(meta.miou(), abs=1e-6)
        assert episode.final_prediction.shape == tuple(batch["query_image"].shape[-2:])
        assert set(np.unique(episode.final_prediction)) <= {0, 1}


def test_training_panel_trains_what_its_controls_say(course_run: Any, tmp_path: Path) -> None:
    config, run = course_run
    panel = course_tools.TrainingPanel(
        config, run.base_checkpoint, tmp_path / "panel", run.meta_dir, max_steps=5, device="cpu"
    )
    first_png, draws = bytes(panel.image.value), panel.draws
    panel.controls["steps"].value = 2
    panel.controls["learning_rate"].value = 1e-2
    panel.controls["distillation"].value = False
    panel.controls["matching"].value = "dot"
    panel.button.click()  # what a person's click runs
    trained = panel.last_config
    assert trained is not None and panel.last_run is not None
    assert trained.train.max_steps == 2 and trained.train.lr == pytest.approx(1e-2)
    assert not trained.model.distillation and trained.model.matching == "dot"
    digest = course_tools.settings_digest(trained)
    assert panel.last_run.name == f"lr0.01-steps2-1shot-distill0-ens1-dot-{digest}"
    assert course_tools.read_metrics(panel.last_run)["step"][-1] == 2
    assert panel.draws == draws + 1 and bytes(panel.image.value) != first_png
    bundle = panel._repr_mimebundle_()
    assert bundle is not None and "image/png" in bundle


def test_report_rows_carry_the_saved_numbers(course_run: Any) -> None:
    config, run = course_run
    record = {"notebook": "00_x", "key": "k", "value": 1.5, "description": "made so"}
    rows = course_tools.report_rows(config, run, [record])
    saved = json.loads((run.meta_dir / "evaluation.json").read_text())
    final = saved["summary"]["final"]["miou"]
    by_name = {r.quantity: r for r in rows}
    row = by_name["final (ensemble) mIoU (%), mean ± std"]
    assert row.value == f"{100 * final['mean']:.2f} ± {100 * final['std']:.2f}"
    assert "2 seeds x 10 episodes" in row.how and row.paper.startswith("— (PASCAL-5i")
    assert by_name["00_x: k"].value == "1.50" and by_name["00_x: k"].how == "made so"
    table = course_tools.report_markdown(rows)
    assert table.count("\n") == len(rows) + 1


def test_paper_number_for_a_published_setting() -> None:
    pascal = Config.from_profile("pascal-r50")
    assert course_tools.paper_miou_text(pascal, 1) == "69.4"
    assert course_tools.paper_miou_text(pascal, 5) == "71.8"
    assert course_tools.paper_miou_text(pascal, 2) == "—"


# ------------------------------------------------------------------ ablations
def test_table3_adds_one_switch_per_row_and_ends_at_the_full_model() -> None:
    defaults = Config.from_profile("cpu-tiny")
    rows = [v for v in ablations.VARIANTS if v.table.startswith("Table 3")]
    settings = [ablations.variant_config(defaults, v).model for v in rows]
    switches = [(m.ensemble, m.num_stages > 1, m.matching == "cosine", m.distillation)
                for m in settings]  # fmt: skip
    assert switches == [
        (False, False, False, False),
        (True, False, False, False),
        (True, True, False, False),
        (True, True, True, False),
        (True, True, True, True),
    ]
    assert settings[-1] == defaults.model  # the last row is HDMNet as configured
    assert [v.paper_miou for v in rows] == [44.7, 45.8, 47.9, 48.3, 50.0]
    stages = sorted(v.overrides["model.num_stages"] for v in ablations.VARIANTS if v.paper_cost)
    assert stages == [1, 2, 3, 4]


def test_decoder_cost_grows_with_the_stages() -> None:
    config = Config.from_profile("cpu-tiny")
    costs = [
        ablations.decoder_cost(
            config.with_overrides(**{"model.num_stages": n}), torch.device("cpu"), repeats=1
        )  # fmt: skip
        for n in (1, 2)
    ]
    model = build_meta_model(config.with_overrides(**{"model.num_stages": 2}))
    manual = sum(p.numel() for name in ("hierarchy", "matching", "decoder")
                 for p in getattr(model, name).parameters())  # fmt: skip
    assert costs[1]["decoder_params_m"] == pytest.approx(manual / 1e6)
    assert costs[0]["decoder_params_m"] < costs[1]["decoder_params_m"]
    for cost in costs:
        assert 0 < cost["decoder_gflops"] < cost["gflops"] and cost["latency_ms"] > 0
    assert costs[0]["gflops"] < costs[1]["gflops"]


def test_run_variant_trains_scores_and_reuses(course_run: Any, tmp_path: Path) -> None:
    config, run = course_run
    variant = ablations.VARIANTS[0]
    short = ablations.ablation_config(config, variant, steps=2, batch_size=2, episodes=6, seeds=1)
    assert short.model.matching == "dot" and short.train.max_steps == 2
    first = ablations.run_variant(
        short, variant, tmp_path, run.base_checkpoint, log=lambda _m: None
    )
    folder = ablations.variant_dir(tmp_path, variant, short)
    assert folder.name == f"baseline-{course_tools.settings_digest(short)}"
    assert (folder / "evaluation.json").exists()
    assert first["protocol"]["episodes_per_seed"] == 6 and first["variant"] == "baseline"
    stamp = (folder / "best.pt").stat().st_mtime_ns
    again = ablations.run_variant(
        short, variant, tmp_path, run.base_checkpoint, log=lambda _m: None
    )
    assert (folder / "best.pt").stat().st_mtime_ns == stamp
    assert again["summary"] == first["summary"]
    rows = course_tools.report_rows(config, run)
    assert not [r for r in rows if r.quantity.startswith("ablation")]  # another out_dir
    longer = ablations.ablation_config(config, variant, steps=3, batch_size=2, episodes=6, seeds=1)
    assert ablations.variant_dir(tmp_path, variant, longer) != folder


def test_settings_digest_follows_what_is_trained_not_where_data_lives(tmp_path: Path) -> None:
    config = course_test_config(tmp_path)
    digest = course_tools.settings_digest(config)
    assert (
        course_tools.settings_digest(config.with_overrides(**{"data.root": "elsewhere"})) == digest
    )
    assert course_tools.settings_digest(config.with_overrides(**{"eval.seeds": 7})) == digest
    assert course_tools.settings_digest(config.with_overrides(**{"train.lr": 0.5})) != digest
    assert ablations.variant_slug(ablations.VARIANTS[4]) == "distillation-hdmnet-s3"


def test_baselines_score_the_first_protocol_seeds(tmp_path: Path) -> None:
    config = course_test_config(tmp_path)
    scores = course_tools.baseline_scores(config, base_episodes=8, seeds=1)
    assert set(scores) == set(course_tools.BASELINE_METHODS)
    for method in scores.values():
        assert len(method["values"]) == 1 and 0.0 <= method["mean"] <= 1.0
    both = course_tools.baseline_scores(config, base_episodes=8)
    assert [len(m["values"]) for m in both.values()] == [config.eval.seeds] * 2
    assert both["prior"]["values"][0] == scores["prior"]["values"][0]  # the same episodes

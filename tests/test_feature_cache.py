"""Feature-cached evaluation equals the uncached path (issue 9, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_helpers import randomise_batchnorm

from hdmnet_core.config import Config, ConfigError
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import EpisodeDataset, build_episode_dataset, collate_episodes
from hdmnet_core.engine.evaluate import evaluate_episodes, evaluation_model
from hdmnet_core.engine.feature_cache import (
    CACHED_ENTRIES,
    build_feature_cache,
    foreground_positions,
    plan_feature_cache,
)
from hdmnet_core.model.ensemble import gram_matrix
from hdmnet_core.model.hdmnet import HDMNet, mid_features
from hdmnet_core.model.priors import foreground_columns

CPU = torch.device("cpu")


def tiny_config(root: Path, shots: int) -> Config:
    return Config.from_profile(
        "cpu-tiny",
        **{
            "data.root": str(root),
            "data.shots": shots,
            "data.synthetic_images_train": 20,
            "data.synthetic_images_val": 120,
            "data.synthetic_image_size": 64,
            "data.eval_size": 64,
            "data.min_class_area": 40,
            "model.width": 16,
            "eval.episodes": 10,
        },
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache_data")


def seeded_model(config: Config, seed: int = 0) -> HDMNet:
    torch.manual_seed(seed)
    model = HDMNet(config.model, 15, config.data.shots).eval()
    randomise_batchnorm(model.pspnet, seed)  # non-trivial frozen BatchNorms
    return model


def datasets_for(config: Config, seeds: tuple[int, ...] = (510, 365)) -> list[EpisodeDataset]:
    source = open_source(config, "val")
    return [build_episode_dataset(config, "val", source, seed=s) for s in seeds]


def counts(scores: object) -> list[torch.Tensor]:
    return [getattr(scores, name).state_tensor() for name in ("final", "meta", "base")]


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("storage", ["device", "disk"])
def test_cached_evaluation_has_the_uncached_intersections_and_unions(
    data_root: Path, tmp_path: Path, shots: int, storage: str
) -> None:
    config = tiny_config(data_root, shots)
    runner = evaluation_model(seeded_model(config), CPU)  # the inference copy
    datasets = datasets_for(config)
    messages: list[str] = []
    cache = build_feature_cache(
        runner, datasets, device=CPU, storage=storage, folder=tmp_path, log=messages.append
    )
    assert cache is not None and cache.storage == storage
    assert "feature cache:" in messages[0] and "GB" in messages[0]  # size printed first
    for dataset in datasets:
        uncached = evaluate_episodes(runner, dataset, device=CPU)
        cached = evaluate_episodes(runner, dataset, device=CPU, feature_cache=cache)
        assert cached.cached and not uncached.cached
        assert 0 < cached.check_seconds < cached.seconds and uncached.check_seconds == 0
        assert uncached.episodes == cached.episodes == 10
        for want, got in zip(counts(uncached), counts(cached), strict=True):
            assert torch.equal(want, got)
        assert uncached.final.state_tensor()[:5].sum() > 0  # episodes were scored
    folders = list(tmp_path.iterdir())
    cache.close()
    if storage == "disk":
        assert len(folders) == 1 and not folders[0].exists()  # its own temporary folder


def test_plain_model_one_shot_is_exact_too(data_root: Path) -> None:
    config = tiny_config(data_root, 1)
    model = seeded_model(config, seed=3)
    datasets = datasets_for(config, (17,))
    cache = build_feature_cache(model, datasets, device=CPU, fast=False, log=lambda _: None)
    assert cache is not None
    uncached = evaluate_episodes(model, datasets[0], device=CPU, fast=False)
    cached = evaluate_episodes(model, datasets[0], device=CPU, fast=False, feature_cache=cache)
    for want, got in zip(counts(uncached), counts(cached), strict=True):
        assert torch.equal(want, got)


def test_cached_features_are_what_the_model_reads(data_root: Path) -> None:
    config = tiny_config(data_root, 2)
    runner = evaluation_model(seeded_model(config), CPU)
    dataset = datasets_for(config, (98,))[0]
    cache = build_feature_cache(runner, [dataset], device=CPU, log=lambda _: None)
    assert cache is not None
    batch = collate_episodes([dataset[0]])
    spec = dataset.episode_spec(0)
    support_fg = (batch["support_masks"] == 1).float()  # (1, K, H, W)
    with torch.no_grad():
        query_feats, support_feats = runner.frozen_features(
            batch["query_image"], batch["support_images"], support_fg
        )
        query_got = cache.query_features([spec.query])
        keys = [(s, spec.class_id) for s in spec.supports]
        support_got = cache.support_features(keys, support_fg.flatten(0, 1))
        support_columns = cache.support_columns(keys, support_fg)
    query_want = {
        "mid": mid_features(query_feats),
        "layer2_gram": gram_matrix(query_feats["layer2"]),
        "layer4": query_feats["layer4"],
        "feat5": query_feats["feat5"],
    }
    assert set(query_got) == set(support_got) == set(CACHED_ENTRIES)  # no layer0 / layer1
    for name in CACHED_ENTRIES:
        torch.testing.assert_close(query_got[name], query_want[name], rtol=0, atol=1e-5)
    torch.testing.assert_close(support_got["mid"], mid_features(support_feats), rtol=0, atol=1e-5)
    support_gram = gram_matrix(support_feats["layer2"])
    torch.testing.assert_close(support_got["layer2_gram"], support_gram, rtol=0, atol=1e-5)
    for layer in ("layer4", "feat5"):  # kept where the priors read them, zero elsewhere
        want_maps = support_feats[layer]
        grid = want_maps.shape[-2:]
        for n, where in enumerate(foreground_positions(support_fg[0], (grid[0], grid[1]))):
            got, want = support_got[layer][n].flatten(1), want_maps[n].flatten(1)
            torch.testing.assert_close(got[:, where], want[:, where], rtol=0, atol=1e-5)
            outside = torch.ones(got.shape[1], dtype=torch.bool)
            outside[where] = False
            assert torch.count_nonzero(got[:, outside]) == 0
        # the columns the foreground prior gathers from the full maps
        gathered = foreground_columns(want_maps[None], support_fg)
        columns = support_columns[layer]
        assert columns.positions == gathered.positions
        assert torch.equal(columns.counts, gathered.counts)
        torch.testing.assert_close(columns.values, gathered.values, rtol=0, atol=1e-5)


def test_plan_counts_each_image_once_and_stores_support_maps_only_where_read(
    data_root: Path,
) -> None:
    config = tiny_config(data_root, 5)
    runner = evaluation_model(seeded_model(config), CPU)
    datasets = datasets_for(config, (1, 2, 3))
    plan = plan_feature_cache(runner, datasets, device=CPU)
    queries = {d.episode_spec(i).query for d in datasets for i in range(len(d))}
    pairs = {
        (s, d.episode_spec(i).class_id)
        for d in datasets
        for i in range(len(d))
        for s in d.episode_spec(i).supports
    }
    assert set(plan.queries) == queries and set(plan.supports) == pairs
    c4, h4, w4 = plan.layer_shapes["layer4"]
    stored = plan.elements()["support/layer4"]
    assert 0 < stored < len(pairs) * c4 * h4 * w4  # foreground positions only
    assert plan.nbytes == sum(plan.elements().values()) * 4


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
def test_mixed_precision_cache_keeps_each_layer_dtype(data_root: Path) -> None:
    config = tiny_config(data_root, 1)
    model = seeded_model(config)
    dataset = datasets_for(config, (3,))[0]
    cache = build_feature_cache(model, [dataset], device=CPU, amp="bf16", log=lambda _: None)
    assert cache is not None
    # the oneDNN backbone computes in fp32, feat5 (a conv under autocast) in bf16
    assert cache.plan.dtypes["mid"] == torch.float32
    assert cache.plan.dtypes["feat5"] == torch.bfloat16
    uncached = evaluate_episodes(model, dataset, device=CPU, amp="bf16")
    cached = evaluate_episodes(model, dataset, device=CPU, amp="bf16", feature_cache=cache)
    for want, got in zip(counts(uncached), counts(cached), strict=True):
        assert torch.equal(want, got)


def test_budget_falls_back_or_refuses(data_root: Path, tmp_path: Path) -> None:
    config = tiny_config(data_root, 1)
    runner = evaluation_model(seeded_model(config), CPU)
    datasets = datasets_for(config, (5,))
    messages: list[str] = []
    cache = build_feature_cache(
        runner, datasets, device=CPU, budget_gb=1e-6, folder=tmp_path, log=messages.append
    )
    assert cache is None
    assert "not used" in messages[-1] and "cache_budget_gb" in messages[-1]
    with pytest.raises(ConfigError, match="does not fit"):
        build_feature_cache(runner, datasets, device=CPU, mode="on", budget_gb=1e-6)
    assert build_feature_cache(runner, datasets, device=CPU, mode="off") is None


def test_a_cache_refuses_other_frozen_weights(data_root: Path) -> None:
    config = tiny_config(data_root, 1)
    model = seeded_model(config)
    dataset = datasets_for(config, (7,))[0]
    # as during meta-training: built once from the model, then every validation run
    cache = build_feature_cache(model, [dataset], device=CPU, log=lambda _: None)
    assert cache is not None
    # the trainable part may change (validation during meta-training) ...
    with torch.no_grad():
        model.query_merge[0].weight.mul_(1.5)
    evaluate_episodes(model, dataset, device=CPU, feature_cache=cache)
    # ... the frozen part may not
    with torch.no_grad():
        model.pspnet.classifier[0].weight.mul_(1.5)
    with pytest.raises(ValueError, match="other frozen weights"):
        evaluate_episodes(model, dataset, device=CPU, feature_cache=cache)

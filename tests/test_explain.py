import pytest
import torch

from hdmnet_core import explain
from hdmnet_core.config import Config, ConfigError
from hdmnet_core.data.datasets import open_source
from hdmnet_core.model.losses import correlation_distillation_loss
from hdmnet_core.viz import feature_pca_rgb, show_heatmaps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    config = explain.notebook_config(
        "cpu-tiny",
        str(root),
        {
            "data.synthetic_image_size": 64,
            "data.train_size": 64,
            "data.eval_size": 64,
            "data.min_class_area": 40,
            "data.synthetic_images_train": 120,
            "data.synthetic_images_val": 60,
            "eval.episodes": 40,
            "model.width": 16,
        },
    )
    source = open_source(config, "val")
    batch = explain.evaluation_episodes(config, source, seed=0, count=3)
    model = explain.seeded_model(config, seed=0)
    trace = explain.trace_model(
        model, batch["query_image"], batch["support_images"], batch["support_masks"]
    )
    return config, source, batch, model, trace


def test_notebook_config_applies_overrides_then_named_parameters(tmp_path):
    config = explain.notebook_config("cpu-tiny", str(tmp_path), {"data.fold": 2})
    assert config.data.fold == 2 and config.data.root == str(tmp_path)
    config = explain.notebook_config("cpu-tiny", str(tmp_path), {"data.fold": 2}, fold=1, shots=5)
    assert (config.data.fold, config.data.shots) == (1, 5)
    with pytest.raises(ConfigError, match="data.fold"):
        explain.notebook_config("cpu-tiny", str(tmp_path), fold=7)


def test_resolve_device():
    assert explain.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available() or not torch.backends.mps.is_available():
        assert explain.resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="choose one of"):
        explain.resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            explain.resolve_device("cuda")


def test_seeded_model_is_reproducible_and_leaves_the_global_generator(tiny):
    config = tiny[0]
    before = torch.random.get_rng_state()
    a, b = explain.seeded_model(config, 3), explain.seeded_model(config, 3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = explain.seeded_model(config, 4)
    assert not torch.equal(next(a.hierarchy.parameters()), next(c.hierarchy.parameters()))
    assert not a.training


def test_trace_matches_the_model_forward(tiny):
    _, _, batch, model, trace = tiny
    with torch.no_grad():
        out = model(batch["query_image"], batch["support_images"], batch["support_masks"])
    meta = explain.resize_to(trace.meta_logits, batch["query_image"].shape[-2:])
    torch.testing.assert_close(meta, out.meta_logits)
    for mine, theirs in zip(trace.distill_maps, out.distill_maps, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert [m.shape[-1] for m in trace.query_maps] == [8, 4, 2]


def test_stage_correlation_softmax_axes_and_distill_map(tiny):
    _, _, _, model, trace = tiny
    for stage in range(3):
        corr = explain.stage_correlation(model, trace, stage)
        torch.testing.assert_close(corr.attention.sum(-1), torch.ones_like(corr.attention[..., 0]))
        other = explain.stage_correlation(model, trace, stage, softmax_axis="support")
        torch.testing.assert_close(
            other.attention.sum(-2), torch.ones_like(other.attention[..., 0, :])
        )
        fg = corr.support_fg[:, None, :, None]
        mean = ((corr.scores * fg).sum(2) / (fg.sum(2) + 1e-9)).mean(1)
        torch.testing.assert_close(
            mean.reshape(-1, *corr.query_hw), trace.distill_maps[::-1][stage], rtol=1e-4, atol=1e-5
        )
    sharp = explain.stage_correlation(model, trace, 0, temperature=0.01).attention
    flat = explain.stage_correlation(model, trace, 0, temperature=1.0).attention
    assert sharp.amax() > flat.amax()
    dot = explain.stage_correlation(model, trace, 0, matching="dot")
    cosine = explain.stage_correlation(model, trace, 0)
    assert not torch.allclose(dot.scores, cosine.scores)
    assert cosine.scores.abs().max() <= 10.0 + 1e-4  # |cos| / t with t = 0.1
    with pytest.raises(ValueError, match="softmax_axis"):
        explain.stage_correlation(model, trace, 0, softmax_axis="heads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stage=5"):
        explain.stage_correlation(model, trace, 5)


def test_coupled_hierarchy_depends_on_the_support_decoupled_does_not(tiny):
    config, _, batch, model, trace = tiny
    query_x = trace.query_x[:1]
    coupled = []
    for episode in (0, 1):
        support_maps = model.hierarchy(trace.support_x[episode : episode + 1])
        fg = trace.support_fg[episode : episode + 1]
        coupled.append(explain.coupled_query_maps(model, query_x, support_maps, fg))
    changes = explain.relative_change(coupled[0], coupled[1])
    assert all(c > 1e-4 for c in changes)
    assert explain.relative_change(model.hierarchy(query_x), model.hierarchy(query_x)) == [0.0] * 3
    assert [m.shape for m in coupled[0]] == [m.shape for m in model.hierarchy(query_x)]


def test_distillation_terms_average_to_the_loss(tiny):
    _, _, batch, _, trace = tiny
    for temperature in (0.5, 1.0, 2.0):
        terms = explain.distillation_terms(trace.distill_maps, batch["query_mask"], temperature)
        loss = correlation_distillation_loss(trace.distill_maps, batch["query_mask"], temperature)
        assert len(terms) == 3
        assert sum(terms) / 3 == pytest.approx(float(loss), rel=1e-5)
    teacher = explain.teacher_at(torch.ones(1, 8, 8), (4, 4))
    assert teacher.shape == (1, 4, 4)


def test_evaluation_episodes_checks_the_count(tiny):
    config, source = tiny[0], tiny[1]
    with pytest.raises(ValueError, match="count=0"):
        explain.evaluation_episodes(config, source, seed=0, count=0)


def test_feature_pca_rgb_and_heatmaps():
    maps = [torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    pictures = feature_pca_rgb(maps)
    assert [p.shape for p in pictures] == [(4, 5, 3), (4, 5, 3)]
    assert min(p.min() for p in pictures) >= 0 and max(p.max() for p in pictures) <= 1
    flipped = feature_pca_rgb([-m for m in maps])  # sign of the axes is fixed by the data
    assert all(p.shape == f.shape for p, f in zip(pictures, flipped, strict=True))
    with pytest.raises(ValueError, match="channel counts"):
        feature_pca_rgb([torch.zeros(3, 2, 2), torch.zeros(4, 2, 2)])
    figure = show_heatmaps([torch.rand(3, 3)] * 3, ["a", "b", "c"], columns=2, colorbar=False)
    assert len(figure.axes) == 4
    with pytest.raises(ValueError, match="same length"):
        show_heatmaps([torch.rand(3, 3)], ["a", "b"])


def test_config_fixture_is_cpu_tiny(tiny):
    assert isinstance(tiny[0], Config) and tiny[0].profile == "cpu-tiny"


def test_shot_weights_are_what_combined_difference_uses():
    from hdmnet_core.model.ensemble import BaseLearnerEnsemble

    torch.manual_seed(0)
    official = BaseLearnerEnsemble(3, "official")
    fixed = BaseLearnerEnsemble(3, "fixed")
    fixed.load_state_dict(official.state_dict())
    differences = torch.tensor([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    for ensemble in (official, fixed):
        weights = ensemble.shot_weights(differences)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
        torch.testing.assert_close(
            ensemble.combined_difference(differences), (weights * differences).sum(dim=1)
        )
    # already sorted: both agree; unsorted: "fixed" moves each weight to its shot's rank
    torch.testing.assert_close(
        official.shot_weights(differences)[1], fixed.shot_weights(differences)[1]
    )
    rank = differences[0].argsort().argsort()
    torch.testing.assert_close(
        fixed.shot_weights(differences)[0], official.shot_weights(differences)[0][rank]
    )
    assert torch.equal(BaseLearnerEnsemble(1).shot_weights(differences[:, :1]), torch.ones(2, 1))

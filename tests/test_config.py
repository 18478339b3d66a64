import dataclasses

import pytest

from hdmnet_core.config import PROFILES, Config, ConfigError


def test_every_profile_builds_and_validates():
    for name in PROFILES:
        cfg = Config.from_profile(name)
        assert cfg.profile == name
        cfg.validate()


def test_profiles_set_the_documented_values():
    tiny = Config.from_profile("cpu-tiny")
    assert (tiny.data.dataset, tiny.model.backbone, tiny.data.train_size) == (
        "synthetic",
        "tiny",
        128,
    )
    pascal = Config.from_profile("pascal-r50")
    assert (pascal.data.dataset, pascal.data.train_size, pascal.model.backbone) == (
        "pascal",
        473,
        "resnet50",
    )
    assert pascal.eval.episodes == 1000 and pascal.train.seed == 321
    coco = Config.from_profile("coco-r50")
    # the global batch: the shipped scripts run 4 processes x 6 (COCO) / 4 x 4 (PASCAL)
    assert (coco.data.dataset, coco.data.eval_size, coco.train.batch_size) == ("coco", 633, 24)
    assert pascal.train.batch_size == 16 and pascal.train.early_stop_patience == 80
    assert coco.train.early_stop_patience == 75 and coco.train.base_learner_epochs == 20
    base = pascal.train
    assert (base.base_learner_lr, base.base_learner_batch_size, base.base_learner_crop) == (
        2.5e-4,
        12,
        417,
    )
    assert base.base_learner_epochs == 100 and base.base_learner_scale_range == (0.5, 2.0)
    assert coco.data.scale_range == (0.8, 1.25) and coco.eval.episodes == 10000


def test_dotted_and_bare_overrides():
    cfg = Config.from_profile(
        "cpu-tiny", **{"data.fold": 2, "max_steps": 7, "model.matching": "dot"}
    )
    assert cfg.data.fold == 2 and cfg.train.max_steps == 7 and cfg.model.matching == "dot"


def test_overrides_do_not_leak_into_other_configs():
    a = Config.from_profile("cpu-tiny", **{"data.fold": 3})
    b = Config.from_profile("cpu-tiny")
    assert a.data.fold == 3 and b.data.fold == 0


def test_string_values_from_the_command_line_are_converted():
    cfg = Config.from_profile(
        "cpu-tiny", **{"data.fold": "1", "model.fix_bn": "false", "train.lr": "0.5"}
    )
    assert cfg.data.fold == 1 and cfg.model.fix_bn is False and cfg.train.lr == 0.5


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("data.fold", 4, "data.fold"),
        ("data.fold", "two", "data.fold"),
        ("model.num_stages", 5, "model.num_stages"),
        ("model.matching", "euclid", "model.matching"),
        ("model.fix_bn", "maybe", "model.fix_bn"),
        ("train.lr", -1.0, "train.lr"),
        ("data.scale_range", (1.2, 0.9), "data.scale_range"),
        ("data.shots", True, "data.shots"),
    ],
)
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config.from_profile("cpu-tiny", **{key: value})


@pytest.mark.parametrize("key", ["data.nope", "nope", "nosection.fold", "seed_generator_x"])
def test_unknown_keys_are_named(key):
    with pytest.raises(ConfigError, match="unknown configuration key"):
        Config.from_profile("cpu-tiny", **{key: 1})


def test_ambiguous_bare_key_is_refused():
    # "batch_size" exists in train and eval.
    with pytest.raises(ConfigError, match="ambiguous"):
        Config.from_profile("cpu-tiny", batch_size=2)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        Config.from_profile("pascal-r18")


def test_dict_round_trip():
    cfg = Config.from_profile("coco-r50", **{"data.fold": 1, "data.coco_split": "contiguous"})
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg
    assert dataclasses.asdict(again) == cfg.to_dict()


def test_fss1000_has_a_single_fold():
    with pytest.raises(ConfigError, match="0..0"):
        Config.from_profile("cpu-tiny", **{"data.dataset": "fss1000", "data.fold": 1})

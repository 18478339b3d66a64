"""The reproduction chain end to end on a tiny profile: train, evaluate, table, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hdmnet_core.engine.pipeline import protocol_config, reproduce_chain
from tests.train_helpers import tiny_config


def chain_config(root: Path):  # type: ignore[no-untyped-def]
    return tiny_config(
        root,
        **{
            "train.max_steps": 3,
            "train.val_every": 3,
            "train.val_episodes": 10,
            "eval.episodes": 12,
            "eval.seeds": 2,
        },
    )


def test_protocols_set_the_filter_and_the_selection(tmp_path: Path) -> None:
    config = chain_config(tmp_path)
    official, fair = protocol_config(config, "official"), protocol_config(config, "fair")
    assert official.data.filter_intersection and official.train.selection_split == "novel-val"
    assert not fair.data.filter_intersection and fair.train.selection_split == "base-val"


def test_chain_trains_evaluates_tabulates_and_reuses(tmp_path: Path) -> None:
    config = chain_config(tmp_path / "data")
    out = tmp_path / "chain"
    messages: list[str] = []
    chain = reproduce_chain(config, out, [0], [1], ["official", "fair"], log=messages.append)
    assert [(r.protocol, r.fold, r.shots) for r in chain.results] == [
        ("official", 0, 1),
        ("fair", 0, 1),
    ]
    # one base learner serves both protocols
    assert (out / "fold0" / "base" / "best.pt").exists()
    for protocol in ("official", "fair"):
        meta = out / protocol / "fold0" / "meta-1shot"
        assert (meta / "best.pt").exists() and (meta / "evaluation.csv").exists()
        saved = json.loads((meta / "evaluation.json").read_text())
        assert saved["protocol"]["seeds"] == chain.results[0].evaluation["protocol"]["seeds"]
        assert len(saved["runs"]) == 2 and saved["protocol_name"] == protocol
    table = (out / "results.md").read_text()
    assert "| official | 0 | 1 | 2 x 12 |" in table and "| fair | 0 | 1 | 2 x 12 |" in table
    assert "mean ± std" in table and "The paper reports no number for `synthetic`" in table
    results = json.loads((out / "results.json").read_text())
    assert {r["protocol"] for r in results["results"]} == {"official", "fair"}
    miou = results["results"][0]["final_miou"]
    assert 0.0 <= miou["mean"] <= 1.0 and len(miou["values"]) == 2

    # a second run reuses every stage and evaluation: same numbers, no training
    again: list[str] = []
    second = reproduce_chain(config, out, [0], [1], ["official", "fair"], log=again.append)
    assert sum("reusing the evaluation" in m for m in again) == 2
    assert second.results[0].miou() == chain.results[0].miou()


def test_unknown_protocol_is_refused(tmp_path: Path) -> None:
    from hdmnet_core.config import ConfigError

    with pytest.raises(ConfigError, match="protocol='unfair'"):
        reproduce_chain(chain_config(tmp_path), tmp_path / "x", [0], [1], ["unfair"])

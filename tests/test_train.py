"""Training engine: schedule, optimizer groups, fix_bn, exact resume, NaN stop, refusals, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hdmnet_core.config import Config, ConfigError
from hdmnet_core.engine import checkpoint as ckpt
from hdmnet_core.engine import train
from hdmnet_core.engine.distributed import ShardedBatches
from hdmnet_core.engine.train import (
    TrainingDiverged,
    poly_factor,
    train_base,
    train_meta,
)
from tests.train_helpers import tiny_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def base_checkpoint(workspace: Path) -> Path:
    result = train_base(tiny_config(workspace / "data"), workspace / "base", progress=False)
    return result.best


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_checkpoint(path)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def set_flags(config: Config) -> list[str]:
    """``--set KEY=VALUE`` flags that rebuild ``config`` from the cpu-tiny profile."""
    profile = Config.from_profile("cpu-tiny").to_dict()
    flags: list[str] = []
    for section, values in config.to_dict().items():
        if section == "profile":
            continue
        for key, value in values.items():
            if profile[section][key] != value:
                flags += ["--set", f"{section}.{key}={json.dumps(value)}"]
    return flags


# ------------------------------------------------------------------ schedule, groups
def test_poly_factor_is_official_poly_per_iteration() -> None:
    total = 10
    assert poly_factor(0, total, 0.9) == pytest.approx((1 - 1 / 10) ** 0.9)
    assert poly_factor(4, total, 0.9) == pytest.approx((1 - 5 / 10) ** 0.9)
    assert poly_factor(9, total, 0.9) == 0.0
    assert poly_factor(3, total, 0.0) == 1.0


def test_meta_groups_and_learning_rates_after_n_steps(
    workspace: Path, base_checkpoint: Path
) -> None:
    config = tiny_config(workspace / "data", **{"train.max_steps": 4, "train.lr": 1e-3})
    process = train.setup("cpu")
    job = train.meta_learner_job(config, workspace / "groups", base_checkpoint, process)
    groups = job.optimizer.param_groups
    model = job.model
    assert isinstance(job.optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-2)]
    assert all(g["weight_decay"] == pytest.approx(0.01) for g in groups)
    new_layer_ids = {id(p) for m in model.new_layers() for p in m.parameters()}  # type: ignore[operator]
    assert {id(p) for p in groups[1]["params"]} == new_layer_ids
    frozen = {id(p) for p in model.pspnet.parameters()}  # type: ignore[union-attr]
    assert not frozen & {id(p) for g in groups for p in g["params"]}
    result = train.fit(job, process, progress_bar=False)
    assert result.progress.step == 4
    # after 4 steps the scheduler has set the rate for 0-based step 4 = (1 - 5/4)^0.9 -> 0
    factor = poly_factor(3, 4, 0.9)
    assert factor == 0.0
    lrs = [g["lr"] for g in job.optimizer.param_groups]
    assert lrs == [
        pytest.approx(1e-3 * poly_factor(4, 4, 0.9)),
        pytest.approx(1e-2 * poly_factor(4, 4, 0.9)),
    ]


def test_base_groups_use_ten_times_the_rate_for_the_head(workspace: Path) -> None:
    config = tiny_config(workspace / "data")
    job = train.base_learner_job(config, workspace / "base-groups", train.setup("cpu"))
    assert isinstance(job.optimizer, torch.optim.SGD)
    lr = config.train.base_learner_lr
    assert [g["lr"] for g in job.optimizer.param_groups] == [
        pytest.approx(lr),
        pytest.approx(10 * lr),
    ]
    assert job.optimizer.param_groups[0]["momentum"] == pytest.approx(0.9)
    assert job.optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-4)


def test_fix_bn_keeps_every_running_statistic(workspace: Path, base_checkpoint: Path) -> None:
    config = tiny_config(workspace / "data", **{"train.max_steps": 3})
    process = train.setup("cpu")
    job = train.meta_learner_job(config, workspace / "fixbn", base_checkpoint, process)
    before = {k: v.clone() for k, v in job.model.state_dict().items() if "running_" in k}
    assert before, "the model has BatchNorm layers"
    train.fit(job, process, progress_bar=False)
    after = job.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and the trainable weights did move
    first = next(p for p in job.optimizer.param_groups[0]["params"])
    assert first.requires_grad


def test_without_fix_bn_running_statistics_change(workspace: Path, base_checkpoint: Path) -> None:
    config = tiny_config(workspace / "data", **{"train.max_steps": 2, "model.fix_bn": False})
    process = train.setup("cpu")
    job = train.meta_learner_job(config, workspace / "nofixbn", base_checkpoint, process)
    before = {k: v.clone() for k, v in job.model.state_dict().items() if "running_mean" in k}
    train.fit(job, process, progress_bar=False)
    after = job.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------- sharding
def test_shards_of_all_ranks_cover_the_single_process_epoch() -> None:
    single = list(ShardedBatches(26, 8, 0, 1, 1))
    assert [i for _, i in single] == list(range(24))  # drop_last: 3 full batches of 8
    ranks = [list(ShardedBatches(26, 8, r, 2, 2)) for r in range(2)]
    assert sorted(i for shard in ranks for _, i in shard) == list(range(24))
    # micro-batch a * world + r of every global batch, as a single process with grad_accum 4
    accumulated = list(ShardedBatches(26, 8, 0, 1, 4))
    micro = 2
    for batch in range(3):
        for step in range(2):
            for rank in range(2):
                lo = (batch * 2 + step) * micro
                got = ranks[rank][lo : lo + micro]
                index = batch * 4 + step * 2 + rank
                assert got == accumulated[index * micro : (index + 1) * micro]


def test_batch_that_does_not_split_is_an_error() -> None:
    with pytest.raises(ConfigError, match="does not split"):
        ShardedBatches(20, 6, 0, 4, 1)


# --------------------------------------------------------------------- exact resume
def test_resume_after_interrupt_equals_uninterrupted(
    workspace: Path, base_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(workspace / "data")
    full = train_meta(config, workspace / "full", base_checkpoint, progress=False)
    assert full.progress.finished and full.progress.step == 6

    real_step = train.train_step

    def interrupt_at_step_5(*args: object, **kwargs: object) -> dict[str, float]:
        if args[3] == 4:  # the 0-based step index: the fifth step
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "train_step", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_meta(config, workspace / "cut", base_checkpoint, progress=False)
    assert ckpt.progress_of(ckpt.read_checkpoint(workspace / "cut" / "last.pt")).step == 4
    monkeypatch.setattr(train, "train_step", real_step)
    resumed = train_meta(config, workspace / "cut", base_checkpoint, resume=True, progress=False)
    assert resumed.progress.step == 6
    assert_same_weights(state_of(full.last), state_of(resumed.last))
    rows = (workspace / "cut" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_after_kill_9_equals_uninterrupted(workspace: Path, base_checkpoint: Path) -> None:
    config = tiny_config(workspace / "data", **{"train.max_steps": 8, "train.checkpoint_every": 1})
    full = train_meta(config, workspace / "full8", base_checkpoint, progress=False)
    out = workspace / "killed"
    command = [
        sys.executable, "-m", "hdmnet_core", "train", "meta", "--profile", "cpu-tiny",
        "--base-ckpt", str(base_checkpoint), "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    command += set_flags(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    last = out / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if last.exists() and ckpt.progress_of(ckpt.read_checkpoint(last)).step >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = ckpt.progress_of(ckpt.read_checkpoint(last)).step
    assert 3 <= killed_at < 8, f"killed at step {killed_at}"
    subprocess.run(
        command + ["--resume"], cwd=PROJECT_ROOT, env=env, check=True, capture_output=True
    )
    assert ckpt.progress_of(ckpt.read_checkpoint(last)).step == 8
    assert_same_weights(state_of(full.last), state_of(last))


# ----------------------------------------------------------------------- refusals
def test_resume_with_other_shots_is_refused_naming_the_key(
    workspace: Path, base_checkpoint: Path
) -> None:
    config = tiny_config(workspace / "data", **{"train.max_steps": 2})
    train_meta(config, workspace / "oneshot", base_checkpoint, progress=False)
    other = tiny_config(workspace / "data", **{"train.max_steps": 2, "data.shots": 2})
    with pytest.raises(ckpt.CheckpointError, match=r"data\.shots: checkpoint 1 vs run 2"):
        train_meta(other, workspace / "oneshot", base_checkpoint, resume=True, progress=False)


def test_loading_another_stage_or_architecture_is_refused(
    workspace: Path, base_checkpoint: Path
) -> None:
    with pytest.raises(ckpt.CheckpointError, match="'base' checkpoint; this needs a 'meta'"):
        ckpt.load_trained_model(base_checkpoint)
    payload = ckpt.read_checkpoint(base_checkpoint)
    payload["model"]["classifier.4.weight"] = torch.zeros(3, 64, 1, 1)
    broken = workspace / "wrong-shape.pt"
    torch.save(payload, broken)
    with pytest.raises(
        ckpt.CheckpointError, match=r"classifier\.4\.weight: checkpoint \(3, 64, 1, 1\)"
    ):
        ckpt.load_pspnet(broken)


def test_unreadable_checkpoints_get_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="empty"):
        ckpt.read_checkpoint(empty)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.read_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a training checkpoint"):
        ckpt.read_checkpoint(foreign)


# ----------------------------------------------------------------------- NaN stop
def test_nan_loss_stops_naming_step_and_terms(
    workspace: Path, base_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(workspace / "data")
    real_loss = train.meta_learner_loss
    calls = {"n": 0}

    def loss_nan_at_third_step(model, batch, device):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        losses = real_loss(model, batch, device)
        if calls["n"] == 3:
            losses["distill"] = losses["distill"] * float("nan")
            losses["total"] = losses["total"] + losses["distill"]
        return losses

    monkeypatch.setattr(train, "meta_learner_loss", loss_nan_at_third_step)
    out = workspace / "nan"
    with pytest.raises(TrainingDiverged, match=r"step 3: .*distill=nan.*last good checkpoint"):
        train_meta(config, out, base_checkpoint, progress=False)
    good = ckpt.read_checkpoint(out / "last.pt")
    assert ckpt.progress_of(good).step == 2
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------------------- DDP
def torchrun_meta(
    processes: int, port: int, config: Config, base_checkpoint: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node processes ... train meta`` on CPU (gloo) with ``config``."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(port), "-m", "hdmnet_core", "train", "meta", "--profile", "cpu-tiny",
        "--base-ckpt", str(base_checkpoint), "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    command += set_flags(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ddp_two_gloo_processes_equal_one_process_with_accumulation(
    workspace: Path, base_checkpoint: Path
) -> None:
    config = tiny_config(workspace / "data", **{"train.max_steps": 3, "train.checkpoint_every": 0})
    single = train_meta(
        config.with_overrides(**{"train.grad_accum": 2}),
        workspace / "accum",
        base_checkpoint,
        progress=False,
    )
    out = workspace / "ddp"
    done = torchrun_meta(2, 29517, config, base_checkpoint, out)
    assert "2 process(es) x 1 accumulation x 2" in done.stdout and "DDP over gloo" in done.stdout
    ours, theirs = state_of(single.last), state_of(out / "last.pt")
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-5, atol=1e-6, msg=key)


def test_torchrun_with_one_process_takes_the_ddp_path_and_equals_the_plain_run(
    workspace: Path, base_checkpoint: Path
) -> None:
    """``torchrun --nproc_per_node 1`` (the GPU check's DDP run) joins a process group and
    wraps the model in DDP; with one process it must train exactly as the plain run."""
    config = tiny_config(workspace / "data", **{"train.max_steps": 2, "train.checkpoint_every": 0})
    plain = train_meta(config, workspace / "plain", base_checkpoint, progress=False)
    out = workspace / "ddp1"
    done = torchrun_meta(1, 29519, config, base_checkpoint, out)
    assert "1 process(es) x 1 accumulation x 4; device cpu; amp off; DDP over gloo" in done.stdout
    ours, theirs = state_of(plain.last), state_of(out / "last.pt")
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_with_finite_losses(
    workspace: Path, base_checkpoint: Path, amp: str
) -> None:
    config = tiny_config(
        workspace / "data",
        **{"train.max_steps": 2, "train.amp": amp, "train.channels_last": True},
    )
    result = train_meta(config, workspace / f"amp-{amp}", base_checkpoint, progress=False)
    payload = ckpt.read_checkpoint(result.last)
    assert ckpt.progress_of(payload).step == 2
    scaler = payload["grad_scaler"]
    assert (scaler != {}) == (amp == "fp16"), "a GradScaler state exactly for fp16"
    rows = (workspace / f"amp-{amp}" / "metrics.csv").read_text().splitlines()
    total = [float(r.split(",")[rows[0].split(",").index("train/total")]) for r in rows[1:]]
    assert all(v == v and abs(v) < 1e4 for v in total)


# ------------------------------------------------------------------ torch.compile
class GraphRecorder:
    """A ``torch.compile`` backend that runs each captured graph eagerly and records
    whether any of its inputs had a symbolic (dynamic) size."""

    def __init__(self) -> None:
        self.graphs = 0
        self.dynamic_inputs: list[str] = []

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[object]) -> Callable[..., Any]:
        self.graphs += 1
        for i, value in enumerate(inputs):
            sizes = value.shape if isinstance(value, torch.Tensor) else (value,)
            if any(isinstance(size, torch.SymInt) for size in sizes):
                self.dynamic_inputs.append(f"graph {self.graphs} input {i}: {value!r}"[:200])
        return graph.forward


def test_compiled_meta_model_has_static_shapes_at_every_stage_and_equals_eager(
    workspace: Path, base_checkpoint: Path
) -> None:
    # The hierarchy runs the same matching code at 8 x 8, 4 x 4 and 2 x 2 (and the priors
    # at two feature sizes): torch.compile's default would make those sizes symbolic at
    # the second stage, which inductor then failed to lower. wrap_for_training compiles
    # them static; the recording backend sees what inductor would be handed.
    torch._dynamo.reset()
    config = tiny_config(workspace / "data")
    process = train.setup("cpu")
    job = train.meta_learner_job(config, workspace / "compile", base_checkpoint, process)
    batch = job.collate([job.train_data[i] for i in range(config.train.batch_size)])
    recorder = GraphRecorder()
    compiled = train.wrap_for_training(job.model, process, True, compile_backend=recorder)
    torch.manual_seed(0)
    eager_terms = train.meta_learner_loss(job.model, batch, process.device)
    torch.manual_seed(0)
    compiled_terms = train.meta_learner_loss(compiled, batch, process.device)
    torch._dynamo.reset()
    assert recorder.graphs > 3, "the model was not compiled"
    assert not recorder.dynamic_inputs, recorder.dynamic_inputs[:3]
    for name, value in eager_terms.items():
        torch.testing.assert_close(compiled_terms[name], value, rtol=0, atol=0, msg=name)

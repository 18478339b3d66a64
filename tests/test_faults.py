"""Faults: a training process killed with SIGKILL at random points resumes to the same weights.

Both stages (the base learner and meta-training). The run is killed five times, each time at a seeded random step and a seeded random moment
inside the following step (compute, logging or the ``last.pt`` write), and resumed from
``last.pt`` every time. The trainer runs in a forked child (``multiprocessing`` "fork"), so
each restart costs no interpreter start and no torch import (about 10 s each on this
machine); the kill is a real ``SIGKILL`` of the process that trains and writes checkpoints.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from hdmnet_core.config import Config
from hdmnet_core.engine import checkpoint as ckpt
from hdmnet_core.engine.train import TrainResult, train_base, train_meta
from tests.train_helpers import tiny_config

STEPS = 10
KILLS = 5
KILL_SEED = 20261202


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def base_checkpoint(workspace: Path) -> Path:
    return train_base(tiny_config(workspace / "data"), workspace / "base", progress=False).best


def saved_step(last: Path) -> int:
    """The step stored in ``last.pt`` (0 before the first checkpoint)."""
    if not last.exists():
        return 0
    return ckpt.progress_of(ckpt.read_checkpoint(last)).step


def train(
    stage: str, config: Config, out: Path, base_checkpoint: Path, resume: bool = False
) -> TrainResult:
    if stage == "base":
        return train_base(config, out, resume=resume, progress=False)
    return train_meta(config, out, base_checkpoint, resume=resume, progress=False)


def resume_training(stage: str, config: Config, out: Path, base_checkpoint: Path) -> None:
    """The child's whole life: resume (or start) the run in ``out``."""
    train(stage, config, out, base_checkpoint, resume=True)


def wait_for_step(last: Path, step: int, child: multiprocessing.process.BaseProcess) -> None:
    """Block until ``last.pt`` holds ``step`` or later (the child must still be training)."""
    deadline = time.monotonic() + 120
    while saved_step(last) < step:
        assert child.is_alive(), f"the training child exited ({child.exitcode}) before step {step}"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} within 120 s"
        time.sleep(0.01)


@pytest.mark.parametrize("stage", ["base", "meta"])
def test_five_sigkills_at_random_points_then_resume_equal_the_uninterrupted_run(
    stage: str, workspace: Path, base_checkpoint: Path
) -> None:
    config = tiny_config(
        workspace / "data",
        **{
            "train.max_steps": STEPS,
            "train.base_learner_steps": STEPS,
            "train.base_learner_val_every": 3,
            "train.checkpoint_every": 1,
        },
    )
    started = time.perf_counter()
    full = train(stage, config, workspace / f"full-{stage}", base_checkpoint)
    step_seconds = (time.perf_counter() - started) / STEPS  # the build included: an upper bound
    assert full.progress.finished and full.progress.step == STEPS

    rng = random.Random(KILL_SEED)
    kill_after = sorted(rng.sample(range(1, STEPS - 2), KILLS))  # checkpointed step, then kill
    fork = multiprocessing.get_context("fork")
    out = workspace / f"killed-{stage}"
    last = out / "last.pt"
    killed_at: list[int] = []
    for target in kill_after:
        before = saved_step(last)
        child = fork.Process(target=resume_training, args=(stage, config, out, base_checkpoint))
        child.start()
        wait_for_step(last, target, child)
        time.sleep(rng.uniform(0.0, 1.0) * step_seconds)  # somewhere inside the next step
        assert child.is_alive(), "the run finished before it could be killed"
        child.kill()
        child.join()
        assert child.exitcode == -signal.SIGKILL
        after = saved_step(last)  # last.pt is still a complete, readable checkpoint
        assert before <= after < STEPS
        killed_at.append(after)
    assert killed_at[-1] >= 1, f"every kill came before the first checkpoint: {killed_at}"

    resumed = train(stage, config, out, base_checkpoint, resume=True)
    assert resumed.progress.finished and resumed.progress.step == STEPS
    ours, theirs = ckpt.read_checkpoint(full.last)["model"], ckpt.read_checkpoint(last)["model"]
    assert ours.keys() == theirs.keys()
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, f"killed at steps {killed_at}; tensors differ: {different[:5]}"

    def logged_steps(run: Path) -> list[int]:  # training rows, and validation rows in stage 1
        return [
            int(row.split(",")[0]) for row in (run / "metrics.csv").read_text().splitlines()[1:]
        ]

    assert logged_steps(out) == logged_steps(full.run_dir)  # no row lost or repeated
    assert sorted(set(logged_steps(out))) == list(range(1, STEPS + 1))

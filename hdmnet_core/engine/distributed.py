"""Processes, devices and shards: single process, or DDP under ``torchrun``.

``torchrun --nproc_per_node N -m hdmnet_core train meta ...`` sets ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU)
and gives each process its device. Under torchrun that is so for ``N = 1`` too (one
process, the whole DDP path: process group, ``DistributedDataParallel``, all-reduces), so
that ``torchrun --nproc_per_node 1`` on one GPU checks what a many-GPU run uses.
Multi-node runs are torchrun's own rendezvous, e.g. on each of 2 nodes::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 --rdzv_id hdmnet -m hdmnet_core train meta ...

Sharding (:class:`ShardedBatches`): global batch ``s`` of an epoch covers items
``[s*G, (s+1)*G)`` of that epoch's order (``G`` = ``train.batch_size``). It is cut into
``world_size * grad_accum`` micro-batches of ``G / (world_size * grad_accum)`` items;
micro-step ``a`` of rank ``r`` takes micro-batch ``a * world_size + r``. Together the ranks
see exactly the items of the single-process epoch, in the same global batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from hdmnet_core.config import ConfigError
from hdmnet_core.engine.build import resolve_device


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    in_process_group: bool = False
    """Joined torch.distributed's group: launched by torchrun, whatever ``world_size``."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.in_process_group


def setup(device_name: str = "auto") -> ProcessInfo:
    """Join the torchrun process group when there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    under_torchrun = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if under_torchrun:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
    return ProcessInfo(rank, local_rank, world_size, device, in_process_group=under_torchrun)


def micro_batch_size(global_batch: int, world_size: int, grad_accum: int, key: str) -> int:
    """Items per rank per micro-step; the global batch must split evenly."""
    parts = world_size * grad_accum
    if global_batch % parts:
        raise ConfigError(
            f"{key}={global_batch} does not split over {world_size} process(es) x "
            f"{grad_accum} accumulation step(s); use a multiple of {parts}"
        )
    return global_batch // parts


def all_true(flag: bool, device: torch.device) -> bool:
    """Logical AND of ``flag`` over all processes (each process's own flag when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ShardedBatches(Sampler[tuple[int, int]]):
    """This rank's ``(epoch, item)`` indices of one epoch, from global batch ``start`` on.

    Yields ``micro`` consecutive indices per micro-step (the DataLoader batches them with
    ``batch_size=micro``); the epoch travels with each index so that persistent workers
    never need ``set_epoch`` (see :class:`EpochIndexed`). Incomplete global batches at the
    end of an epoch are dropped (official ``drop_last=True``).
    """

    def __init__(
        self, epoch_items: int, global_batch: int, rank: int, world_size: int, grad_accum: int
    ) -> None:
        self.epoch_items = epoch_items
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.micro = micro_batch_size(global_batch, world_size, grad_accum, "batch size")
        self.epoch = 0
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.epoch_items // self.global_batch

    def position(self, epoch: int, start: int) -> None:
        """Next iteration yields epoch ``epoch`` from global batch ``start`` on."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for batch in range(self.start, self.batches_per_epoch):
            base = batch * self.global_batch
            for step in range(self.grad_accum):
                first = base + (step * self.world_size + self.rank) * self.micro
                for item in range(first, first + self.micro):
                    yield self.epoch, item

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.grad_accum * self.micro


class EpochIndexed(Dataset[Any]):
    """``dataset[(epoch, i)]`` = item ``i`` of ``epoch`` (calls ``set_epoch`` first)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        """Anything with ``__len__``, ``__getitem__(int)``, ``epoch`` and ``set_epoch``."""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]

"""Helpers shared by the model tests (imported as ``model_helpers``: pytest puts
``tests/`` on the import path)."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial affine and running statistics, so eval mode matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)  # type: ignore[union-attr]
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)  # type: ignore[union-attr]
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)

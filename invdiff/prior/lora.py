"""Low-rank adapters (LoRA, Hu et al. 2022) for the convolutions of a trained score network.

Each ``nn.Conv2d`` ``W`` (``C_out x C_in x k x k``) of a copy of the network becomes

    conv_W(x) + up(down(x)),   down: C_in -> r channels, k x k;   up: r -> C_out, 1 x 1,

so the weight update ``Delta W = U D`` has rank at most r. ``up`` starts at zero, so the adapted
network is exactly the trained one until its adapters are optimised; only the adapters have
gradients. ``down`` is drawn from a fixed seed, so an adaptation is reproducible and
independent of the global random state. Used for test-time adaptation of the prior to one measurement
(invdiff/solvers/adaptation.py; Barbano et al. 2023, "Steerable conditional diffusion").
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

#: seed of the adapters' ``down`` weights
ADAPTER_SEED = 20230303


class LoRAConv2d(nn.Module):
    """``base(x) + up(down(x))`` with ``base`` frozen; x ``(B, C_in, H, W)`` -> ``(B, C_out, H', W')``."""

    def __init__(self, base: nn.Conv2d, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        rank = max(1, min(int(rank), base.out_channels, base.in_channels * math.prod(base.kernel_size)))
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                              bias=False, padding_mode=base.padding_mode)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        self.down.to(device=base.weight.device, dtype=base.weight.dtype)
        self.up.to(device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            weight = torch.empty(self.down.weight.shape, dtype=self.down.weight.dtype)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # nn.Conv2d's default
            self.down.weight.copy_(weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def add_adapters(root: nn.Module, rank: int) -> list[nn.Parameter]:
    """Replace every ungrouped ``nn.Conv2d`` under ``root`` (in place) by a :class:`LoRAConv2d`
    of rank ``rank``; freeze everything else. Returns the adapter parameters."""
    root.requires_grad_(False)
    generator = torch.Generator().manual_seed(ADAPTER_SEED)
    params: list[nn.Parameter] = []
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.groups == 1:
                adapter = LoRAConv2d(child, rank, generator)
                setattr(parent, name, adapter)
                params.extend([adapter.down.weight, adapter.up.weight])
    return params


def adapted_copy(denoiser, rank: int):
    """A deep copy of ``denoiser`` with adapters in its network, and the adapter parameters.

    ``denoiser`` is a trained prior (an ``nn.Module``, invdiff/prior/store.py) or a wrapper
    holding one as ``.prior`` (classifier-free guidance). Returns ``(copy, params)``;
    ``params`` is empty when there is no convolution to adapt (e.g. an analytic prior)."""
    clone = copy.deepcopy(denoiser)
    root = clone if isinstance(clone, nn.Module) else getattr(clone, "prior", None)
    if not isinstance(root, nn.Module):
        return clone, []
    return clone, add_adapters(root, rank)

"""Exponential moving average of the weights with warm-up.

Decay schedule of k-diffusion's ``EMAWarmup`` (after Tensorflow's and @crowsonkb's):
decay(step) = clip(1 - (1 + step / inv_gamma)^(-power), 0, max_decay). With power = 2/3 the
average covers roughly the last ~1/3 of training early on and saturates at max_decay
(power = 3/4 and max_decay = 0.9999 suit long runs). A decay of 0 at step 0 means the EMA starts
as a copy of the weights, so short runs still have a sensible EMA.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keep an averaged copy ``self.model`` of ``model``'s parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, power: float = 2 / 3, max_decay: float = 0.9999, inv_gamma: float = 1.0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power = float(power)
        self.max_decay = float(max_decay)
        self.inv_gamma = float(inv_gamma)

    def decay(self, step: int) -> float:
        """The decay used for the update made after optimiser step ``step`` (0-based)."""
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return 0.0 if step < 0 else min(self.max_decay, max(0.0, value))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        ema_params = list(self.model.parameters())
        params = list(model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - d)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)

    def to_dict(self) -> dict:
        return {"power": self.power, "max_decay": self.max_decay, "inv_gamma": self.inv_gamma}

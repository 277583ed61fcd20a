"""A small, fully convolutional U-Net: the network F inside D(x, sigma) = c_skip x + c_out F(...).

Architecture after Ho et al. 2020 (DDPM) and Dhariwal & Nichol 2021 (ADM) as simplified in
EDM (Karras et al. 2022, ``DhariwalUNet``): residual blocks with GroupNorm and an adaptive
scale/shift from the noise-level embedding, average-pool down-sampling, nearest up-sampling,
optional self-attention at chosen levels, optional class conditioning with a learned null
class for classifier-free guidance (Ho & Salimans 2021).

Only GroupNorm is used (never BatchNorm): a sample's output never depends on the other samples
in its batch. Without attention the network is fully convolutional, so a prior trained on
64x64 crops applies to 256x256 images; inputs whose sides are not multiples of
2^(levels-1) are padded (replicate) and the output cropped back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Everything needed to rebuild the network (stored in a prior's config.json)."""

    channels: int = 1  # image channels C: 1 (magnitude) or 2 (complex MRI as real/imag)
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()  # level indices (0 = full resolution); () = fully convolutional
    num_classes: int = 0  # 0 = unconditional; else labels 0..num_classes-1, null class = num_classes
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_levels"] = list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d["channel_mults"] = tuple(int(m) for m in d["channel_mults"])
        d["attention_levels"] = tuple(int(a) for a in d.get("attention_levels", ()))
        return cls(**d)


def _groups(ch: int) -> int:
    """EDM's rule, at most 32 groups and at least 4 channels per group, lowered to the nearest
    count that divides ``ch`` (GroupNorm needs one): 144 channels -> 24 groups, not 32."""
    groups = max(1, min(32, ch // 4))
    while ch % groups:
        groups -= 1
    return groups


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise input c_noise (Vaswani et al. 2017; EDM)."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        half = dim // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        arg = c_noise.to(torch.float32)[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, adaptive scale/shift from the embedding, GN-SiLU-dropout-conv, skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(cin), cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * cout)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels (global: breaks full convolutionality)."""

    def __init__(self, ch: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class UNet(nn.Module):
    """F(x_in, c_noise, class_labels): ``(B, C, H, W)``, ``(B,)``, ``(B,)`` long or None -> ``(B, C, H, W)``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config.base_channels
        emb_dim = 4 * c
        self.levels = len(config.channel_mults)
        self.noise_embed = PositionalEmbedding(c)
        self.embed_mlp = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes > 0 else None
        self.conv_in = nn.Conv2d(config.channels, c, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [c]
        ch = c
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.down.append(self._block(ch, c * mult, emb_dim, level))
                ch = c * mult
                skips.append(ch)
            if level < self.levels - 1:
                self.down.append(nn.AvgPool2d(2))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, config.dropout), ResBlock(ch, ch, emb_dim, config.dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(self.levels)):
            cout = c * config.channel_mults[level]
            for _ in range(config.num_res_blocks + 1):
                self.up.append(self._block(ch + skips.pop(), cout, emb_dim, level))
                ch = cout
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, config.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, cin: int, cout: int, emb_dim: int, level: int) -> nn.Module:
        block = ResBlock(cin, cout, emb_dim, self.config.dropout)
        if level in self.config.attention_levels:
            return _ResAttn(block, SelfAttention(cout))
        return block

    @property
    def fully_convolutional(self) -> bool:
        return len(self.config.attention_levels) == 0

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed_mlp(self.noise_embed(c_noise.reshape(-1)).to(x.dtype))
        if self.class_embed is not None:
            if class_labels is None:  # unconditional = the null class
                class_labels = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(class_labels.reshape(-1).long())
        emb = F.silu(emb)

        h_in, w_in = x.shape[-2:]
        factor = 2 ** (self.levels - 1)
        pad_h, pad_w = (-h_in) % factor, (-w_in) % factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")

        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, nn.AvgPool2d) else layer(h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, nn.Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :h_in, :w_in]


class _ResAttn(nn.Module):
    def __init__(self, block: ResBlock, attn: SelfAttention):
        super().__init__()
        self.block = block
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.block(x, emb))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["UNet", "UNetConfig", "count_parameters"]

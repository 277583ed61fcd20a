"""Noise distributions, losses, EMA, augmentation and the training data pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invdiff.errors import InputError
from invdiff.prior.augment import AugmentConfig, Augmenter
from invdiff.prior.data import Normalisation, SliceStack, build_sets, read_stacks
from invdiff.prior.ema import EMA
from invdiff.prior.losses import DSMLoss, SSMLoss, make_loss
from invdiff.prior.sde import NoiseDistribution


def test_edm_noise_is_log_normal_and_ve_log_uniform():
    gen = torch.Generator().manual_seed(0)
    ln = torch.log(NoiseDistribution("edm").sample(200_000, gen, torch.device("cpu")))
    assert abs(float(ln.mean()) + 1.2) < 0.01 and abs(float(ln.std()) - 1.2) < 0.01
    ve = NoiseDistribution("ve", sigma_min=0.01, sigma_max=100.0).sample(200_000, gen, torch.device("cpu"))
    assert float(ve.min()) >= 0.01 and float(ve.max()) <= 100.0
    u = (torch.log(ve) - math.log(0.01)) / (math.log(100.0) - math.log(0.01))
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    q = NoiseDistribution("edm").quantiles(4)
    assert torch.all(q[1:] > q[:-1]) and abs(float(torch.log(q).mean()) + 1.2) < 1e-5


def test_edm_weight_is_inverse_target_scale():
    noise = NoiseDistribution("edm", sigma_data=0.5)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    torch.testing.assert_close(noise.weight(sigma), 1 / c_out**2)  # lambda = 1 / c_out^2 (EDM eq. 8)


def test_dsm_loss_matches_hand_computation_and_shards_average():
    class Shrink(torch.nn.Module):
        def forward(self, x, sigma, class_labels=None):
            return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    loss = DSMLoss(NoiseDistribution("edm"))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 5, 5, generator=gen)
    draws = loss.draw(tuple(x0.shape), gen, x0.device)
    s = draws["sigma"].view(-1, 1, 1, 1)
    x = x0 + s * draws["noise"]
    expect = (loss.noise.weight(draws["sigma"]) * ((x / (1 + s**2) - x0) ** 2).mean((1, 2, 3))).mean()
    full = loss.compute(Shrink(), x0, None, draws)
    torch.testing.assert_close(full, expect)
    halves = [loss.compute(Shrink(), x0[i:i + 2], None, {k: v[i:i + 2] for k, v in draws.items()}) for i in (0, 2)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


def test_ssm_loss_equals_exact_fisher_divergence_up_to_constant_for_gaussians():
    """For p = N(0, v I) and model score -x/a, E[tr J + |s|^2/2] = -d/a + d(v)/(2a^2) (per dim: times 1/d)."""
    class Model(torch.nn.Module):
        def __init__(self, a):
            super().__init__()
            self.a = a

        def forward(self, x, sigma, class_labels=None):  # score -x/a  <=>  D = x - sigma^2 x / a
            return x - sigma.view(-1, 1, 1, 1) ** 2 * x / self.a

    sigma, var0 = 0.5, 1.0
    loss = SSMLoss(NoiseDistribution("edm"))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 1, 2, 2, generator=gen) * math.sqrt(var0)
    v = var0 + sigma**2
    values = {}
    for a in (0.7 * v, v, 2 * v):
        draws = loss.draw(tuple(x0.shape), gen, x0.device)
        draws["sigma"] = torch.full((x0.shape[0],), sigma)
        value = float(loss.compute(Model(a), x0, None, draws).detach())
        values[a] = value
        exact = sigma**2 * (-1 / a + v / (2 * a**2))
        assert abs(value - exact) < 0.03 * abs(exact) + 1e-3, (a, value, exact)
    assert min(values, key=values.get) == v  # minimised by the true score
    with pytest.raises(InputError):
        make_loss("nope", NoiseDistribution())


def test_ema_warmup_schedule_and_update():
    net = torch.nn.Linear(3, 1)
    ema = EMA(net, power=2 / 3, max_decay=0.999)
    assert ema.decay(0) == 0.0
    assert math.isclose(ema.decay(7), 1 - 8 ** (-2 / 3))
    assert ema.decay(10**9) == 0.999
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, 7)
    d = ema.decay(7)
    for e, b, p in zip(ema.model.parameters(), before, net.parameters()):
        torch.testing.assert_close(e, d * b + (1 - d) * p)


def test_augmentation_identity_flip_and_shard_consistency():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=gen)
    off = AugmentConfig(**{k: 0.0 for k in AugmentConfig().to_dict() if k.startswith("p_")})
    aug = Augmenter(off)
    torch.testing.assert_close(aug.apply(x, aug.draw(x.shape, gen, x.device)), x)
    flip_only = Augmenter(AugmentConfig(**{**off.to_dict(), "p_flip": 1.0}))
    p = flip_only.draw(x.shape, gen, x.device)
    y = flip_only.apply(x, p)
    for i in range(6):
        expect = x[i].flip(-1) if p["flip"][i, 0] < 0.5 else x[i].flip(-2)
        torch.testing.assert_close(y[i], expect, atol=1e-5, rtol=0)
    full = Augmenter(AugmentConfig(p_elastic=0.5, p_blur=0.5, p_resample=0.5, p_noise=0.5, p_invert=0.5))
    p = full.draw(x.shape, gen, x.device)
    whole = full.apply(x, p)
    part = full.apply(x[2:4], {k: v[2:4] for k, v in p.items()})
    torch.testing.assert_close(whole[2:4], part)
    assert torch.isfinite(whole).all() and whole.shape == x.shape
    with pytest.raises(InputError):
        AugmentConfig(p_flip=2.0)


def test_data_normalisation_split_and_fit_errors(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((10, 20, 24)).astype(np.float32) * 500
    np.save(tmp_path / "a.npy", a)
    stacks = read_stacks([tmp_path / "a.npy"])
    train, val = build_sets(stacks, 16, 1, "crop", Normalisation(), 0.2)
    assert len(train) == 8 and len(val) == 2
    q = np.percentile(a[0], 99.5)
    np.testing.assert_allclose(train.groups[0][0, 0].numpy(), a[0] / q, rtol=1e-5)
    np.testing.assert_allclose(val.groups[0][-1, 0].numpy(), a[-1] / np.percentile(a[-1], 99.5), rtol=1e-5)
    crop = train.batch(torch.tensor([0]), 16, torch.tensor([[0.999, 0.0]]))
    np.testing.assert_allclose(crop[0, 0].numpy(), a[0, 4:20, 0:16] / q, rtol=1e-5)
    window = Normalisation("window", window=(-1000.0, 1000.0))
    tw, _ = build_sets([SliceStack(a, "a")], 16, 1, "resize", window, 0.0)
    assert tw.groups[0].shape[-2:] == (16, 19)
    with pytest.raises(InputError, match="exact"):
        build_sets(stacks, 16, 1, "exact", Normalisation(), 0.0)
    with pytest.raises(InputError, match="smaller"):
        build_sets(stacks, 32, 1, "crop", Normalisation(), 0.0)
    with pytest.raises(InputError, match="complex"):
        build_sets(stacks, 16, 2, "crop", Normalisation(), 0.0)
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="bad.npy"):
        read_stacks([tmp_path / "bad.npy"])
    with pytest.raises(InputError, match="window"):
        Normalisation("window")


def test_complex_data_become_two_channels():
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((3, 16, 16)) + 1j * rng.standard_normal((3, 16, 16))).astype(np.complex64)
    train, _ = build_sets([SliceStack(z, "z")], 16, 2, "exact", Normalisation(), 0.0)
    scale = np.percentile(np.abs(z[1]), 99.5)
    np.testing.assert_allclose(train.groups[0][1, 0].numpy(), z[1].real / scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train.groups[0][1, 1].numpy(), z[1].imag / scale, rtol=1e-5, atol=1e-6)

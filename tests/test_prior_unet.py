"""(d) The U-Net: batch independence (GroupNorm only), full convolutionality, conditioning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invdiff.prior.unet import UNet, UNetConfig


def _randomise(net: nn.Module) -> nn.Module:
    """Zero-initialised output layers would make every test trivially pass: perturb all weights."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return net.eval()


def test_no_batchnorm_anywhere():
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), num_classes=2))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in net.modules())


@pytest.mark.parametrize("attention", [(), (1,)])
def test_output_of_a_sample_does_not_depend_on_its_batch(attention):
    net = _randomise(UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=attention)))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 16, 16, generator=gen)
    c = torch.randn(5, generator=gen)
    full = net(x, c)
    alone = torch.cat([net(x[i:i + 1], c[i:i + 1]) for i in range(5)])
    assert full.abs().mean() > 1e-3  # non-trivial output
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-5)
    other = net(torch.cat([x[:2], 10 * torch.randn(3, 1, 16, 16, generator=gen)]), torch.cat([c[:2], torch.randn(3, generator=gen)]))
    torch.testing.assert_close(other[:2], full[:2], rtol=1e-5, atol=1e-5)


def test_fully_convolutional_any_size():
    net = _randomise(UNet(UNetConfig(base_channels=8, channel_mults=(1, 2, 2))))
    assert net.fully_convolutional
    x = torch.randn(1, 1, 37, 50)
    assert net(x, torch.zeros(1)).shape == x.shape
    # no attention: a 96x96 image costs no more memory per pixel, and the net stays deterministic
    big = torch.randn(2, 1, 96, 96)
    torch.testing.assert_close(net(big, torch.zeros(2)), net(big, torch.zeros(2)))
    attn = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(0,)))
    assert not attn.fully_convolutional


def test_two_channels_and_class_conditioning_with_null_class():
    cfg = UNetConfig(channels=2, base_channels=8, channel_mults=(1, 2), num_classes=3)
    net = _randomise(UNet(cfg))
    x, c = torch.randn(2, 2, 16, 16), torch.zeros(2)
    y0 = net(x, c, torch.tensor([0, 0]))
    y1 = net(x, c, torch.tensor([1, 1]))
    assert y0.shape == (2, 2, 16, 16)
    assert (y0 - y1).abs().max() > 1e-4
    torch.testing.assert_close(net(x, c, None), net(x, c, torch.tensor([3, 3])))  # None = learned null class


def test_noise_level_changes_output():
    net = _randomise(UNet(UNetConfig(base_channels=8, channel_mults=(1, 2))))
    x = torch.randn(1, 1, 16, 16)
    assert (net(x, torch.tensor([-2.0])) - net(x, torch.tensor([2.0]))).abs().max() > 1e-4


def test_config_round_trip():
    cfg = UNetConfig(channels=2, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=2, attention_levels=(2,))
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("base, mults", [(48, (1, 2, 2, 2)), (40, (1, 2, 3)), (20, (1, 3)), (32, (1, 2, 2, 2))])
def test_any_base_width_builds_with_dividing_group_counts(base, mults):
    """GroupNorm needs groups | channels: a 48-channel base has 144-channel decoder inputs, which
    the plain min(32, ch // 4) rule (32 groups) cannot split."""
    from invdiff.prior.unet import _groups

    net = UNet(UNetConfig(base_channels=base, channel_mults=mults))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 and m.num_channels // m.num_groups >= 4 or m.num_channels < 4
                         for m in norms)
    x = torch.randn(1, 1, 16, 16)
    assert net(x, torch.zeros(1)).shape == x.shape
    # the counts of channel numbers the old rule handled are unchanged (shipped priors)
    assert [_groups(c) for c in (8, 16, 32, 64, 96, 128, 192, 256)] == [2, 4, 8, 16, 24, 32, 32, 32]
    assert _groups(144) == 24 and _groups(3) == 1

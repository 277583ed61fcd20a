"""examples/pack_prior.py: float16 raw weights load as the same network to half precision,
the EMA weights and the checksum are untouched, and out-of-range weights are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from invdiff.prior.store import CONFIG_NAME, EMA_NAME, RAW_NAME, load_prior, load_weights, save_weights, sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from pack_prior import pack_raw_weights  # noqa: E402
from test_prior_store import make_prior  # noqa: E402


def test_packed_raw_weights_give_the_same_denoiser_to_half_precision(tmp_path):
    out, model = make_prior(tmp_path)
    ema_before, config_before = sha256_file(out / EMA_NAME), (out / CONFIG_NAME).read_bytes()
    before, after = pack_raw_weights(out)
    assert after < 0.6 * before
    assert all(t.dtype == torch.float16 for t in load_weights(out / RAW_NAME).values() if t.is_floating_point())
    assert sha256_file(out / EMA_NAME) == ema_before and (out / CONFIG_NAME).read_bytes() == config_before
    raw = load_prior(out, weights="raw")
    assert all(p.dtype == torch.float32 for p in raw.parameters())
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact, packed = model.eval()(x, 0.3), raw(x, 0.3)
    err = float((packed - exact).abs().max() / exact.abs().max())
    assert 0 < err < 1e-2  # rounded (not bit-equal), but only at half precision
    assert load_prior(out).checksum == load_prior(out, weights="raw").checksum
    assert pack_raw_weights(out)[1] == after  # packing twice changes nothing


def test_weights_beyond_the_half_range_are_refused_and_left_alone(tmp_path):
    out, model = make_prior(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel())
    state[name].view(-1)[0] = 1e6
    save_weights(out / RAW_NAME, state)
    digest = sha256_file(out / RAW_NAME)
    with pytest.raises(ValueError, match="float16 range"):
        pack_raw_weights(out)
    assert sha256_file(out / RAW_NAME) == digest

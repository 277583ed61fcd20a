"""(e) Prior directory round trip and bad directories; (f) a planted pickle is never unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import invdiff
from invdiff.errors import InputError
from invdiff.prior.data import Normalisation
from invdiff.prior.denoiser import Denoiser
from invdiff.prior.store import CONFIG_NAME, EMA_NAME, RAW_NAME, Prior, default_prior_path, load_prior, save_prior
from invdiff.prior.train import TrainSettings, build_model, prior_config
from invdiff.prior.unet import UNetConfig


def make_prior(tmp_path: Path, num_classes: int = 0, channels: int = 1) -> tuple[Path, torch.nn.Module]:
    s = TrainSettings(image_size=16, channels=channels, unet=UNetConfig(channels=channels, base_channels=8,
                                                                        channel_mults=(1, 2), num_classes=num_classes))
    torch.manual_seed(0)
    model = build_model(s)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = prior_config(s, Normalisation(), {"slices": 3}, {"command": "invdiff train x.npy"})
    out = tmp_path / "prior"
    save_prior(out, config, model.state_dict(), model.state_dict())
    return out, model


def test_round_trip_gives_the_same_denoiser(tmp_path):
    out, model = make_prior(tmp_path)
    prior = load_prior(out)
    assert isinstance(prior, Prior) and isinstance(prior, Denoiser)
    x = torch.randn(2, 1, 24, 20)
    sigma = torch.tensor([0.3, 2.0])
    torch.testing.assert_close(prior(x, sigma), model.eval()(x, sigma))
    assert prior.image_shape == (1, None, None) and prior.channels == 1 and prior.image_size == 16
    assert prior.sigma_min == 0.002 and prior.sigma_max == 80.0 and prior.sigma_data == 0.5
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["format_version"] == 1 and config["invdiff_version"] == invdiff.__version__
    assert len(prior.checksum) == 64 and prior.checksum == config["weights_ema_sha256"]
    assert {p.name for p in out.iterdir()} == {CONFIG_NAME, EMA_NAME, RAW_NAME}
    # gradients flow to x (posterior solvers differentiate the prior)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior(xg, 0.5).sum(), xg)
    assert g.abs().sum() > 0


def test_bf16_network_is_close_to_float32_and_keeps_the_skip_path_exact(tmp_path):
    """--bf16: the network runs in bfloat16 (so the output differs from float32), but D stays a
    float32 tensor within a few per cent of the float32 denoiser's correction D - x, and at
    small sigma, where D is nearly the float32 skip path c_skip x, within 2e-4 of x's size;
    deterministic, and gradients still flow to x."""
    out, _ = make_prior(tmp_path)
    prior = load_prior(out)
    x = torch.randn(2, 1, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = {s: prior(x, s) for s in (0.01, 0.3, 2.0)}
        prior.bf16 = True
        assert prior.network_dtype == "bfloat16"
        low = {s: prior(x, s) for s in (0.01, 0.3, 2.0)}
        again = prior(x, 0.3)
    for s in ref:
        assert low[s].dtype == torch.float32 and low[s].is_contiguous() and not torch.equal(low[s], ref[s])
        assert (low[s] - ref[s]).norm() < 0.03 * (ref[s] - x).norm()
    assert (low[0.01] - ref[0.01]).norm() < 2e-4 * x.norm()
    assert torch.equal(again, low[0.3])
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior(xg, 0.5).sum(), xg)
    assert g.dtype == torch.float32 and g.abs().sum() > 0
    conv = next(m for m in prior.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # bfloat16 convolutions want NHWC
    prior.bf16 = False  # back to the float32 network, bit for bit
    assert conv.weight.is_contiguous()
    with torch.no_grad():
        assert torch.equal(prior(x, 0.3), ref[0.3])


def test_normalise_denormalise_round_trip(tmp_path):
    out, _ = make_prior(tmp_path)
    prior = load_prior(out)
    images = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32) * np.array([1.0, 100.0, 3000.0])[:, None, None]
    x, scale = prior.normalise(images)
    assert x.shape == (3, 1, 20, 20)
    q = np.percentile(np.abs(images).reshape(3, -1), 99.5, axis=1)
    np.testing.assert_allclose(scale.numpy(), q, rtol=1e-5)
    np.testing.assert_allclose(prior.denormalise(x, scale)[:, 0].numpy(), images, rtol=1e-5)


def test_guidance_mixes_conditional_and_null_outputs(tmp_path):
    out, _ = make_prior(tmp_path, num_classes=2)
    prior = load_prior(out)
    x = torch.randn(1, 1, 16, 16)
    cond = prior(x, 1.0, torch.tensor([1]))
    null = prior(x, 1.0, torch.tensor([2]))
    torch.testing.assert_close(prior.guided(2.0, 1)(x, 1.0), 3 * cond - 2 * null)
    with pytest.raises(InputError):
        prior.guided(1.0, 5)


def test_default_prior_path():
    assert default_prior_path() == Path(invdiff.__file__).parent.parent / "data" / "priors" / "brain128"


def _edit_config(out: Path, change) -> None:
    config = json.loads((out / CONFIG_NAME).read_text())
    change(config)
    (out / CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize("case, pattern", [
    ("no_dir", "does not exist"),
    ("no_config", "config is missing"),
    ("bad_json", "not valid JSON"),
    ("missing_key", "incomplete or edited"),
    ("newer", "newer"),
    ("wrong_shape", "do not fit"),
    ("edited_weights", "checksum"),
    ("no_weights", "missing"),
])
def test_bad_prior_directories_are_input_errors_naming_the_file(tmp_path, case, pattern):
    out, _ = make_prior(tmp_path)
    if case == "no_dir":
        out = tmp_path / "nowhere"
    elif case == "no_config":
        (out / CONFIG_NAME).unlink()
    elif case == "bad_json":
        (out / CONFIG_NAME).write_text("{not json")
    elif case == "missing_key":
        _edit_config(out, lambda c: c.pop("precond"))
    elif case == "newer":
        _edit_config(out, lambda c: c.update(format_version=99))
    elif case == "wrong_shape":
        _edit_config(out, lambda c: c["network"]["unet"].update(base_channels=16))
    elif case == "edited_weights":
        from safetensors.torch import load_file, save_file

        w = load_file(str(out / EMA_NAME))
        w[next(iter(w))] += 1
        save_file(w, str(out / EMA_NAME))
    elif case == "no_weights":
        (out / EMA_NAME).unlink()
    with pytest.raises(InputError, match=pattern) as info:
        load_prior(out)
    assert str(out) in str(info.value)


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_planted_pickle_is_refused_and_never_executed(tmp_path):
    out, _ = make_prior(tmp_path)
    marker = tmp_path / "executed.txt"
    payload = pickle.dumps({"net.conv_in.weight": _Exploit(str(marker))})
    pickle.loads(payload)  # the payload does execute when unpickled ...
    assert marker.exists()
    marker.unlink()
    (out / EMA_NAME).write_bytes(payload)  # ... planted as the EMA weights (also as a torch.save zip)
    with pytest.raises(InputError, match="safetensors"):
        load_prior(out)
    torch.save({"x": _Exploit(str(marker))}, out / RAW_NAME)
    with pytest.raises(InputError, match="safetensors"):
        load_prior(out, weights="raw")
    assert not marker.exists()


@pytest.mark.parametrize("edit", [
    lambda c: c["network"]["unet"]["channel_mults"].__setitem__(0, float("inf")),  # int(inf) overflows
    lambda c: c["precond"].__setitem__("sigma_data", 1e308),  # sigma_data**2 overflows
    lambda c: c["precond"].__setitem__("sigma_max", 1e30),
])
def test_overflowing_config_values_are_input_errors(tmp_path, edit):
    """Found by hypothesis (test_properties.py): these raised OverflowError, not InputError."""
    out, _ = make_prior(tmp_path)
    _edit_config(out, edit)
    with pytest.raises(InputError, match=str(out)):
        load_prior(out)

"""Priors normalised by a fixed window (CT in HU) meet measurements in linear attenuation:
invdiff/pipeline/units.py maps one onto the other, and a reconstruction lands in the right
units (it used to rescale by the percentile and ignore the window's offset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invdiff.errors import InputError
from invdiff.io.dicom import MU_WATER_PER_MM, hu_to_mu
from invdiff.pipeline.geometry import GeometryOptions
from invdiff.pipeline.reconstruct import Settings, run_prior
from invdiff.pipeline.simulate import simulate as run_simulate
from invdiff.pipeline.units import ShiftedDenoiser, window_units
from invdiff.prior.data import Normalisation, SliceStack, units_from_data as training_units


@pytest.mark.parametrize("window", [(-1000.0, 1000.0), (-200.0, 300.0), (-160.0, 240.0)])
def test_window_in_hu_maps_onto_linear_attenuation(window):
    lo, hi = window
    units = window_units(Normalisation(kind="window", window=window, units="HU"), "radon")
    hu = np.array([-1000.0, -500.0, 0.0, 40.0, 700.0, 1500.0])
    x_n = (hu - lo) / (hi - lo)  # what the prior was trained on
    z = x_n + units.shift  # what the solver sees
    assert np.allclose(units.scale * z, hu_to_mu(hu), rtol=1e-12, atol=1e-15)
    assert units.offset == pytest.approx(hu_to_mu(lo))


def test_window_in_image_units_is_taken_as_is():
    for op in ("radon", "mri", "blur"):
        units = window_units(Normalisation(kind="window", window=(-1.0, 3.0)), op)
        assert units.scale == 4.0 and units.offset == pytest.approx(-1.0)


@pytest.mark.parametrize("op", ["mri", "blur"])
def test_a_prior_in_hu_refuses_other_modalities(op):
    with pytest.raises(InputError, match=f"Hounsfield units.*cannot reconstruct a {op} measurement"):
        window_units(Normalisation(kind="window", window=(-1000.0, 1000.0), units="HU"), op)


def test_shifted_denoiser_is_the_prior_in_shifted_units():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Tanh())

    class Net:
        sigma_min, sigma_max, sigma_data, image_shape, channels = 0.01, 10.0, 0.5, (2, None, None), 2

        def __call__(self, x, sigma):
            return net(x) * float(sigma)

    shifted = ShiftedDenoiser(Net(), 0.7)
    z = torch.randn(3, 2, 8, 8)
    expected = Net()(z - torch.tensor([0.7, 0.0]).view(2, 1, 1), 0.3) + torch.tensor([0.7, 0.0]).view(2, 1, 1)
    assert torch.allclose(shifted(z, 0.3), expected, atol=1e-7)
    assert (shifted.sigma_min, shifted.sigma_max, shifted.prior.channels) == (0.01, 10.0, 2)


def test_training_units_come_from_the_data():
    hu = SliceStack(np.zeros((2, 8, 8), np.float32), "ct.dcm", hounsfield=True)
    png = SliceStack(np.zeros((2, 8, 8), np.float32), "img.png")
    norm = Normalisation(kind="window", window=(-1000.0, 1000.0))
    assert training_units([hu, hu], norm).units == "HU"
    assert training_units([png], norm).units == "image"
    assert training_units([hu], Normalisation()).units == "image"  # percentile: scale-free
    with pytest.raises(InputError, match="same units"):
        training_units([hu, png], norm)
    assert Normalisation.from_dict(Normalisation(kind="window", window=(0, 1), units="HU").to_dict()).units == "HU"


class WaterPrior:
    """A point-mass prior at water (0 HU) in a (-200, 300) HU window: D(x, sigma) = 0.4."""

    sigma_min, sigma_max, sigma_data = 0.002, 80.0, 0.2
    channels, image_shape, config = 1, (1, None, None), {}
    normalisation = Normalisation(kind="window", window=(-200.0, 300.0), units="HU")

    def __call__(self, x, sigma):
        return torch.full_like(x, 0.4)


def test_reconstruction_with_a_window_prior_is_in_linear_attenuation():
    """A water phantom in mu, reconstructed with a prior that knows only water: the result is
    mu_water everywhere. Ignoring the window's offset (x = q * x_n with q the image's own
    percentile) would put it at 0.4 mu_water, 60 % off."""
    water = np.full((1, 32, 32), hu_to_mu(0.0), np.float32)
    m = run_simulate(water, "radon", GeometryOptions(views=30, pixel_size=1.0), noise_rel=0.01, seed=3,
                     attrs={"units": "mu_per_mm", "hounsfield": True})
    result = run_prior(m, Settings(solver="diffpir", steps=8, samples=2, seed=0), WaterPrior(), "cpu")
    rec = result.reconstruction[0]
    assert abs(float(np.median(rec)) / MU_WATER_PER_MM - 1.0) < 0.02
    assert result.info["image_offset"] == pytest.approx(hu_to_mu(-200.0))
    assert "HU" in result.info["image_units"]


def test_ct_dicom_window_prior_end_to_end(tmp_path):
    """train on a CT DICOM series in HU with a window -> the prior records units HU; simulate
    from the same series (converted to mu) and reconstruct with it: the provenance carries the
    window mapping and the result is in mu per mm, near the truth's scale."""
    import h5py
    import json

    from invdiff.cli import app
    from invdiff.cli.common import run_app
    from invdiff.io.dicom import write_dicom_series

    yy, xx = np.mgrid[:32, :32]
    disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 12**2).astype(np.float32)
    hu = np.stack([-1000 + 1000 * disc + 60 * k * disc * (xx > 16) for k in range(4)]).astype(np.float32)
    series = tmp_path / "ct"
    write_dicom_series(series, hu, modality="CT", units="HU", pixel_spacing=(1.0, 1.0), slice_thickness=1.0)
    prior = tmp_path / "prior"
    assert run_app(app, ["train", str(series), "--out", str(prior), "--image-size", "16", "--channels-base", "8",
                         "--channel-mults", "1,2", "--batch-size", "4", "--steps", "2", "--checkpoint-every", "2",
                         "--normalise", "window", "--window", "-1000,1000", "--quiet"]) == 0
    config = json.loads((prior / "config.json").read_text())
    assert config["normalisation"]["units"] == "HU"
    meas, out = tmp_path / "ct.h5", tmp_path / "r.h5"
    assert run_app(app, ["simulate", str(series), "--operator", "radon", "--views", "20", "--noise-rel", "0.01",
                         "--out", str(meas), "-q"]) == 0
    assert run_app(app, ["reconstruct", str(meas), "--prior", str(prior), "--solver", "diffpir", "--steps", "3",
                         "--device", "cpu", "--out", str(out), "-q"]) == 0
    with h5py.File(out) as f:
        rec = f["reconstruction"][()]
        prov = json.loads(f.attrs["invdiff_provenance"])
    assert prov["image_scale"] == pytest.approx(2 * MU_WATER_PER_MM)
    assert prov["image_offset"] == pytest.approx(0.0, abs=1e-12)
    assert "mu per mm" in prov["image_units"]
    # inside the disc the image is water-like (mu near 0.019/mm), not HU and not percentile units
    assert 0.5 * MU_WATER_PER_MM < float(np.median(rec[:, disc > 0])) < 1.6 * MU_WATER_PER_MM


@pytest.mark.parametrize("percentile", [90.0, 99.5])
def test_percentile_prior_sets_the_scale_by_its_own_percentile(percentile):
    """A prior trained with ``--percentile P`` is applied in units of the P-th percentile of
    |direct reconstruction| (the statistic it was trained with), not a fixed 99.5."""
    from invdiff.pipeline.reconstruct import prior_units, slice_operators

    ramp = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    m = run_simulate(ramp, "blur", GeometryOptions(psf="gaussian:0.5"), noise_std=0.01, seed=0)
    op = slice_operators(m, "cpu")(0)
    direct = np.abs(op.direct(torch.as_tensor(m.data[:1], dtype=op.dtype)).numpy()).ravel()

    class PercentilePrior:
        normalisation = Normalisation(kind="percentile", percentile=percentile)

    units = prior_units(PercentilePrior(), m, "cpu")
    assert units.scale == pytest.approx(float(np.quantile(direct.astype(np.float64), percentile / 100)), rel=1e-4)
    assert f"{percentile:g}th percentile" in units.description

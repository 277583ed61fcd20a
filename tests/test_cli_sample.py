"""`invdiff sample` and `invdiff likelihood` end to end with a tiny (untrained) prior built here."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from invdiff.cli import app
from invdiff.cli.common import run_app
from invdiff.prior.data import Normalisation
from invdiff.prior.store import save_prior
from invdiff.prior.train import TrainSettings, build_model, prior_config
from invdiff.prior.unet import UNetConfig


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory) -> Path:
    settings = TrainSettings(image_size=16, unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1),
                             sigma_min=0.01, sigma_max=10.0)
    model = build_model(settings)
    config = prior_config(settings, Normalisation(kind="window", window=(0.0, 255.0)), {"files": 0}, {})
    return save_prior(tmp_path_factory.mktemp("prior") / "tiny", config, model.state_dict(), model.state_dict())


def test_sample_writes_samples_and_provenance(tiny_prior, tmp_path, capsys):
    out, png = tmp_path / "s.h5", tmp_path / "grid.png"
    code = run_app(app, ["sample", "--prior", str(tiny_prior), "-n", "3", "--sampler", "ddim", "--steps", "4",
                         "--out", str(out), "--png", str(png), "--seed", "1", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nfe_per_sample"] == 4 and result["shape"] == [3, 16, 16]
    with h5py.File(out) as f:
        samples = f["samples"][()]
        prov = json.loads(f.attrs["invdiff_provenance"])
    assert samples.dtype == np.float32 and samples.shape == (3, 16, 16) and np.isfinite(samples).all()
    assert prov["sampler"] == "ddim" and prov["steps"] == 4 and prov["seed"] == 1 and len(prov["prior_checksum"]) == 64
    assert png.stat().st_size > 0
    # same seed, same samples
    again = tmp_path / "again.h5"
    assert run_app(app, ["sample", "--prior", str(tiny_prior), "-n", "3", "--sampler", "ddim", "--steps", "4",
                         "--out", str(again), "--seed", "1", "--device", "cpu", "--quiet"]) == 0
    with h5py.File(again) as f:
        assert np.array_equal(f["samples"][()], samples)
    assert prov["network_dtype"] == "float32"
    low = tmp_path / "bf16.h5"  # --bf16: recorded, and (the network output starts at zero) the same samples
    assert run_app(app, ["sample", "--prior", str(tiny_prior), "-n", "3", "--sampler", "ddim", "--steps", "4",
                         "--out", str(low), "--seed", "1", "--device", "cpu", "--quiet", "--bf16"]) == 0
    with h5py.File(low) as f:
        assert json.loads(f.attrs["invdiff_provenance"])["network_dtype"] == "bfloat16"
        np.testing.assert_allclose(f["samples"][()], samples, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, fragment", [
    (["--sampler", "magic"], "--sampler"),
    (["--steps", "0"], "--steps"),
    (["--guidance", "2"], "--class-label"),
    (["--class-label", "1"], "unconditional"),
    (["--image-size", "100000"], "--image-size 100000: a 100000x100000 sample is too large for this machine's"),
    (["-n", "1000000000000"], "-n 1000000000000: 1000000000000 samples of 16x16 take"),
    (["--image-size", "1024", "--batch-size", "10000", "-n", "10000"], "lower --batch-size"),
])
def test_sample_bad_input_exits_2_and_writes_nothing(tiny_prior, tmp_path, capsys, args, fragment):
    out = tmp_path / "s.h5"
    code = run_app(app, ["sample", "--prior", str(tiny_prior), "-n", "2", "--out", str(out), "--device", "cpu", *args])
    assert code == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_sample_refuses_output_larger_than_the_free_disk_space(tiny_prior, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "new" / "s.h5"  # the nearest existing folder is checked
    code = run_app(app, ["sample", "--prior", str(tiny_prior), "-n", "4", "--out", str(out), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"invdiff: error: {out}: 4 samples of 16x16 take") and f"free in {tmp_path}." in err
    assert list(tmp_path.iterdir()) == []


def test_likelihood_reports_bits_per_dim(tiny_prior, tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
        paths.append(str(path))
    code = run_app(app, ["likelihood", "--prior", str(tiny_prior), *paths, "--hutchinson", "2", "--json",
                         "--device", "cpu", "--rtol", "1e-3", "--atol", "1e-3"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["bits_per_dim"]
    values = [r["bits_per_dim"] for r in result["per_image"]]
    assert len(values) == 2 and all(np.isfinite(values)) and all(r["stderr"] is not None for r in result["per_image"])
    assert result["mean"] == pytest.approx(np.mean(values))
    assert result["stderr"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(2))


def test_likelihood_missing_file_exits_2(tiny_prior, tmp_path, capsys):
    assert run_app(app, ["likelihood", "--prior", str(tiny_prior), str(tmp_path / "nope.png"), "--device", "cpu"]) == 2
    assert "nope.png" in capsys.readouterr().err

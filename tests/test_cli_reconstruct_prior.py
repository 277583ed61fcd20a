"""`invdiff reconstruct` with a diffusion prior, end to end: HDF5 (mean, std, provenance),
DICOM that dciodvfy accepts, PNG preview, determinism, batches, and the bad-input contract."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from invdiff.cli import app
from invdiff.cli.common import run_app
from invdiff.prior.data import Normalisation
from invdiff.prior.store import save_prior
from invdiff.prior.train import TrainSettings, build_model, prior_config
from invdiff.prior.unet import UNetConfig

REPO = Path(__file__).resolve().parent.parent


def invdiff(*args) -> int:
    return run_app(app, [str(a) for a in args])


def _tiny_prior(path: Path, channels: int = 1, jitter: float = 0.0) -> Path:
    """An untrained prior; its output layer starts at zero (D = c_skip x) unless ``jitter``
    adds that much Gaussian noise to every weight."""
    settings = TrainSettings(
        image_size=16, channels=channels, unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1),
        sigma_min=0.01, sigma_max=10.0,
    )
    torch.manual_seed(0)
    model = build_model(settings)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(jitter * torch.randn_like(p))
    config = prior_config(settings, Normalisation(kind="percentile"), {"files": 0}, {})
    return save_prior(path, config, model.state_dict(), model.state_dict())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    prior = _tiny_prior(root / "prior")
    image = np.load(REPO / "data" / "samples" / "brain_heldout_128.npy")[:2, ::4, ::4]  # 2 x 32 x 32
    np.save(root / "img.npy", image)
    meas = root / "ct.h5"
    assert invdiff("simulate", root / "img.npy", "--operator", "radon", "--views", "20", "--noise-rel", "0.01", "--out", meas, "-q") == 0
    return root, prior, meas


def test_prior_reconstruction_outputs(setup, tmp_path, capsys):
    root, prior, meas = setup
    out, png, dcm = tmp_path / "r.h5", tmp_path / "r.png", tmp_path / "dicom"
    args = ["reconstruct", meas, "--prior", prior, "--solver", "dds", "--steps", "4", "--samples", "3", "--keep-samples",
            "--seed", "7", "--device", "cpu", "--out", out, "--png", png, "--dicom", dcm, "--quiet"]
    assert invdiff(*args) == 0
    with h5py.File(out) as f:
        rec, std, samples = f["reconstruction"][()], f["std"][()], f["samples"][()]
        prov = json.loads(f.attrs["invdiff_provenance"])
    assert rec.shape == (2, 32, 32) and std.shape == (2, 32, 32) and samples.shape == (3, 2, 32, 32)
    assert np.allclose(samples.mean(0), rec, atol=1e-5)
    assert np.allclose(samples.std(0, ddof=1), std, atol=1e-5)
    for key in ("invdiff_version", "command_line", "operator", "solver", "steps", "seed", "prior", "device", "wall_seconds"):
        assert key in prov, key
    assert prov["solver"] == "dds" and prov["steps"] == 4 and len(prov["prior"]["checksum"]) == 64
    assert prov["nfe_per_sample"] == 4
    assert png.stat().st_size > 0
    files = sorted(dcm.glob("*.dcm"))
    assert len(files) == 2
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy, "dciodvfy not found: install the Debian package dicom3tools (CI does)"
    for f in files:
        report = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors
    # Same seed and device: bit-identical result.
    again = tmp_path / "again.h5"
    args[args.index(out)] = again
    args[args.index(png)] = tmp_path / "again.png"
    args[args.index(dcm)] = tmp_path / "again_dicom"
    assert invdiff(*args) == 0
    with h5py.File(again) as f:
        assert np.array_equal(f["reconstruction"][()], rec)


def test_samples_run_in_network_batches_of_batch_size(setup, tmp_path):
    """K = 5 samples with --batch-size 2 run as network batches of 2, 2 and 1: five distinct
    samples whose mean and std are the reconstruction and std, the same NFE per sample, and
    the same result again for the same seed and batch size."""
    root, prior, meas = setup
    out = tmp_path / "k5.h5"
    args = ["reconstruct", meas, "--prior", prior, "--solver", "dds", "--steps", "3", "--samples", "5", "--batch-size", "2",
            "--keep-samples", "--seed", "1", "--device", "cpu", "--out", out, "--quiet"]
    assert invdiff(*args) == 0
    with h5py.File(out) as f:
        rec, std, samples = f["reconstruction"][()], f["std"][()], f["samples"][()]
        prov = json.loads(f.attrs["invdiff_provenance"])
    assert samples.shape == (5, 2, 32, 32)
    flat = samples[:, 0].reshape(5, -1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(5) for j in range(i))  # the chunks draw fresh noise
    assert np.allclose(samples.mean(0), rec, atol=1e-5)
    assert np.allclose(samples.std(0, ddof=1), std, atol=1e-5)
    assert prov["nfe_per_sample"] == 3
    again = tmp_path / "again.h5"
    args[args.index(out)] = again
    assert invdiff(*args) == 0
    with h5py.File(again) as f:
        assert np.array_equal(f["samples"][()], samples)


def test_one_sample_warns_that_its_std_is_no_spread(setup, tmp_path, capsys):
    """--samples 1 still runs, but says once that its std map is no posterior spread (here
    dds averages in no classical estimate, so the std is exactly 0); K = 2 says nothing."""
    root, prior, meas = setup
    capsys.readouterr()
    base = ["reconstruct", meas, "--prior", prior, "--solver", "dds", "--steps", "2", "--device", "cpu"]
    assert invdiff(*base, "--samples", "1", "--out", tmp_path / "k1.h5") == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "--samples 1" in err and "--samples 2" in err
    with h5py.File(tmp_path / "k1.h5") as f:
        assert np.all(f["std"][()] == 0)
    assert invdiff(*base, "--samples", "2", "--out", tmp_path / "k2.h5") == 0
    assert "warning" not in capsys.readouterr().err
    assert invdiff(*base, "--samples", "1", "--out", tmp_path / "k1q.h5", "-q") == 0
    assert capsys.readouterr().err == ""


def test_bf16_network_gives_a_close_deterministic_result(setup, tmp_path, capsys):
    """--bf16 runs the network in bfloat16: the provenance says so, the posterior mean is
    within a few per cent of the float32 run's (not equal to it), the same seed repeats it bit
    for bit; a classical --method has no network and refuses the flag."""
    root, _, meas = setup
    prior = _tiny_prior(tmp_path / "prior", jitter=0.05)
    base = ["reconstruct", meas, "--prior", prior, "--solver", "dds", "--steps", "3", "--samples", "2", "--device", "cpu", "-q"]
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16"]), ("bf16b", ["--bf16"])):
        assert invdiff(*base, *extra, "--out", tmp_path / f"{name}.h5") == 0
        with h5py.File(tmp_path / f"{name}.h5") as f:
            runs[name] = (f["reconstruction"][()], json.loads(f.attrs["invdiff_provenance"])["prior"]["network_dtype"])
    assert runs["fp32"][1] == "float32" and runs["bf16"][1] == "bfloat16"
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    assert not np.array_equal(fp32, bf16) and np.linalg.norm(bf16 - fp32) < 0.03 * np.linalg.norm(fp32)
    assert np.array_equal(runs["bf16b"][0], bf16)
    capsys.readouterr()
    assert invdiff("reconstruct", meas, "--method", "fbp", "--bf16", "--out", tmp_path / "fbp.h5") == 2
    assert "--bf16" in capsys.readouterr().err and not (tmp_path / "fbp.h5").exists()


def test_bf16_on_a_cpu_without_bfloat16_instructions_warns(setup, tmp_path, capsys, monkeypatch):
    """Where the CPU has neither AMX nor AVX512-BF16, --bf16 still runs but says it is slower."""
    root, prior, meas = setup
    base = ["reconstruct", meas, "--prior", prior, "--solver", "dds", "--steps", "2", "--samples", "2", "--device", "cpu"]
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False)
        capsys.readouterr()
        assert invdiff(*base, "--bf16", "--out", tmp_path / f"{native}.h5") == 0
        err = capsys.readouterr().err
        assert ("slower" in err) is not native


def test_batch_skips_bad_file_and_existing(setup, tmp_path, capsys):
    root, prior, meas = setup
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(meas, folder / "a.h5")
    shutil.copy(meas, folder / "b.h5")
    (folder / "c.h5").write_bytes(b"not hdf5 at all")
    out_dir = tmp_path / "out"
    code = invdiff("reconstruct", folder, "--method", "fbp", "--out-dir", out_dir, "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and "c.h5" in err and "1 of 3" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.h5", "b.h5"]
    stamp = (out_dir / "a.h5").stat().st_mtime_ns
    (folder / "c.h5").unlink()
    assert invdiff("reconstruct", folder, "--method", "fbp", "--out-dir", out_dir, "--skip-existing", "--quiet") == 0
    assert (out_dir / "a.h5").stat().st_mtime_ns == stamp


def test_prior_that_does_not_fit(setup, tmp_path, capsys):
    root, _, meas = setup
    two_channel = _tiny_prior(tmp_path / "complex_prior", channels=2)
    out = tmp_path / "r.h5"
    code = invdiff("reconstruct", meas, "--prior", two_channel, "--solver", "dds", "--steps", "2", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "channel" in err and not out.exists()
    # A prior directory with an edited config.json.
    broken = tmp_path / "broken"
    shutil.copytree(setup[1], broken)
    (broken / "config.json").write_text("{not json")
    code = invdiff("reconstruct", meas, "--prior", broken, "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "config.json" in err and not out.exists()
    # An unknown solver.
    code = invdiff("reconstruct", meas, "--prior", setup[1], "--solver", "nosuch", "--out", out)
    assert code == 2 and not out.exists()
    # A classical method given as a solver, and a solver as a method: the option that runs it.
    code = invdiff("reconstruct", meas, "--solver", "tv", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "'tv' is a classical method" in err and "--method tv" in err and not out.exists()
    code = invdiff("reconstruct", meas, "--method", "diffpir", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "'diffpir' is a posterior solver" in err and "--solver diffpir" in err and not out.exists()

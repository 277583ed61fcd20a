"""The Cartesian MRI operator (exact adjoint, orthonormal centred FFT against numpy,
zero-filled reconstruction, config round trip) and the fastMRI file reader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from invdiff.errors import InputError
from invdiff.io.fastmri import infer_mask, is_fastmri, read_fastmri
from invdiff.operators.base import config_from_json, config_to_json, get_operator_class, inner
from invdiff.operators.coils import birdcage_maps
from invdiff.operators.masks import random_line_mask
from invdiff.operators.mri import MRIOperator
from invdiff.operators.noise import NoiseModel

H, W = 24, 20  # non-square, even sides
MASK = random_line_mask((H, W), 4, 0.1, seed=3)


def numpy_fft2c(z: np.ndarray) -> np.ndarray:
    """Independent reference: fastMRI's centred orthonormal FFT written with numpy."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(z, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def make_op(coils: int | None, channels: int, dtype=torch.float64, mask=MASK, noise=None) -> MRIOperator:
    maps = None if coils is None else birdcage_maps(coils, H, W)
    return MRIOperator((channels, H, W), mask, maps, noise, dtype=dtype)


def complex_image(x: torch.Tensor) -> np.ndarray:
    x = x.numpy()
    return x[:, 0] + 1j * x[:, 1] if x.shape[1] == 2 else x[:, 0].astype(complex)


# --- the linear map ------------------------------------------------------------------------
@pytest.mark.parametrize("coils", [None, 1, 5])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_adjoint_dot_product(coils, channels, dtype, tol):
    op = make_op(coils, channels, dtype)
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):
        x, y = op.random_image(3, gen), op.random_measurement(3, gen)
        back = op.adjoint(y)
        assert back.shape == x.shape and back.dtype == dtype
        lhs, rhs = inner(op.forward(x), y), inner(x, back)
        assert abs(float(lhs - rhs)) <= tol * float(op.forward(x).norm() * y.norm())


@pytest.mark.parametrize("coils", [None, 3])
@pytest.mark.parametrize("channels", [1, 2])
def test_forward_matches_numpy_reference(coils, channels):
    op = make_op(coils, channels)
    x = op.random_image(2, torch.Generator().manual_seed(1))
    z = complex_image(x)[:, None]  # (B, 1, H, W)
    maps = np.ones((1, H, W)) if coils is None else birdcage_maps(coils, H, W)
    reference = MASK * numpy_fft2c(z * maps)
    y = op.forward(x)
    assert y.shape == (2, op.measurement_shape[0], H, W) and y.dtype == torch.complex128
    np.testing.assert_allclose(y.numpy(), reference, rtol=0, atol=1e-12)


def test_fft_is_orthonormal_and_centred():
    op = MRIOperator((2, H, W), np.ones((H, W)), dtype=torch.float64)
    x = op.random_image(3, torch.Generator().manual_seed(2))
    y = op.forward(x)
    torch.testing.assert_close(y.abs().pow(2).sum(dim=(1, 2, 3)), x.pow(2).sum(dim=(1, 2, 3)), rtol=1e-12, atol=0)
    # DC at (H // 2, W // 2): a constant image of value 1 has all its energy there
    ones = torch.zeros(1, 2, H, W, dtype=torch.float64)
    ones[:, 0] = 1
    k = op.forward(ones)[0, 0]
    assert abs(float(k[H // 2, W // 2].real) - np.sqrt(H * W)) < 1e-9
    assert float(k.abs().sum() - k[H // 2, W // 2].abs()) < 1e-9


@pytest.mark.parametrize("coils", [None, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_zero_filled_with_full_mask_is_exact(coils, channels):
    op = make_op(coils, channels, mask=np.ones((H, W)))
    x = op.random_image(2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(op.direct(op.forward(x)), x, rtol=0, atol=1e-12)


def test_zero_filled_with_unnormalised_maps_divides_by_coil_power():
    maps = birdcage_maps(4, H, W) * np.linspace(0.5, 2.0, W)[None, None, :]  # sum |S|^2 != 1
    op = MRIOperator((2, H, W), np.ones((H, W)), maps, dtype=torch.float64)
    x = op.random_image(2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(op.direct(op.forward(x)), x, rtol=0, atol=1e-12)
    # with normalised maps and an undersampling mask, zero-filled is the adjoint
    op = make_op(4, 2)
    y = op.random_measurement(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(op.direct(y), op.adjoint(y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("coils", [None, 3])
def test_normal_and_masked_measurement(coils):
    op = make_op(coils, 2)
    x = op.random_image(2, torch.Generator().manual_seed(6))
    torch.testing.assert_close(op.normal(x), op.adjoint(op.forward(x)), rtol=0, atol=1e-12)
    y = op.forward(x)
    sampled = torch.from_numpy(MASK == 1)
    assert float(y[:, :, ~sampled].abs().max()) == 0.0
    assert float(y[:, :, sampled].abs().min()) > 0.0


def test_float32_gives_complex64_on_the_operator_device():
    op = make_op(2, 2, torch.float32)
    x = op.random_image(1, torch.Generator().manual_seed(0))
    y = op.forward(x)
    assert y.dtype == torch.complex64 and y.device == op.device
    assert op.adjoint(y.to(torch.complex128)).dtype == torch.float32


# --- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize("coils", [None, 3])
def test_config_round_trip_through_hdf5(tmp_path, coils):
    op = make_op(coils, 2, noise=NoiseModel("gaussian", std=0.02))
    text, arrays = config_to_json(op.to_config())
    with h5py.File(tmp_path / "m.h5", "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        config = config_from_json(text, {name: f[name][()] for name in arrays})
    cls = get_operator_class(config["name"])
    assert cls is MRIOperator
    rebuilt = cls.from_config(config["params"], dtype=torch.float64)
    assert rebuilt.noise == op.noise and rebuilt.measurement_shape == op.measurement_shape
    x = op.random_image(2, torch.Generator().manual_seed(8))
    torch.testing.assert_close(rebuilt.forward(x), op.forward(x), rtol=0, atol=0)
    assert rebuilt.to(dtype=torch.float32).dtype == torch.float32


def test_mask_of_lines_is_broadcast_over_rows():
    lines = MASK[0]
    op = MRIOperator((1, H, W), lines)
    np.testing.assert_array_equal(op.params()["mask"], MASK)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"image_shape": [3, H, W], "mask": MASK}, "C = 1"),
        ({"image_shape": [1, H, W], "mask": MASK[:, :-1]}, "mask has shape"),
        ({"image_shape": [1, H, W], "mask": MASK * 0.5}, "only 0 and 1"),
        ({"image_shape": [1, H, W], "mask": np.zeros((H, W))}, "samples no"),
        ({"image_shape": [1, H, W], "mask": MASK, "coil_maps": np.ones((2, H, W + 1))}, "coil maps have shape"),
        ({"image_shape": [1, H, W], "mask": MASK, "coil_maps": "estimate"}, "resolved"),
        ({"image_shape": [1, H, W], "mask": MASK, "angles": [0]}, "unknown mri"),
        ({"image_shape": [1, H, W]}, "lacks mask"),
        ({"image_shape": [1, H, W], "mask": MASK, "noise": {"kind": "transmission", "photons": 10}}, "Gaussian"),
    ],
)
def test_bad_parameters_raise_input_error(params, words):
    with pytest.raises(InputError, match=words):
        MRIOperator.from_config(params)


# --- fastMRI files ---------------------------------------------------------------------------
def write_fastmri(path, kspace, mask=None, header=True):
    """A small file in the fastMRI layout (fastmri/data/mri_data.py)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        if mask is not None:
            f.create_dataset("mask", data=mask)
        if header:
            f.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader></ismrmrdHeader>"))
            f.create_dataset("reconstruction_rss", data=np.ones((kspace.shape[0], 8, 8), np.float32))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = np.float64(0.5)
        f.attrs["norm"] = np.float64(12.0)
        f.attrs["patient_id"] = "abc123"


def test_read_multicoil_fastmri_with_mask(tmp_path):
    rng = np.random.default_rng(0)
    lines = MASK[0].astype(bool)
    kspace = (rng.standard_normal((3, 4, H, W)) + 1j * rng.standard_normal((3, 4, H, W))) * lines
    write_fastmri(tmp_path / "file_brain.h5", kspace, mask=lines)
    with h5py.File(tmp_path / "file_brain.h5", "r") as f:
        assert is_fastmri(f)
    raw = read_fastmri(tmp_path / "file_brain.h5")
    assert raw["kspace"].shape == (3, 4, H, W) and raw["kspace"].dtype == np.complex64
    np.testing.assert_allclose(raw["kspace"], kspace.astype(np.complex64))
    np.testing.assert_array_equal(raw["mask"], MASK)
    assert raw["mask_source"] == "dataset"
    assert raw["attrs"] == {"acquisition": "CORPD_FBK", "max": 0.5, "norm": 12.0, "patient_id": "abc123"}
    assert raw["ismrmrd_header"].startswith("<ismrmrdHeader")
    assert raw["reconstruction_rss"].shape == (3, 8, 8)
    # the data fit an operator built from what the reader returns
    op = MRIOperator((2, H, W), raw["mask"], birdcage_maps(4, H, W))
    op.check_measurement(torch.from_numpy(raw["kspace"]), "file_brain.h5")


def test_read_singlecoil_fastmri_infers_the_mask(tmp_path):
    rng = np.random.default_rng(1)
    lines = MASK[0].astype(bool)
    kspace = (rng.standard_normal((2, H, W)) + 1j * rng.standard_normal((2, H, W))) * lines
    write_fastmri(tmp_path / "file_knee.h5", kspace, header=False)
    raw = read_fastmri(tmp_path / "file_knee.h5")
    assert raw["kspace"].shape == (2, 1, H, W)
    np.testing.assert_array_equal(raw["mask"], MASK)
    np.testing.assert_array_equal(infer_mask(kspace), MASK)
    assert raw["mask_source"] == "inferred" and raw["ismrmrd_header"] is None


def test_fastmri_bad_files(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((2, 4, 4), np.float32))
    assert not is_fastmri(tmp_path / "other.h5")
    with pytest.raises(InputError, match="not a fastMRI file"):
        read_fastmri(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    assert not is_fastmri(tmp_path / "text.h5")
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_fastmri(tmp_path / "text.h5")
    with pytest.raises(InputError, match="no such file"):
        read_fastmri(tmp_path / "missing.h5")
    write_fastmri(tmp_path / "badmask.h5", np.ones((1, 2, H, W), complex), mask=np.ones(W + 1, bool))
    with pytest.raises(InputError, match="'mask' has"):
        read_fastmri(tmp_path / "badmask.h5")

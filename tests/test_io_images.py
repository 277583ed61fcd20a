"""Image readers (every format written here, then read back), their InputErrors, fuzzing with
random bytes, and the PNG preview writers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from invdiff.errors import InputError
from invdiff.io.images import read_image_paths, read_images
from invdiff.io.png import save_grid, save_png, save_preview


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- round trips ---------------------------------------------------------------------------


def test_png_8bit_round_trip(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    stack = read_images(tmp_path / "a.png")
    assert stack.kind == "png" and stack.data.dtype == np.float32 and stack.data.shape == (1, 20, 30)
    np.testing.assert_array_equal(stack.data[0], pixels)
    assert stack.dicom_meta is None and not stack.hounsfield and stack.spacing is None


def test_png_16bit_round_trip(tmp_path, rng):
    pixels = rng.integers(0, 65536, size=(16, 24), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_images(tmp_path / "a.png").data[0], pixels)


def test_jpeg_grey_is_read(tmp_path):
    pixels = np.tile(np.linspace(10, 240, 32), (32, 1)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=100)
    stack = read_images(tmp_path / "a.jpg")
    assert stack.kind == "jpeg"
    assert np.abs(stack.data[0] - pixels).max() <= 3  # lossy, but close


def test_rgb_is_an_error_unless_allowed(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(InputError, match=r"c\.png: expected a single-channel image; got 3 channels"):
        read_images(tmp_path / "c.png")
    grey = read_images(tmp_path / "c.png", allow_rgb=True).data[0]
    np.testing.assert_allclose(grey, 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2], rtol=1e-6)


def test_grey_stored_as_rgb_or_with_opaque_alpha_is_accepted(tmp_path, rng):
    grey = rng.integers(0, 256, size=(8, 9), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_images(tmp_path / "g.png").data[0], grey)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_images(tmp_path / "la.png").data[0], grey)
    rgba = np.concatenate([rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8), np.full((8, 9, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "t.png")
    with pytest.raises(InputError, match=r"t\.png.*got 4 channels"):
        read_images(tmp_path / "t.png")


def test_tiff_2d_and_stack(tmp_path, rng):
    stack = rng.normal(size=(3, 16, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "one.tiff", stack[0])
    read = read_images(tmp_path / "s.tif")
    assert read.kind == "tiff"
    np.testing.assert_array_equal(read.data, stack)
    np.testing.assert_array_equal(read_images(tmp_path / "one.tiff").data, stack[:1])
    tifffile.imwrite(tmp_path / "rgb.tif", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"rgb\.tif.*got 3 channels"):
        read_images(tmp_path / "rgb.tif")


def test_npy_real_and_complex(tmp_path, rng):
    image = rng.normal(size=(10, 12))
    np.save(tmp_path / "a.npy", image)
    read = read_images(tmp_path / "a.npy")
    assert read.kind == "npy" and read.data.dtype == np.float32
    np.testing.assert_allclose(read.data[0], image, rtol=1e-6)
    z = (rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))).astype(np.complex128)
    np.save(tmp_path / "z.npy", z)
    read = read_images(tmp_path / "z.npy")
    assert read.data.dtype == np.complex64
    np.testing.assert_allclose(read.data, z, rtol=1e-6)


def test_npy_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    np.save(tmp_path / "evil.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"evil\.npy.*Python objects"):
        read_images(tmp_path / "evil.npy")
    assert not marker.exists()


def test_npz_keys(tmp_path, rng):
    a, b = rng.normal(size=(2, 8, 8)), rng.normal(size=(8, 8))
    np.savez(tmp_path / "one.npz", images=a)
    np.testing.assert_allclose(read_images(tmp_path / "one.npz").data, a, rtol=1e-6)
    np.savez_compressed(tmp_path / "two.npz", a=a, b=b)
    np.testing.assert_allclose(read_images(tmp_path / "two.npz", key="b").data[0], b, rtol=1e-6)
    with pytest.raises(InputError, match=r"two\.npz.*several arrays \(a, b\).*--key"):
        read_images(tmp_path / "two.npz")
    with pytest.raises(InputError, match=r"two\.npz.*no array 'c'"):
        read_images(tmp_path / "two.npz", key="c")


def test_hdf5_default_and_key(tmp_path, rng):
    volume = rng.normal(size=(4, 8, 10)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh["group/volume"] = volume
        fh["angles"] = np.arange(5.0)  # 1D: not an image candidate
    read = read_images(tmp_path / "a.h5")
    assert read.kind == "hdf5"
    np.testing.assert_array_equal(read.data, volume)
    with h5py.File(tmp_path / "b.h5", "w") as fh:
        fh["x"], fh["y"] = volume, volume[0]
        fh["k"] = np.zeros((2, 3, 4, 5))
    np.testing.assert_array_equal(read_images(tmp_path / "b.h5", key="y").data[0], volume[0])
    with pytest.raises(InputError, match=r"b\.h5.*several image datasets \(x, y\)"):
        read_images(tmp_path / "b.h5")
    with pytest.raises(InputError, match=r"b\.h5.*no dataset 'z'"):
        read_images(tmp_path / "b.h5", key="z")
    with pytest.raises(InputError, match=r"b\.h5.*shape \(2, 3, 4, 5\)"):
        read_images(tmp_path / "b.h5", key="k")


def test_nifti_odd_orientation_is_canonicalised(tmp_path, rng):
    nx, ny, nz, sx, sy, sz = 6, 7, 8, 1.0, 2.0, 3.0
    ras = rng.normal(size=(nx, ny, nz)).astype(np.float32)  # V[x, y, z] in RAS+ voxel order
    # O[i, j, k] = V[nx-1-k, j, nz-1-i]: voxel axes (I->S flipped, A, R->L flipped), world in mm
    odd = np.ascontiguousarray(ras[::-1, :, ::-1].transpose(2, 1, 0))
    affine = np.array(
        [[0, 0, -sx, sx * (nx - 1)], [0, sy, 0, 0], [-sz, 0, 0, sz * (nz - 1)], [0, 0, 0, 1]], dtype=float
    )
    nibabel.save(nibabel.Nifti1Image(odd, affine), tmp_path / "v.nii.gz")
    axial = read_images(tmp_path / "v.nii.gz")
    assert axial.kind == "nifti"
    # DICOM display convention (tests/test_nifti_orientation.py): LPS+, axial rows A->P, columns R->L
    lps = ras[::-1, ::-1, :]
    np.testing.assert_array_equal(axial.data, lps.transpose(2, 1, 0))
    assert axial.spacing == pytest.approx((sz, sy, sx))
    nibabel.save(nibabel.Nifti1Image(odd, affine), tmp_path / "v.nii")
    sagittal = read_images(tmp_path / "v.nii", axis=0)  # slices L->R, rows S->I, columns A->P
    np.testing.assert_array_equal(sagittal.data, lps.transpose(0, 2, 1)[::-1, ::-1, :])
    assert sagittal.spacing == pytest.approx((sx, sz, sy))
    with pytest.raises(InputError, match=r"v\.nii.*axis"):
        read_images(tmp_path / "v.nii", axis=3)


def test_read_image_paths_walks_folders(tmp_path, rng):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    np.save(tmp_path / "a.npy", rng.normal(size=(2, 8, 8)))
    Image.fromarray(rng.integers(1, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "sub" / "b.png")
    tifffile.imwrite(tmp_path / "sub" / "deeper" / "c.tif", rng.normal(size=(3, 8, 8)).astype(np.float32),
                    photometric="minisblack")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"partial")
    explicit = tmp_path / "d.npy"
    np.save(explicit, rng.normal(size=(8, 8)))
    stacks = read_image_paths([tmp_path / "sub", explicit])
    assert [s.source.name for s in stacks] == ["b.png", "c.tif", "d.npy"]
    assert len(read_image_paths([tmp_path])) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no image files"):
        read_image_paths([tmp_path / "empty"])


# --- bad input -----------------------------------------------------------------------------


def _truncated(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_bad_inputs_name_the_file(tmp_path, rng):
    noisy = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "trunc.png")
    np.save(tmp_path / "trunc.npy", rng.normal(size=(32, 32)))
    with h5py.File(tmp_path / "trunc.h5", "w") as fh:
        fh["x"] = rng.normal(size=(4, 32, 32))
    nibabel.save(nibabel.Nifti1Image(rng.normal(size=(8, 8, 8)).astype(np.float32), np.eye(4)), tmp_path / "trunc.nii")
    for name in ("trunc.png", "trunc.npy", "trunc.h5", "trunc.nii"):
        _truncated(tmp_path / name)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am not a picture")
    (tmp_path / "data.xyz").write_bytes(b"\x00\x01 unknown")
    nan = rng.normal(size=(8, 8))
    nan[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    tifffile.imwrite(tmp_path / "inf.tif", np.full((8, 8), np.inf, dtype=np.float32))
    np.save(tmp_path / "zeros.npy", np.zeros((2, 8, 8)))
    np.save(tmp_path / "four_d.npy", np.ones((2, 3, 8, 8)))
    np.save(tmp_path / "text_dtype.npy", np.array([["a", "b"], ["c", "d"]]))
    cases = {
        "missing.png": "does not exist",
        "empty.png": "is empty",
        "trunc.png": "truncated",
        "trunc.npy": "truncated",
        "trunc.h5": "HDF5",
        "trunc.nii": "truncated",
        "text.png": "not a readable image",
        "data.xyz": "unknown image format",
        "nan.npy": "1 NaN or Inf",
        "inf.tif": "64 NaN or Inf",
        "zeros.npy": "all zeros",
        "four_d.npy": "shape",
        "text_dtype.npy": "non-numeric",
    }
    for name, problem in cases.items():
        with pytest.raises(InputError) as info:
            read_images(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and problem in message, message
    with pytest.raises(InputError, match=r"a folder without DICOM files"):
        read_images(tmp_path)


def test_key_for_a_format_without_keys(tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.normal(size=(8, 8)))
    with pytest.raises(InputError, match=r"a\.npy.*--key"):
        read_images(tmp_path / "a.npy", key="x")


_PREFIXES = {
    ".png": [b"", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"],
    ".npy": [b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': ("],
    ".h5": [b"", b"\x89HDF\r\n\x1a\n"],
    ".dcm": [b"", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM\x02\x00\x10\x00UI"],
    ".nii": [b"", b"\x5c\x01\x00\x00" + b"\x00" * 36 + b"\x03\x00\x40\x00\x40\x00\x40\x00"],
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about invalid values in junk
@pytest.mark.parametrize("suffix", sorted(_PREFIXES))
def test_random_bytes_only_raise_input_error(suffix):
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(prefix=st.sampled_from(_PREFIXES[suffix]), body=st.binary(max_size=512))
    def check(prefix: bytes, body: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"random{suffix}"
            path.write_bytes(prefix + body)
            try:
                stack = read_images(path)
            except InputError as exc:
                assert str(path) in str(exc)
            else:  # random bytes that happen to parse must still obey the contract
                assert stack.data.ndim == 3 and np.isfinite(stack.data).all()

    check()


# --- PNG writers ---------------------------------------------------------------------------


def test_save_png_windowing(tmp_path):
    ramp = np.linspace(-1.0, 3.0, 64 * 32).reshape(32, 64)
    save_png(tmp_path / "w.png", ramp, vmin=0.0, vmax=2.0)
    back = np.asarray(Image.open(tmp_path / "w.png"))
    assert back.dtype == np.uint8 and back.shape == (32, 64)
    np.testing.assert_array_equal(back, np.rint(np.clip(ramp / 2.0, 0, 1) * 255).astype(np.uint8))
    save_png(tmp_path / "p.png", ramp)  # default: 0.5th..99.5th percentile
    lo, hi = np.percentile(ramp, [0.5, 99.5])
    expected = np.rint(np.clip((ramp - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), expected)
    save_png(tmp_path / "16.png", ramp, vmin=-1.0, vmax=3.0, bits=16)
    back16 = read_images(tmp_path / "16.png").data[0]
    np.testing.assert_allclose(back16 / 65535 * 4.0 - 1.0, ramp, atol=4.0 / 65535)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["16.png", "p.png", "w.png"]  # no temporaries


def test_save_png_to_a_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="folder"):
        save_png(tmp_path, np.ones((4, 4)))


def test_save_preview_layout(tmp_path, rng):
    recon = rng.normal(size=(7, 32, 32))
    std = np.abs(rng.normal(size=(7, 32, 32)))
    save_preview(tmp_path / "p.png", recon, std=std, reference=recon + 0.1)
    image = np.asarray(Image.open(tmp_path / "p.png"))
    # 4 rows of 128-px panels (32 px enlarged 4x) with 4-px padding under a 26-px label strip; 3 columns
    assert image.shape == (26 + 4 * (128 + 4) + 4, 3 * (128 + 4) + 4, 3)
    std_panel = image[26 + 4 : 26 + 4 + 128, 4 + 2 * 132 : 4 + 2 * 132 + 128]
    assert not np.all(std_panel[..., 0] == std_panel[..., 2])  # a colour map, not grey
    recon_panel = image[26 + 4 : 26 + 4 + 128, 4 + 132 : 4 + 132 + 128]
    assert np.all(recon_panel[..., 0] == recon_panel[..., 1])  # grey
    save_preview(tmp_path / "one.png", recon[3])
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (26 + 128 + 8, 128 + 8, 3)
    with pytest.raises(ValueError, match="std"):
        save_preview(tmp_path / "bad.png", recon, std=std[:2])


def test_save_grid_layout(tmp_path, rng):
    images = rng.normal(size=(5, 64, 64))
    save_grid(tmp_path / "g.png", images)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 * (128 + 4) + 4, 3 * (128 + 4) + 4, 3)
    tile = grid[4 : 4 + 128 : 2, 4 : 4 + 128 : 2, 0]  # first tile, undone 2x enlargement
    lo, hi = np.percentile(images, [0.5, 99.5])
    np.testing.assert_array_equal(tile, np.rint(np.clip((images[0] - lo) / (hi - lo), 0, 1) * 255))
    save_grid(tmp_path / "row.png", images, ncols=5)
    assert np.asarray(Image.open(tmp_path / "row.png")).shape == (128 + 8, 5 * (128 + 4) + 4, 3)


def test_hdf5_dataset_larger_than_memory_is_one_sentence(tmp_path):
    """A 4 TB dataset (chunked and unwritten: a small file) cannot be allocated anywhere; the
    reader says so in one sentence with its shape and size instead of "not a readable file"."""
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", shape=(1, 10**6, 10**6), dtype="f4", chunks=(1, 64, 64))
    with pytest.raises(InputError, match=r"'images' \(1x1000000x1000000 float32, 3725\.3 GiB\) does not fit"):
        read_images(path)


def test_damaged_tiff_is_one_sentence_without_tifffile_warnings(tmp_path, caplog):
    """A TIFF whose tags claim 60000x60000 pixels over 256 bytes: InputError, and tifffile's
    own warnings about the tags are not logged beside it."""
    import struct

    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.float32))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = {t.name: t for t in tif.pages[0].tags.values()}
    for name in ("ImageWidth", "ImageLength"):
        tag = tags[name]
        struct.pack_into("<H" if tag.dtype == 3 else "<I", data, tag.valueoffset, 60000)
    path.write_bytes(bytes(data))
    caplog.set_level("WARNING")
    with pytest.raises(InputError, match="damaged.tif"):
        read_images(path)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_axis_chooses_the_nifti_slicing_in_simulate_and_train(tmp_path, rng, capsys):
    """--axis slices a NIfTI volume along the axis asked for (simulate and train), and is
    refused for other stacks (tests/test_bad_input_matrix.py, tests/test_train_cli.py)."""
    import json

    from invdiff.cli import app
    from invdiff.cli.common import run_app

    nibabel.save(nibabel.Nifti1Image(rng.random((16, 24, 32)).astype(np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    # (x, y, z) = (16, 24, 32) voxels; slices in the DICOM display convention: axial (y, x),
    # coronal (z, x), sagittal (z, y)
    for axis, slices, shape in ((0, 16, [32, 24]), (1, 24, [32, 16]), (None, 32, [24, 16])):
        argv = ["simulate", str(tmp_path / "v.nii.gz"), "--operator", "blur", "--psf", "gaussian:1",
                "--out", str(tmp_path / f"m{axis}.h5"), "--json", "--device", "cpu"]
        assert run_app(app, argv + ([] if axis is None else ["--axis", str(axis)])) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["slices"] == slices and summary["image_shape"] == shape
    train = ["train", str(tmp_path / "v.nii.gz"), "--out", str(tmp_path / "p"), "--axis", "0", "--image-size", "16",
             "--channels-base", "8", "--channel-mults", "1,2", "--dry-run", "--json", "--quiet"]
    assert run_app(app, train) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["slice_shapes"] == [[32, 24]] and data["slices"] + data["validation_slices"] == 16

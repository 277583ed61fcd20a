"""Readers that must not read a subset or a truncation silently: TIFFs written page by page
(every page is a slice), 16-bit colour or alpha PNGs (refused, since Pillow keeps only their
high byte), and HDF5 stacks with singleton axes (found without --key, as in NPY)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from invdiff.errors import InputError
from invdiff.io.images import read_array, read_images

# --- TIFF: one series per page -------------------------------------------------------------


def _tiff_page_by_page(path: Path, pages: list[np.ndarray], **kwargs) -> Path:
    """A TIFF written one page per call, as microscopy scripts do (tifffile: one series per page)."""
    with tifffile.TiffWriter(path) as tw:
        for page in pages:
            tw.write(page, **kwargs)
    return path


def test_tiff_written_page_by_page_reads_every_page(tmp_path):
    pages = [np.full((32, 24), k + 1, np.uint16) for k in range(4)]
    path = _tiff_page_by_page(tmp_path / "loop.tif", pages)
    stack = read_images(path)
    assert stack.data.shape == (4, 32, 24)
    np.testing.assert_array_equal(stack.data, np.stack(pages))
    assert read_array(path).shape == (4, 32, 24)  # a measurement written the same way: no page dropped


def test_tiff_pages_of_grey_rgb_are_stacked(tmp_path):
    grey = [np.full((16, 16), k + 10, np.uint8) for k in range(3)]
    path = _tiff_page_by_page(tmp_path / "rgb.tif", [np.dstack([g, g, g]) for g in grey], photometric="rgb")
    np.testing.assert_array_equal(read_images(path).data, np.stack(grey))


def test_tiff_series_of_different_shapes_are_refused_by_name(tmp_path):
    pages = [np.ones((32, 32), np.uint16), np.ones((16, 16), np.uint16), np.ones((32, 32), np.uint8)]
    path = _tiff_page_by_page(tmp_path / "mixed.tif", pages)
    with pytest.raises(InputError, match=r"mixed\.tif: TIFF holds 3 image series .*32x32 uint16, 16x16 uint16, 32x32 uint8"):
        read_images(path)


def test_tiff_thumbnail_is_not_a_slice(tmp_path):
    """A reduced-resolution page (NewSubfileType 1, a thumbnail) is skipped, not stacked or refused."""
    path = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.full((32, 32), 7, np.uint16))
        tw.write(np.full((8, 8), 1, np.uint8), subfiletype=1)
    np.testing.assert_array_equal(read_images(path).data, np.full((1, 32, 32), 7))


def test_simulate_keeps_every_page_of_a_page_by_page_tiff(tmp_path, capsys):
    from invdiff.cli import app
    from invdiff.cli.common import run_app

    path = _tiff_page_by_page(tmp_path / "loop.tif", [np.full((32, 32), k + 1, np.uint16) for k in range(4)])
    argv = ["simulate", str(path), "--operator", "blur", "--psf", "gaussian:1", "--noise-std", "0.01",
            "--out", str(tmp_path / "o.h5"), "--json", "--device", "cpu"]
    assert run_app(app, argv) == 0
    assert json.loads(capsys.readouterr().out)["slices"] == 4
    with h5py.File(tmp_path / "o.h5") as fh:
        assert fh["ground_truth"].shape == (4, 32, 32)


# --- PNG: 16-bit colour and alpha ------------------------------------------------------------


def _png16(path: Path, pixels: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written chunk by chunk (Pillow cannot write 16-bit colour)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


GREY16 = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)  # max 61380: needs all 16 bits
OPAQUE = np.full_like(GREY16, 65535)


@pytest.mark.parametrize("colour_type, pixels, name", [
    (4, np.dstack([GREY16, OPAQUE]), "grey-with-alpha"),
    (2, np.dstack([GREY16, GREY16, GREY16]), "RGB"),
    (6, np.dstack([GREY16, GREY16, GREY16, OPAQUE]), "RGBA"),
])
def test_16bit_colour_or_alpha_png_is_refused_not_cut_to_8_bits(tmp_path, colour_type, pixels, name):
    path = _png16(tmp_path / "a.png", pixels, colour_type)
    with pytest.raises(InputError, match=rf"a\.png: 16-bit {name} PNG .* save it as a 16-bit greyscale PNG or as a TIFF\.$"):
        read_images(path)


def test_16bit_grey_png_keeps_16_bits(tmp_path):
    np.testing.assert_array_equal(read_images(_png16(tmp_path / "g.png", GREY16, 0)).data[0], GREY16)


# --- HDF5: singleton axes and the message when nothing fits --------------------------------


def test_hdf5_stack_with_a_singleton_axis_is_found_without_key(tmp_path):
    images = np.arange(3 * 32 * 32, dtype=np.float32).reshape(3, 1, 32, 32) + 1
    with h5py.File(tmp_path / "n1hw.h5", "w") as fh:
        fh["images"] = images
        fh["scale"] = np.ones(3)  # a vector beside it is not an image
    np.testing.assert_array_equal(read_images(tmp_path / "n1hw.h5").data, images[:, 0])


def test_hdf5_without_an_image_names_its_datasets(tmp_path):
    with h5py.File(tmp_path / "none.h5", "w") as fh:
        fh["k"] = np.ones((2, 3, 4, 5))
        fh.create_group("g")["v"] = np.ones(10)
        fh["column"] = np.ones((32, 1))
    listed = r"column \(32, 1\), g/v \(10,\), k \(2, 3, 4, 5\)\.$"
    with pytest.raises(InputError, match=r"none\.h5: HDF5 holds no image dataset .*" + listed):
        read_images(tmp_path / "none.h5")

"""Tests of the Siemens raw-data reader on a real scan and on synthetic files.

The real scan is data/samples/twix/gre.dat (twixtools' example GRE phantom scan, MIT). The
synthetic files are written here byte by byte with ``struct`` from the layout documented in
twixtools (mdh_def.py, hdr_def.py, twixprot.py), independently of the reader's dtypes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from invdiff.errors import InputError
from invdiff.io.twix import read_twix, remove_readout_oversampling

GRE = Path(__file__).resolve().parent.parent / "data" / "samples" / "twix" / "gre.dat"

BIT = {"ACQEND": 0, "SYNCDATA": 5, "PHASCOR": 21, "REFLECT": 24, "NOISEADJSCAN": 25}


def centred_ifft2(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def centred_fft(x: np.ndarray, axis: int) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)


# --------------------------------------------------------------------------- the real scan


@pytest.fixture(scope="module")
def gre() -> dict:
    return read_twix(GRE)


def test_gre_shapes_and_header(gre):
    assert gre["kspace"].shape == (1, 2, 160, 160)  # 320 oversampled readout samples -> 160
    assert gre["kspace"].dtype == np.complex64
    assert gre["mask"].shape == (160, 160) and gre["mask"].dtype == np.float32
    assert gre["mask"].min() == 1.0  # fully sampled
    assert gre["noise"] is None  # this file has no noise-adjust readouts
    h = gre["header"]
    assert h["protocol_name"] == "gre" and h["format"] == "VD/VE"
    assert h["tr_ms"] == pytest.approx(10.0) and h["te_ms"] == pytest.approx(3.0)
    assert h["coils"] == 2 and h["readout_oversampling"] == 2.0


def test_gre_kspace_centre_and_phantom_image(gre):
    k = gre["kspace"][0]
    assert np.isfinite(k).all()
    # the k-space peak (DC of a large uniform phantom) sits at the centred FFT's origin
    peak = np.unravel_index(np.abs(k).sum(0).argmax(), k.shape[1:])
    assert abs(peak[0] - 80) <= 1 and abs(peak[1] - 80) <= 1
    rss = np.sqrt((np.abs(centred_ifft2(k)) ** 2).sum(0))
    radius = np.hypot(*(np.mgrid[:160, :160] - 79.5))
    inside, corners = radius < 78, radius >= 82  # the round phantom fills the field of view
    energy = rss**2
    assert energy[inside].sum() / energy.sum() > 0.95  # 76 % of the area holds > 95 % of the energy
    assert np.median(rss[inside]) > 5 * np.median(rss[corners])  # object far above the background


def test_gre_lines_match_raw_bytes(gre):
    """Phase-encode line ``lin`` of the file (the lin-th readout, 192-byte MDH + 2 x (32 + 320 x 8) bytes)
    read straight from its bytes, oversampling removed, is column ``lin`` of the k-space."""
    raw = GRE.read_bytes()
    start = struct.unpack_from("<Q", raw, 8 + 8)[0]  # first raid entry: measId, fileId, offset
    first = start + struct.unpack_from("<I", raw, start)[0]
    block = 192 + 2 * (32 + 320 * 8)
    for lin in (0, 80, 159):
        pos = first + lin * block + 192
        coils = [np.frombuffer(raw, "<c8", 320, pos + c * (32 + 2560) + 32) for c in range(2)]
        expected = remove_readout_oversampling(np.stack(coils), 2.0)
        np.testing.assert_allclose(gre["kspace"][0, :, :, lin], expected, rtol=0, atol=1e-6 * np.abs(expected).max())


# --------------------------------------------------------------------------- synthetic files


def _buffers_blob(protocol: str, lines: int, os_factor: float) -> bytes:
    yaps = (
        "### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=1 ###\n"
        f'tProtocolName\t = \t"{protocol}"\nalTR[0]\t = \t25000\nalTE[0]\t = \t4500\n'
        "### ASCCONV END ###\n"
    )
    meas = (
        f'<ParamDouble."flReadoutOSFactor">  {{ <Precision> 6  {os_factor:.6f}  }}\n'
        f'<ParamLong."iNoOfFourierLines">  {{ {lines}  }}\n'
    )
    out = b""
    for name, text in (("MeasYaps", yaps), ("Meas", meas)):
        raw = text.encode("latin1")
        out += name.encode() + b"\x00" + struct.pack("<I", len(raw)) + raw
    return out


def _header(blob: bytes, pad_to: int) -> bytes:
    body = struct.pack("<II", 0, 2) + blob
    hdr_len = max(pad_to, len(body))
    body = body + b"\x00" * (hdr_len - len(body))
    return struct.pack("<I", hdr_len) + body[4:]


def _vd_mdh(flags: int, samples: int, channels: int, lin: int, sli: int, ave: int, eco: int,
            centre_col: int, centre_lin: int, dma: int) -> bytes:
    mdh = bytearray(192)
    struct.pack_into("<I", mdh, 0, dma)
    struct.pack_into("<Q", mdh, 40, flags)
    struct.pack_into("<HH", mdh, 48, samples, channels)
    struct.pack_into("<HHHHH", mdh, 52, lin, ave, sli, 0, eco)  # Lin, Ave, Sli, Par, Eco
    struct.pack_into("<H", mdh, 84, centre_col)
    struct.pack_into("<H", mdh, 96, centre_lin)
    return bytes(mdh)


def _vb_mdh(flags: int, samples: int, channels: int, lin: int, sli: int, ave: int, eco: int,
            centre_col: int, centre_lin: int, dma: int) -> bytes:
    mdh = bytearray(128)
    struct.pack_into("<I", mdh, 0, dma)
    struct.pack_into("<Q", mdh, 20, flags)
    struct.pack_into("<HH", mdh, 28, samples, channels)
    struct.pack_into("<HHHHH", mdh, 32, lin, ave, sli, 0, eco)
    struct.pack_into("<H", mdh, 64, centre_col)
    struct.pack_into("<H", mdh, 76, centre_lin)
    return bytes(mdh)


def write_synthetic_twix(path: Path, readouts: list[dict], vd: bool = True, lines: int = 8,
                         os_factor: float = 2.0) -> None:
    """Write a twix file; each readout: data (coils, samples) complex64, flags list, lin, sli, ave."""
    blob = _buffers_blob("synthetic", lines, os_factor)
    meas = bytearray(_header(blob, 2048 if vd else 10240))
    for r in readouts:
        flags = sum(1 << BIT[f] for f in r.get("flags", ()))
        if "SYNCDATA" in r.get("flags", ()):
            meas += _vd_mdh(flags, 0, 0, 0, 0, 0, 0, 0, 0, 192 + 64) + b"\xab" * 64
            continue
        data = np.asarray(r["data"], "<c8")
        coils, samples = data.shape
        args = (flags, samples, coils, r.get("lin", 0), r.get("sli", 0), r.get("ave", 0), r.get("eco", 0),
                samples // 2, lines // 2)
        if vd:
            meas += _vd_mdh(*args, 192 + coils * (32 + 8 * samples))
            for c in range(coils):
                meas += b"\x00" * 32 + data[c].tobytes()
        else:
            for c in range(coils):
                meas += _vb_mdh(*args, 128 + 8 * samples) + data[c].tobytes()
    meas += (_vd_mdh if vd else _vb_mdh)(1 << BIT["ACQEND"], 16, 0, 0, 0, 0, 0, 0, 0, 256) + b"\x00" * 64
    if vd:
        raid = bytearray(10240)
        struct.pack_into("<II", raid, 0, 0, 1)
        struct.pack_into("<IIQQ", raid, 8, 1, 1, 10240, len(meas))
        path.write_bytes(bytes(raid) + bytes(meas))
    else:
        path.write_bytes(bytes(meas))


def _oversampled_kspace(rng, slices=2, coils=3, lines=8, width=6, os_factor=2):
    """k-space (slices, coils, lines, os*width) of images that are zero outside the central width."""
    image = np.zeros((slices, coils, lines, width * os_factor), np.complex64)
    first = (width * os_factor) // 2 - width // 2
    image[..., first : first + width] = rng.normal(size=(slices, coils, lines, width)) + 1j * rng.normal(
        size=(slices, coils, lines, width)
    )
    k = centred_fft(centred_fft(image, -1), -2).astype(np.complex64)
    expected = centred_fft(centred_fft(image[..., first : first + width], -1), -2).astype(np.complex64)
    return k, expected


@pytest.mark.parametrize("vd", [True, False], ids=["VD", "VB"])
def test_synthetic_roundtrip_skips_noise_phascor_sync_and_averages(tmp_path, vd):
    rng = np.random.default_rng(0)
    k, expected = _oversampled_kspace(rng)
    slices, coils, lines, cols = k.shape
    noise = (rng.normal(size=(coils, cols)) + 1j * rng.normal(size=(coils, cols))).astype(np.complex64)
    readouts = [{"data": noise, "flags": ["NOISEADJSCAN"]},
                {"data": 1e3 * np.ones((coils, cols)), "flags": ["PHASCOR"]}]
    if vd:
        readouts.append({"flags": ["SYNCDATA"]})
    delta = (rng.normal(size=(coils, cols)) + 1j * rng.normal(size=(coils, cols))).astype(np.complex64)
    for s in range(slices):
        for lin in range(lines):
            if lin == 3:  # two averages whose mean is the true line, the second one reflected
                readouts.append({"data": k[s, :, lin] + delta, "lin": lin, "sli": s, "ave": 0})
                readouts.append({"data": (k[s, :, lin] - delta)[:, ::-1], "lin": lin, "sli": s, "ave": 1,
                                 "flags": ["REFLECT"]})
            elif lin != 5:  # line 5 is not acquired
                readouts.append({"data": k[s, :, lin], "lin": lin, "sli": s})
    path = tmp_path / "synthetic.dat"
    write_synthetic_twix(path, readouts, vd=vd, lines=lines)
    out = read_twix(path)
    expected[:, :, 5] = 0
    assert out["kspace"].shape == (slices, coils, cols // 2, lines)  # (readout H, phase-encode W)
    np.testing.assert_allclose(out["kspace"], expected.swapaxes(-1, -2), atol=2e-5)
    np.testing.assert_array_equal(out["mask"], np.tile([1, 1, 1, 1, 1, 0, 1, 1], (cols // 2, 1)))
    np.testing.assert_array_equal(out["noise"], noise)
    assert out["header"]["protocol_name"] == "synthetic"
    assert out["header"]["format"] == ("VD/VE" if vd else "VB")
    assert out["header"]["tr_ms"] == pytest.approx(25.0) and out["header"]["te_ms"] == pytest.approx(4.5)


def test_remove_readout_oversampling_keeps_central_image_and_noise_std():
    rng = np.random.default_rng(1)
    k, expected = _oversampled_kspace(rng, slices=1, coils=1, lines=4, width=16)
    np.testing.assert_allclose(remove_readout_oversampling(k, 2.0), expected, atol=1e-5)
    white = (rng.normal(size=(64, 4096)) + 1j * rng.normal(size=(64, 4096))).astype(np.complex64)
    cropped = remove_readout_oversampling(white, 2.0)
    assert cropped.shape == (64, 2048)
    assert np.std(cropped.real) == pytest.approx(1.0, rel=0.02)  # unitary: per-sample std kept


def test_multi_echo_is_refused(tmp_path):
    data = np.ones((1, 16), np.complex64)
    path = tmp_path / "echoes.dat"
    write_synthetic_twix(path, [{"data": data, "lin": 0, "eco": 0}, {"data": data, "lin": 0, "eco": 1}])
    with pytest.raises(InputError, match="eco"):
        read_twix(path)


def test_bad_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_twix(tmp_path / "missing.dat")
    short = tmp_path / "short.dat"
    for size in (0, 8):
        short.write_bytes(b"\x00" * size)
        with pytest.raises(InputError, match="too short"):
            read_twix(short)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(GRE.read_bytes()[:900_000])
    with pytest.raises(InputError, match="truncated"):
        read_twix(truncated)

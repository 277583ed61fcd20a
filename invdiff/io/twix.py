"""Reader for raw Siemens MRI data ("twix" ``meas_*.dat`` files), software lines VB and VD/VE.

:func:`read_twix` returns the Cartesian k-space of the imaging lines in the conventions of
invdiff's ``mri`` operator and of fastMRI: ``image = fftshift(ifft2(ifftshift(kspace),
norm="ortho"))`` per coil; readout (frequency encoding) along H, phase-encode lines along W (the
columns that invdiff.operators.masks samples); readout oversampling removed; k-space centre
(``CenterCol``, ``CenterLin``) at index ``(H // 2, W // 2)``.

File layout (as documented by twixtools, P. Ehses, https://github.com/pehses/twixtools, and
mapVBVD, P. Ehses / W. Clarke; all integers little-endian):

* VD/VE: a 10240-byte *MultiRaidFileHeader*: ``uint32 hdSize, uint32 count`` then up to 64
  entries of 152 bytes ``uint32 measId, uint32 fileId, uint64 offset, uint64 length,
  char patName[64], char protName[64]``. Each measurement starts at its ``offset``.
* VB: one measurement starting at byte 0.
* A measurement starts with ``uint32 hdr_len, uint32 n_buffers`` and ``n_buffers`` text
  buffers ``name\\0, uint32 length, text`` (Config, Dicom, Meas, MeasYaps (ASCCONV), Phoenix,
  Spice). Readouts (measurement data blocks) start at ``offset + hdr_len``.
* VD/VE block: a 192-byte scan header (MDH), then per channel a 32-byte channel header and
  ``SamplesInScan`` complex64 samples. VB block: per channel a 128-byte MDH and its samples.
* MDH ``EvalInfoMask`` bits mark what a readout is (:data:`FLAGS`); SYNCDATA blocks are skipped
  by their DMA length (low 25 bits of the first word), ACQEND ends the measurement.

Scope: single-contrast 2D Cartesian scans (any number of slices and coils). Averages are
averaged; data with several partitions (3D), echoes, phases, repetitions or sets raise an
InputError rather than being mixed; PAT reference-only lines and noise/phase-correction lines
are not image lines (noise-adjust readouts are returned separately).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from invdiff.errors import InputError

#: EvalInfoMask bit numbers (mdh_def.mask_id in twixtools).
FLAGS = {
    "ACQEND": 0, "RTFEEDBACK": 1, "HPFEEDBACK": 2, "SYNCDATA": 5, "REFPHASESTABSCAN": 14,
    "PHASESTABSCAN": 15, "PHASCOR": 21, "PATREFSCAN": 22, "PATREFANDIMASCAN": 23, "REFLECT": 24,
    "NOISEADJSCAN": 25, "NONAME60": 60,
}
#: Readouts that are not image lines (twixtools' ``is_image_scan``).
NOT_IMAGE = ("ACQEND", "RTFEEDBACK", "HPFEEDBACK", "SYNCDATA", "REFPHASESTABSCAN", "PHASESTABSCAN",
             "PHASCOR", "NOISEADJSCAN", "NONAME60")

RAID_HEADER_BYTES = 10240
RAID_ENTRY = np.dtype([("meas_id", "<u4"), ("file_id", "<u4"), ("offset", "<u8"), ("length", "<u8"),
                       ("patient", "S64"), ("protocol", "S64")])
COUNTERS = ("lin", "ave", "sli", "par", "eco", "phs", "rep", "set", "seg")


def _mdh_dtype(offsets: dict[str, int], itemsize: int) -> np.dtype:
    fields = {"dma": ("<u4", 0), "mask": ("<u8", None), "samples": ("<u2", None), "channels": ("<u2", None),
              "counter": (("<u2", 14), None), "center_col": ("<u2", None), "center_lin": ("<u2", None)}
    names = list(fields)
    return np.dtype({"names": names, "formats": [fields[n][0] for n in names],
                     "offsets": [offsets[n] for n in names], "itemsize": itemsize})


#: VD/VE scan header (192 bytes) and VB per-channel header (128 bytes): the fields used here.
MDH_VD = _mdh_dtype({"dma": 0, "mask": 40, "samples": 48, "channels": 50, "counter": 52,
                     "center_col": 84, "center_lin": 96}, 192)
MDH_VB = _mdh_dtype({"dma": 0, "mask": 20, "samples": 28, "channels": 30, "counter": 32,
                     "center_col": 64, "center_lin": 76}, 128)
CHANNEL_HEADER_VD = 32


def _flag(mask: int, name: str) -> bool:
    return bool(mask >> FLAGS[name] & 1)


def is_image_line(mask: int) -> bool:
    """True for a readout that belongs to the image (not noise, navigator, ACS-only, ...)."""
    if any(_flag(mask, n) for n in NOT_IMAGE):
        return False
    return not (_flag(mask, "PATREFSCAN") and not _flag(mask, "PATREFANDIMASCAN"))


def _is_vd(raw: np.ndarray) -> bool:
    first, second = raw[:8].view("<u4")
    return first < 10000 and second <= 64


def _measurement_span(raw: np.ndarray, path: Path, index: int) -> tuple[int, int, bool]:
    """(start, end, is_vd) of measurement ``index`` (negative counts from the end)."""
    if raw.size < 16:
        raise InputError(f"{path}: file is too short to be a Siemens raw data file.")
    if not _is_vd(raw):
        return 0, raw.size, False
    if raw.size < RAID_HEADER_BYTES:
        raise InputError(f"{path}: file is shorter than the VD/VE multi-raid header; it is truncated.")
    count = int(raw[4:8].view("<u4")[0])
    if count == 0:
        raise InputError(f"{path}: the multi-raid header lists no measurement.")
    entries = np.frombuffer(raw, RAID_ENTRY, count=count, offset=8)
    if not -count <= index < count:
        raise InputError(f"{path}: has {count} measurement(s), measurement {index} does not exist.")
    entry = entries[index]
    start, length = int(entry["offset"]), int(entry["length"])
    if length == 0 and count == 1:
        length = raw.size - start
    if start + 8 > raw.size:
        raise InputError(f"{path}: measurement {index} starts beyond the end of the file; it is truncated.")
    return start, min(start + length, raw.size), True


def _header_buffers(raw: np.ndarray, start: int, path: Path) -> tuple[dict[str, str], int]:
    """The named text buffers of a measurement header and the header length in bytes."""
    hdr_len, n_buffers = (int(v) for v in raw[start : start + 8].view("<u4"))
    if hdr_len < 8 or start + hdr_len > raw.size or n_buffers > 64:
        raise InputError(f"{path}: the measurement header is corrupted (length {hdr_len}, {n_buffers} buffers).")
    blob = raw[start : start + hdr_len].tobytes()
    buffers: dict[str, str] = {}
    pos = 8
    for _ in range(n_buffers):
        match = re.match(rb"(\w{4,})\x00(.{4})", blob[pos : pos + 48], re.DOTALL)
        if match is None:
            raise InputError(f"{path}: header buffer {len(buffers) + 1} has no name; the header is corrupted.")
        length = int(np.frombuffer(match.group(2), "<u4")[0])
        pos += len(match.group(0))
        buffers[match.group(1).decode("latin1")] = blob[pos : pos + length].decode("latin1")
        pos += length
    return buffers, hdr_len


def ascconv(text: str) -> dict[str, str]:
    """``key = value`` pairs of the ``### ASCCONV BEGIN ... ### ASCCONV END ###`` block (raw strings)."""
    block = re.search(r"### ASCCONV BEGIN[^\n]*\n(.*?)### ASCCONV END", text, re.DOTALL)
    if block is None:
        return {}
    pairs = re.findall(r"^\s*(\S+)\s*=\s*(.*?)\s*$", block.group(1), re.MULTILINE)
    return {k: v.strip('"') for k, v in pairs}


def xprotocol_value(text: str, name: str) -> str | None:
    """The first non-empty value of ``<Param...."name"> { value }`` in an XProtocol buffer."""
    pattern = r'<Param\w+\."' + re.escape(name) + r'">\s*\{\s*(?:<Precision>\s*\d+\s*)?([^}<]*?)\s*\}'
    for match in re.finditer(pattern, text):
        if match.group(1):
            return match.group(1).strip('" ')
    return None


def _number(value: str | None, scale: float = 1.0) -> float | None:
    try:
        return float(value.split()[0]) * scale if value else None
    except ValueError:
        return None


def header_basics(buffers: dict[str, str]) -> dict[str, Any]:
    """Protocol name, TR/TE (ms), flip angle, B0 (T), FOV (mm), oversampling, system, software."""
    yaps = ascconv(buffers.get("MeasYaps", ""))
    meas, dicom = buffers.get("Meas", ""), buffers.get("Dicom", "")
    out: dict[str, Any] = {
        "protocol_name": yaps.get("tProtocolName") or xprotocol_value(meas, "tProtocolName"),
        "tr_ms": _number(yaps.get("alTR[0]"), 1e-3),
        "te_ms": _number(yaps.get("alTE[0]"), 1e-3),
        "flip_angle_deg": _number(yaps.get("adFlipAngleDegree[0]")),
        "field_strength_t": _number(yaps.get("sProtConsistencyInfo.flNominalB0")),
        "fov_readout_mm": _number(yaps.get("sSliceArray.asSlice[0].dReadoutFOV")),
        "fov_phase_mm": _number(yaps.get("sSliceArray.asSlice[0].dPhaseFOV")),
        "slice_thickness_mm": _number(yaps.get("sSliceArray.asSlice[0].dThickness")),
        "dwell_time_ns": _number(yaps.get("sRXSPEC.alDwellTime[0]")),
        "readout_oversampling": _number(xprotocol_value(meas, "flReadoutOSFactor")) or 2.0,
        "fourier_lines": _number(xprotocol_value(meas, "iNoOfFourierLines")),
        "system": xprotocol_value(dicom, "ManufacturersModelName"),
        "software": xprotocol_value(dicom, "SoftwareVersions"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _readouts(raw: np.ndarray, start: int, end: int, vd: bool, path: Path):
    """Yield ``(mdh record, data (channels, samples) complex64)`` per readout, SYNCDATA skipped."""
    mdh = MDH_VD if vd else MDH_VB
    pos = start
    while pos + mdh.itemsize <= end:
        h = np.frombuffer(raw, mdh, count=1, offset=pos)[0]
        mask = int(h["mask"])
        if _flag(mask, "ACQEND"):
            return
        if _flag(mask, "SYNCDATA"):
            step = int(h["dma"]) % (1 << 25)
            if step < mdh.itemsize:
                raise InputError(f"{path}: a SYNCDATA block at byte {pos} has length {step}; the file is corrupted.")
            pos += step
            continue
        samples, channels = int(h["samples"]), int(h["channels"])
        if channels == 0 or samples == 0:
            raise InputError(f"{path}: the readout at byte {pos} has {channels} channels and {samples} samples.")
        if vd:
            block = np.dtype([("hdr", f"V{CHANNEL_HEADER_VD}"), ("data", "<c8", (samples,))])
            data_pos, total = pos + mdh.itemsize, mdh.itemsize + channels * block.itemsize
        else:
            block = np.dtype([("hdr", f"V{mdh.itemsize}"), ("data", "<c8", (samples,))])
            data_pos, total = pos, channels * block.itemsize
        if pos + total > end:
            raise InputError(f"{path}: the readout at byte {pos} runs past the end of the measurement; the file is truncated.")
        yield h, np.frombuffer(raw, block, count=channels, offset=data_pos)["data"]
        pos += total
    raise InputError(f"{path}: no ACQEND block at the end of the measurement; the file is truncated.")


def _centred_fft(x: np.ndarray, axis: int, inverse: bool) -> np.ndarray:
    f = np.fft.ifft if inverse else np.fft.fft
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)


def remove_readout_oversampling(kspace: np.ndarray, factor: float) -> np.ndarray:
    """Keep the central ``W / factor`` pixels of the readout's image (last axis).

    Centred orthonormal inverse FFT along the readout, crop the centre, forward FFT back; white
    noise keeps its per-sample standard deviation (the transforms are unitary).
    """
    n = kspace.shape[-1]
    keep = int(round(n / factor))
    if factor <= 1 or keep >= n:
        return kspace
    image = _centred_fft(kspace, -1, inverse=True)
    first = n // 2 - keep // 2
    return _centred_fft(image[..., first : first + keep], -1, inverse=False).astype(np.complex64)


def read_twix(path: str | Path, measurement: int = -1) -> dict[str, Any]:
    """Read the Cartesian imaging k-space of one measurement of a Siemens raw data file.

    measurement: which measurement of a VD/VE multi-raid file (default the last, the imaging
    scan; earlier ones are usually adjustments). Returns a dict:

    * ``kspace`` complex64 ``(slices, coils, H, W)``: H readout samples after oversampling
      removal, W phase-encode lines, centre at ``(H // 2, W // 2)``; raw ADC units; averages
      averaged; REFLECT lines reversed; lines not acquired are zero.
    * ``mask`` float32 ``(H, W)``: 1 on the acquired phase-encode columns (the same in every slice).
    * ``noise`` complex64 ``(coils, samples)`` of the noise-adjust readouts, or None.
    * ``header``: :func:`header_basics` plus ``format`` ("VB" or "VD/VE"), ``coils``, ``lines``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file does not exist.")
    if path.stat().st_size < 16:
        raise InputError(f"{path}: file is too short to be a Siemens raw data file.")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    start, end, vd = _measurement_span(raw, path, measurement)
    buffers, hdr_len = _header_buffers(raw, start, path)
    header = header_basics(buffers)
    lines, noise = [], []
    for h, data in _readouts(raw, start + hdr_len, end, vd, path):
        mask = int(h["mask"])
        if _flag(mask, "NOISEADJSCAN"):
            noise.append(np.array(data))
        elif is_image_line(mask):
            data = np.array(data[:, ::-1] if _flag(mask, "REFLECT") else data)
            lines.append((dict(zip(COUNTERS, (int(c) for c in h["counter"][:9]))),
                          int(h["center_col"]), int(h["center_lin"]), data))
    if not lines:
        raise InputError(f"{path}: the measurement holds no imaging readouts.")
    kspace, mask = _assemble(lines, header, path)
    header.update({"format": "VD/VE" if vd else "VB", "coils": kspace.shape[1], "lines": int(mask[:, 0].sum())})
    kspace = remove_readout_oversampling(kspace, header["readout_oversampling"])
    lines_sampled = mask[:, 0].astype(np.float32)
    return {
        "kspace": np.ascontiguousarray(kspace.swapaxes(-1, -2)),
        "mask": np.broadcast_to(lines_sampled, (kspace.shape[-1], lines_sampled.size)).copy(),
        "noise": np.concatenate(noise, axis=1).astype(np.complex64) if noise else None,
        "header": header,
    }


def _assemble(lines: list, header: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Place readouts into ``(slices, coils, lines, readout samples)`` (oversampled), average
    repeated lines; the mask is ``(lines, samples)``."""
    for name in ("par", "eco", "phs", "rep", "set"):
        values = {c[name] for c, *_ in lines}
        if len(values) > 1:
            raise InputError(
                f"{path}: readouts have {len(values)} different '{name}' indices; only single-contrast "
                "2D Cartesian data (one partition, echo, phase, repetition and set) is supported."
            )
    coils = {d.shape[0] for *_, d in lines}
    if len(coils) != 1:
        raise InputError(f"{path}: readouts have different numbers of coils {sorted(coils)}.")
    cols = max(max(d.shape[1], 2 * max(cc, d.shape[1] - cc)) for _, cc, _, d in lines)
    centre_lin = lines[0][2]
    n_lin = max(int(header.get("fourier_lines", 0)), max(c["lin"] for c, *_ in lines) + 1, 2 * centre_lin)
    shift = n_lin // 2 - centre_lin
    n_sli = max(c["sli"] for c, *_ in lines) + 1
    kspace = np.zeros((n_sli, coils.pop(), n_lin, cols), np.complex64)
    hits = np.zeros((n_sli, n_lin), np.int64)
    for counters, centre_col, _, data in lines:
        row = counters["lin"] + shift
        if not 0 <= row < n_lin:
            raise InputError(f"{path}: line counter {counters['lin']} lies outside the {n_lin}-line k-space.")
        first = cols // 2 - centre_col
        kspace[counters["sli"], :, row, first : first + data.shape[1]] += data
        hits[counters["sli"], row] += 1
    acquired = hits > 0
    if not (acquired == acquired[:1]).all():
        raise InputError(f"{path}: slices were sampled on different phase-encode lines; one mask per file is required.")
    kspace /= np.maximum(hits, 1)[:, None, :, None]
    mask = np.repeat(acquired[0][:, None], cols, axis=1).astype(np.float32)
    return kspace, mask

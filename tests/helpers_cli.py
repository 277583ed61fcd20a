"""Shared pieces of the command-line robustness tests (issue 6): running the CLI in-process,
tiny priors, and the bad-input contract (exit 2, one sentence naming the file, nothing written)."""

from __future__ import annotations

import contextlib

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from invdiff.cli import app
from invdiff.cli.common import run_app

REPO = Path(__file__).resolve().parent.parent
BRAIN = REPO / "data" / "samples" / "brain_heldout_128.npy"


def invdiff(*args) -> int:
    """Run ``invdiff ARGS`` in this process; returns the exit code."""
    return run_app(app, [str(a) for a in args])


def brain32(n: int = 2) -> np.ndarray:
    """``n`` 32x32 brain slices in [0, 1] (the held-out sample, downsampled by 4)."""
    return np.load(BRAIN)[:n, ::4, ::4].astype(np.float32)


def tiny_prior(path: Path, channels: int = 1, seed: int = 0) -> Path:
    """A 2-level U-Net prior with 8 base channels (untrained, randomly perturbed weights) written
    with the library's own writer, as `invdiff train` would."""
    import torch

    from invdiff.prior.data import Normalisation
    from invdiff.prior.store import save_prior
    from invdiff.prior.train import TrainSettings, build_model, prior_config
    from invdiff.prior.unet import UNetConfig

    settings = TrainSettings(
        image_size=16, channels=channels,
        unet=UNetConfig(channels=channels, base_channels=8, channel_mults=(1, 2), num_res_blocks=1),
        sigma_min=0.01, sigma_max=10.0,
    )
    torch.manual_seed(seed)
    model = build_model(settings)
    config = prior_config(settings, Normalisation(kind="percentile"), {"files": 0}, {})
    return save_prior(path, config, model.state_dict(), model.state_dict())


def rehash(prior_dir: Path) -> None:
    """Record the EMA weights' current sha256 in config.json (so that a test's deliberate edit of
    the weights is not already caught by the checksum)."""
    from invdiff.prior.store import CONFIG_NAME, EMA_NAME, sha256_file

    config = json.loads((prior_dir / CONFIG_NAME).read_text())
    config["weights_ema_sha256"] = sha256_file(prior_dir / EMA_NAME)
    (prior_dir / CONFIG_NAME).write_text(json.dumps(config))


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones included) -> content digest ('dir' for
    folders), to show that a failed command wrote, changed and left behind nothing."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expect_bad(root: Path, capsys, args, culprit, fragment: str | None = None) -> str:
    """Run ``invdiff ARGS`` and check the bad-input contract: exit code 2, exactly one line on
    stderr, ``invdiff: error: <one sentence>`` naming ``culprit`` (a path or an option) and
    containing ``fragment`` (case-insensitive), no traceback, nothing on stdout, and no file
    under ``root`` created, changed or removed. Returns the message."""
    capsys.readouterr()
    before = snapshot(root)
    code = invdiff(*args)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, f"exit code {code} for {args}:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invdiff: error: "), err
    message = lines[0][len("invdiff: error: "):]
    assert str(culprit) in message, f"message does not name {culprit}: {message}"
    if fragment is not None:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in: {message}"
    assert message.endswith((".", "!", "?")) and not re.search(r"[.!?] [A-Z]", message), f"not one sentence: {message}"
    assert captured.out.strip() == "", captured.out
    after = snapshot(root)
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"
    return message


def ct_slice(
    path: Path,
    stored: np.ndarray,
    *,
    z: float = 0.0,
    instance: int = 1,
    compressed: bool = False,
    transfer_syntax: str | None = None,
    modality: str = "CT",
    series_uid: str = "1.2.3.4",
    slope: float = 1.0,
    intercept: float = -1024.0,
    spacing: tuple[float, float] = (1.0, 1.0),
    thickness: float = 1.0,
    corner: tuple[float, float] = (0.0, 0.0),
    patient_sex: str | None = None,
) -> Path:
    """A minimal CT slice written with pydicom alone (independent of invdiff's writer).
    ``compressed``: JPEG-LS transfer syntax (or any ``transfer_syntax`` other than explicit
    little endian) with junk fragments: no decoder is installed, and none is needed to see the
    syntax. ``corner``: x, y of ImagePositionPatient (mm)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

    syntax = transfer_syntax or (JPEGLSLossless if compressed else ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Doe^Jane", "P-042"
    if patient_sex is not None:
        ds.PatientSex = patient_sex
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", series_uid, "1.2.3.9"
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(corner[0]), float(corner[1]), z]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<u2").tobytes()
    else:
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64)])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside the block (restored after): what tests/conftest.py sets for
    the session, made explicit where a test compares with fresh one-thread processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: options of a tiny, fast `invdiff train` run (16x16, two levels, CPU)
TRAIN_TINY = ["--image-size", "16", "--channels-base", "8", "--channel-mults", "1,2", "--batch-size", "4",
              "--checkpoint-every", "2", "--log-every", "1", "--quiet", "--device", "cpu"]


def prior_command(command: str, prior: Path, *, measurement: Path, image: Path, train: Path, out: Path) -> list:
    """The argument list of every command that loads PRIOR (``reconstruct``, ``sample``,
    ``likelihood``, ``info``, ``train_init``), writing any output under ``out``."""
    return {
        "reconstruct": ["reconstruct", measurement, "--prior", prior, "--solver", "dds", "--steps", "2", "--out", out / "r.h5", "-q", "--device", "cpu"],
        "sample": ["sample", "--prior", prior, "-n", "1", "--steps", "2", "--out", out / "s.h5", "-q", "--device", "cpu"],
        "likelihood": ["likelihood", image, "--prior", prior, "-q", "--device", "cpu"],
        "info": ["info", prior],
        "train_init": ["train", train, "--init", prior, "--out", out / "t", *TRAIN_TINY, "--steps", "1"],
    }[command]


def dciodvfy_errors(path) -> list[str]:
    """The Error lines of dciodvfy (Debian dicom3tools) on one DICOM file; fails when it is missing."""
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy is not installed: install the Debian package dicom3tools (apt-get install -y dicom3tools).")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]

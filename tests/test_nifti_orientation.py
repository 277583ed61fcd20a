"""NIfTI slices come out in the DICOM display convention: one scan read as a DICOM series (built
here with pydicom) and as its NIfTI (as dcm2niix writes it) gives identical arrays and spacing,
axial, coronal and sagittal, for a non-cubic volume with anisotropic voxels and an asymmetric
marker. Also: an RGB NIfTI is refused in one sentence."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from helpers_cli import ct_slice
from invdiff.errors import InputError
from invdiff.io.images import read_images

SHAPE = (12, 10, 7)  # voxels along patient x (R->L), y (A->P), z (I->S): LPS+ index order
ZOOMS = (0.7, 0.9, 2.5)  # mm
MARKER = 3000


def lps_volume() -> np.ndarray:
    """V[i, j, k] at LPS position (i dx, j dy, k dz): random tissue and a marker in the patient's
    right, anterior, superior corner."""
    volume = np.random.default_rng(0).integers(100, 1000, size=SHAPE).astype(np.uint16)
    volume[:3, :2, -2:] = MARKER
    return volume


#: per plane: the slice axis of V, the DICOM ImageOrientationPatient (row direction, column
#: direction), and how slice s of V maps to the displayed pixels [r, c]
PLANES = {
    "axial": (2, [1, 0, 0, 0, 1, 0], lambda v, s: v[:, :, s].T),  # rows A->P, columns R->L
    "coronal": (1, [1, 0, 0, 0, 0, -1], lambda v, s: v[:, s, ::-1].T),  # rows S->I, columns R->L
    "sagittal": (0, [0, 1, 0, 0, 0, -1], lambda v, s: v[s, :, ::-1].T),  # rows S->I, columns A->P
}


def dicom_series(folder: Path, volume: np.ndarray, plane: str) -> Path:
    """The scan as a DICOM series in ``plane``: pixel [r, c] of slice s lies at
    ``IPP + r * column_direction * row_spacing + c * row_direction * column_spacing``."""
    axis, orientation, pixels = PLANES[plane]
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    folder.mkdir()
    for s in range(volume.shape[axis]):
        index = [0, 0, 0]
        index[axis] = s
        first = np.array(index, float) + np.where(col_dir < 0, np.array(SHAPE) - 1, 0)  # voxel of pixel [0, 0]
        path = ct_slice(folder / f"{s}.dcm", np.ascontiguousarray(pixels(volume, s)), instance=s + 1,
                        modality="MR", slope=1.0, intercept=0.0)
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [float(v) for v in first * ZOOMS]
        ds.PixelSpacing = [ZOOMS[int(np.argmax(np.abs(col_dir)))], ZOOMS[int(np.argmax(np.abs(row_dir)))]]
        ds.SliceThickness = ZOOMS[axis]
        ds.save_as(path)
    return folder


def nifti(path: Path, volume: np.ndarray, stored_as: str) -> Path:
    """The scan as NIfTI: "lps" as dcm2niix writes it (voxels in LPS order, affine
    diag(-dx, -dy, dz) to RAS mm), or "ras" (voxels flipped to RAS order, the same world)."""
    dx, dy, dz = ZOOMS
    if stored_as == "lps":
        data, affine = volume, np.diag([-dx, -dy, dz, 1.0])
    else:
        data = volume[::-1, ::-1, :]
        affine = np.diag([dx, dy, dz, 1.0])
        affine[:2, 3] = [-dx * (SHAPE[0] - 1), -dy * (SHAPE[1] - 1)]
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return path


@pytest.mark.parametrize("stored_as", ["lps", "ras"])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_nifti_slices_equal_the_dicom_series_of_the_same_scan(tmp_path, plane, stored_as):
    volume = lps_volume()
    axis = PLANES[plane][0]
    from_nifti = read_images(nifti(tmp_path / "v.nii.gz", volume, stored_as), axis=axis)
    from_dicom = read_images(dicom_series(tmp_path / plane, volume, plane))
    # slice order too: DICOM sorts along the normal of its orientation (sagittal
    # [0,1,0,0,0,-1]: towards patient right, so left -> right), and so does the NIfTI reader
    np.testing.assert_array_equal(from_nifti.data, from_dicom.data)
    assert from_nifti.spacing == pytest.approx(from_dicom.spacing)


def test_axial_nifti_slice_shows_anterior_up_and_patient_right_on_the_left(tmp_path):
    stack = read_images(nifti(tmp_path / "v.nii.gz", lps_volume(), "lps"))
    assert stack.data.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (I->S slices, A->P rows, R->L columns)
    assert stack.spacing == pytest.approx((ZOOMS[2], ZOOMS[1], ZOOMS[0]))
    top = stack.data[-1]  # the most superior slice
    assert np.all(top[:2, :3] == MARKER) and np.count_nonzero(top == MARKER) == 6
    assert not np.any(stack.data[0] == MARKER)


@pytest.mark.parametrize("axis, spacing", [(0, (0.7, 2.5, 0.9)), (1, (0.9, 2.5, 0.7))])
def test_coronal_and_sagittal_nifti_slices_have_superior_up(tmp_path, axis, spacing):
    stack = read_images(nifti(tmp_path / "v.nii.gz", lps_volume(), "lps"), axis=axis)
    assert stack.spacing == pytest.approx(spacing)
    first = stack.data[-1 if axis == 0 else 0]  # patient right (sagittal: the last) or anterior (coronal): holds the marker
    assert np.all(first[:2, :2] == MARKER)  # superior at the top, anterior / patient right at the left


@pytest.mark.parametrize("channels, name", [([("R", "u1"), ("G", "u1"), ("B", "u1")], "RGB"),
                                            ([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")], "RGBA")])
def test_rgb_nifti_is_refused_in_one_sentence(tmp_path, channels, name):
    path = tmp_path / "rgb.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ones((8, 8, 2), dtype=channels), np.eye(4)), path)
    message = rf"^{re.escape(str(path))}: expected a single-channel image; got an {name} NIfTI volume\.$"
    with pytest.raises(InputError, match=message):
        read_images(path)

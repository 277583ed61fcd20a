"""Write the small sample measurements shipped in data/samples/ (run once; committed).

    python examples/make_samples.py

* brain_mri8x.h5: single-coil MRI of held-out Colin27 slice 4 (axial), fastMRI random line
  mask 8x with 4 % centre, complex noise std 0.005: the README's first command.
* brain_ct30.h5: the same slice, 30-view parallel-beam CT with 1 % Gaussian noise.
Both are made with the same library calls as `invdiff simulate`, seed 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from invdiff.io.hdf5 import write_measurement
from invdiff.pipeline.geometry import GeometryOptions
from invdiff.pipeline.simulate import simulate

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"


def main() -> None:
    image = np.load(SAMPLES / "brain_heldout_128.npy")[4:5]
    attrs = {"source": "data/samples/brain_heldout_128.npy[4]", "units": "image"}
    mri = simulate(image, "mri", GeometryOptions(acceleration=8, center_fraction=0.04), noise_std=0.005, seed=0, attrs=attrs)
    write_measurement(SAMPLES / "brain_mri8x.h5", mri)
    ct = simulate(image, "radon", GeometryOptions(views=30), noise_rel=0.01, seed=0, attrs=attrs)
    write_measurement(SAMPLES / "brain_ct30.h5", ct)
    print("wrote", SAMPLES / "brain_mri8x.h5", SAMPLES / "brain_ct30.h5")


if __name__ == "__main__":
    main()

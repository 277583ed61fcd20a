"""examples/fetch_data.py: checksummed sources of one file or of a folder of files (no network here:
the registry download is replaced by a local tarball)."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import fetch_data  # noqa: E402

FILES = {"package/data/a.dcm": b"first slice", "package/data/b.dcm": b"second slice", "package/README": b"text"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A fake npm registry whose one package holds FILES; returns the cache folder."""

    def download(registry_name, package, workdir):
        archive = workdir / "pkg-1.0.0.tgz"
        with tarfile.open(archive, "w:gz") as tf:
            for name, data in FILES.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return archive

    cache = tmp_path / "cache"
    monkeypatch.setenv("INVDIFF_CACHE", str(cache))
    monkeypatch.setattr(fetch_data, "_download", download)
    return cache


def test_a_folder_source_lands_as_a_folder_of_verified_files(registry, monkeypatch):
    members = {name: digest(FILES[name]) for name in ("package/data/a.dcm", "package/data/b.dcm")}
    monkeypatch.setitem(fetch_data.SOURCES, "series", {"registry": "npm", "package": "pkg@1.0.0", "members": members})
    folder = fetch_data.fetch("series")
    assert folder == registry / "series"
    assert sorted(p.name for p in folder.iterdir()) == ["a.dcm", "b.dcm"]
    assert (folder / "b.dcm").read_bytes() == b"second slice"
    # cached: a second call does not download again
    monkeypatch.setattr(fetch_data, "_download", lambda *a: pytest.fail("downloaded a cached source again"))
    assert fetch_data.fetch("series") == folder


def test_one_bad_checksum_in_a_folder_source_writes_nothing(registry, monkeypatch):
    members = {"package/data/a.dcm": digest(FILES["package/data/a.dcm"]), "package/data/b.dcm": "0" * 64}
    monkeypatch.setitem(fetch_data.SOURCES, "series", {"registry": "npm", "package": "pkg@1.0.0", "members": members})
    with pytest.raises(RuntimeError, match="checksum mismatch for package/data/b.dcm"):
        fetch_data.fetch("series")
    assert not (registry / "series").exists()


def test_a_one_file_source_still_lands_as_its_file(registry, monkeypatch):
    spec = {"registry": "npm", "package": "pkg@1.0.0", "member": "package/README", "sha256": digest(b"text")}
    monkeypatch.setitem(fetch_data.SOURCES, "readme", spec)
    path = fetch_data.fetch("readme")
    assert path == registry / "readme" / "README" and path.read_bytes() == b"text"


def test_every_shipped_source_names_its_checksums():
    for name, spec in fetch_data.SOURCES.items():
        sums = fetch_data._checksums(spec)
        assert sums and all(len(s) == 64 and set(s) <= set("0123456789abcdef") for s in sums.values()), name


def test_sources_of_one_package_download_it_once(registry, monkeypatch):
    calls = []
    download = fetch_data._download
    monkeypatch.setattr(fetch_data, "_download", lambda *a: calls.append(a[:2]) or download(*a))
    for name, member in (("first", "package/data/a.dcm"), ("second", "package/data/b.dcm")):
        spec = {"registry": "npm", "package": "pkg@1.0.0", "member": member, "sha256": digest(FILES[member])}
        monkeypatch.setitem(fetch_data.SOURCES, name, spec)
    paths = fetch_data.fetch_all(["first", "second"])
    assert calls == [("npm", "pkg@1.0.0")]
    assert paths["second"].read_bytes() == b"second slice" and paths["first"].name == "a.dcm"

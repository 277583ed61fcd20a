"""Issue 6: property-based tests (hypothesis) of the operator configs and the file readers.

For any description, option set or file the strategies produce, the code under test either
raises InputError (naming the file, where there is one) or returns something that keeps the
contract: an operator whose forward output has its measurement shape, whose adjoint passes the
dot-product test, that rebuilds identically from its own params and whose measurement shape the
pipeline's pre-build check predicts; a measurement whose data fit its operator; a prior that
loads; a result of shape (slices, H, W). Any other exception is a bug.

Byte-level damage of HDF5 files is limited to truncation and to the bytes of a dataset's data:
random flips in HDF5's own metadata can send the HDF5 C library into an endless loop (seen
with a damaged variable-length string attribute), which no Python code can interrupt.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers_cli import brain32, invdiff, tiny_prior
from invdiff.errors import InputError
from invdiff.io.hdf5 import read_measurement, read_result
from invdiff.operators.base import build_operator, inner
from invdiff.pipeline.geometry import GeometryOptions, operator_params
from invdiff.pipeline.reconstruct import check_data, expected_measurement_shape, slice_operators
from invdiff.prior.store import CONFIG_NAME, load_prior, load_weights

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])




# --- strategies ---------------------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(allow_nan=True, allow_infinity=True),
                 st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
often = st.sampled_from([True, True, True, True, True, False])  # most fields valid, some not


def either(draw, good, bad):
    """A valid value most of the time, else a bad one (so both outcomes are well explored)."""
    return draw(good) if draw(often) else draw(st.one_of(bad, junk))


bad_floats = st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf])
noise = st.one_of(
    st.none(),
    st.fixed_dictionaries({"kind": st.just("gaussian"), "std": st.floats(0, 1)}),
    st.fixed_dictionaries({"kind": st.sampled_from(["none", "gaussian", "transmission", "weird"]),
                           "std": st.one_of(st.floats(0, 1), bad_floats)}),
    junk,
)


@st.composite
def image_shapes(draw, channels=(1,)):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    good = st.just([draw(st.sampled_from(channels)), h, w])
    bad = st.one_of(st.tuples(st.integers(-1, 3), st.integers(-2, 12), st.integers(-2, 0)).map(list), st.lists(st.integers(1, 9), max_size=4))
    return either(draw, good, bad)


def _side(shape, i, default=8):
    try:
        return max(1, min(14, int(shape[i])))
    except (TypeError, ValueError, IndexError, KeyError):
        return default


@st.composite
def array_of(draw, shape, values):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(values)
    a = {"binary": (rng.random(shape) > 0.5).astype(float), "ones": np.ones(shape), "positive": rng.random(shape) + 0.01,
         "zeros": np.zeros(shape), "nan": np.full(shape, np.nan), "negative": -rng.random(shape) - 0.01,
         "two": np.full(shape, 2.0)}[kind]
    if kind == "binary" and a.size:
        a.flat[0] = 1.0
    return a


@st.composite
def radon_params(draw):
    shape = draw(image_shapes())
    p = {"image_shape": shape,
         "angles_deg": either(draw, st.lists(st.floats(0, 180, exclude_max=True), min_size=1, max_size=6),
                              st.one_of(st.just([]), st.lists(st.sampled_from([math.nan, math.inf]), min_size=1, max_size=2)))}
    for key, good, bad in (("detectors", st.one_of(st.none(), st.integers(1, 24)), st.integers(-2, 0)),
                           ("spacing", st.floats(0.3, 3), bad_floats), ("pixel_size", st.floats(0.3, 3), bad_floats),
                           ("filter", st.sampled_from(["ramp", "hann", "cosine", "shepp-logan"]), st.just("nope")),
                           ("noise", noise, st.just({"kind": "gaussian", "std": -1}))):
        if draw(st.booleans()):
            p[key] = either(draw, good, bad)
    return p


@st.composite
def mri_params(draw):
    shape = draw(image_shapes(channels=(1, 2)))
    h, w = _side(shape, 1), _side(shape, 2)
    mask = either(draw, st.one_of(array_of((h, w), st.just("binary")), array_of((w,), st.just("binary"))),
                  st.one_of(array_of((h + 1, w), st.just("binary")), array_of((h, w), st.sampled_from(["zeros", "nan", "two"]))))
    p = {"image_shape": shape, "mask": mask}
    if draw(st.booleans()):
        coils = draw(st.integers(1, 3))
        good = st.one_of(st.none(), array_of((coils, h, w), st.sampled_from(["positive", "ones"])))
        bad = st.one_of(array_of((coils, h, w + 1), st.just("ones")), array_of((coils, h, w), st.just("nan")), st.just("estimate"))
        p["coil_maps"] = either(draw, good, bad)
    if draw(st.booleans()):
        p["noise"] = draw(noise)
    return p


@st.composite
def blur_params(draw):
    shape = draw(image_shapes())
    h, w = _side(shape, 1), _side(shape, 2)
    psf = either(draw, array_of((draw(st.integers(1, h)), draw(st.integers(1, w))), st.sampled_from(["positive", "ones"])),
                 st.one_of(array_of((h + 3, w + 3), st.just("ones")), array_of((3, 3), st.sampled_from(["zeros", "nan", "negative"])),
                           array_of((2, 2, 2), st.just("ones"))))
    p = {"image_shape": shape, "psf": psf}
    if draw(st.booleans()):
        p["boundary"] = either(draw, st.sampled_from(["reflect", "periodic", "zero"]), st.just("mirror"))
    if draw(st.booleans()):
        p["noise"] = draw(noise)
    return p


def _same_params(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_params(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_params(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def check_operator(name: str, params: dict) -> None:
    """Build ``params`` or get an InputError; a built operator keeps the contract."""
    try:
        op = build_operator({"name": name, "params": params}, dtype=torch.float64)
    except InputError:
        return
    gen = torch.Generator().manual_seed(0)
    x, y = op.random_image(2, gen), op.random_measurement(2, gen)
    ax = op.forward(x)
    assert tuple(ax.shape) == (2, *op.measurement_shape)
    lhs, rhs = float(inner(ax, y)), float(inner(x, op.adjoint(y)))
    assert abs(lhs - rhs) <= 1e-8 * max(1.0, abs(lhs), abs(rhs)), (lhs, rhs)
    again = type(op).from_config(op.params(), dtype=torch.float64)
    assert _same_params(again.params(), op.params())
    predicted = expected_measurement_shape(name, params)
    assert predicted is None or predicted == tuple(op.measurement_shape), (predicted, op.measurement_shape)


@SETTINGS
@given(radon_params())
def test_radon_descriptions(params):
    check_operator("radon", params)


@SETTINGS
@given(mri_params())
def test_mri_descriptions(params):
    check_operator("mri", params)


@SETTINGS
@given(blur_params())
def test_blur_descriptions(params):
    check_operator("blur", params)


@SETTINGS
@given(
    name=st.sampled_from(["radon", "mri", "blur"]),
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    views=st.one_of(st.none(), st.integers(-2, 8)),
    angles=st.one_of(st.none(), st.sampled_from(["0:180:4", "0:180:0", "10,20,x", "5", "nan,1", ":"])),
    detectors=st.one_of(st.none(), st.integers(-1, 20)),
    acceleration=st.one_of(st.none(), st.floats(-1, 20), st.just(math.nan)),
    center=st.one_of(st.none(), st.floats(-0.5, 1.5), st.just(math.nan)),
    mask=st.one_of(st.none(), st.sampled_from(["random", "equispaced", "poisson", "weird"])),
    coils=st.one_of(st.none(), st.integers(-1, 3)),
    psf=st.one_of(st.none(), st.sampled_from(["gaussian:1", "gaussian:0", "gaussian:30", "airy:500,1.2,100", "airy:1", "bogus"])),
    extra=st.one_of(st.none(), st.sampled_from(['{"detectors": 3}', "[1]", "{bad", '{"noise": {"kind": "gaussian", "std": 0.1}}'])),
)
def test_command_line_geometry(name, hw, views, angles, detectors, acceleration, center, mask, coils, psf, extra):
    """Any combination of geometry options: an InputError or a working operator."""
    options = GeometryOptions(views=views, angles=angles, detectors=detectors, acceleration=acceleration,
                              center_fraction=center, mask=mask, coils=coils, psf=psf, operator_params=extra)
    try:
        params = operator_params(name, hw, options, seed=0)
    except InputError:
        return
    check_operator(name, params)


# --- measurement files ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    np.save(root / "img.npy", brain32())
    for op, opts in [("radon", ["--views", "12"]), ("mri", ["--acceleration", "4"]), ("blur", ["--psf", "gaussian:1"])]:
        assert invdiff("simulate", root / "img.npy", "--operator", op, *opts, "--noise-rel", "0.01", "--out", root / f"{op}.h5", "-q") == 0
    assert invdiff("reconstruct", root / "radon.h5", "--method", "fbp", "--out", root / "result.h5", "-q") == 0
    tiny_prior(root / "prior")
    return root


def read_fully(path: Path):
    """What reconstruct does with a measurement before the solver: read, check, build."""
    try:
        m = read_measurement(path)
        check_data(m)
        op = slice_operators(m, "cpu")(0)
    except InputError as exc:
        assert str(path) in str(exc), str(exc)
        return None
    assert m.data.ndim >= 2 and tuple(m.data.shape[1:]) == tuple(op.measurement_shape)
    assert np.isfinite(m.data).all()
    return m


dtypes = st.sampled_from(["float32", "float64", "int16", "uint8", "bool", "complex64", "S3", "compound"])


@st.composite
def dataset(draw):
    shape = tuple(draw(st.lists(st.integers(0, 50), min_size=0, max_size=4)))
    dtype = draw(dtypes)
    if dtype == "S3":
        return np.full(shape, b"abc")
    if dtype == "compound":
        return np.zeros(shape, dtype=[("a", "f4"), ("b", "i2")])
    fill = draw(st.sampled_from([0.0, 1.0, math.nan, math.inf, -2.5]))
    a = np.full(shape, fill if dtype.startswith(("float", "complex")) else (0 if not math.isfinite(fill) else int(fill)))
    return a.astype(dtype)


@SETTINGS
@given(op=st.sampled_from(["radon", "mri", "blur"]), key=st.sampled_from(["sinogram", "kspace", "image", "mask", "psf",
                                                                          "ground_truth", "nothing"]),
       data=dataset(), description=st.one_of(st.none(), st.sampled_from(
           ["{", "[]", '{"name": 3}', '{"name": "radon"}', '{"name": "radon", "params": {"$array": "x"}}',
            '{"name": "blur", "params": {"image_shape": [1, 32, 32], "psf": {"$array": "psf"}}}'])))
def test_edited_measurement_files(files, op, key, data, description):
    """Replace one dataset (or the operator description) of a good file by anything."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edited.h5"
        shutil.copy(files / f"{op}.h5", path)
        with h5py.File(path, "r+") as f:
            if key in f:
                del f[key]
            if key != "nothing":
                f.create_dataset(key, data=data)
            if description is not None:
                f.attrs["invdiff_operator"] = description
        read_fully(path)


@SETTINGS
@given(op=st.sampled_from(["radon", "mri", "blur"]), keep=st.floats(0.0, 1.0))
def test_truncated_measurement_files(files, op, keep):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cut.h5"
        raw = (files / f"{op}.h5").read_bytes()
        path.write_bytes(raw[: int(len(raw) * keep)])
        m = read_fully(path)
        if m is not None:  # only a cut after the last byte HDF5 needs can still be read
            assert np.array_equal(m.data, read_measurement(files / f"{op}.h5").data)


@SETTINGS
@given(op=st.sampled_from(["radon", "mri", "blur"]), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                                  min_size=1, max_size=30))
def test_damaged_measurement_data(files, op, flips):
    """Random bytes inside the measurement's data: NaN/Inf/zero are refused, other values read."""
    key = {"radon": "sinogram", "mri": "kspace", "blur": "image"}[op]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flipped.h5"
        shutil.copy(files / f"{op}.h5", path)
        with h5py.File(path, "r") as f:
            offset, size = f[key].id.get_offset(), f[key].id.get_storage_size()
        raw = bytearray(path.read_bytes())
        for where, value in flips:
            raw[offset + min(int(where * size), size - 1)] = value
        path.write_bytes(bytes(raw))
        read_fully(path)


@SETTINGS
@given(rec=dataset(), std=st.one_of(st.none(), dataset()))
def test_result_files(files, rec, std):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.h5"
        shutil.copy(files / "result.h5", path)
        with h5py.File(path, "r+") as f:
            del f["reconstruction"]
            f.create_dataset("reconstruction", data=rec)
            if std is not None:
                f.create_dataset("std", data=std)
        try:
            r = read_result(path)
        except InputError as exc:
            assert str(path) in str(exc)
            return
        assert r["reconstruction"].ndim == 3 and r["reconstruction"].dtype == np.float32
        assert r["std"] is None or r["std"].shape == r["reconstruction"].shape


# --- priors ---------------------------------------------------------------------------------

json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=False),
                                     st.text(max_size=5)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                           max_leaves=5)


def _paths(config, prefix=()):
    yield prefix
    if isinstance(config, dict):
        for k, v in config.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from _paths(v, prefix + (i,))


@SETTINGS
@given(choice=st.integers(0, 10_000), value=json_values, delete=st.booleans())
def test_edited_prior_configs(files, choice, value, delete):
    """Replace (or delete) any one entry of config.json by any JSON value."""
    config = json.loads((files / "prior" / CONFIG_NAME).read_text())
    paths = [p for p in _paths(config) if p]
    path = paths[choice % len(paths)]
    holder = config
    for k in path[:-1]:
        holder = holder[k]
    if delete:
        holder.pop(path[-1]) if isinstance(holder, dict) else holder.pop(path[-1])
    else:
        holder[path[-1]] = value
    with tempfile.TemporaryDirectory() as folder:
        prior_dir = Path(folder) / "prior"
        shutil.copytree(files / "prior", prior_dir)
        (prior_dir / CONFIG_NAME).write_text(json.dumps(config))
        try:
            prior = load_prior(prior_dir)
        except InputError as exc:
            assert str(prior_dir) in str(exc)
            return
        x = torch.zeros(1, prior.channels, 16, 16)
        assert prior(x, 1.0).shape == x.shape


@SETTINGS
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
                                                             b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"F32\",",
                                                             b"\xff\xff\xff\xff\xff\xff\xff\x7f"]))
def test_random_bytes_as_weights(data, prefix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.safetensors"
        path.write_bytes(prefix + data)
        try:
            state = load_weights(path)
        except InputError as exc:
            assert str(path) in str(exc)
            return
        assert all(torch.is_tensor(t) for t in state.values())

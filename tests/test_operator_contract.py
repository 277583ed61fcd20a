"""The one contract test every registered operator passes (STYLE.md: deepinv/BART style).

Adjoint by the dot-product test on fresh random inputs, JSON config round trip (arrays
through HDF5-style splitting), batch consistency, float32/float64 agreement, device moves,
direct reconstruction shape, the measured entries (``sampled()``), and the plug-in mechanism through a real entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from invdiff.operators.base import OPERATORS, config_from_json, config_to_json, get_operator_class, inner

NAMES = OPERATORS.names()


def test_builtins_registered():
    assert {"radon", "mri", "blur"} <= set(NAMES)


@pytest.fixture(params=NAMES)
def op_class(request):
    return get_operator_class(request.param)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_adjoint_dot_product(op_class, dtype, tol):
    op = op_class.example(dtype=dtype)
    for seed in range(3):  # fresh random inputs
        g = torch.Generator().manual_seed(1000 + seed)
        x = op.random_image(2, g)
        y = op.random_measurement(2, g)
        lhs = inner(op.forward(x), y)
        rhs = inner(x, op.adjoint(y))
        rel = abs(float(lhs - rhs)) / max(abs(float(lhs)), abs(float(rhs)), 1e-30)
        assert rel < tol, f"{op.name}: <Ax,y>={float(lhs)} <x,A^H y>={float(rhs)} rel={rel:.2e}"


def test_shapes_and_direct(op_class):
    op = op_class.example(dtype=torch.float64)
    x = op.random_image(3, torch.Generator().manual_seed(0))
    y = op.forward(x)
    assert tuple(y.shape) == (3, *op.measurement_shape)
    assert y.is_complex() == op.measurement_is_complex
    assert tuple(op.adjoint(y).shape) == (3, *op.image_shape)
    assert tuple(op.direct(y).shape) == (3, *op.image_shape)
    assert torch.allclose(op.normal(x), op.adjoint(op.forward(x)), rtol=1e-9, atol=1e-9)


def test_sampled_entries(op_class):
    """``sampled()`` is None or 0/1 weights over the measurement; A x and A^H ignore the rest."""
    op = op_class.example(dtype=torch.float64)
    sampled = op.sampled()
    if sampled is None:
        return
    g = torch.Generator().manual_seed(5)
    full = torch.broadcast_to(sampled, op.measurement_shape)
    assert bool(((full == 0) | (full == 1)).all()) and 0 < float(full.sum()) < full.numel()
    outside = 1 - sampled
    assert float((op.forward(op.random_image(2, g)) * outside).abs().max()) == 0.0
    assert float(op.adjoint(op.random_measurement(2, g) * outside).abs().max()) == 0.0


def test_config_json_round_trip(op_class):
    op = op_class.example(dtype=torch.float64)
    text, arrays = config_to_json(op.to_config())
    json.loads(text)  # valid JSON without the arrays
    config = config_from_json(text, {k: np.array(v) for k, v in arrays.items()})
    rebuilt = get_operator_class(config["name"]).from_config(config["params"], dtype=torch.float64)
    x = op.random_image(2, torch.Generator().manual_seed(1))
    assert torch.allclose(op.forward(x), rebuilt.forward(x), rtol=1e-12, atol=1e-12)
    assert rebuilt.noise == op.noise


def test_batch_consistency(op_class):
    op = op_class.example(dtype=torch.float64)
    x = op.random_image(4, torch.Generator().manual_seed(2))
    y = op.forward(x)
    singles = torch.cat([op.forward(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(y, singles, rtol=1e-10, atol=1e-10)
    back = op.adjoint(y)
    back_singles = torch.cat([op.adjoint(y[i : i + 1]) for i in range(4)])
    assert torch.allclose(back, back_singles, rtol=1e-10, atol=1e-10)


def test_float32_matches_float64(op_class):
    op64 = op_class.example(dtype=torch.float64)
    op32 = op64.to(dtype=torch.float32)
    assert op32.dtype == torch.float32
    x = op64.random_image(2, torch.Generator().manual_seed(3))
    y64 = op64.forward(x)
    y32 = op32.forward(x.float())
    rel = float((y32.to(y64.dtype) - y64).abs().max() / y64.abs().max())
    assert rel < 1e-4


def test_device_consistency(op_class):
    """Moving to the same device (and to CUDA when present) gives the same numbers."""
    op = op_class.example(dtype=torch.float64)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    x = op.random_image(2, torch.Generator().manual_seed(4))
    ref = op.forward(x)
    for device in devices:
        moved = op.to(device=device)
        out = moved.forward(x.to(device)).cpu()
        assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9), device


PLUGIN = textwrap.dedent(
    '''
    import torch
    from invdiff.operators.base import Operator
    from invdiff.operators.noise import NoiseModel

    class ScaleOperator(Operator):
        """y = 2 x: a plug-in registered through the invdiff.operators entry point."""
        name = "scale2"

        def __init__(self, image_shape=(1, 8, 8), noise=None, device="cpu", dtype=torch.float32):
            self.image_shape = tuple(image_shape)
            self.measurement_shape = tuple(image_shape)
            self.noise = noise or NoiseModel()
            self.device, self.dtype = torch.device(device), dtype

        def forward(self, x):
            return 2 * x

        def adjoint(self, y):
            return 2 * y

        def direct(self, y):
            return y / 2

        def params(self):
            return {"image_shape": list(self.image_shape), "noise": self.noise.params()}

        @classmethod
        def from_config(cls, params, *, device="cpu", dtype=torch.float32):
            return cls(params["image_shape"], NoiseModel.from_params(params.get("noise")), device, dtype)

        @classmethod
        def example(cls, *, device="cpu", dtype=torch.float32):
            return cls((1, 8, 8), device=device, dtype=dtype)
    '''
)


def test_plugin_operator_through_entry_point(tmp_path):
    """A third-party operator, registered only by an entry point, reaches the command line."""
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    dist = tmp_path / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[invdiff.operators]\nscale2 = myplugin:ScaleOperator\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    listed = subprocess.run(
        [sys.executable, "-m", "invdiff", "info", "--operators", "--json"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert "scale2" in json.loads(listed.stdout)["operators"]
    image = tmp_path / "img.npy"
    np.save(image, np.arange(64, dtype=np.float32).reshape(8, 8))
    out = tmp_path / "m.h5"
    sim = subprocess.run(
        [sys.executable, "-m", "invdiff", "simulate", str(image), "--operator", "scale2", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert sim.returncode == 0, sim.stderr
    rec = subprocess.run(
        [sys.executable, "-m", "invdiff", "reconstruct", str(out), "--method", "cgls", "--out", str(tmp_path / "r.h5"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert rec.returncode == 0, rec.stderr
    import h5py

    with h5py.File(tmp_path / "r.h5") as f:
        assert np.allclose(f["reconstruction"][0], np.arange(64).reshape(8, 8), atol=1e-3)

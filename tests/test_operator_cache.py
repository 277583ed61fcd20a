"""The batch operator cache: one build per geometry, a rebuild for any change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import invdiff.pipeline.operator_cache as cache
from invdiff.operators.base import build_operator
from test_cli_workflow import invdiff


def radon_config(views=10, noise_std=0.01):
    return {"name": "radon", "params": {"image_shape": [1, 16, 16], "angles_deg": list(np.linspace(0, 180, views, endpoint=False)),
                                       "noise": {"kind": "gaussian", "std": noise_std}}}


def mri_config(mask):
    return {"name": "mri", "params": {"image_shape": [1, 8, 8], "mask": mask, "noise": {"kind": "gaussian", "std": 0.01}}}


@pytest.fixture(autouse=True)
def fresh():
    cache.clear()
    yield
    cache.clear()


def test_same_description_same_object_and_any_change_rebuilds():
    a = cache.cached_operator(radon_config(), device="cpu", dtype=torch.float32)
    assert cache.cached_operator(radon_config(), device="cpu", dtype=torch.float32) is a
    for other in (radon_config(views=11), radon_config(noise_std=0.02)):
        assert cache.cached_operator(other, device="cpu", dtype=torch.float32) is not a
    b = cache.cached_operator(radon_config(), device="cpu", dtype=torch.float64)
    assert b.dtype == torch.float64 and b is not a


def test_array_contents_are_part_of_the_key():
    mask = np.zeros((8, 8), bool)
    mask[:, ::2] = True
    other = mask.copy()
    other[0, 1] = True
    k1 = cache.operator_key(mri_config(mask), "cpu", torch.float32)
    assert k1 == cache.operator_key(mri_config(mask.copy()), "cpu", torch.float32)
    assert k1 != cache.operator_key(mri_config(other), "cpu", torch.float32)
    assert k1 != cache.operator_key(mri_config(mask.astype(np.float32)), "cpu", torch.float32)


def test_cached_operator_equals_a_fresh_build():
    op = cache.cached_operator(radon_config(), device="cpu", dtype=torch.float64)
    fresh = build_operator(radon_config(), device="cpu", dtype=torch.float64)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    assert torch.equal(op.forward(x), fresh.forward(x))


def test_a_batch_builds_the_operator_once(tmp_path, monkeypatch):
    image = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
    np.save(tmp_path / "img.npy", image)
    for i in range(3):
        assert invdiff("simulate", tmp_path / "img.npy", "--operator", "radon", "--views", "12", "--noise-std", "0.01",
                       "--seed", str(i), "--out", tmp_path / f"m{i}.h5", "-q") == 0
    calls = []
    real = cache.build_operator
    monkeypatch.setattr(cache, "build_operator", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "out"
    assert invdiff("reconstruct", *[tmp_path / f"m{i}.h5" for i in range(3)], "--method", "fbp", "--out-dir", out, "-q") == 0
    assert len(list(out.glob("*.h5"))) == 3 and len(calls) == 1

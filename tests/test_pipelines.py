"""The batch pipeline scripts of examples/pipelines run end to end (one slice, a few steps):
simulate one file per slice, classical methods and the prior over the folder, evaluate, and a
summary table with a row per method; a re-run skips what is done. The scripts are given the
centre 64x64 of a shipped brain slice (their defaults are 128x128 stacks; the size only
changes the compute), and the cache is pointed at an empty folder so they choose the priors
as on a fresh clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
ROWS = {
    "ct.sh": ["recon_fbp", "recon_tv", "recon_prior"],
    "mri.sh": ["recon_zero-filled", "recon_tv", "recon_prior"],
    "microscopy.sh": ["recon_wiener", "recon_richardson-lucy", "recon_tv", "recon_prior"],
}


@pytest.mark.parametrize("script", sorted(ROWS))
def test_pipeline_script_runs_and_summarises(script, tmp_path):
    assert shutil.which("bash"), "bash is needed for the pipeline scripts"
    work = tmp_path / "work"
    stack = tmp_path / "stack.npy"
    np.save(stack, np.load(REPO / "data" / "samples" / "brain_heldout_128.npy")[:1, 32:96, 32:96])
    env = {**os.environ, "SLICES": "1", "SAMPLES": "2", "STEPS": "2", "DEVICE": "cpu", "PYTHON": sys.executable,
           "INVDIFF": f"{sys.executable} -m invdiff", "INVDIFF_CACHE": str(tmp_path / "empty_cache"), "PRIOR": str(REPO / "data" / "priors" / "brain128")}
    run = subprocess.run(["bash", str(REPO / "examples" / "pipelines" / script), str(stack), str(work)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = (work / "summary.md").read_text()
    for row in ROWS[script]:
        line = next(line for line in summary.splitlines() if line.startswith(f"| {row} |"))
        psnr = float(line.split("|")[3].split("±")[0])
        assert 10 < psnr < 60, line
        assert (work / row / "slice_000.json").is_file()
    assert "%" in next(line for line in summary.splitlines() if line.startswith("| recon_prior |"))
    if script != "mri.sh":  # the re-run is the same shell code for all three; check it once
        return
    # a re-run finds every result and skips it
    again = subprocess.run(["bash", str(REPO / "examples" / "pipelines" / script), str(stack), str(work)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (work / "summary.md").read_text() == summary

"""Benchmark the classical reconstructions on brain slices (the operators issue's protocol).

    python examples/bench_classical.py [--size 128] [--slices 6] [--no-bart] [--sweep tv]

Cases: CT with 30 and 60 parallel-beam views over 180 degrees, Gaussian noise of std
0.01 * max|sinogram| (--noise-rel 0.01); single-coil MRI, random line masks 4x with 8 % centre
and 8x with 4 % centre, noise std 0.005 on the orthonormal centred k-space, with the image
modelled as real (C = 1: ``mri4x``, ``mri8x``, what ``invdiff simulate`` builds for a real
image) and as complex (C = 2: ``mri4x-complex``, ``mri8x-complex``, the model BART always
uses; the k-space data of the two are identical, so BART runs on the complex cases); microscopy blur with a Gaussian PSF of sigma 2 px and Poisson-Gaussian noise
(100 photons at the peak, read noise 1 photon). Metrics: PSNR and SSIM with data range 1
(skimage.metrics), per slice, mean and std; time per slice (all slices in one batch).
MRI images are compared on magnitude.

BART (``apt-get install bart``), when on PATH, runs ``pics`` on the same MRI data with the same
regulariser, ``-R T:3:0:lambda`` and ``-R W:3:0:lambda``; its lambda is tuned over a grid on
the same slices and the best mean PSNR is reported (fair to BART: our weights are fixed defaults).
``--sweep METHOD`` prints PSNR over a grid of weights for each case instead (used for tuning).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from invdiff.classical import methods_for, run_method
from invdiff.operators.base import Operator
from invdiff.operators.blur import BlurOperator
from invdiff.operators.masks import random_line_mask
from invdiff.operators.mri import MRIOperator
from invdiff.operators.noise import noise_from_options
from invdiff.operators.psf import gaussian_psf
from invdiff.operators.radon import RadonOperator

ROOT = Path(__file__).resolve().parents[1]
BART_LAMBDAS = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2)
BART_ITERATIONS = 100


def load_slices(size: int, count: int) -> np.ndarray:
    images = np.load(ROOT / "data" / "samples" / "brain_slices_128.npy")[:count].astype(np.float64)
    if size != images.shape[-1]:
        images = np.stack([resize(im, (size, size), order=3, anti_aliasing=True) for im in images]).clip(0, 1)
    return images


def make_case(name: str, images: np.ndarray, seed: int = 0) -> tuple[Operator, torch.Tensor]:
    """The operator (with its noise model) and a noisy measurement of ``images (N, H, W)``."""
    n, h, w = images.shape
    generator = torch.Generator().manual_seed(seed)
    if name.startswith("ct"):
        views = int(name[2:])
        op = RadonOperator((1, h, w), np.linspace(0.0, 180.0, views, endpoint=False), dtype=torch.float64)
        x = torch.tensor(images)[:, None]
        clean = op.forward(x)
        noise = noise_from_options(clean, rel=0.01)
    elif name.startswith("mri"):
        acceleration, centre = {"mri4x": (4, 0.08), "mri8x": (8, 0.04)}[name.removesuffix("-complex")]
        mask = random_line_mask((h, w), acceleration, centre, seed=seed)
        if name.endswith("-complex"):
            op = MRIOperator((2, h, w), mask, dtype=torch.float64)
            x = torch.cat([torch.tensor(images)[:, None], torch.zeros(n, 1, h, w, dtype=torch.float64)], dim=1)
        else:
            op = MRIOperator((1, h, w), mask, dtype=torch.float64)
            x = torch.tensor(images)[:, None]
        clean = op.forward(x)
        noise = noise_from_options(clean, std=0.005)
    else:
        op = BlurOperator((1, h, w), gaussian_psf(2.0), dtype=torch.float64)
        clean = op.forward(torch.tensor(images)[:, None])
        noise = noise_from_options(clean, photons=100.0, read_std=1.0, poisson_kind="poisson_gaussian")
    op = type(op).from_config({**op.params(), "noise": noise.params()}, dtype=torch.float64)
    y = noise.sample(clean, generator)
    if name.startswith("mri"):
        y = y * op.mask  # unmeasured k-space stays zero
    return op, y


def magnitude(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().numpy()
    return np.sqrt((x**2).sum(axis=1)) if x.shape[1] == 2 else x[:, 0]


def scores(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.array([peak_signal_noise_ratio(r, e, data_range=1.0) for r, e in zip(reference, estimate)])
    s = np.array([structural_similarity(r, e, data_range=1.0) for r, e in zip(reference, estimate)])
    return p, s


# --- BART ----------------------------------------------------------------------------------
def write_cfl(stem: Path, array: np.ndarray) -> None:
    """BART's format: ``stem.hdr`` (dimensions) and ``stem.cfl`` (complex64, column-major)."""
    dims = list(array.shape) + [1] * (16 - array.ndim)
    stem.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    np.asarray(array, dtype=np.complex64).ravel(order="F").tofile(stem.with_suffix(".cfl"))


def read_cfl(stem: Path) -> np.ndarray:
    lines = stem.with_suffix(".hdr").read_text().splitlines()
    dims = [int(d) for d in lines[1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return np.fromfile(stem.with_suffix(".cfl"), dtype=np.complex64).reshape(dims, order="F")


def bart_pics(kspace: np.ndarray, mask: np.ndarray, regulariser: str, lam: float, workdir: Path) -> np.ndarray:
    """``bart pics -R <regulariser>:3:0:lam`` on one single-coil slice ``kspace (H, W)`` -> complex image."""
    write_cfl(workdir / "k", kspace[:, :, None, None])
    write_cfl(workdir / "s", np.ones(kspace.shape + (1, 1)))
    write_cfl(workdir / "p", mask[:, :, None, None].astype(np.complex64))
    command = ["bart", "pics", "-d0", "-i", str(BART_ITERATIONS), "-R", f"{regulariser}:3:0:{lam}",
               "-p", str(workdir / "p"), str(workdir / "k"), str(workdir / "s"), str(workdir / "x")]
    subprocess.run(command, check=True, capture_output=True)
    return read_cfl(workdir / "x").reshape(kspace.shape)


def bart_rows(case: str, op: MRIOperator, y: torch.Tensor, images: np.ndarray) -> list[tuple]:
    rows = []
    mask = np.asarray(op.params()["mask"], dtype=np.float64)
    kspace = y[:, 0].cpu().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        for regulariser, label in (("T", "bart-tv"), ("W", "bart-l1-wavelet")):
            best = None
            for lam in BART_LAMBDAS:
                start = time.perf_counter()
                recon = np.stack([np.abs(bart_pics(k, mask, regulariser, lam, Path(tmp))) for k in kspace])
                elapsed = (time.perf_counter() - start) / len(kspace)
                p, s = scores(images, recon)
                if best is None or p.mean() > best[1].mean():
                    best = (lam, p, s, elapsed)
            lam, p, s, elapsed = best
            rows.append((case, f"{label} (lambda {lam:g})", p, s, elapsed))
    return rows


# --- main ----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--cases", default="ct30,ct60,mri4x,mri8x,mri4x-complex,mri8x-complex,blur")
    parser.add_argument("--no-bart", action="store_true")
    parser.add_argument("--sweep", default=None, help="a method name: print PSNR over a weight grid")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--weights", default="0.02,0.05,0.1,0.2,0.5,1", help="the --sweep grid")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = load_slices(args.size, args.slices)
    use_bart = shutil.which("bart") is not None and not args.no_bart
    print(f"# python {' '.join(sys.argv)}   ({args.size}x{args.size}, {len(images)} slices, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    rows = []
    for case in args.cases.split(","):
        op, y = make_case(case, images)
        kind = op.name
        if args.sweep:
            for weight in [float(w) for w in args.weights.split(",")]:
                x = run_method(args.sweep, op, y, weight=weight, iterations=args.iterations)
                p, s = scores(images, magnitude(x))
                print(f"{case:6s} {args.sweep} weight {weight:5.2f}: PSNR {p.mean():6.2f}  SSIM {s.mean():.4f}", flush=True)
            continue
        for method in methods_for(kind):
            start = time.perf_counter()
            x = run_method(method, op, y)
            elapsed = (time.perf_counter() - start) / len(images)
            p, s = scores(images, magnitude(x))
            rows.append((case, method, p, s, elapsed))
            print(f"{case:6s} {method:28s} {p.mean():6.2f} ± {p.std():4.2f}  {s.mean():.4f} ± {s.std():.4f}  {elapsed:7.3f} s",
                  flush=True)
        if use_bart and kind == "mri" and case.endswith("-complex"):
            for row in bart_rows(case, op, y, images):
                rows.append(row)
                case_, method, p, s, elapsed = row
                print(f"{case_:6s} {method:28s} {p.mean():6.2f} ± {p.std():4.2f}  {s.mean():.4f} ± {s.std():.4f}  "
                      f"{elapsed:7.3f} s", flush=True)
    if rows:
        print("\n| case | method | PSNR (dB) | SSIM | s / slice |\n|---|---|---|---|---|")
        for case, method, p, s, elapsed in rows:
            print(f"| {case} | {method} | {p.mean():.2f} ± {p.std():.2f} | {s.mean():.4f} ± {s.std():.4f} | {elapsed:.3f} |")


if __name__ == "__main__":
    main()

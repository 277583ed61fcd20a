"""How well a prior denoises unseen slices: PSNR of D(x + sigma n, sigma) against TV denoising.

    python examples/fetch_data.py && python examples/prepare_brain.py
    python examples/bench_denoise.py [--prior data/priors/brain128] [--slices 8] [--transforms 1,8]

Each image of the ``heldout``, ``other`` and ``clinical`` sets (examples/prepare_brain.py) is
normalised as the prior normalises (its recorded normalisation), Gaussian noise of std sigma
(prior units) is added, and the prior's denoiser is called once at that sigma; TV denoising
(``skimage.restoration.denoise_tv_chambolle``, weight 0.7 sigma) is the classical reference.
PSNR is over the normalised images (peak about 1). The denoiser is what every solver calls, so
this table tells quickly whether a new prior is better than an old one.

``--transforms 1,2,4,8`` adds one row per count n: the denoiser averaged over the first n of
the 8 rotations and flips of the square (test-time augmentation: D_n(y) = mean_g g^-1 D(g y)),
to see what n times the network evaluations buy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle

sys.path.insert(0, str(Path(__file__).parent))
from fetch_data import cache_dir  # noqa: E402

from invdiff.prior.store import default_prior_path, load_prior  # noqa: E402

SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0)


def dihedral(x: torch.Tensor, g: int) -> torch.Tensor:
    """Element g (0..7) of the dihedral group of the square on (..., H, W): g % 4 quarter turns, then a flip if g >= 4."""
    y = torch.rot90(x, g % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if g >= 4 else y


def dihedral_inverse(y: torch.Tensor, g: int) -> torch.Tensor:
    """Undo :func:`dihedral`: the flip first, then the quarter turns backwards."""
    x = torch.flip(y, dims=(-1,)) if g >= 4 else y
    return torch.rot90(x, -(g % 4), dims=(-2, -1))


# the order in which --transforms adds group elements: identity, flip, half turn, flipped half turn, quarter turns
ORDER = (0, 4, 2, 6, 1, 5, 3, 7)


def denoise_augmented(denoiser, y: torch.Tensor, sigma: float, n: int) -> torch.Tensor:
    """Mean over the first n elements g of ORDER of g^-1 D(g y, sigma); n = 1 is the plain denoiser."""
    if not 1 <= n <= 8:
        raise ValueError(f"n must be 1..8, got {n}")
    return torch.stack([dihedral_inverse(denoiser(dihedral(y, g), sigma), g) for g in ORDER[:n]]).mean(0)


def psnr(mse: float) -> float:
    return -10.0 * np.log10(mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, default=default_prior_path())
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--transforms", default="1", help="comma-separated counts n (1..8) of rotations/flips to average")
    args = parser.parse_args()
    counts = [int(n) for n in args.transforms.split(",")]
    torch.manual_seed(0)
    prior = load_prior(args.prior)
    print(f"# python {' '.join(sys.argv)}   prior={args.prior}")
    print("| set | denoiser | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |")
    print("|---|---|" + "---|" * len(SIGMAS))
    for name in ("heldout", "other", "clinical"):
        images = np.load(cache_dir() / "brain" / f"{name}_{args.size}.npy")
        idx = np.linspace(0, len(images) - 1, min(args.slices, len(images))).round().astype(int)
        x, _ = prior.normalise(torch.from_numpy(images[idx]))
        ours, tv = {n: [] for n in counts}, []
        for sigma in SIGMAS:
            noisy = x + sigma * torch.randn_like(x)
            with torch.no_grad():
                for n in counts:
                    ours[n].append(psnr(float(((denoise_augmented(prior, noisy, sigma, n) - x) ** 2).mean())))
            ref = np.stack([denoise_tv_chambolle(a[0].numpy(), weight=0.7 * sigma) for a in noisy])
            tv.append(psnr(float(((torch.from_numpy(ref) - x[:, 0]) ** 2).mean())))
        rows = [("prior" if n == 1 else f"prior, {n} transforms", ours[n]) for n in counts] + [("TV", tv)]
        for label, row in rows:
            print(f"| {name} | {label} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()

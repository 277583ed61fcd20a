"""How well a prior denoises unseen slices: PSNR of D(x + sigma n, sigma) against TV denoising.

    python examples/fetch_data.py && python examples/prepare_brain.py
    python examples/bench_denoise.py [--prior data/priors/brain128] [--slices 8]

Each image of the ``heldout`` and ``other`` sets (examples/prepare_brain.py) is normalised as
the prior normalises (its recorded normalisation), Gaussian noise of std sigma (prior units)
is added, and the prior's denoiser is called once at that sigma; TV denoising
(``skimage.restoration.denoise_tv_chambolle``, weight 0.7 sigma) is the classical reference.
PSNR is over the normalised images (peak about 1). The denoiser is what every solver calls, so
this table tells quickly whether a new prior is better than an old one.
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


def psnr(mse: float) -> float:
    return -10.0 * np.log10(mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, default=default_prior_path())
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    prior = load_prior(args.prior)
    print(f"# python {' '.join(sys.argv)}   prior={args.prior}")
    print("| set | denoiser | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |")
    print("|---|---|" + "---|" * len(SIGMAS))
    for name in ("heldout", "other"):
        images = np.load(cache_dir() / "brain" / f"{name}_{args.size}.npy")
        idx = np.linspace(0, len(images) - 1, min(args.slices, len(images))).round().astype(int)
        x, _ = prior.normalise(torch.from_numpy(images[idx]))
        ours, tv = [], []
        for sigma in SIGMAS:
            noisy = x + sigma * torch.randn_like(x)
            with torch.no_grad():
                ours.append(psnr(float(((prior(noisy, sigma) - x) ** 2).mean())))
            ref = np.stack([denoise_tv_chambolle(a[0].numpy(), weight=0.7 * sigma) for a in noisy])
            tv.append(psnr(float(((torch.from_numpy(ref) - x[:, 0]) ** 2).mean())))
        for label, row in (("prior", ours), ("TV", tv)):
            print(f"| {name} | {label} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()

"""Store a prior's raw (non-EMA) weights in float16, to ship it in data/priors/.

    python examples/pack_prior.py data/priors/brain128 [data/priors/ct128 ...]

A prior directory holds two weight files (DESIGN.md §2): ``weights_ema.safetensors``, the
exponential moving average that every command samples and reconstructs with (its sha256 is
recorded in config.json), and ``weights.safetensors``, the raw optimiser iterate, read only by
``load_prior(..., weights="raw")`` (fine-tuning starts from the EMA weights, ``invdiff train
--init``; resuming from ``checkpoint.safetensors``). This script rewrites the raw file in
float16 (IEEE half: 11 significant bits, a relative rounding error below 4.9e-4 per weight),
halving it; ``load_prior`` casts it back to float32. The EMA file and config.json are left
bit for bit as they are, so the prior's checksum, its calibrations and every result made with
it stay valid.

Why: the shipped priors' weights are most of the repository, and the working tree a lent GPU
receives (examples/gpu_session.sh) must stay under 64 MiB with the data and wheels it
carries; float16 raw weights save 12 MB over the three shipped priors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from invdiff.prior.store import RAW_NAME, load_weights, save_weights, weights_metadata

#: largest |w| float16 holds; a raw weight beyond it would become infinite
HALF_MAX = float(torch.finfo(torch.float16).max)


def pack_raw_weights(prior_dir: Path) -> tuple[int, int]:
    """Rewrite ``prior_dir/weights.safetensors`` with every float32 tensor in float16.

    Returns (bytes before, bytes after). Raises ValueError, leaving the file as it was, if a
    weight does not fit float16's range. A file already in float16 is rewritten unchanged.
    """
    path = Path(prior_dir) / RAW_NAME
    before = path.stat().st_size
    state = load_weights(path)
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > HALF_MAX:
            raise ValueError(f"{path}: tensor '{name}' exceeds the float16 range; left as it is.")
    packed = {name: t.to(torch.float16) if t.dtype == torch.float32 else t for name, t in state.items()}
    save_weights(path, packed, metadata=weights_metadata(path) or None)
    return before, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("priors", nargs="+", type=Path, help="prior directories")
    args = parser.parse_args()
    for prior_dir in args.priors:
        try:
            before, after = pack_raw_weights(prior_dir)
        except ValueError as exc:
            sys.exit(f"pack_prior: {exc}")
        print(f"{prior_dir / RAW_NAME}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

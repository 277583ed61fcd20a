"""Summarise a pipeline run: one row per result folder, PSNR / SSIM / coverage over its files.

    python examples/pipelines/summarise.py WORK/recon_tv WORK/recon_prior ...

Each folder holds ``NAME.h5`` results and ``NAME.json`` files written by
``invdiff evaluate --json``; prints a markdown table (mean and standard deviation over files).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(folders: list[str]) -> int:
    if not folders:
        sys.stderr.write("summarise: give one or more result folders.\n")
        return 2
    print("| results | files | PSNR (dB) | SSIM | coverage 2 std |")
    print("|---|---|---|---|---|")
    for folder in map(Path, folders):
        rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        if not rows:
            sys.stderr.write(f"summarise: {folder} holds no evaluate --json files.\n")
            return 2
        psnr = np.array([r["psnr"] for r in rows])
        ssim = np.array([r["ssim"] for r in rows])
        cov = [r["coverage_2std"] for r in rows if r.get("coverage_2std") is not None]
        cov_text = f"{np.mean(cov):.1%}" if cov else "-"
        print(f"| {folder.name} | {len(rows)} | {psnr.mean():.2f} ± {psnr.std():.2f} | {ssim.mean():.3f} ± {ssim.std():.3f} | {cov_text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""What reusing the operator saves in a batch: `invdiff reconstruct` over files of one geometry.

    python examples/bench_operator_cache.py [--files 4] [--size 256] [--views 180] [--method fbp]

Makes FILES one-slice CT measurements (SIZE x SIZE, VIEWS views over 180 degrees, 1 % noise)
and reconstructs them one after the other with the library call the command line makes per
file (``invdiff.pipeline.reconstruct.run_classical``), once as invdiff runs a batch (the operator
built for the first file is reused, invdiff/pipeline/operator_cache.py) and once with the cache
cleared before every file (what every file cost before the cache). Prints seconds per file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--method", default="fbp")
    args = parser.parse_args()

    import invdiff.pipeline.operator_cache as cache
    from invdiff.pipeline.geometry import GeometryOptions
    from invdiff.pipeline.reconstruct import Settings, run_classical
    from invdiff.pipeline.simulate import simulate

    brain = np.load(Path(__file__).resolve().parent.parent / "data" / "samples" / "brain_heldout_128.npy")
    image = torch.nn.functional.interpolate(torch.from_numpy(brain[:1]).float()[None], size=(args.size, args.size),
                                            mode="bilinear").numpy()[0]
    files = [simulate(image, "radon", GeometryOptions(views=args.views), noise_rel=0.01, seed=i) for i in range(args.files)]
    print(f"# {args.files} files of {args.size}x{args.size}, {args.views} views, method {args.method}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| operator | first file s | later files s/file | total s |")
    print("|---|---|---|---|")
    for label, clear in (("rebuilt for every file", True), ("reused (invdiff's batch)", False)):
        cache.clear()
        times = []
        for m in files:
            if clear:
                cache.clear()
            start = time.perf_counter()
            run_classical(m, Settings(method=args.method), torch.device("cpu"))
            times.append(time.perf_counter() - start)
        print(f"| {label} | {times[0]:.2f} | {np.mean(times[1:]):.2f} | {sum(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()

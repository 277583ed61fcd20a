"""Benchmark: invdiff's radon operator against scikit-image's radon + iradon.

Times forward + adjoint (invdiff) against ``skimage.transform.radon`` + ``iradon`` (its
unfiltered back-projection, the closest thing it has to an adjoint) on the Shepp-Logan
phantom, both in the same run so a busy machine slows both alike. Also: operator build
time, the memory its matrices hold, batch-16 throughput, FBP time, and CUDA timings
(synchronised) when a GPU is present.

Reproduce:
    OMP_NUM_THREADS=1 python examples/bench_radon.py --threads 1 2
    python examples/bench_radon.py --sizes 128 256 --views 180 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from invdiff.operators.radon import RadonOperator



def best_time(fn, repeats: int, cuda: bool = False) -> float:
    """The fastest of ``repeats`` calls, in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def matrix_megabytes(op: RadonOperator) -> float:
    total = 0
    for m in (op._matrix, op._transpose):
        for t in (m.crow_indices(), m.col_indices(), m.values()):
            total += t.numel() * t.element_size()
    return total / 2**20


def bench_size(n: int, views: int, repeats: int, threads: int, cuda: bool) -> list[str]:
    torch.set_num_threads(threads)
    image = resize(shepp_logan_phantom(), (n, n)).astype(np.float64)
    theta = np.linspace(0.0, 180.0, views, endpoint=False)
    start = time.perf_counter()
    op = RadonOperator((1, n, n), theta, dtype=torch.float32)
    build = time.perf_counter() - start
    x = torch.from_numpy(image).float()[None, None]
    y = op.forward(x)
    fwd_adj = best_time(lambda: op.adjoint(op.forward(x)), repeats)
    fbp = best_time(lambda: op.direct(y), repeats)
    x16 = x.expand(16, -1, -1, -1).contiguous()
    batch16 = best_time(lambda: op.adjoint(op.forward(x16)), max(1, repeats // 2))
    sk_sino = radon(image, theta, circle=False)

    def skimage_pair():
        sino = radon(image, theta, circle=False)
        iradon(sino, theta, circle=False, filter_name=None, output_size=n)

    sk = best_time(skimage_pair, max(1, repeats // 3))
    sk_fbp = best_time(lambda: iradon(sk_sino, theta, circle=False, output_size=n), max(1, repeats // 3))
    rows = [
        f"| {n}x{n} | {views} | {threads} | cpu | {build:.2f} | {matrix_megabytes(op):.0f} | {fwd_adj * 1e3:.1f} "
        f"| {sk * 1e3:.0f} | {sk / fwd_adj:.1f}x | {16 / batch16:.1f} | {fbp * 1e3:.1f} | {sk_fbp * 1e3:.0f} |"
    ]
    if cuda:
        gpu = op.to(device="cuda")
        xg = x.cuda()
        x16g = x16.cuda()
        yg = y.cuda()
        g_fa = best_time(lambda: gpu.adjoint(gpu.forward(xg)), repeats, cuda=True)
        g_b16 = best_time(lambda: gpu.adjoint(gpu.forward(x16g)), repeats, cuda=True)
        g_fbp = best_time(lambda: gpu.direct(yg), repeats, cuda=True)
        name = torch.cuda.get_device_name()
        rows.append(
            f"| {n}x{n} | {views} | - | {name} | - | {matrix_megabytes(gpu):.0f} | {g_fa * 1e3:.2f} "
            f"| {sk * 1e3:.0f} | {sk / g_fa:.0f}x | {16 / g_b16:.0f} | {g_fbp * 1e3:.2f} | {sk_fbp * 1e3:.0f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print("command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print(f"torch {torch.__version__}, float32; times are the best of {args.repeats} (ms); skimage = radon + iradon(filter=None)")
    print()
    print("| image | views | threads | device | build s | matrices MB | invdiff fwd+adj ms | skimage ms | speed-up "
          "| batch-16 images/s | invdiff FBP ms | skimage FBP ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for k, threads in enumerate(args.threads):
            cuda = k == 0 and torch.cuda.is_available()
            for row in bench_size(n, args.views, args.repeats, threads, cuda):
                print(row, flush=True)


if __name__ == "__main__":
    main()

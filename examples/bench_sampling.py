"""Per-step sampling time and peak memory of every sampler with the default U-Net (untrained weights).

    OMP_NUM_THREADS=1 python examples/bench_sampling.py --sizes 64 128 --batch 4 --steps 6 --device cpu

Time per step = wall time / number of steps; evaluations per step (NFE) differ between samplers
(heun 2, pc 1 + corrector steps, em/ddim 1; ode is adaptive and reported per accepted step).
Peak memory: torch.cuda.max_memory_allocated on a GPU, the process's max RSS on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from invdiff.prior.precond import Precond
from invdiff.prior.unet import UNet, UNetConfig
from invdiff.sampling.samplers import SAMPLERS, initial_noise
from invdiff.sampling.schedules import karras_sigmas


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    args = parser.parse_args()
    device = torch.device(args.device)
    model = Precond(UNet(UNetConfig()), "edm", 0.5, 0.002, 80.0).to(device).eval().requires_grad_(False)
    print("command: " + " ".join(["python", *sys.argv]))
    print(f"# device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"default U-Net ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)")
    print("| size | sampler | steps | NFE | s/step | s/NFE | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for name in args.samplers:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            gen = torch.Generator().manual_seed(0)
            x = initial_noise((args.batch, 1, size, size), 80.0, generator=gen, device=device)
            infos: list[dict] = []
            options = {"rtol": 1e-2, "atol": 1e-2} if name == "ode" else {}
            start = time.perf_counter()
            with torch.no_grad():
                SAMPLERS[name](model, x, karras_sigmas(args.steps, 0.002, 80.0), generator=gen,
                               callback=infos.append, **options)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - start
            steps, nfe = len(infos), infos[-1]["nfe"]
            print(f"| {size} | {name} | {steps} | {nfe} | {wall / steps:.3f} | {wall / nfe:.3f} "
                  f"| {peak_memory_mb(device):.0f} |", flush=True)


if __name__ == "__main__":
    main()

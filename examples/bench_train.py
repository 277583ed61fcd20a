"""Training throughput of the default prior architecture: images/s, time per step, peak memory.

    OMP_NUM_THREADS=2 python examples/bench_train.py                 # CPU, 64x64 and 128x128
    python examples/bench_train.py --device cuda --batch-size 32 --steps 20
    python examples/bench_train.py --like data/priors/brain128 --sizes 128 --dtypes float32,bfloat16   # a shipped prior's network

One training step = draw a batch, EDM/DSM loss forward + backward, grad clip, AdamW, EMA update
(exactly the loop of invdiff/prior/train.py, on random data; no files written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from invdiff.prior.data import ImageSet
from invdiff.prior.ema import EMA
from invdiff.prior.losses import make_loss
from invdiff.prior.train import TrainSettings, build_model
from invdiff.prior.unet import count_parameters


def bench(size: int, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool = False,
          like: dict | None = None) -> dict:
    """``bf16``: bfloat16 autocast on the CPU too (``invdiff train --bf16``; CUDA always uses it).
    ``like``: a prior's config.json, whose network (its ``training`` settings) is timed."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    s = TrainSettings.from_dict({k: v for k, v in like["training"].items() if k in fields}) if like else TrainSettings()
    s = dataclasses.replace(s, image_size=size, batch_size=batch)
    torch.manual_seed(0)
    model = build_model(s).to(device)
    if device.type == "cpu" and bf16:  # as invdiff/prior/train.py does
        model.to(memory_format=torch.channels_last)
    ema = EMA(model)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = make_loss("dsm", s.noise())
    data = ImageSet([torch.rand(64, 1, size, size, device=device)])
    gen = torch.Generator(device=device).manual_seed(0)
    cpu_gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        idx = torch.randint(len(data), (batch,), generator=cpu_gen)
        x0 = data.batch(idx, size, torch.rand(batch, 2, generator=cpu_gen))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or bf16):
            loss = loss_fn(model, x0, None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    per_step = sum(times) / len(times)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"size": size, "batch": batch, "params": count_parameters(model), "step_s": per_step,
            "images_per_s": batch / per_step, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32", help="comma list of float32, bfloat16: on the CPU, a row for each "
                    "(bfloat16 autocast: invdiff train --bf16); CUDA always uses bfloat16 autocast")
    ap.add_argument("--like", type=Path, default=None, help="time this prior directory's network instead")
    args = ap.parse_args()
    like = json.loads((args.like / "config.json").read_text()) if args.like else None
    device = torch.device(args.device)
    print(f"command: python {shlex.join(sys.argv)}   torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}{', network ' + str(args.like) if args.like else ''}")
    print("| size | batch | params | network dtype | s/step | images/s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    dtypes = ["bfloat16"] if device.type == "cuda" else args.dtypes.split(",")
    for size, dtype in [(int(v), d) for v in args.sizes.split(",") for d in dtypes]:
        r = bench(size, args.batch_size, args.steps, args.warmup, device, dtype == "bfloat16", like)
        print(f"| {r['size']} | {r['batch']} | {r['params']} | {dtype} | {r['step_s']:.3f} | {r['images_per_s']:.1f} "
              f"| {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

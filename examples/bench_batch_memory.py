"""Memory over a long batch run: RSS of `invdiff reconstruct FOLDER --out-dir OUT` against the
number of files it has processed (issue 6: memory stays flat over a run of 500 small files).

    python examples/bench_batch_memory.py [--files 500] [--size 32] [--method fbp]
    python examples/bench_batch_memory.py --files 500 --prior data/priors/brain128 --solver dds --steps 2

Makes FILES small CT measurements (one slice, SIZE x SIZE, 30 views, 1 % noise) plus one
unreadable file in a temporary folder, runs the real command line on the folder in a child
process (``python -m invdiff reconstruct ...``, one thread), and samples the child's resident
set size (VmRSS from /proc) every 20 ms together with the number of result files written so far.
Prints RSS at every tenth of the run, the growth from the first 10 % of the files to the end, and
the command that reproduces the numbers. The unreadable file must be reported and skipped (exit
code 2 at the end, the other FILES results written). A benchmark, not a timed test (Linux only).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(folder: Path, files: int, size: int) -> None:
    """FILES one-slice measurement files (invdiff's own writer; one operator simulates them all),
    and one file that is not HDF5."""
    from invdiff.io.hdf5 import Measurement, write_measurement
    from invdiff.pipeline.geometry import GeometryOptions
    from invdiff.pipeline.simulate import simulate

    brain = np.load(Path(__file__).resolve().parent.parent / "data" / "samples" / "brain_heldout_128.npy")
    step = max(1, brain.shape[1] // size)
    images = brain[:, ::step, ::step][:, :size, :size].astype(np.float32)
    stack = images[np.arange(files) % len(images)]
    m = simulate(stack, "radon", GeometryOptions(views=30), noise_rel=0.01, seed=0)
    for i in range(files):
        write_measurement(folder / f"m{i:04d}.h5", Measurement(m.data[i : i + 1], m.operator, m.ground_truth[i : i + 1]))
    (folder / f"m{files // 2:04d}_broken.h5").write_bytes(b"this is not an HDF5 file\n" * 10)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--method", default="fbp", help="classical method (ignored with --prior)")
    parser.add_argument("--prior", help="prior directory: run a diffusion solver instead of --method")
    parser.add_argument("--solver", default="dds")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="invdiff_bench_memory_") as tmp:
        folder, out = Path(tmp) / "in", Path(tmp) / "out"
        folder.mkdir()
        t0 = time.perf_counter()
        make_inputs(folder, args.files, args.size)
        made = time.perf_counter() - t0
        command = [sys.executable, "-m", "invdiff", "reconstruct", str(folder), "--out-dir", str(out), "--quiet", "--device", "cpu"]
        if args.prior:
            command += ["--prior", args.prior, "--solver", args.solver, "--steps", str(args.steps), "--samples", str(args.samples)]
        else:
            command += ["--method", args.method]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        samples: list[tuple[float, int, int]] = []  # (seconds, files written, RSS KiB)
        while proc.poll() is None:
            rss = rss_kib(proc.pid)
            if rss is not None:
                done = len(list(out.glob("*.h5"))) if out.is_dir() else 0
                samples.append((time.perf_counter() - start, done, rss))
            time.sleep(0.02)
        wall = time.perf_counter() - start
        stderr = proc.stderr.read()
        written = len(list(out.glob("*.h5"))) if out.is_dir() else 0

    print(f"# invdiff reconstruct over {args.files} files of {args.size}x{args.size} "
          f"({'prior ' + args.prior + ', ' + args.solver + f' {args.steps} steps' if args.prior else args.method}), "
          f"one thread; inputs made in {made:.1f} s, run {wall:.1f} s")
    print(f"# exit code {proc.returncode}; {written} results written; stderr: "
          + " | ".join(line for line in stderr.strip().splitlines()))
    print(f"{'files processed':>16} {'RSS (MiB)':>10} {'peak so far (MiB)':>18}")
    rows = []
    for mark in sorted({round(args.files * k / 10) for k in range(11)}):
        upto = [s for s in samples if s[1] <= mark]  # the RSS just before file mark + 1 is written
        if not upto:
            continue
        rows.append((mark, upto[-1][2]))
        print(f"{mark:>16d} {upto[-1][2] / 1024:>10.1f} {max(s[2] for s in upto) / 1024:>18.1f}")
    if len(rows) >= 3:
        first = next(r for r in rows if r[0] >= args.files // 10)
        last = rows[-1]
        per100 = (last[1] - first[1]) / 1024 / max(1, last[0] - first[0]) * 100
        print(f"# growth from {first[0]} to {last[0]} files: {(last[1] - first[1]) / 1024:+.1f} MiB "
              f"({per100:+.2f} MiB per 100 files); overall peak {max(s[2] for s in samples) / 1024:.1f} MiB")
    print("# reproduce: python examples/bench_batch_memory.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()

"""Test-session settings: one compute thread per process.

The suite starts child processes (kill, determinism and DDP tests) beside the parent; with
torch's default of one thread per core they oversubscribe a 2-core CI machine and some cases run
ten times slower. Results do not depend on the thread count (determinism is per device and
thread setting; tests compare runs made under the same setting). An OMP_NUM_THREADS already set
by the caller wins.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

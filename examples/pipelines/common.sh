# shellcheck shell=bash
# Shared steps of the batch pipelines (sourced by ct.sh, mri.sh, microscopy.sh). Paths given
# to the scripts are taken relative to the current folder; REPO is this checkout.
#
# A pipeline: one image stack -> one measurement file per slice (as a scanner or a microscope
# delivers them) -> every classical method named in METHODS and the diffusion prior, each over
# the whole folder in one `invdiff reconstruct --out-dir` call (a re-run skips finished files)
# -> `invdiff evaluate --json` per result -> one summary table (summarise.py).
#
# Settings from the environment: SLICES (how many slices of the stack, evenly spread; 4),
# SAMPLES (posterior samples, 4), STEPS (solver steps; empty = the solver's default for the
# operator), PRIOR (empty = the shipped prior invdiff picks for the operator), DEVICE (auto),
# INVDIFF (the command, default `invdiff`; may be several words, e.g. `python -m invdiff`).

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

SLICES=${SLICES:-4}
SAMPLES=${SAMPLES:-4}
STEPS=${STEPS:-}
PRIOR=${PRIOR:-}
DEVICE=${DEVICE:-auto}
INVDIFF=${INVDIFF:-invdiff}
PYTHON=${PYTHON:-python3}

# default_stack GIVEN CACHED.npy: sets STACK to GIVEN when it is not empty, else to CACHED when
# the data cache holds it (with the prior invdiff picks), else to the shipped brain slices
# with the brain prior.
default_stack() {
  STACK=$1
  [ -n "$STACK" ] && return
  if [ -f "$2" ]; then
    STACK=$2
  else
    STACK=$REPO/data/samples/brain_heldout_128.npy
    PRIOR=${PRIOR:-$REPO/data/priors/brain128}
  fi
}

# split_stack STACK.npy OUTDIR: OUTDIR/slice_NNN.npy for SLICES slices spread over the stack.
split_stack() {
  "$PYTHON" - "$1" "$2" "$SLICES" <<'PY'
import sys
from pathlib import Path
import numpy as np
stack, out, n = np.load(sys.argv[1], allow_pickle=False), Path(sys.argv[2]), int(sys.argv[3])
if stack.ndim == 2:
    stack = stack[None]
out.mkdir(parents=True, exist_ok=True)
for i in np.linspace(0, len(stack) - 1, min(n, len(stack))).round().astype(int):
    np.save(out / f"slice_{i:03d}.npy", stack[i].astype(np.float32))
PY
}

# simulate_all IMAGEDIR MEASDIR OPTIONS...: one measurement file per image (seed = slice index).
simulate_all() {
  local images=$1 meas=$2
  shift 2
  mkdir -p "$meas"
  local f name seed
  for f in "$images"/*.npy; do
    name=$(basename "$f" .npy)
    [ -f "$meas/$name.h5" ] && continue
    seed=$((10#${name##*_}))
    $INVDIFF simulate "$f" "$@" --seed "$seed" --out "$meas/$name.h5" -q
  done
}

# reconstruct_all MEASDIR OUTDIR ARGS...: every file of MEASDIR, one call, finished ones skipped.
reconstruct_all() {
  local meas=$1 out=$2
  shift 2
  $INVDIFF reconstruct "$meas"/*.h5 --out-dir "$out" --skip-existing --device "$DEVICE" -q "$@"
}

# prior_args: the diffusion options from the environment.
prior_args() {
  local args=(--samples "$SAMPLES")
  [ -n "$STEPS" ] && args+=(--steps "$STEPS")
  [ -n "$PRIOR" ] && args+=(--prior "$PRIOR")
  echo "${args[@]}"
}

# evaluate_all MEASDIR OUTDIR: OUTDIR/NAME.json from `invdiff evaluate --json` against the
# measurement's ground truth (kept when newer than its result).
evaluate_all() {
  local meas=$1 out=$2 r name
  for r in "$out"/*.h5; do
    name=$(basename "$r" .h5)
    [ "$out/$name.json" -nt "$r" ] && continue
    $INVDIFF evaluate "$r" --reference "$meas/$name.h5" --json > "$out/$name.json.part"
    mv "$out/$name.json.part" "$out/$name.json"
  done
}

# run_pipeline WORK METHODS OPTIONS...: the whole pipeline on WORK/images (see above).
run_pipeline() {
  local work=$1 methods=$2
  shift 2
  simulate_all "$work/images" "$work/measurements" "$@"
  local folders=() m
  for m in $methods; do
    reconstruct_all "$work/measurements" "$work/recon_$m" --method "$m"
    folders+=("$work/recon_$m")
  done
  # shellcheck disable=SC2046
  reconstruct_all "$work/measurements" "$work/recon_prior" $(prior_args)
  folders+=("$work/recon_prior")
  for m in "${folders[@]}"; do
    evaluate_all "$work/measurements" "$m"
  done
  "$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/summarise.py" "${folders[@]}" | tee "$work/summary.md"
}

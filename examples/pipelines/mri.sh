#!/usr/bin/env bash
# Accelerated MRI in batch: a stack of slices -> one k-space file per slice (fastMRI random
# line mask, 8x with a 4 % centre, complex noise std 0.005; COILS > 1 simulates birdcage coil
# maps) -> zero-filled, TV (and CG-SENSE with coils) and the diffusion prior -> summary table.
#
#   bash examples/pipelines/mri.sh [STACK.npy] [WORK]
#
# STACK.npy defaults to the shipped held-out brain slices (data/samples). ACCELERATION (8),
# CENTER_FRACTION (0.04), NOISE_STD (0.005), COILS (1); SLICES, SAMPLES, STEPS, PRIOR, DEVICE
# as in common.sh. WORK defaults to work/mri.
source "$(dirname "$0")/common.sh"

stack=${1:-$REPO/data/samples/brain_heldout_128.npy}
work=${2:-work/mri}
coils=${COILS:-1}
methods="zero-filled tv"
[ "$coils" -gt 1 ] && methods="zero-filled cg-sense tv"
split_stack "$stack" "$work/images"
run_pipeline "$work" "$methods" --operator mri --acceleration "${ACCELERATION:-8}" \
  --center-fraction "${CENTER_FRACTION:-0.04}" --noise-std "${NOISE_STD:-0.005}" --coils "$coils"

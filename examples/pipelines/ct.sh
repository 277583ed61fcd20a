#!/usr/bin/env bash
# Sparse-view CT in batch: a stack of slices -> one 30-view sinogram file per slice (1 % noise)
# -> FBP, TV and the diffusion prior over the folder -> PSNR/SSIM/coverage table.
#
#   bash examples/pipelines/ct.sh [STACK.npy] [WORK]
#
# STACK.npy defaults to the held-out block of the real head CT (examples/fetch_data.py cranium
# && examples/prepare_ct.py), reconstructed with the shipped head-CT prior; without that cache,
# to the shipped brain slices with the brain prior. VIEWS (30) and NOISE_REL (0.01) set the
# scan; SLICES, SAMPLES, STEPS, PRIOR, DEVICE as in common.sh. WORK defaults to work/ct.
source "$(dirname "$0")/common.sh"

default_stack "${1:-}" "${INVDIFF_CACHE:-$HOME/.cache/invdiff}/ct/heldout_128_mu.npy"
work=${2:-work/ct}
split_stack "$STACK" "$work/images"
run_pipeline "$work" "fbp tv" --operator radon --views "${VIEWS:-30}" --noise-rel "${NOISE_REL:-0.01}"

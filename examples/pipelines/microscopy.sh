#!/usr/bin/env bash
# Widefield deconvolution in batch: a stack of planes -> one blurred, noisy image file per plane
# (Gaussian PSF of sigma 2 px, or PSF=FILE.tif for a measured one; Poisson-Gaussian noise at
# PHOTONS at the peak) -> Wiener, Richardson-Lucy, TV and the diffusion prior -> summary table.
#
#   bash examples/pipelines/microscopy.sh [STACK.npy] [WORK]
#
# STACK.npy defaults to the held-out planes of flowdec's neuron stack (examples/fetch_data.py
# neuron && examples/prepare_microscopy.py) with the shipped microscopy prior; without that
# cache, to the shipped brain slices with the brain prior. PSF (gaussian:2), PHOTONS (200),
# READ_NOISE (1); SLICES, SAMPLES, STEPS, PRIOR, DEVICE as in common.sh. WORK defaults to
# work/microscopy.
source "$(dirname "$0")/common.sh"

default_stack "${1:-}" "${INVDIFF_CACHE:-$HOME/.cache/invdiff}/microscopy/heldout_128.npy"
work=${2:-work/microscopy}
split_stack "$STACK" "$work/images"
run_pipeline "$work" "wiener richardson-lucy tv" --operator blur --psf "${PSF:-gaussian:2}" \
  --photons "${PHOTONS:-200}" --read-noise "${READ_NOISE:-1}"

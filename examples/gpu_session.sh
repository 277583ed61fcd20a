#!/usr/bin/env bash
# One prepared run for a lent GPU: train the brain prior at full size (128x128 slices, a wider
# U-Net than the CPU-trained default), time the GPU paths, and score the new prior on the
# reconstruction protocol, all inside one command of about 9 minutes.
#
# Here (the development machine, with the data fetched: examples/fetch_data.py):
#     bash examples/gpu_session.sh --prepare
#   copies the raw brain volumes into .gpudata/ and the wheels the GPU machine lacks into
#   .whl/ (both ignored by git through .git/info/exclude; about 21 MB).
# There (device tool: run(command="bash examples/gpu_session.sh", carry=[".whl", ".gpudata"],
# timeout_s=600)):
#     bash examples/gpu_session.sh
#   installs nothing system-wide (wheels into /tmp/site, invdiff from the working tree with its
#   entry points declared beside them), prepares the slices, trains for TRAIN_SECONDS, then
#   runs the benchmarks on CUDA. Results land in $OUT (at most 8 files of 16 MiB come back):
#   the prior (config.json, weights*.safetensors, training_log.csv), samples.png and log.txt.
# Try the plumbing on a CPU first (a tiny network, one slice per benchmark):
#     DEVICE=cpu TRAIN_SECONDS=60 QUICK=1 BATCH=4 CHECKPOINT_EVERY=5 OUT=/tmp/gpu_out bash examples/gpu_session.sh
#
# Environment: DEVICE (cuda), TRAIN_SECONDS (300), BATCH (64), QUICK (0: full benchmarks),
# CHECKPOINT_EVERY (250), PYTHON (python3), WHEELS (.whl: wheels for the machine's Python, 3.12 there).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    cache="${INVDIFF_CACHE:-$HOME/.cache/invdiff}"
    for name in colin27 mni152 adi_slice dipy_s0 example4d; do
        [[ -d "$cache/$name" ]] || { echo "missing $cache/$name: run python examples/fetch_data.py first" >&2; exit 2; }
        mkdir -p .gpudata/$name && cp "$cache/$name"/* .gpudata/$name/
    done
    rm -rf .gpudata/brain  # prepared slices are made there, not carried
    mkdir -p .whl
    for pkg in pydicom nibabel PyWavelets; do
        version=$(python3 -m pip show "$pkg" | awk '/^Version/{print $2}')
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$pkg==$version"
    done
    exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"; touch "$exclude"
    for path in /.gpudata/ /.whl/; do grep -qxF "$path" "$exclude" || echo "$path" >> "$exclude"; done
    du -sh .gpudata .whl
    exit 0
fi

DEVICE=${DEVICE:-cuda}
TRAIN_SECONDS=${TRAIN_SECONDS:-300}
BATCH=${BATCH:-64}
QUICK=${QUICK:-0}
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

step "environment"
SITE=/tmp/site
mkdir -p "$SITE"
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 1
fi
# invdiff from the working tree; its operators and solvers are entry points, declared here
# in a dist-info beside the wheels so that importlib.metadata finds them without an install
$PY - "$SITE" <<'PYEOF' || exit 1
import sys, tomllib
from pathlib import Path
site = Path(sys.argv[1])
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
info = site / f"invdiff-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: invdiff\nVersion: {project['version']}\n")
lines = []
for group, points in project["entry-points"].items():
    lines.append(f"[{group}]")
    lines += [f"{name} = {target}" for name, target in points.items()]
(info / "entry_points.txt").write_text("\n".join(lines) + "\n")
PYEOF
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
# the prepared slices go to a cache outside the working tree (.gpudata keeps only the sources)
export INVDIFF_CACHE=/tmp/invdiff_cache
mkdir -p "$INVDIFF_CACHE" && cp -r .gpudata/. "$INVDIFF_CACHE/"
DATA="$INVDIFF_CACHE/brain"
INVDIFF="$PY -m invdiff"
$PY - <<'PYEOF' || exit 1
import torch, invdiff
from invdiff.operators.base import OPERATORS
from invdiff.solvers.base import SOLVERS
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("invdiff", invdiff.__version__, "operators", OPERATORS.names(), "solvers", SOLVERS.names())
assert OPERATORS.names() and SOLVERS.names(), "entry points not found"
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

step "data"
$PY examples/prepare_brain.py || exit 1

# the operators' CUDA paths: the device-consistency checks of the operator contract, the
# Radon CUDA comparison and the blur CUDA test (they run on the CPU alone where CUDA is absent)
step "operator tests on $DEVICE"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_operator_contract.py tests/test_radon.py tests/test_blur.py
echo "operator tests exit $?"

# the prior: 3.3 M parameters (12.6 MB per weights file: each comes back under the 16 MiB limit)
NET=(--channels-base 40 --channel-mults 1,2,2,2 --res-blocks 2)
[[ "$QUICK" == 1 ]] && NET=(--channels-base 8 --channel-mults 1,2 --res-blocks 1)  # plumbing try-out only
step "train for ${TRAIN_SECONDS}s on $DEVICE"
PRIOR=/tmp/brain128gpu
rm -rf "$PRIOR"
timeout --signal=INT "$TRAIN_SECONDS" $INVDIFF train "$DATA/train_128.npy" --out "$PRIOR" \
    --image-size 128 --batch-size "$BATCH" --steps 1000000 "${NET[@]}" --sigma-data 0.261 --augment --augment-option p_invert=0.25 \
    --val-data "$DATA/other_128.npy" \
    --checkpoint-every "${CHECKPOINT_EVERY:-250}" --log-every "${CHECKPOINT_EVERY:-50}" --device "$DEVICE" --seed 0 --quiet
echo "train exit $? (124 or 130 = stopped by the time limit, as planned)"
[[ -f "$PRIOR/config.json" ]] || { echo "no checkpoint was written"; exit 1; }
tail -n 5 "$PRIOR/training_log.csv"
cp "$PRIOR/config.json" "$PRIOR/weights.safetensors" "$PRIOR/weights_ema.safetensors" "$PRIOR/training_log.csv" "$OUT/"

step "samples"
$INVDIFF sample --prior "$PRIOR" -n 16 --image-size 128 --png "$OUT/samples.png" --out /tmp/samples.h5 --seed 0 \
    --device "$DEVICE" || true

step "speed"
if [[ "$QUICK" == 1 ]]; then steps=2; else steps=10; fi
$PY examples/bench_train.py --device "$DEVICE" --batch-size 32 --steps "$steps" || true
$PY examples/bench_sampling.py --device "$DEVICE" --sizes 128 256 --batch 4 --steps "$steps" || true
$PY examples/bench_radon.py --sizes 128 256 --threads 2 --repeats 3 || true

step "reconstruction: the new prior against the shipped one, on $DEVICE"
if [[ "$QUICK" == 1 ]]; then recon=(--settings ct30 --slices 1 --samples 2); else recon=(--settings ct30,mri8x --slices 6 --samples 4); fi
for set in heldout other; do
    for prior in "$PRIOR" data/priors/brain128; do
        echo "--- set $set, prior $prior"
        timeout "${RECON_SECONDS:-50}" $PY examples/bench_reconstruct.py --set "$set" "${recon[@]}" --solvers default --prior "$prior" \
            --device "$DEVICE" || echo "(stopped or failed: exit $?)"
    done
done
# the shipped prior's calibrations for the slow solvers (about 3 h on the 2-core CPU), in one file
step "calibrations of the shipped brain128 for pc, dps and langevin on $DEVICE"
if [[ "$QUICK" == 1 ]]; then cal=(--settings ct30 --solvers pc --slices 9); else cal=(--settings mri8x,ct30 --solvers pc,dps,langevin); fi
timeout "${CALIBRATE_SECONDS:-150}" $PY examples/calibrate_priors.py --prior brain128 "${cal[@]}" --device "$DEVICE" || echo "(stopped or failed: exit $?)"
tar -cf "$OUT/calibration.tar" -C data/priors/brain128 calibration && echo "calibration files in calibration.tar"
step "done"

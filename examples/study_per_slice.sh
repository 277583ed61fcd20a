#!/usr/bin/env bash
# Per-slice PSNR of TV and of the default solver (K = 4, network in bfloat16) at 30 views and
# at 8x on the 6 scored slices of an image set, through the command line alone; each slice its
# own measurement (seed = its index). The benchmark tables give the set's mean; this shows
# which slices the mean hides (BENCHMARKS.md, "Per slice: where the default loses to TV").
#
#     python examples/fetch_data.py && python examples/prepare_brain.py
#     bash examples/study_per_slice.sh [SET (other)] [WORK_DIR (a new temporary folder)] [-- --option KEY=VALUE ...]
#
# Prints one line per setting and slice: setting, slice index in the set, TV PSNR, default PSNR
# (dB, data range 1). Extra arguments after -- go to the default's `invdiff reconstruct`.
set -euo pipefail
set_name=${1:-other}
work=${2:-$(mktemp -d)}
shift $(( $# < 2 ? $# : 2 ))
[[ "${1:-}" == "--" ]] && shift
extra=("$@")
cache="${INVDIFF_CACHE:-$HOME/.cache/invdiff}/brain/${set_name}_128.npy"
[[ -f "$cache" ]] || { echo "missing $cache: run examples/fetch_data.py and examples/prepare_brain.py" >&2; exit 2; }
prior="$(cd "$(dirname "$0")/.." && pwd)/data/priors/brain128"
mkdir -p "$work" && cd "$work"
indices=$(python3 - "$cache" <<'PY'
import sys
import numpy as np
images = np.load(sys.argv[1])
picked = np.linspace(0, len(images) - 1, min(6, len(images))).round().astype(int)  # bench_reconstruct's pick(6)
for k, i in enumerate(picked):
    np.save(f"slice{k}.npy", images[i])
print(" ".join(map(str, picked)))
PY
)
psnr() { invdiff evaluate "$1" --data-range 1 --json | python3 -c 'import json, sys; print("%.2f" % json.load(sys.stdin)["psnr"])'; }
k=0
for index in $indices; do
    invdiff simulate "slice$k.npy" --operator radon --views 30 --noise-rel 0.01 --seed "$k" --out "ct30_$k.h5" -q
    invdiff simulate "slice$k.npy" --operator mri --acceleration 8 --center-fraction 0.04 --noise-std 0.005 \
        --seed "$k" --out "mri8x_$k.h5" -q
    for setting in ct30 mri8x; do
        invdiff reconstruct "${setting}_$k.h5" --method tv --out "${setting}_${k}_tv.h5" -q
        invdiff reconstruct "${setting}_$k.h5" --prior "$prior" --samples 4 --bf16 --calibration none \
            --out "${setting}_${k}_default.h5" -q "${extra[@]}"
        tv=$(psnr "${setting}_${k}_tv.h5")
        default=$(psnr "${setting}_${k}_default.h5")
        echo "$setting $index $tv $default"
    done
    k=$((k + 1))
done

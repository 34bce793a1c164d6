#!/usr/bin/env bash
# The GPU check: every stage that runs on an accelerator, once, on a small simulated screen, then the training and
# extraction benchmarks, on DEVICE (default cuda). Offline: it needs the Python and PyTorch the machine has plus
# the repository (`pip install --no-deps -e .`), nothing downloaded. About 6 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT]          # DEVICE=cpu bash benchmarks/gpu_check.sh  rehearses it on a CPU
#
# Prints one table: stage, seconds, exit code, and the line each stage ends with.
set -uo pipefail
out=${1:-gpu-check}
device=${DEVICE:-cuda}
python=${PYTHON:-python}
momil=("$python" -m momil)
mkdir -p "$out"
if [ "$device" = cuda ]; then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || {
        echo "gpu_check: torch sees no CUDA device -- run it on a GPU machine, or DEVICE=cpu to rehearse" >&2
        exit 2
    }
fi
rows=()
step() {  # step NAME COMMAND...: run it, keep its time, exit code and last line
    local name=$1
    shift
    local started ended code last
    started=$(date +%s.%N)
    "$@" >"$out/$name.log" 2>&1
    code=$?
    ended=$(date +%s.%N)
    last=$(grep -v '^\s*$' "$out/$name.log" | tail -n 1 | cut -c1-110)
    rows+=("$(printf '%-14s %8.1f %4s  %s' "$name" "$(echo "$ended - $started" | bc)" "$code" "$last")")
}
s=$out/screen
step simulate "${momil[@]}" simulate --out "$s/screen" --n-compounds 120 --replicates 2 --dim 64 --instances 16 \
    --n-assays 12 --quiet
step render "${momil[@]}" simulate --out "$s/render" --n-compounds 12 --replicates 2 --n-assays 4 --render-images \
    --image-size 128 --quiet
step ingest "${momil[@]}" ingest --instances "$s/screen/instances.parquet" --wells "$s/screen/wells.parquet" \
    --out "$s/raw" --quiet
step correct "${momil[@]}" correct --store "$s/raw" --out "$s/store" --quiet
step split "${momil[@]}" split --wells "$s/screen/wells.parquet" --labels "$s/screen/labels.parquet" \
    --compounds "$s/screen/compounds.parquet" --out "$s/folds.parquet" --n-folds 5 --quiet
model=(--store "$s/store" --labels "$s/screen/labels.parquet" --folds "$s/folds.parquet" --assays "$s/screen/assays.parquet")
step train "${momil[@]}" train "${model[@]}" --out "$s/train" --epochs 10 --device "$device" --quiet
step select "${momil[@]}" select "${model[@]}" --associations "$s/screen/associations.parquet" --out "$s/select" \
    --rotations 0 --epochs 5 --device "$device" --quiet
step impute "${momil[@]}" impute "${model[@]}" --out "$s/impute" --rounds 1 --epochs 5 --device "$device" --quiet
step pretrain "${momil[@]}" pretrain --load-data "$s/render/load_data.parquet" --out "$s/fm" --backbone vit-tiny \
    --epochs 2 --size 128 --global-size 96 --local-size 48 --device "$device" --quiet
step extract "${momil[@]}" extract --load-data "$s/render/load_data.parquet" --wells "$s/render/wells.parquet" \
    --out "$s/fm-store" --backbone vit-tiny --size 128 --tile 64 --stride 64 --device "$device" --quiet
step bench_train "$python" benchmarks/bench_train.py --device "$device" --steps 10 --rounds 2
step bench_extract "$python" benchmarks/bench_extract.py --device "$device" --fields 32 --repeats 2
printf '%-14s %8s %4s  %s\n' stage seconds rc "last line"
printf '%s\n' "${rows[@]}"
for row in "${rows[@]}"; do
    [ "$(echo "$row" | awk '{print $3}')" = 0 ] || exit 1
done

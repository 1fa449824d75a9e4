#!/bin/sh
# GEMM speed of the kernel the tools choose by themselves against every kernel forced with
# OPENBLAS_CORETYPE, in one run on one machine (the engine issue's "auto within 20 % of the
# best forced kernel"). Usage: bench/gemm-kernels.sh [SIZE] [RUNS]   (default 4096, 3)
# Needs a release build: swift build -c release --product unet-bench
set -eu
cd "$(dirname "$0")/.."
size=${1:-4096}
runs=${2:-3}
bench=.build/release/unet-bench
[ -x "$bench" ] || { echo "gemm-kernels: $bench is missing — run: swift build -c release --product unet-bench" >&2; exit 1; }
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE true  # fail early where env lacks -u
best() {  # best GFLOP/s of the runs
    "$@" --gemm "$size" "$size" "$size" --runs "$runs" | sed -E 's/.* ([0-9.]+) GFLOP\/s/\1/' | sort -n | tail -n 1
}
printf '%s\n' "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) threads; $(date -u '+%Y-%m-%d %H:%M UTC')"
auto_kernel=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$bench" --version | sed -E 's/.*kernel ([^ ]+) \((.*)\),.*/\1 (\2)/')
auto=$(best env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$bench")
printf '| kernel | GEMM %s³ GFLOP/s (best of %s) |\n|---|--:|\n' "$size" "$runs"
printf '| no variable set: %s | %s |\n' "$auto_kernel" "$auto"
top=0
for core in Prescott Haswell Zen SkylakeX Cooperlake; do
    g=$(best env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=$core "$bench")
    printf '| OPENBLAS_CORETYPE=%s | %s |\n' "$core" "$g"
    top=$(awk -v a="$top" -v b="$g" 'BEGIN { print (b > a) ? b : a }')
done
awk -v a="$auto" -v b="$top" 'BEGIN { printf "\nauto / best forced: %.2f (done when >= 0.80)\n", a / b }'

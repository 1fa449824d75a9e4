#!/bin/bash
# The machine's peak memory for `make -j2` of examples/Makefile on 8 images (issue 16; $IMAGES):
#
#   bench/make_j2_memory.sh BIN MODEL [SIZE] [STEPS] [JOBS] [VAR=VALUE...]
#
# BIN: the folder of the tools to measure (e.g. .build/release); MODEL: an SD 1.5-shaped model
# folder; SIZE: image side (default 256); STEPS: the schedule's steps (default 4: memory does not
# depend on them, time does); JOBS: make's -j (default 2); VAR=VALUE: more Makefile settings, e.g.
# LORA=/path/x.safetensors (give absolute paths: make runs in a scratch folder). The images ($IMAGES
# of them, default 8) are the bundled demo scene scaled to SIZE in its eight flips and rotations. Prints bench/machine_memory.py's peaks
# (PSS = what the processes hold together, shared weight pages once) and make's wall time.
set -euo pipefail
[ $# -ge 2 ] || { echo "make_j2_memory.sh: usage: bench/make_j2_memory.sh BIN MODEL [SIZE] [STEPS] [JOBS]" >&2; exit 64; }
bin=$(cd "$1" && pwd) model=$2 size=${3:-256} steps=${4:-4} jobs=${5:-2}
shift $(($# < 5 ? $# : 5))
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$bin/denoise" ] || { echo "make_j2_memory.sh: no denoise in $bin — build the tools first (swift build -c release)" >&2; exit 66; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/images"
scene="$root/demo/scenes/red-circle.ppm"
i=0
for flip in $(echo null -lr -tb -r90 -r180 -r270 -xy -xy,-lr | cut -d' ' -f1-"${IMAGES:-8}"); do
    pamscale -xsize "$size" -ysize "$size" "$scene" > "$work/scaled.ppm"
    for f in ${flip//,/ }; do
        [ "$f" = null ] || { pamflip "$f" "$work/scaled.ppm" > "$work/flipped.ppm" && mv "$work/flipped.ppm" "$work/scaled.ppm"; }
    done
    ppmtoppm < "$work/scaled.ppm" > "$work/images/scene$i.ppm"
    i=$((i + 1))
done
rm "$work/scaled.ppm"
echo "a red circle on a striped white background" > "$work/src.txt"
echo "a blue circle on a striped white background" > "$work/dst.txt"
cd "$work"
python3 "$root/bench/machine_memory.py" -- \
    make -s -j"$jobs" -f "$root/examples/Makefile" BIN="$bin" MODEL="$model" STEPS="$steps" "$@"
ls out/*.montage.png | wc -l | sed 's/$/ montages/'

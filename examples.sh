#!/bin/bash
# diffedit examples: a readable script of tool calls that keeps every intermediate file in
# $OUT (default ./out) so you can inspect it with `tensor`.
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-$(swift build -c release --show-bin-path)}
export PATH="$BIN:$PATH"
OUT=${OUT:-out}
mkdir -p "$OUT"

echo "== 1. An image through the tensor format and back"
cp Tests/Fixtures/sd1/cat.ppm "$OUT/cat.ppm"   # a 64x64 crop of scikit-image's chelsea.png
tensor from-image "$OUT/cat.ppm" > "$OUT/cat.tensor"
tensor head "$OUT/cat.tensor"
tensor stats "$OUT/cat.tensor"
tensor to-image --rgb "$OUT/cat.tensor" > "$OUT/cat-back.ppm"
cmp "$OUT/cat.ppm" "$OUT/cat-back.ppm" && echo "image -> tensor -> image: identical"

echo "== 2. A round trip through NumPy's .npy"
tensor to-npy "$OUT/cat.tensor" > "$OUT/cat.npy"
tensor from-npy --name image --meta source.depth=3 --meta source.maxval=255 "$OUT/cat.npy" > "$OUT/cat-npy.tensor"
cmp "$OUT/cat.tensor" "$OUT/cat-npy.tensor" && echo "tensor -> npy -> tensor: byte-identical"
tensor compare "$OUT/cat.tensor" "$OUT/cat-npy.tensor"

echo "== 3. One channel as a grey map, 2x"
tensor to-image --channel 0 --scale 2 "$OUT/cat.tensor" | pnmtopng > "$OUT/cat-red.png"
pamfile "$OUT/cat-back.ppm"
echo "done: files in $OUT/"

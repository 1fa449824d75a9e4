#!/bin/bash
# diffedit examples: DiffEdit (Couairon et al. 2022) on an image, as a readable script of
# tool calls. Every intermediate file stays in $OUT (default ./out) so you can inspect it with
# `tensor head`, `tensor stats` and `tensor to-image`.
#
#   ./examples.sh                              # the demo model: a red circle becomes a blue one
#   MODEL=~/models/sd15 IMAGE=me.ppm SOURCE="a photo of a man" TARGET="a photo of a robot" ./examples.sh
#   GUIDANCE=7.5 NEGATIVE=source ./examples.sh  # diffusers' settings on the demo model (it tints)
#   IMAGE=photo.jpg ./examples.sh               # PNG and JPEG images are converted with netpbm
set -euo pipefail
cd "$(dirname "$0")"

# --- Settings -------------------------------------------------------------------------------
# The default is the small demo model trained for this project (demo/, see demo/TRAINING.md) on
# a world of coloured shapes; any Stable Diffusion folder in diffusers layout works instead, e.g.
#   MODEL=Tests/Fixtures/sd1 IMAGE=Tests/Fixtures/sd1/cat.ppm ./examples.sh   (random weights: noise)
MODEL=${MODEL:-${DIFFEDIT_MODEL:-demo/model}}           # Stable Diffusion folder, diffusers layout
IMAGE=${IMAGE:-demo/scenes/red-circle.ppm}              # a 64x64 scene from demo/world.py
SOURCE=${SOURCE:-"a red circle on a striped white background"}    # what the image shows
TARGET=${TARGET:-"a blue circle on a striped white background"}   # what it should show
STEPS=${STEPS:-50}
SEED=${SEED:-0}
# Guidance and denoise's negative prompt: diffusers' 7.5 and the source caption suit Stable
# Diffusion. The small demo model over-saturates with them (the edited latents leave the range
# its VAE decodes and the whole picture tints), so its folder's diffedit_defaults.json (man 5
# diffedit-defaults) sets 3 and the empty prompt, which the tools take when no option is given;
# numbers for both in demo/BENCHMARK.md. An empty GUIDANCE leaves --guidance off (the model's
# default, else 7.5). NEGATIVE: source (the source caption), empty (the empty prompt) or model
# (the model's negative_prompt, else empty); default: model for a folder with defaults, else source.
if [ -f "$MODEL/diffedit_defaults.json" ]; then DEFAULT_NEGATIVE=model; else DEFAULT_NEGATIVE=source; fi
GUIDANCE=${GUIDANCE:-}
NEGATIVE=${NEGATIVE:-$DEFAULT_NEGATIVE}
case "$NEGATIVE" in source|empty|model) ;; *) echo "examples.sh: NEGATIVE=$NEGATIVE: give source, empty or model" >&2; exit 1;; esac
guidance=(); [ -n "$GUIDANCE" ] && guidance=(--guidance "$GUIDANCE")
OUT=${OUT:-out}
BIN=${BIN:-$(swift build -c release --show-bin-path)}
[ -x "$BIN/denoise" ] || swift build -c release
export PATH="$BIN:$PATH"
export DIFFEDIT_MODEL="$MODEL"                          # every tool reads the model from here
mkdir -p "$OUT"
start=$SECONDS
stage() { echo; echo "== $* ($((SECONDS - start)) s)"; }

stage "1. The input image, and its latent posterior"
case "$IMAGE" in   # any netpbm image as PPM; PNG and JPEG through netpbm's converters
    *.png|*.PNG) pngtopnm "$IMAGE" | ppmtoppm > "$OUT/input.ppm" ;;
    *.jpg|*.JPG|*.jpeg|*.JPEG) jpegtopnm "$IMAGE" | ppmtoppm > "$OUT/input.ppm" ;;
    *) ppmtoppm < "$IMAGE" > "$OUT/input.ppm" ;;
esac
pnmtopng "$OUT/input.ppm" > "$OUT/input.png"
vae-encode "$OUT/input.ppm" > "$OUT/posterior.tensor"   # records posterior.mean, posterior.std
tensor head "$OUT/posterior.tensor"
tensor stats "$OUT/posterior.tensor"
# What the autoencoder alone makes of it (the best an edit can keep outside the mask):
vae-decode --record posterior.mean < "$OUT/posterior.tensor" > "$OUT/reconstructed.ppm"
# The four latent channels side by side, 8x:
tensor to-image --name posterior.mean --tile --scale 8 "$OUT/posterior.tensor" | pnmtopng > "$OUT/latent.png"

stage "2. The captions as text embeddings"
tokenize --show "$SOURCE" "$TARGET"
tokenize "$SOURCE" | encode-text > "$OUT/source.tensor"
tokenize "$TARGET" | encode-text > "$OUT/target.tensor"
tensor stats "$OUT/source.tensor"

stage "3. The mask: where the noise estimate changes with the caption (noise-diff-mask)"
noise-diff-mask --source "$OUT/source.tensor" --target "$OUT/target.tensor" \
    --steps "$STEPS" --seed "$SEED" "${guidance[@]}" --soft-output "$OUT/mask-soft.tensor" \
    < "$OUT/posterior.tensor" > "$OUT/mask.tensor"     # the mask, and its soft map from the same run
tensor head "$OUT/mask.tensor"                           # fraction_ones, clamp, near_threshold
tensor stats "$OUT/mask-soft.tensor"
# A mask is an image: latent resolution, enlarged to the picture's size by the VAE factor.
factor=$(( $(pamfile "$OUT/input.ppm" | sed -E 's/.* ([0-9]+) by ([0-9]+).*/\1/') \
         / $(tensor head "$OUT/mask.tensor" | sed -nE 's/ *latent.width=//p') ))
tensor to-image --range 0:1 --scale "$factor" "$OUT/mask.tensor" > "$OUT/mask.pgm"
tensor to-image --range 0:1 --scale "$factor" "$OUT/mask-soft.tensor" > "$OUT/mask-soft.pgm"
pnmtopng "$OUT/mask.pgm" > "$OUT/mask.png"
pnmtopng "$OUT/mask-soft.pgm" > "$OUT/mask-soft.png"

stage "4. DDIM inversion under the source caption (invert)"
invert --prompt "$OUT/source.tensor" --steps "$STEPS" --seed "$SEED" "${guidance[@]}" \
    < "$OUT/posterior.tensor" > "$OUT/inverted.tensor"
tensor head "$OUT/inverted.tensor"                       # [1, T, 4, h, w], noisiest first
tensor pick --name inverted "$OUT/inverted.tensor" | tensor stats

stage "5. Masked denoising under the target caption (denoise), then decode"
negative=()
[ "$NEGATIVE" = source ] && negative=(--negative "$OUT/source.tensor")
if [ "$NEGATIVE" = empty ]; then tokenize "" | encode-text > "$OUT/empty.tensor"; negative=(--negative "$OUT/empty.tensor"); fi
denoise --mask "$OUT/mask.tensor" --prompt "$OUT/target.tensor" "${negative[@]}" "${guidance[@]}" \
    < "$OUT/inverted.tensor" > "$OUT/edited.tensor"
vae-decode < "$OUT/edited.tensor" > "$OUT/edited.ppm"
pnmtopng "$OUT/edited.ppm" > "$OUT/edited.png"
# The paper's blending (clean background at the end) for comparison:
denoise --blend paper --mask "$OUT/mask.tensor" --prompt "$OUT/target.tensor" "${negative[@]}" "${guidance[@]}" \
    < "$OUT/inverted.tensor" | vae-decode > "$OUT/edited-paper.ppm"
pnmtopng "$OUT/edited-paper.ppm" > "$OUT/edited-paper.png"

stage "6. Montage: input | VAE reconstruction | mask | edit | edit (paper blending)"
cat_lr() { if command -v pamcat > /dev/null; then pamcat -lr "$@"; else pnmcat -lr "$@"; fi; }
pgmtoppm white "$OUT/mask.pgm" > "$OUT/mask.ppm"
cat_lr "$OUT/input.ppm" "$OUT/reconstructed.ppm" "$OUT/mask.ppm" "$OUT/edited.ppm" "$OUT/edited-paper.ppm" > "$OUT/montage.ppm"
pamfile "$OUT/montage.ppm"
pnmtopng "$OUT/montage.ppm" > "$OUT/montage.png"

echo
echo "done in $((SECONDS - start)) s: files in $OUT/ (input.png, mask.png, edited.png, montage.png)"

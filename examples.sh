#!/bin/bash
# diffedit examples: DiffEdit (Couairon et al. 2022) or LEDITS++ (Brack et al. 2024) on an image,
# as a readable script of tool calls. Every intermediate file stays in $OUT (default ./out) so you can inspect it with
# `tensor head`, `tensor stats` and `tensor to-image`.
#
#   ./examples.sh                              # the demo model: a red circle becomes a blue one
#   MODEL=~/models/sd15 IMAGE=me.ppm SOURCE="a photo of a man" TARGET="a photo of a robot" ./examples.sh
#   GUIDANCE=7.5 NEGATIVE=source ./examples.sh  # diffusers' settings on the demo model (it tints)
#   IMAGE=photo.jpg ./examples.sh               # PNG and JPEG images are converted with netpbm
#   METHOD=ledits ./examples.sh                 # LEDITS++: edit-friendly inversion, implicit masks
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
STEPS=${STEPS:-}                                         # empty: 50 for DiffEdit, the model's for LEDITS++
SEED=${SEED:-0}
# METHOD: diffedit (the mask from noise estimates, DDIM inversion under the source caption,
# masked denoising under the target caption) or ledits (LEDITS++: the edit-friendly DDPM
# inversion's noise maps, which give the input back exactly, and semantic guidance that adds the
# target caption and removes the source caption, each inside its own implicit mask; STEPS is
# then the inversion's steps, default the model's, else diffusers' 30).
METHOD=${METHOD:-diffedit}
case "$METHOD" in diffedit|ledits) ;; *) echo "examples.sh: METHOD=$METHOD: give diffedit or ledits" >&2; exit 1;; esac
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
case $OUT in -*) OUT=./$OUT ;; esac                      # a path, never an option
case $IMAGE in -*) IMAGE=./$IMAGE ;; esac
BIN=${BIN:-$(swift build -c release --show-bin-path)}
[ -x "$BIN/denoise" ] || swift build -c release
export PATH="$BIN:$PATH"
export DIFFEDIT_MODEL="$MODEL"                          # every tool reads the model from here
mkdir -p "$OUT"
start=$SECONDS
stage() { echo; echo "== $* ($((SECONDS - start)) s)"; }

# A file appears under its name only when complete: `to FILE COMMAND…` writes COMMAND's output to
# a hidden temporary beside FILE (.FILE.part.PID), flushes it to disk and renames it; a failure
# removes the temporary, and so does the EXIT trap when the script is stopped (only SIGKILL or a
# crash can leave one, hidden, which nothing reads).
part() { printf '%s/.%s.part.%s' "$(dirname "$1")" "$(basename "$1")" "$$"; }
keep() { sync "$1" && mv -f "$1" "$2"; }                # keep TEMPORARY FILE
to() {
    local file=$1 tmp
    tmp=$(part "$1"); shift
    if "$@" > "$tmp" && keep "$tmp" "$file"; then return 0; fi
    rm -f "$tmp"; return 1
}
trap 'rm -f "$OUT"/.*.part.$$' EXIT
# Pipelines that `to` runs (each one pipeline: its status is the function's).
as_ppm() {   # any netpbm image as PPM; PNG and JPEG through netpbm's converters (any case: .PNG, .Jpg)
    case "${IMAGE,,}" in
        *.png) pngtopnm < "$IMAGE" | ppmtoppm ;;
        *.jpg|*.jpeg) jpegtopnm < "$IMAGE" | ppmtoppm ;;
        *) ppmtoppm < "$IMAGE" ;;
    esac
}
embed() { tokenize -- "$1" | encode-text; }            # a caption as text embeddings
cat_lr() { if command -v pamcat > /dev/null; then pamcat -lr "$@"; else pnmcat -lr "$@"; fi; }

stage "1. The input image, and its latent posterior"
to "$OUT/input.ppm" as_ppm
to "$OUT/input.png" pnmtopng "$OUT/input.ppm"
to "$OUT/posterior.tensor" vae-encode "$OUT/input.ppm"   # records posterior.mean, posterior.std
tensor head "$OUT/posterior.tensor"
tensor stats "$OUT/posterior.tensor"
# What the autoencoder alone makes of it (the best an edit can keep outside the mask):
to "$OUT/reconstructed.ppm" vae-decode --record posterior.mean < "$OUT/posterior.tensor"
# The four latent channels side by side, 8x:
latent() { tensor to-image --name posterior.mean --tile --scale 8 "$OUT/posterior.tensor" | pnmtopng; }
to "$OUT/latent.png" latent

stage "2. The captions as text embeddings"
tokenize --show -- "$SOURCE" "$TARGET"
to "$OUT/source.tensor" embed "$SOURCE"
to "$OUT/target.tensor" embed "$TARGET"
tensor stats "$OUT/source.tensor"

if [ "$METHOD" = ledits ]; then
stage "3. LEDITS++'s edit-friendly inversion: the noisy latent and every step's noise map (invert --method ledits)"
# Each x_t is drawn from q(x_t | x_0) on its own, then the noise map that takes x_t to x_{t-1}
# under the model is solved for: denoising with these maps gives the input back at any guidance.
ledits_steps=(); [ -n "$STEPS" ] && ledits_steps=(--steps "$STEPS")
to "$OUT/ledits.tensor" invert --method ledits "${ledits_steps[@]}" --seed "$SEED" < "$OUT/posterior.tensor"
tensor head "$OUT/ledits.tensor"                        # ledits.start [1, 4, h, w], ledits.noise [1, T, 4, h, w]

stage "4. Semantic guidance: the target added, the source removed, each in its implicit mask (denoise --method ledits)"
to "$OUT/edited.tensor" denoise --method ledits --edit "$OUT/target.tensor" --edit "$OUT/source.tensor" \
    --edit-direction add,remove --masks-output "$OUT/ledits-masks.tensor" < "$OUT/ledits.tensor"
tensor head "$OUT/ledits-masks.tensor"                  # per step and concept; mask: where the edit went
to "$OUT/edited.ppm" vae-decode < "$OUT/edited.tensor"
to "$OUT/edited.png" pnmtopng "$OUT/edited.ppm"
factor=$(( $(pamfile "$OUT/input.ppm" | sed -E 's/.* ([0-9]+) by ([0-9]+).*/\1/') \
         / $(tensor pick --name mask "$OUT/ledits-masks.tensor" | tensor head | sed -nE 's/ *latent.width=//p') ))
to "$OUT/mask.pgm" tensor to-image --name mask --range 0:1 --scale "$factor" "$OUT/ledits-masks.tensor"
to "$OUT/mask.png" pnmtopng "$OUT/mask.pgm"
mask_file=$OUT/ledits-masks.tensor
else
stage "3. The mask: where the noise estimate changes with the caption (noise-diff-mask)"
soft=$(part "$OUT/mask-soft.tensor")                     # the soft map, from the same run
to "$OUT/mask.tensor" noise-diff-mask --source "$OUT/source.tensor" --target "$OUT/target.tensor" \
    --steps "${STEPS:-50}" --seed "$SEED" "${guidance[@]}" --soft-output "$soft" < "$OUT/posterior.tensor"
keep "$soft" "$OUT/mask-soft.tensor"
tensor head "$OUT/mask.tensor"                           # fraction_ones, clamp, near_threshold
tensor stats "$OUT/mask-soft.tensor"
# A mask is an image: latent resolution, enlarged to the picture's size by the VAE factor.
factor=$(( $(pamfile "$OUT/input.ppm" | sed -E 's/.* ([0-9]+) by ([0-9]+).*/\1/') \
         / $(tensor head "$OUT/mask.tensor" | sed -nE 's/ *latent.width=//p') ))
to "$OUT/mask.pgm" tensor to-image --range 0:1 --scale "$factor" "$OUT/mask.tensor"
to "$OUT/mask-soft.pgm" tensor to-image --range 0:1 --scale "$factor" "$OUT/mask-soft.tensor"
to "$OUT/mask.png" pnmtopng "$OUT/mask.pgm"
to "$OUT/mask-soft.png" pnmtopng "$OUT/mask-soft.pgm"

stage "4. DDIM inversion under the source caption (invert)"
to "$OUT/inverted.tensor" invert --prompt "$OUT/source.tensor" --steps "${STEPS:-50}" --seed "$SEED" "${guidance[@]}" \
    < "$OUT/posterior.tensor"
tensor head "$OUT/inverted.tensor"                       # [1, T, 4, h, w], noisiest first
tensor pick --name inverted "$OUT/inverted.tensor" | tensor stats

stage "5. Masked denoising under the target caption (denoise), then decode"
negative=()
[ "$NEGATIVE" = source ] && negative=(--negative "$OUT/source.tensor")
if [ "$NEGATIVE" = empty ]; then to "$OUT/empty.tensor" embed ""; negative=(--negative "$OUT/empty.tensor"); fi
to "$OUT/edited.tensor" denoise --mask "$OUT/mask.tensor" --prompt "$OUT/target.tensor" "${negative[@]}" "${guidance[@]}" \
    < "$OUT/inverted.tensor"
to "$OUT/edited.ppm" vae-decode < "$OUT/edited.tensor"
to "$OUT/edited.png" pnmtopng "$OUT/edited.ppm"
# The paper's blending (clean background at the end) for comparison:
paper() {
    denoise --blend paper --mask "$OUT/mask.tensor" --prompt "$OUT/target.tensor" "${negative[@]}" "${guidance[@]}" \
        < "$OUT/inverted.tensor" | vae-decode
}
to "$OUT/edited-paper.ppm" paper
to "$OUT/edited-paper.png" pnmtopng "$OUT/edited-paper.ppm"
mask_file=$OUT/mask-soft.tensor
fi

stage "6. Paste-back: the edit blended into the input through the mask at pixel resolution (composite)"
# The soft map upsampled bilinear to pixels and thresholded (the mask follows the object, not the
# latent grid), feathered by one latent cell: every pixel the feathered mask does not reach is the
# input's, byte for byte, where the decoder alone changes every pixel a little. For a photo
# larger than the model's size, composite scales the edit up to it (examples/photo.sh edits the
# region around the mask at full resolution).
to "$OUT/composited.ppm" composite --original "$OUT/input.ppm" --mask "$mask_file" \
    --mask-output "$OUT/mask-pixels.pgm" "$OUT/edited.ppm"
to "$OUT/composited.png" pnmtopng "$OUT/composited.ppm"

stage "7. Montage: input | VAE reconstruction | mask | edit | (DiffEdit: edit with the paper's blending |) pixel mask | edit pasted back"
to "$OUT/mask.ppm" pgmtoppm white "$OUT/mask.pgm"
to "$OUT/mask-pixels.ppm" pgmtoppm white "$OUT/mask-pixels.pgm"
paper_ppm=(); [ "$METHOD" = diffedit ] && paper_ppm=("$OUT/edited-paper.ppm")
to "$OUT/montage.ppm" cat_lr "$OUT/input.ppm" "$OUT/reconstructed.ppm" "$OUT/mask.ppm" "$OUT/edited.ppm" "${paper_ppm[@]}" \
    "$OUT/mask-pixels.ppm" "$OUT/composited.ppm"
pamfile "$OUT/montage.ppm"
to "$OUT/montage.png" pnmtopng "$OUT/montage.ppm"

echo
echo "done in $((SECONDS - start)) s: files in $OUT/ (input.png, mask.png, edited.png, composited.png, montage.png)"

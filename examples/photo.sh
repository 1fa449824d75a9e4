#!/bin/bash
# photo.sh: DiffEdit a photo at its own resolution. The model works at its size (512 pixels for
# Stable Diffusion 1.5, 64 for the bundled demo model); the photo may have 12 megapixels. So:
#
#   1. the whole photo, scaled to the model's size, gives the mask (noise-diff-mask);
#   2. the rectangle around the mask (tensor bbox: its box, a margin, the model's square aspect)
#      is cut from the full-resolution photo and scaled to the model's size (pamcut, pamscale),
#      with the mask cut the same way (tensor cut);
#   3. that region is inverted, denoised with its mask and decoded at the model's size;
#   4. composite scales the edit back to the region's size and blends it into the full photo
#      through the mask: every pixel the feathered mask does not reach is the original's, byte
#      for byte, and so is everything outside the region.
#
# Memory and time do not grow with the photo beyond reading, scaling and writing it: the network
# only ever sees the model's size.
#
#   examples/photo.sh PHOTO "SOURCE CAPTION" "TARGET CAPTION" > edited.ppm
#   examples/photo.sh demo/scenes/large/red-circle-256.ppm "a red circle on a striped white background" \
#       "a blue circle on a striped white background" | pnmtopng > edited.png
#   MODEL=~/models/sd15 examples/photo.sh IMG_0042.JPG "a photo of a cat" "a photo of a tiger" | pnmtojpeg > tiger.jpg
#
# PHOTO: any netpbm image (PPM, PGM, PBM, PAM; 8 or 16 bit), or PNG or JPEG (converted with
# netpbm's pngtopnm and jpegtopnm); - is standard input. The edit is written to standard output in
# the photo's netpbm format, size and depth (PNG and JPEG photos: PPM). Exit status: 0 done; 1 an
# error (one line on stderr, from this script or the tool that failed); 3 the mask is empty (the
# captions name no difference the model can find): nothing is written.
#
# Settings (environment; empty means the model's own default, diffedit_defaults.json, as the tools
# take it):
#   MODEL       model folder or single-file checkpoint (default $DIFFEDIT_MODEL, else the demo model)
#   SIZE        the model's working size in pixels (default: from the model folder's configs —
#               the UNet's sample_size times the VAE's factor — else 512)
#   NEGATIVE    denoise's negative prompt: source (the source caption), empty (the empty prompt) or
#               model (the model's negative_prompt, else empty); default: model when the model folder
#               has a diffedit_defaults.json, else source (diffusers' DiffEdit example), as examples.sh
#   SEED        seed of the mask's noise and the posterior samples (default 0)
#   MARGIN      pixels of context around the mask's box (default: tensor bbox's, a quarter of the
#               box's larger side)
#   FEATHER, DILATE   composite's --feather and --dilate, in the photo's pixels (default: half a
#               mask cell of the region, and 0; composite also refines the mask to the edges of
#               the photo and the edit by default, composite(1) --refine)
#   MASK_FLAGS, INVERT_FLAGS, DENOISE_FLAGS   more options for those stages, e.g. MASK_FLAGS=--dilate=1
#   LORA       LoRA adapters, FILE[:SCALE] separated by spaces (--lora for encode-text and every stage)
#   EMBEDDING  textual-inversion embeddings, FILE[:TOKEN] separated by spaces (tokenize, encode-text)
#   WORK        keep every intermediate in this folder (default: a temporary folder, removed)
#   BIN         the tools' folder (default: this source tree's release build, else PATH)
set -euo pipefail
me=photo.sh
die() { echo "$me: $*" >&2; exit 1; }
[ $# -eq 3 ] || die "give PHOTO SOURCE TARGET (3 arguments, got $#) — e.g. $me cat.jpg \"a photo of a cat\" \"a photo of a tiger\" > tiger.ppm"
photo=$1 source=$2 target=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${BIN:-}" ] && [ -f "$ROOT/Package.swift" ]; then
    BIN=$(cd "$ROOT" && swift build -c release --show-bin-path)
    [ -x "$BIN/composite" ] || (cd "$ROOT" && swift build -c release >&2)
fi
[ -n "${BIN:-}" ] && export PATH="$BIN:$PATH"
MODEL=${MODEL:-${DIFFEDIT_MODEL:-}}
if [ -n "$MODEL" ]; then export DIFFEDIT_MODEL="$MODEL"; else unset DIFFEDIT_MODEL; fi
for c in composite tensor vae-encode noise-diff-mask invert denoise vae-decode tokenize encode-text pamscale pamcut pamfile; do
    command -v "$c" > /dev/null || die "$c is not installed — build the tools (swift build -c release) and install netpbm (scripts/setup-debian.sh)"
done
for v in SIZE SEED MARGIN FEATHER DILATE; do
    val=${!v:-}
    [[ -z $val || $val =~ ^[0-9]+$ ]] || die "$v=$val: give a whole number of pixels (or leave it empty for the default)"
done

# The model's working size: the UNet's sample_size latents times the VAE's downsampling factor.
model_dir=$MODEL
[ -n "$model_dir" ] || for d in "$ROOT/demo/model" "$ROOT/model"; do [ -d "$d" ] && model_dir=$d && break; done
if [ -z "${SIZE:-}" ]; then
    SIZE=512
    if [ -f "$model_dir/unet/config.json" ] && [ -f "$model_dir/vae/config.json" ]; then
        SIZE=$(python3 -c 'import json,sys
u=json.load(open(sys.argv[1]+"/unet/config.json")); v=json.load(open(sys.argv[1]+"/vae/config.json"))
s=u.get("sample_size",64); s=s[0] if isinstance(s,list) else s
print(int(s)*2**(len(v.get("block_out_channels",[0]*4))-1))' "$model_dir")
    fi
fi
[ "$SIZE" -ge 8 ] || die "SIZE=$SIZE: the model's size is at least 8 pixels"

if [ -n "${WORK:-}" ]; then
    case $WORK in -*) WORK=./$WORK ;; esac
    mkdir -p "$WORK"; w=$WORK
else
    w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
fi
seed=(--seed "${SEED:-0}")
# shellcheck disable=SC2206  # the *_FLAGS are lists of options, split on purpose
mask_flags=(${MASK_FLAGS:-}) invert_flags=(${INVERT_FLAGS:-}) denoise_flags=(${DENOISE_FLAGS:-})
lora=() embedding=()
for a in ${LORA:-}; do lora+=(--lora "$a"); done
for a in ${EMBEDDING:-}; do embedding+=(--embedding "$a"); done
mask_flags+=("${lora[@]}") invert_flags+=("${lora[@]}") denoise_flags+=("${lora[@]}")

# The photo as netpbm, kept at full resolution.
case $photo in -*) [ "$photo" = - ] || photo=./$photo ;; esac
case ${photo,,} in
    *.png) pngtopnm < "$photo" > "$w/photo.pnm" ;;
    *.jpg|*.jpeg) jpegtopnm < "$photo" > "$w/photo.pnm" ;;
    -) cat > "$w/photo.pnm" ;;
    *) cat < "$photo" > "$w/photo.pnm" ;;
esac
read -r pw ph < <(pamfile -size "$w/photo.pnm") || die "$photo: not an image netpbm reads — give a PPM, PGM, PBM, PAM, PNG or JPEG"

# Captions, and denoise's negative prompt.
tokenize "${embedding[@]}" -- "$source" | encode-text "${embedding[@]}" "${lora[@]}" > "$w/src.tensor"
tokenize "${embedding[@]}" -- "$target" | encode-text "${embedding[@]}" "${lora[@]}" > "$w/dst.tensor"
if [ -f "$model_dir/diffedit_defaults.json" ]; then negative=${NEGATIVE:-model}; else negative=${NEGATIVE:-source}; fi
case $negative in
    source) denoise_flags+=(--negative "$w/src.tensor") ;;
    empty) tokenize '' | encode-text "${lora[@]}" > "$w/empty.tensor"; denoise_flags+=(--negative "$w/empty.tensor") ;;
    model) ;;
    *) die "NEGATIVE=$negative: give source, empty or model" ;;
esac

# 1. The mask, from the whole photo at the model's size (aspect kept; vae-encode rounds each side
#    down to the VAE's factor).
pamscale -xyfit "$SIZE" "$SIZE" "$w/photo.pnm" > "$w/whole.pnm"
vae-encode --quiet --resize bilinear "$w/whole.pnm" > "$w/whole.posterior"
noise-diff-mask --quiet --source "$w/src.tensor" --target "$w/dst.tensor" "${seed[@]}" "${mask_flags[@]}" \
    --soft-output "$w/whole.soft" < "$w/whole.posterior" > "$w/whole.mask"

# 2. The region around it, at full resolution, scaled to the model's size.
status=0
box=$(tensor bbox --size "${pw}x$ph" ${MARGIN:+--margin "$MARGIN"} "$w/whole.mask") || status=$?
if [ "$status" -eq 3 ]; then
    echo "$me: the mask is empty: the model finds nothing to change between \"$source\" and \"$target\" — reword the captions" >&2
    exit 3
fi
[ "$status" -eq 0 ] || exit 1
read -r bx by bw bh <<< "$box"
pamcut -left "$bx" -top "$by" -width "$bw" -height "$bh" "$w/photo.pnm" |
    pamscale -width "$SIZE" -height "$SIZE" > "$w/region.pnm"
vae-encode --quiet "$w/region.pnm" > "$w/region.posterior"
# The region's latent size, from its posterior's shape [N, 4, h, w].
read -r lh lw < <(tensor head "$w/region.posterior" | sed -nE '1s/.*\[[0-9]+, [0-9]+, ([0-9]+), ([0-9]+)\].*/\1 \2/p')
tensor cut --box "$bx,$by,$bw,$bh" --size "${pw}x$ph" --to "${lw}x$lh" "$w/whole.mask" > "$w/region.mask"
# The soft map at the model's pixel size, for composite's mask at the photo's pixels.
tensor cut --box "$bx,$by,$bw,$bh" --size "${pw}x$ph" --to "${SIZE}x$SIZE" "$w/whole.soft" > "$w/region.soft"

# 3. The edit of the region at the model's size.
invert --quiet --prompt "$w/src.tensor" "${seed[@]}" "${invert_flags[@]}" < "$w/region.posterior" > "$w/region.inverted"
denoise --quiet --mask "$w/region.mask" --prompt "$w/dst.tensor" "${denoise_flags[@]}" < "$w/region.inverted" > "$w/region.edited"
vae-decode --quiet < "$w/region.edited" > "$w/region.edited.ppm"

# 4. Back into the full photo.
composite --original "$w/photo.pnm" --mask "$w/region.soft" --region "$bx,$by,$bw,$bh" \
    ${FEATHER:+--feather "$FEATHER"} ${DILATE:+--dilate "$DILATE"} --mask-output "$w/photo.mask.pgm" \
    "$w/region.edited.ppm"

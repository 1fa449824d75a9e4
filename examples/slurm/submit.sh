#!/bin/bash
# Usage: submit.sh [OPTIONS] BIN=DIR [VAR=VALUE...]
#
# DiffEdits every image of the work folder (the current directory: images/, src.txt, dst.txt,
# as for examples/Makefile) on a Slurm cluster: one job makes the shared files (`make prepare`),
# then a job array, which starts only when that job succeeded, makes one image per task
# (diffedit-array.sbatch beside this script) with the same Makefile and settings. Results land by
# name in one out/ folder, as with `make` on one machine. The work folder, the tools (BIN) and
# the Makefile must be on a filesystem every node mounts.
#
#   cd /shared/work && /shared/diffedit/share/diffedit/examples/slurm/submit.sh \
#       BIN=/shared/diffedit/bin MODEL=/shared/models/sd15 STEPS=25
#   submit.sh --missing BIN=…  …        # again, for the images whose montage is missing
#
# VAR=VALUE: make variables for examples/Makefile (BIN is required: the tools' folder as every
# node sees it; MODEL, STEPS, GUIDANCE, NEGATIVE, SEED, IN, OUT, *_FLAGS…), the same for every job.
# Options:
#   --missing          only the images whose $(OUT)/NAME.montage.png is missing (after failed or
#                      cancelled tasks); without it every image gets a task, and make in a task
#                      whose image is done finds nothing to do
#   --chunk K          K images per array task (default 1; for more images than the cluster's
#                      MaxArraySize, or images too quick to be worth a job each)
#   --max-running M    at most M tasks at once (sbatch --array=…%M)
#   --prepare-here     make the shared files here, now, instead of in a job
#   --sbatch-args STR  more sbatch options for every job, e.g. '--partition=cpu --mem=6G --time=1:00:00'
#   --logs DIR         the jobs' output files (default $(OUT)/.slurm)
#   --wait             wait for the array to end; exit 1 unless every image has its montage
#   -h, --help         this text
# The environment is passed to the jobs (sbatch's default), and so are SBATCH_* variables.
set -euo pipefail
me=submit.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fail() { echo "$me: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

missing=0 chunk=1 max_running="" prepare_here=0 sbatch_args="" logs="" wait=0 prepare=""
vars=()
while [ $# -gt 0 ]; do
    case $1 in
        --missing) missing=1 ;;
        --chunk) [ $# -ge 2 ] || fail "--chunk needs a number"; chunk=$2; shift ;;
        --chunk=*) chunk=${1#*=} ;;
        --max-running) [ $# -ge 2 ] || fail "--max-running needs a number"; max_running=$2; shift ;;
        --max-running=*) max_running=${1#*=} ;;
        --prepare-here) prepare_here=1 ;;
        --sbatch-args) [ $# -ge 2 ] || fail "--sbatch-args needs a string of sbatch options"; sbatch_args=$2; shift ;;
        --sbatch-args=*) sbatch_args=${1#*=} ;;
        --logs) [ $# -ge 2 ] || fail "--logs needs a folder"; logs=$2; shift ;;
        --logs=*) logs=${1#*=} ;;
        --wait) wait=1 ;;
        -h|--help) usage; exit 0 ;;
        *=*) vars+=("$1") ;;
        *) fail "unknown argument '$1' — give options (--help) and make variables as VAR=VALUE" ;;
    esac
    shift
done
[[ $chunk =~ ^[1-9][0-9]*$ ]] || fail "--chunk $chunk: give a positive number"
[[ -z $max_running || $max_running =~ ^[1-9][0-9]*$ ]] || fail "--max-running $max_running: give a positive number"
have_bin=0
for v in "${vars[@]}"; do case $v in BIN=?*) have_bin=1 ;; esac; done
[ "$have_bin" = 1 ] || fail "give BIN=DIR, the tools' folder on a filesystem every node mounts (e.g. BIN=/shared/diffedit/bin)"
command -v sbatch >/dev/null || fail "sbatch is not on PATH — run this on a Slurm submit host"
makefile=${DIFFEDIT_MAKEFILE:-$here/../Makefile}
[ -r "$makefile" ] || fail "$makefile is missing — set DIFFEDIT_MAKEFILE to examples/Makefile"
makefile=$(cd "$(dirname "$makefile")" && pwd)/$(basename "$makefile")
batch=$here/diffedit-array.sbatch
[ -r "$batch" ] || fail "$batch is missing — keep submit.sh beside diffedit-array.sbatch"

mk() { make --no-print-directory -f "$makefile" "${vars[@]}" "$@"; }
out=$(mk -s --eval '_diffedit_out: ; @:$(info $(OUT))' _diffedit_out) || fail "make could not read $makefile with these settings (its message is above)"
case $out in /*) ;; *) out=$PWD/$out ;; esac
logs=${logs:-$out/.slurm}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)

# The names, sorted as make sorts them; task i takes lines i*chunk+1…i*chunk+chunk. The list is
# written to a new file (temp name, then mv) so that a later submission never changes what
# a pending task of this one reads.
listing=$(mk -s names) || fail "make could not list the images (its message is above)"
names=()
[ -z "$listing" ] || mapfile -t names <<< "$listing"
[ "${#names[@]}" -gt 0 ] || fail "no images in $(mk -s --eval '_diffedit_in: ; @:$(info $(IN))' _diffedit_in)/ — netpbm, PNG or JPEG files (see examples/Makefile)"
todo=()
for n in "${names[@]}"; do
    if [ "$missing" = 1 ] && [ -e "$out/$n.montage.png" ]; then continue; fi
    todo+=("$n")
done
if [ "${#todo[@]}" -eq 0 ]; then
    echo "$me: every image has its montage in $out — nothing to submit"
    exit 0
fi
list=$logs/names.$(date +%Y%m%d-%H%M%S).$$
printf '%s\n' "${todo[@]}" > "$list.tmp"
mv "$list.tmp" "$list"
tasks=$(( (${#todo[@]} + chunk - 1) / chunk ))

export DIFFEDIT_MAKEFILE=$makefile DIFFEDIT_NAMES=$list DIFFEDIT_CHUNK=$chunk
# shellcheck disable=SC2086  # sbatch_args is a list of options, split on purpose
sb() { sbatch --parsable $sbatch_args "$@"; }

dependency=()
if mk -q prepare; then
    echo "$me: the shared files are up to date"
elif [ "$prepare_here" = 1 ]; then
    echo "$me: making the shared files here (make prepare)"
    mk prepare
else
    prepare=$(sb --job-name=diffedit-prepare --output="$logs/prepare-%j.out" "$batch" "${vars[@]}") \
        || fail "sbatch refused the prepare job (its message is above)"
    prepare=${prepare%%;*}
    dependency=(--dependency="afterok:$prepare" --kill-on-invalid-dep=yes)
    echo "$me: prepare job $prepare (make prepare), log $logs/prepare-$prepare.out"
fi
array=$(sb --job-name=diffedit --array="0-$((tasks - 1))${max_running:+%$max_running}" "${dependency[@]}" \
    --output="$logs/diffedit-%A_%a.out" "$batch" "${vars[@]}") \
    || fail "sbatch refused the array (its message is above; more tasks than MaxArraySize? use --chunk)"
array=${array%%;*}
echo "$me: array job $array: $tasks tasks for ${#todo[@]} images (list $list), logs $logs/diffedit-${array}_*.out"
echo "$me: watch with: squeue -j $array${prepare:+,$prepare}; afterwards re-run what failed with: $me --missing ${vars[*]}"
[ "$wait" = 1 ] || exit 0

# Polls squeue until it lists none of the jobs (no accounting database needed). squeue -u, not
# -j: -j fails once a finished job is forgotten; a failing squeue (controller away) is retried.
user=$(id -un) errors=0
while :; do
    if listed=$(squeue -h -u "$user" -o '%F %i' 2>&1); then
        errors=0
        awk -v a="$array" -v p="$prepare" '$1 == a || $2 == a || (p != "" && $2 == p) { found = 1 } END { exit !found }' \
            <<< "$listed" || break
    else
        errors=$((errors + 1))
        [ "$errors" -lt 120 ] || fail "squeue kept failing for 2 minutes ($listed) — the jobs may still run; check with squeue -j $array"
    fi
    sleep 1
done
failed=()
for n in "${todo[@]}"; do [ -e "$out/$n.montage.png" ] || failed+=("$n"); done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "$me: ${#failed[@]} of ${#todo[@]} images have no montage: ${failed[*]} — see $logs/diffedit-${array}_*.out${prepare:+ and $logs/prepare-$prepare.out}, then run $me --missing ${vars[*]}" >&2
    exit 1
fi
echo "$me: all ${#todo[@]} images done"

#!/bin/bash
# Usage: edit-over-ssh.sh [OPTIONS] BIN=DIR [VAR=VALUE...]
#
# DiffEdits the images of the work folder (the current directory: images/, src.txt, dst.txt, as
# for examples/Makefile) on other machines over ssh with GNU parallel: one job per image, each
# running examples/Makefile for its image on a remote, in a fresh folder of its own there, with
# the image and the shared files sent along and the results brought back by name into out/.
# Nothing needs to be shared between the machines but ssh; every remote needs the tools at BIN
# and the Makefile at the same paths as here (e.g. `make install PREFIX=/opt/diffedit` on each).
# The shared files (`make prepare`: the captions' embeddings, the setting stamps) are made here
# first, so this machine needs the tools too.
#
#   printf '4/node1\n4/node2\n' > hosts      # GNU parallel's sshloginfile: jobs/host a line
#   examples/parallel/edit-over-ssh.sh -S hosts BIN=/opt/diffedit/bin MODEL=/data/sd15 STEPS=25
#   examples/parallel/edit-over-ssh.sh -S hosts --retry-failed BIN=…  …   # only the failed jobs
#
# Only images whose montage is missing or out of date get a job (make -q decides), so running
# it again after a failure or an interruption does what is left. VAR=VALUE: make variables
# (BIN is required; MODEL, STEPS, GUIDANCE, NEGATIVE, SEED, IN, OUT, *_FLAGS…); IN and OUT must
# be relative paths inside the work folder (they are recreated under the remote folder).
# Options:
#   -S, --sshloginfile FILE  the machines (GNU parallel's format; ':' is this machine)
#   --ssh CMD                the ssh command (default ssh), e.g. 'ssh -F ~/.ssh/cluster.conf'
#   --joblog FILE            GNU parallel's job log (default $(OUT)/.parallel/joblog)
#   --retry-failed           run again only the jobs the job log records as failed (same
#                            images as the last run; make still skips what is up to date)
#   -h, --help               this text
# Exit status: 0 when every job succeeded, else non-zero (GNU parallel's: the number of failed
# jobs, up to 100); the job log's Exitval column names them.
set -euo pipefail
me=edit-over-ssh.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fail() { echo "$me: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

sshloginfile="" ssh=ssh joblog="" retry=0
vars=()
while [ $# -gt 0 ]; do
    case $1 in
        -S|--sshloginfile) [ $# -ge 2 ] || fail "$1 needs a file"; sshloginfile=$2; shift ;;
        --sshloginfile=*) sshloginfile=${1#*=} ;;
        --ssh) [ $# -ge 2 ] || fail "--ssh needs a command"; ssh=$2; shift ;;
        --ssh=*) ssh=${1#*=} ;;
        --joblog) [ $# -ge 2 ] || fail "--joblog needs a file"; joblog=$2; shift ;;
        --joblog=*) joblog=${1#*=} ;;
        --retry-failed) retry=1 ;;
        -h|--help) usage; exit 0 ;;
        *=*) vars+=("$1") ;;
        *) fail "unknown argument '$1' — give options (--help) and make variables as VAR=VALUE" ;;
    esac
    shift
done
[ -n "$sshloginfile" ] || fail "give the machines with -S FILE (GNU parallel's sshloginfile: one [N/][user@]host a line)"
[ -r "$sshloginfile" ] || fail "$sshloginfile (the sshloginfile) is not readable"
bin=""
for v in "${vars[@]}"; do case $v in BIN=?*) bin=${v#BIN=} ;; esac; done
[ -n "$bin" ] || fail "give BIN=DIR, the tools' folder (the same path here and on every remote)"
command -v parallel >/dev/null || fail "GNU parallel is not on PATH — apt-get install parallel (scripts/setup-engines.sh)"
command -v rsync >/dev/null || fail "rsync is not on PATH — apt-get install rsync (GNU parallel sends files with it)"
makefile=${DIFFEDIT_MAKEFILE:-$here/../Makefile}
[ -r "$makefile" ] || fail "$makefile is missing — set DIFFEDIT_MAKEFILE to examples/Makefile"
makefile=$(cd "$(dirname "$makefile")" && pwd)/$(basename "$makefile")

mk() { make --no-print-directory -f "$makefile" "${vars[@]}" "$@"; }
makevar() { mk -s --eval "_diffedit_var: ; @:\$(info \$($1))" _diffedit_var; }
out=$(makevar OUT) || fail "make could not read $makefile with these settings (its message is above)"
in=$(makevar IN)
for d in "$out" "$in"; do
    case /$d/ in
        //|/./|*/../*|//*) fail "IN and OUT must be relative paths inside the work folder ('$d' is not) — cd to the folder that holds them" ;;
    esac
done
state=$out/.parallel
joblog=${joblog:-$state/joblog}
mkdir -p "$state"
exec 9> "$state/lock"
flock -n 9 || fail "another $me runs in this folder ($state/lock) — wait for it to end"

# Shell quoting for the remote command line (run by the remote user's shell).
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# The shared files, made here once, then staged as the remote folder will hold them: src.txt,
# dst.txt and, under .work/ (the remote make's OUT), the embeddings and the setting stamps,
# copied with their times (cp -p; rsync -t keeps them) so that make there finds them up to date
# and remakes nothing that every image shares.
mk prepare || fail "make prepare failed here (its message is above) — the shared files must be made before the images"
shared=$(mk -s shared) || fail "make could not list the shared files (its message is above)"
stage=$state/stage
rm -rf "$stage.tmp" && mkdir -p "$stage.tmp/.work"
cp -p src.txt dst.txt "$stage.tmp/"
while IFS= read -r f; do
    [ -n "$f" ] || continue
    mkdir -p "$stage.tmp/.work/$(dirname "${f#"$out"/}")"
    cp -p "$f" "$stage.tmp/.work/${f#"$out"/}"
done <<< "$shared"
rm -rf "$stage" && mv "$stage.tmp" "$stage"

# The images: those whose montage make would (re)make; the list is kept beside the job log,
# since the job log numbers jobs by their place in it.
inputs=$state/inputs
if [ "$retry" = 1 ]; then
    [ -r "$joblog" ] && [ -r "$inputs" ] || fail "no job log ($joblog) or list of images ($inputs) of an earlier run to retry — run without --retry-failed"
else
    listing=$(mk -s inputs) || fail "make could not list the images (its message is above)"
    : > "$inputs.tmp"
    while IFS= read -r f; do
        [ -n "$f" ] || continue
        n=${f##*/}; n=${n%.*}
        mk -q "$out/$n.montage.png" 2>/dev/null || printf '%s\n' "$f" >> "$inputs.tmp"
    done <<< "$listing"
    mv "$inputs.tmp" "$inputs"
    if [ ! -s "$inputs" ]; then
        echo "$me: every montage in $out is up to date — nothing to do"
        exit 0
    fi
fi

# Every remote must have the tools and the Makefile where this machine has them.
ssh_opt=(--ssh "$ssh" --sshloginfile "$sshloginfile")
# (Only lines with the marker count: a remote's shell may print greetings of its own.)
check="test -r $(q "$makefile") || echo diffedit-missing: $(q "$makefile"); test -x $(q "$bin/denoise") || echo diffedit-missing: $(q "$bin/denoise"); command -v make >/dev/null || echo 'diffedit-missing: make'"
checked=$(parallel "${ssh_opt[@]}" --nonall --tag "$check" 2>&1) || fail "cannot run commands on the machines of $sshloginfile: $(tr '\n' ' ' <<< "$checked")"
problems=$(grep 'diffedit-missing:' <<< "$checked" || true)
[ -z "$problems" ] || fail "the remotes lack what the jobs need — install diffedit at the same paths there: $(tr '\n' ';' <<< "$problems")"

# One job: make the image's montage in .work/ (remote OUT), and only when make succeeded link
# its files into $out/, the one folder returned, so a failed or killed job sends back nothing.
# rsync writes each returned file under a temporary name and renames it: no partial files here.
# (GNU parallel's own --retry-failed re-runs the job log's command lines alone, without the
# argument that --transferfile {} needs; --resume-failed re-reads the same list and reruns the
# failed jobs by number, which here is the same thing.)
remote_vars=""
for v in "${vars[@]}"; do remote_vars+=" $(q "$v")"; done
suffixes="input.ppm posterior mask inverted edited edited.ppm mask.ppm edited.png mask.png montage.png"
cmd="mkdir -p $(q "$out") && make --no-print-directory -f $(q "$makefile")$remote_vars OUT=.work .work/{/.}.montage.png"
cmd+=" && for s in $suffixes; do ln -f .work/{/.}.\$s $(q "$out")/; done"
resume=()
[ "$retry" = 1 ] && resume=(--resume-failed)
if [ "$retry" = 1 ]; then
    echo "$me: retrying the failed jobs of $joblog (of $(wc -l < "$inputs") images) on the machines of $sshloginfile"
else
    echo "$me: $(wc -l < "$inputs") images on the machines of $sshloginfile; job log $joblog"
fi
status=0
parallel "${ssh_opt[@]}" "${resume[@]}" --joblog "$joblog" --rsync-opts -rlDzRt --workdir ... \
    --transferfile "$stage/./" --transferfile {} --return "$out" --cleanup \
    --tagstring '{/.}' --line-buffer "$cmd" :::: "$inputs" || status=$?
if [ "$status" -ne 0 ]; then
    echo "$me: $status job(s) failed (Exitval in $joblog; their output above) — run again with --retry-failed, or without it for every image not yet done" >&2
    exit "$status"
fi
echo "$me: done; results in $out/"

#!/bin/bash
# Usage: scripts/test-engines.sh [slurm] [parallel]          (default: both)
#
# Tests the "many machines" recipes for real on this one machine, with the bundled demo model
# and demo scene (STEPS=10):
#   slurm     a one-node Slurm cluster on 127.0.0.1 (munged, slurmctld, slurmd started here with
#             every file in a temporary folder): examples/slurm/submit.sh edits 3 images as a job
#             array; the outputs must be byte-identical to plain make's. Then one task is
#             cancelled mid-run and another fails: neither leaves a partial file, and
#             submit.sh --missing completes only those, leaving the finished images alone.
#             Last, --chunk 3 and another OUT (2 tasks for 4 images).
#   parallel  sshd on 127.0.0.1 (throwaway keys, own config) as the "remote":
#             examples/parallel/edit-over-ssh.sh edits 3 images, byte-identical to make; a job
#             that fails is in the job log, and --retry-failed re-runs that job alone.
# BIN: the tools' folder (default: this checkout's .build/release). KEEP=1 keeps the temporary
# folder. Needs root or the daemons' packages: scripts/setup-engines.sh installs them.
#
# Prints one line per engine: "PASS <engine>: …", "SKIP <engine>: why" (packages missing, or a
# daemon that cannot start here: not a failure) or "FAIL <engine>: what"; exits 1 on any FAIL.
# Every daemon it starts is stopped when it exits, whatever the outcome (trap).
set -uo pipefail
# Jobs reached over ssh start with sshd's environment, not this one: a BLAS kernel chosen here
# (OPENBLAS_CORETYPE, as some CI machines set for every process) would make plain make's bytes
# differ from the workers' by float rounding. Every job of the test runs with the tools' own choice.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
me=test-engines.sh
BIN=${BIN:-$root/.build/release}
[ -x "$BIN/denoise" ] || { echo "$me: no tools in $BIN — build them (swift build -c release) or give BIN=DIR" >&2; exit 1; }
BIN=$(cd "$BIN" && pwd)
engines=("$@")
[ ${#engines[@]} -gt 0 ] || engines=(slurm parallel)
for e in "${engines[@]}"; do
    case $e in slurm|parallel) ;; *) echo "$me: unknown engine '$e' — give slurm and/or parallel" >&2; exit 1 ;; esac
done

MAKEFILE=$root/examples/Makefile
SCENE=$root/demo/scenes/red-circle.ppm
SUFFIXES="input.ppm posterior mask inverted edited edited.ppm mask.ppm edited.png mask.png montage.png"
SETTINGS=(BIN="$BIN" STEPS=10)
export PATH=$BIN:$PATH
unset DIFFEDIT_MODEL SLURM_CONF  # the tools' own demo model; our cluster only

tmp=$(mktemp -d /tmp/diffedit-engines.XXXXXX)
chmod 755 "$tmp"  # munged wants its socket's folders searchable by all
pids=()           # daemons to stop, last started first
started() { pids+=("$1"); echo "$1" >> "$tmp/daemons"; }
# Should this script be killed outright (SIGKILL: no trap runs), a watchdog stops its daemons
# (and cancels its jobs first) once it is gone. It holds none of this script's output streams.
: > "$tmp/daemons"
(
    while kill -0 $$ 2>/dev/null; do sleep 1; done
    [ -r "$tmp/daemons" ] || exit 0
    [ -r "$tmp/slurm/slurm.conf" ] && SLURM_CONF=$tmp/slurm/slurm.conf timeout 10 scancel --user="$(id -un)" && sleep 6
    xargs -r kill -9 < "$tmp/daemons"
    rm -rf "$tmp"
) < /dev/null > /dev/null 2>&1 &
watchdog=$!
cleanup() {
    kill "$watchdog" 2>/dev/null
    if [ -n "${SLURM_CONF:-}" ] && [ -r "${SLURM_CONF:-}" ]; then
        scancel --user="$(id -un)" 2>/dev/null
        for _ in $(seq 30); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    pids=()
    [ -n "${made_run_sshd:-}" ] && rmdir /run/sshd 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "$me: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

result=0
pass() { echo "PASS $1"; }
skip() { echo "SKIP $1"; }
failed() { echo "FAIL $1"; result=1; }
# A free TCP port on 127.0.0.1 (nothing answers a connection to it).
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        (exec 3<> "/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    return 1
}
# Waits up to $1 seconds for the command in the rest of the arguments to succeed.
wait_for() {
    local n=$(($1 * 5)); shift
    for _ in $(seq "$n"); do "$@" 2>/dev/null && return 0; sleep 0.2; done
    return 1
}
matches() { compgen -G "$1" > /dev/null; }   # a file matches the pattern
# daemon_up SECONDS "PID…" COMMAND…: waits for COMMAND to succeed while the daemons PID… run.
daemon_up() {
    local n=$(($1 * 5)) pids=$2 pid; shift 2
    for _ in $(seq "$n"); do
        "$@" 2>/dev/null && return 0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null || return 1; done
        sleep 0.2
    done
    return 1
}
# why_not PID LOG…: why a daemon is not up — exited or not ready, and the last line of its logs.
why_not() {
    local pid=$1 f line="" status
    shift
    for f in "$@"; do [ -s "$f" ] && line=$(grep -v -e pmix -e 'MPI:' "$f" | grep . | tail -1); done
    if kill -0 "$pid" 2>/dev/null; then status="running"; else status="exited"; fi
    echo "$status${line:+: $line}"
}
missing_commands() {
    local c m=""
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || m="$m $c"; done
    echo "${m# }"
}
mtimes() { (cd "$1" && stat -c '%n %.9Y' "${@:2}"); }
# The work folder's images: a the demo scene, b and c its mirror images, d turned half round,
# e its mirror image (d and e come in later).
scene() {
    case $1 in
        a) cat "$SCENE" ;; b) pnmflip -lr "$SCENE" ;; c) pnmflip -tb "$SCENE" ;;
        d) pnmflip -r180 "$SCENE" ;; e) pnmflip -r180 "$SCENE" | pnmflip -lr ;;
    esac
}
workdir() {  # workdir DIR NAME… : a work folder with those images and the demo captions
    mkdir -p "$1/images"
    local n
    for n in "${@:2}"; do scene "$n" > "$1/images/$n.ppm"; done
    echo "a red circle on a striped white background" > "$1/src.txt"
    echo "a blue circle on a striped white background" > "$1/dst.txt"
}
# same_as_make OUTDIR NAME…: every output of each image is byte-identical to plain make's.
same_as_make() {
    local out=$1 n s
    for n in "${@:2}"; do
        for s in $SUFFIXES; do
            [ -f "$out/$n.$s" ] || { echo "$out/$n.$s is missing"; return 1; }
            cmp -s "$ref/out/$n.$s" "$out/$n.$s" || { echo "$out/$n.$s differs from plain make's"; return 1; }
        done
    done
}
# no_outputs OUTDIR NAME [ALLOWED-SUFFIX…]: the image left no file but the allowed ones, and no
# hidden temporary (.NAME.*.tmp.PID: a failed or cancelled recipe removes its own).
no_outputs() {
    local out=$1 n=$2 f
    for f in "$out/$n".* "$out/.$n".*; do
        [ -e "$f" ] || continue
        case " ${*:3} " in *" ${f#"$out/$n".} "*) continue ;; esac
        echo "$f was left behind"; return 1
    done
}

# The reference: plain make, one process, on every image the engines will make.
ref=$tmp/reference
workdir "$ref" a b c d e
if ! (cd "$ref" && make -s -f "$MAKEFILE" "${SETTINGS[@]}" > make.log 2>&1); then
    echo "FAIL reference: plain make failed: $(tail -3 "$ref/make.log")"; exit 1
fi

# --- Slurm -----------------------------------------------------------------------------------
test_slurm() {
    local miss
    miss=$(missing_commands sbatch squeue scancel sinfo slurmctld slurmd munged)
    [ -z "$miss" ] || { skip "slurm: not installed ($miss) — scripts/setup-engines.sh installs slurm-wlm and munge"; return; }
    [ "$(id -u)" = 0 ] || { skip "slurm: slurmd must run as root to start jobs — run as root"; return; }
    local c=$tmp/slurm
    mkdir -p "$c/munge" "$c/key" "$c/state" "$c/spool" "$c/log"
    chmod 755 "$c" "$c/munge"; chmod 700 "$c/key"
    head -c 1024 /dev/urandom > "$c/key/munge.key"; chmod 600 "$c/key/munge.key"
    local munged slurmctld slurmd
    munged=$(command -v munged || echo /usr/sbin/munged)
    "$munged" -F --key-file="$c/key/munge.key" --socket="$c/munge/socket" --pid-file="$c/munge/munged.pid" \
        --log-file="$c/log/munged.log" --seed-file="$c/munge/seed" < /dev/null > "$c/log/munged.out" 2>&1 &
    started $!
    if ! daemon_up 10 $! test -S "$c/munge/socket"; then
        skip "slurm: munged does not start here ($(why_not $! "$c/log/munged.log" "$c/log/munged.out"))"; return
    fi
    local ctld_port d_port
    ctld_port=$(free_port) && d_port=$(free_port) || { skip "slurm: no free port on 127.0.0.1"; return; }
    touch "$c/plugstack.conf"
    # Everything in $c, on loopback ports of its own: nothing of the machine's own Slurm is used.
    cat > "$c/slurm.conf" <<EOF
ClusterName=diffedit-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$c/munge/socket
StateSaveLocation=$c/state
SlurmdSpoolDir=$c/spool
SlurmctldPidFile=$c/slurmctld.pid
SlurmdPidFile=$c/slurmd.pid
SlurmctldLogFile=$c/log/slurmctld.log
SlurmdLogFile=$c/log/slurmd.log
PlugStackConfig=$c/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$c/slurm.conf
    slurmctld=$(command -v slurmctld || echo /usr/sbin/slurmctld)
    slurmd=$(command -v slurmd || echo /usr/sbin/slurmd)
    "$slurmctld" -D -f "$SLURM_CONF" < /dev/null > "$c/log/slurmctld.out" 2>&1 &
    started $!
    local ctld=$!
    "$slurmd" -D -N localhost -f "$SLURM_CONF" < /dev/null > "$c/log/slurmd.out" 2>&1 &
    started $!
    local d=$!
    idle() { [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; }
    if ! daemon_up 30 "$ctld $d" idle; then
        skip "slurm: the cluster does not come up here (slurmctld $(why_not "$ctld" "$c/log/slurmctld.out" "$c/log/slurmctld.log"); slurmd $(why_not "$d" "$c/log/slurmd.out" "$c/log/slurmd.log"))"
        return
    fi

    local w=$c/work submit=$root/examples/slurm/submit.sh why before after job r
    workdir "$w" a b c
    # 1. Three images, one array task each, after the prepare job.
    if ! (cd "$w" && timeout 300 "$submit" --wait "${SETTINGS[@]}") > "$c/round1.log" 2>&1; then
        failed "slurm: submit.sh --wait failed: $(tail -3 "$c/round1.log" | tr '\n' ' ') $(cat "$w"/out/.slurm/*.out 2>/dev/null | tail -5 | tr '\n' ' ')"; return
    fi
    grep -q "array job .*: 3 tasks for 3 images" "$c/round1.log" || { failed "slurm: expected 3 tasks: $(cat "$c/round1.log")"; return; }
    grep -q "prepare job" "$c/round1.log" || { failed "slurm: no prepare job: $(cat "$c/round1.log")"; return; }
    why=$(same_as_make "$w/out" a b c) || { failed "slurm: $why"; return; }

    # 2. A task killed mid-run, a task that fails. d's image is a FIFO: its task blocks reading
    # it, with out/d.input.ppm's temporary (out/.d.input.ppm.tmp.PID) open for writing, until
    # scancel ends it.
    before=$(mtimes "$w/out" a.montage.png b.montage.png c.montage.png)
    mkfifo "$w/images/d.ppm"
    { printf 'P6\n7 7\n255\n'; head -c 147 /dev/zero; } > "$w/images/bad.ppm"   # 7×7: vae-encode refuses it
    (cd "$w" && timeout 300 "$submit" --missing --wait "${SETTINGS[@]}" > "$c/round2.log" 2>&1; echo "status $?" >> "$c/round2.log") &
    local waiter=$!
    if ! wait_for 60 matches "$w/out/.d.input.ppm.tmp.*"; then
        kill "$waiter" 2>/dev/null; failed "slurm: d's task never started: $(cat "$c/round2.log")"; return
    fi
    job=$(sed -nE 's/.*array job ([0-9]+):.*/\1/p' "$c/round2.log")
    grep -q "2 tasks for 2 images" "$c/round2.log" || { failed "slurm: --missing should submit bad and d only: $(cat "$c/round2.log")"; return; }
    scancel "${job}_1"   # names sorted: bad is task 0, d task 1
    wait "$waiter"
    grep -q "status 1" "$c/round2.log" || { failed "slurm: submit.sh --wait should fail when tasks fail: $(cat "$c/round2.log")"; return; }
    grep -q "2 of 2 images have no montage: bad d" "$c/round2.log" || { failed "slurm: failures not reported: $(cat "$c/round2.log")"; return; }
    grep -q CANCELLED "$w/out/.slurm/diffedit-${job}_1.out" || { failed "slurm: d's task was not cancelled: $(cat "$w/out/.slurm/diffedit-${job}_1.out")"; return; }
    why=$(no_outputs "$w/out" d) || { failed "slurm: cancelled task: $why"; return; }
    why=$(no_outputs "$w/out" bad input.ppm) || { failed "slurm: failed task: $why"; return; }

    # 3. Resubmit what is missing: d only (bad removed, d a real image now).
    rm -f "$w/images/d.ppm" "$w/images/bad.ppm" "$w/out/bad.input.ppm"
    scene d > "$w/images/d.ppm"
    if ! (cd "$w" && timeout 300 "$submit" --missing --wait "${SETTINGS[@]}") > "$c/round3.log" 2>&1; then
        failed "slurm: resubmitting the missing image failed: $(tail -3 "$c/round3.log" | tr '\n' ' ')"; return
    fi
    grep -q "1 tasks for 1 images" "$c/round3.log" || { failed "slurm: --missing should submit d only: $(cat "$c/round3.log")"; return; }
    why=$(same_as_make "$w/out" a b c d) || { failed "slurm: after resubmitting: $why"; return; }
    after=$(mtimes "$w/out" a.montage.png b.montage.png c.montage.png)
    [ "$before" = "$after" ] || { failed "slurm: finished images were made again: $before / $after"; return; }
    r=$(cd "$w" && timeout 300 "$submit" --missing "${SETTINGS[@]}" 2>&1)
    [[ $r == *"nothing to submit"* ]] || { failed "slurm: a third --missing should submit nothing: $r"; return; }

    # 4. Chunks: 4 images, 3 per task, into another OUT (its own prepare job).
    if ! (cd "$w" && timeout 300 "$submit" --wait --chunk 3 "${SETTINGS[@]}" OUT=chunked) > "$c/round4.log" 2>&1; then
        failed "slurm: --chunk 3 failed: $(tail -3 "$c/round4.log" | tr '\n' ' ')"; return
    fi
    grep -q "2 tasks for 4 images" "$c/round4.log" || { failed "slurm: expected 2 tasks: $(cat "$c/round4.log")"; return; }
    why=$(same_as_make "$w/chunked" a b c d) || { failed "slurm: chunked: $why"; return; }
    pass "slurm: 3-task array byte-identical to make; cancelled and failed tasks left no partial file; --missing redid only those (1 task), finished images untouched; --chunk 3: 2 tasks for 4 images"
}

# --- GNU parallel over ssh -----------------------------------------------------------------
test_parallel() {
    local miss
    miss=$(missing_commands parallel sshd ssh ssh-keygen rsync)
    [ -z "$miss" ] || { skip "parallel: not installed ($miss) — scripts/setup-engines.sh installs parallel, openssh-server, openssh-client and rsync"; return; }
    local s=$tmp/ssh port sshd
    mkdir -p "$s"
    ssh-keygen -q -t ed25519 -N '' -f "$s/host_key" -C diffedit-test-host || { skip "parallel: ssh-keygen failed"; return; }
    ssh-keygen -q -t ed25519 -N '' -f "$s/client_key" -C diffedit-test-client
    cp "$s/client_key.pub" "$s/authorized_keys"
    port=$(free_port) || { skip "parallel: no free port on 127.0.0.1"; return; }
    # Its own config: loopback only, keys only, everything in $s.
    cat > "$s/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $s/host_key
PidFile $s/sshd.pid
AuthorizedKeysFile $s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
EOF
    echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$s/host_key.pub")" > "$s/known_hosts"
    cat > "$s/ssh_config" <<EOF
Host diffedit-test
    HostName 127.0.0.1
    Port $port
    User $(id -un)
    IdentityFile $s/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $s/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    LogLevel ERROR
EOF
    if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then mkdir -m 755 /run/sshd && made_run_sshd=1; fi  # sshd's privilege separation folder
    sshd=$(command -v sshd || echo /usr/sbin/sshd)
    "$sshd" -D -f "$s/sshd_config" -E "$s/sshd.log" < /dev/null > "$s/sshd.out" 2>&1 &
    started $!
    if ! daemon_up 15 $! ssh -F "$s/ssh_config" diffedit-test true < /dev/null; then
        skip "parallel: sshd on 127.0.0.1:$port does not let the test key in here (sshd $(why_not $! "$s/sshd.out" "$s/sshd.log"))"; return
    fi

    local w=$s/work run=$root/examples/parallel/edit-over-ssh.sh why before after r
    workdir "$w" a b c
    echo 2/diffedit-test > "$w/hosts"
    over_ssh() { (cd "$w" && "$run" -S hosts --ssh "ssh -F $s/ssh_config" "$@" "${SETTINGS[@]}"); }
    # 1. Three images over ssh.
    over_ssh > "$s/round1.log" 2>&1 || { failed "parallel: edit-over-ssh.sh failed: $(tail -5 "$s/round1.log" | tr '\n' ' ')"; return; }
    why=$(same_as_make "$w/out" a b c) || { failed "parallel: $why"; return; }
    (cd "$w" && make -q -f "$MAKEFILE" "${SETTINGS[@]}") || { failed "parallel: make here does not find the returned files up to date"; return; }

    # 2. A job that fails (7×7 image), beside one that works.
    before=$(mtimes "$w/out" a.montage.png b.montage.png c.montage.png)
    { printf 'P6\n7 7\n255\n'; head -c 147 /dev/zero; } > "$w/images/bad.ppm"
    scene d > "$w/images/d.ppm"
    over_ssh > "$s/round2.log" 2>&1 && { failed "parallel: a failing job should make edit-over-ssh.sh fail"; return; }
    local log=$w/out/.parallel/joblog
    r=$(awk -F'\t' 'NR > 1 && $7 != 0 { print $9 }' "$log")
    [[ $(wc -l <<< "$r") = 1 && $r == *bad.montage.png* ]] || { failed "parallel: the job log should record bad's job alone as failed: $(cat "$log")"; return; }
    why=$(no_outputs "$w/out" bad) || { failed "parallel: failed job: $why"; return; }
    why=$(same_as_make "$w/out" d) || { failed "parallel: $why"; return; }

    # 3. --retry-failed, once bad is a real image: bad's job alone runs again.
    before=$(mtimes "$w/out" a.montage.png b.montage.png c.montage.png d.montage.png)
    scene e > "$w/images/bad.ppm"
    over_ssh --retry-failed > "$s/round3.log" 2>&1 || { failed "parallel: --retry-failed failed: $(tail -5 "$s/round3.log" | tr '\n' ' ')"; return; }
    [ "$(($(wc -l < "$log") - 1))" = 3 ] || { failed "parallel: --retry-failed should run one job: $(cat "$log")"; return; }
    [[ $(tail -1 "$log" | cut -f7,9) == 0*bad.montage.png* ]] || { failed "parallel: the retried job is not bad's: $(tail -1 "$log")"; return; }
    after=$(mtimes "$w/out" a.montage.png b.montage.png c.montage.png d.montage.png)
    [ "$before" = "$after" ] || { failed "parallel: finished images were made again: $before / $after"; return; }
    for suffix in $SUFFIXES; do cmp -s "$ref/out/e.$suffix" "$w/out/bad.$suffix" || { failed "parallel: out/bad.$suffix differs from plain make's"; return; }; done
    r=$(over_ssh 2>&1)
    [[ $r == *"nothing to do"* ]] || { failed "parallel: a run after everything is done should do nothing: $r"; return; }
    pass "parallel: 3 jobs over ssh byte-identical to make; the failed job is in the job log with nothing returned; --retry-failed re-ran it alone, finished images untouched"
}

for e in "${engines[@]}"; do "test_$e"; done
exit "$result"

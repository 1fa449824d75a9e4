#!/bin/sh
# Usage: scripts/setup-debian.sh [--engines]
# Installs what diffedit needs from Debian (the Swift toolchain itself is expected on PATH).
# --engines also installs what the many-machine recipes and their tests need (Slurm, munge,
# GNU parallel, OpenSSH, rsync: scripts/setup-engines.sh); the tests skip those recipes without it.
# Safe to run again: packages already present are not fetched twice.
set -eu
engines=0
for arg in "$@"; do
    case $arg in
        --engines) engines=1 ;;
        -h|--help) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "setup: unknown option '$arg' — the one option is --engines" >&2; exit 1 ;;
    esac
done
packages="libopenblas-dev libnetpbm-dev netpbm mandoc pkg-config make python3 python3-numpy"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    echo "setup: installing$missing" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
command -v swift >/dev/null 2>&1 || { echo "setup: swift is not on PATH — install the Swift 6 toolchain for Linux" >&2; exit 1; }
if [ "$engines" = 1 ]; then "$(dirname "$0")/setup-engines.sh"; fi

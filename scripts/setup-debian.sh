#!/bin/sh
# Installs what diffedit needs from Debian (the Swift toolchain itself is expected on PATH).
# Safe to run again: packages already present are not fetched twice.
set -eu
packages="libopenblas-dev libnetpbm-dev netpbm mandoc pkg-config make"
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

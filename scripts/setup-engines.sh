#!/bin/sh
# Usage: scripts/setup-engines.sh
# Installs from Debian what the "many machines" recipes and their tests need: Slurm (slurmctld,
# slurmd, sbatch…) with munge for its authentication, GNU parallel, OpenSSH server and client, rsync.
# Safe to run again: packages already present are not fetched twice. Installing must not leave
# daemons running (Debian starts munge, sshd and slurm services on install), so service starts are
# refused during the install with a policy-rc.d, and none is started afterwards.
set -eu
packages="slurm-wlm munge parallel openssh-server openssh-client rsync"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup-engines: not root and no sudo — run as root to install:$missing" >&2; exit 1; }
    sudo=sudo
else
    sudo=
fi
echo "setup-engines: installing$missing" >&2
# No service may start while installing (exit 101 = "action forbidden" for invoke-rc.d); an
# existing policy-rc.d is kept and restored.
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then saved=$(mktemp); $sudo cp -p "$policy" "$saved"; fi
restore() {
    if [ -n "$saved" ]; then $sudo cp -p "$saved" "$policy"; rm -f "$saved"; else $sudo rm -f "$policy"; fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
$sudo chmod 755 "$policy"
if ! $sudo apt-get update -qq; then
    echo "setup-engines: apt-get update failed — check the network and /etc/apt/sources.list, then run again" >&2
    exit 1
fi
if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
    echo "setup-engines: apt-get install$missing failed — see apt's message above, then run again" >&2
    exit 1
fi

#!/usr/bin/env python3
"""Peak memory of a whole command tree, as the machine sees it.

    bench/machine_memory.py [--interval S] [--json FILE] -- COMMAND [ARGS...]

Runs COMMAND and samples /proc/PID/smaps_rollup of it and all its descendants every
--interval seconds (default 0.05). Reports the peaks of the sums over the live processes of

  pss      proportional set size: a page shared by k processes counts 1/k in each, so the sum
           is the memory the tree really occupies (shared weight pages counted once);
  rss      resident set size: shared pages counted once per process (what `top` adds up);
  private  pages no other process maps (activations, private weight copies);

plus the most processes seen at once. `/usr/bin/time -f %M` reports one process's peak RSS;
for `make -j2` the question is what the two tools hold together, which only the sum over the
live tree at each instant answers. Exit status is COMMAND's.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def children(pid):
    """Every descendant of pid (from /proc/*/stat parent links)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # comm may hold spaces or parentheses: the fields after the last ')' are fixed.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parent[int(entry)] = ppid
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = set(), {pid}
    while frontier:
        tree |= frontier
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in tree}
    return tree


def rollup(pid):
    """(pss, rss, private) in bytes, or None if the process has gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return None
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Pss", 0), fields.get("Rss", 0), private


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between samples (default 0.05)")
    ap.add_argument("--json", help="also write the peaks as JSON to this file")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given — put it after --")
    if not args.interval > 0:
        ap.error("--interval must be a positive number of seconds")

    start = time.monotonic()
    proc = subprocess.Popen(command)
    peak = {"pss": 0, "rss": 0, "private": 0, "processes": 0}
    while proc.poll() is None:
        sums = [0, 0, 0]
        live = 0
        for pid in children(proc.pid):
            r = rollup(pid)
            if r is None or r[1] == 0:
                continue
            live += 1
            for i in range(3):
                sums[i] += r[i]
        for key, value in zip(("pss", "rss", "private"), sums):
            peak[key] = max(peak[key], value)
        peak["processes"] = max(peak["processes"], live)
        time.sleep(args.interval)
    peak["seconds"] = round(time.monotonic() - start, 1)
    peak["status"] = proc.returncode
    gib = 1 << 30
    print(f"machine_memory: peak PSS {peak['pss'] / gib:.2f} GiB, peak RSS sum {peak['rss'] / gib:.2f} GiB, "
          f"peak private {peak['private'] / gib:.2f} GiB, up to {peak['processes']} processes, "
          f"{peak['seconds']} s, exit {peak['status']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, **peak}, f, indent=1)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

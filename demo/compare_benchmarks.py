#!/usr/bin/env python3
"""Compares benchmark.py results (RESULTS.json files) case by case against the first one.

    python3 demo/compare_benchmarks.py BASE.json OTHER.json ... [--methods diffedit diffedit-paper gt-mask]

For each file and method: mask IoU, background PSNR and MAE, edit success (all, colour, shape), and
against BASE the cases the method edits successfully where BASE fails ("won") and the reverse
("lost"), with the exact two-sided sign test on those discordant cases (same held-out cases and
tool seeds in every run, so the comparison is paired). Standard library only.
"""
import argparse
import json
import math


def sign_test(won, lost):
    """Two-sided exact binomial test of won vs lost discordant pairs (p = 1/2)."""
    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(won, lost) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def label(r):
    s = r["settings"]
    name = {"ddim": "DDIM", "dpm": "DPM-Solver++"}[s.get("scheduler", "ddim")]
    return f"{name} {s['steps']}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="RESULTS.json files; the first is the baseline")
    p.add_argument("--methods", nargs="+", default=["diffedit", "diffedit-paper", "gt-mask"])
    a = p.parse_args()
    runs = [json.load(open(f)) for f in a.results]
    base = {c["case"]: c for c in runs[0]["cases"]}
    print(f"| scheduler, steps | method | mask IoU | background PSNR (dB) | background MAE (/255) | edit success: all "
          f"| colour | shape | vs {label(runs[0])}: won / lost (sign test p) | tool time per case (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        cases = {c["case"]: c for c in r["cases"]}
        assert i == 0 or cases.keys() == base.keys(), "the runs must hold the same cases"
        for m in a.methods:
            s = r["summary"][m]
            al = s["all"]
            pct = lambda e: f"{100 * e['success']:.1f} %"  # noqa: E731
            if i == 0:
                vs = "—"
            else:
                won = sum(cases[k]["methods"][m]["success"] and not base[k]["methods"][m]["success"] for k in cases)
                lost = sum(base[k]["methods"][m]["success"] and not cases[k]["methods"][m]["success"] for k in cases)
                vs = f"{won} / {lost} (p = {sign_test(won, lost):.2f})"
            print(f"| {label(r)} | `{m}` | {al['mask_iou']:.3f} | {al['bg_psnr']:.2f} | {al['bg_mae']:.2f} | {pct(al)} "
                  f"| {pct(s['colour'])} | {pct(s['shape'])} | {vs} | {r['tool_seconds_per_case']:.1f} |")


if __name__ == "__main__":
    main()

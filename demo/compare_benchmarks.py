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


def label(r, with_model=False, base=None):
    """The run's scheduler and steps; for runs that record every stage's settings (benchmark.py's
    `settings.stages`), the settings in which it differs from `base` too ("invert guidance 1.0")."""
    s = r["settings"]
    name = {"ddim": "DDIM", "dpm": "DPM-Solver++"}[s.get("scheduler", "ddim")]
    text = (f"{s.get('model', '?')}, " if with_model else "") + f"{name} {s['steps']}"
    if base is not None and "stages" in s and "stages" in base["settings"]:
        diff = [f"{stage} {k.replace('_', ' ')} {v}" for stage, kv in s["stages"].items() for k, v in kv.items()
                if k not in ("from_defaults_file", "scheduler") and base["settings"]["stages"].get(stage, {}).get(k) != v]
        text += "".join(", " + d for d in diff)
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="RESULTS.json files; the first is the baseline")
    p.add_argument("--methods", nargs="+", default=["diffedit", "diffedit-paper", "gt-mask"])
    a = p.parse_args()
    runs = [json.load(open(f)) for f in a.results]
    # Cases are paired by their scene's seed (runs with another --first-seed hold other scenes).
    base = {c["seed"]: c for c in runs[0]["cases"]}
    # Runs on different models (v1 against v2) are labelled with the model too.
    models = len({r["settings"].get("model") for r in runs}) > 1
    label_of = lambda r: label(r, models, runs[0])  # noqa: E731
    print(f"| {'model, ' if models else ''}scheduler, steps | method | mask IoU | background PSNR (dB) | background MAE (/255) | edit success: all "
          f"| colour | shape | vs {label_of(runs[0])}: won / lost (sign test p) | tool time per case (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        cases = {c["seed"]: c for c in r["cases"]}
        if i and cases.keys() != base.keys():
            raise SystemExit(f"compare_benchmarks.py: {a.results[i]} holds other cases than {a.results[0]} "
                             "— compare runs of the same --cases and --first-seed")
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
            # Runs that record it: the pooled error's PSNR and the share of exact backgrounds too.
            psnr = f"{al['bg_psnr']:.2f}" + (f" (pooled {al['bg_psnr_pooled']:.2f}, exact {100 * al['bg_exact']:.0f} %)"
                                             if "bg_psnr_pooled" in al else "")
            print(f"| {label_of(r)} | `{m}` | {al['mask_iou']:.3f} | {psnr} | {al['bg_mae']:.2f} | {pct(al)} "
                  f"| {pct(s['colour'])} | {pct(s['shape'])} | {vs} | {r['tool_seconds_per_case']:.1f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Why edits fail: a breakdown of one benchmark run (demo/benchmark.py's RESULTS.json).

    python3 demo/failures.py demo/benchmark/results-v2-g3.json [--method diffedit]

For the method named (default `diffedit`) it prints
- edit success by edit kind, by scene (one or two objects) and by background;
- for the failed cases, what came out: the object unchanged (the source colour or shape measured:
  the edit did not happen), something else (a third colour or shape, or no object found), and
  whether the same case succeeded with the ground-truth mask (`gt-mask`: then the inferred mask
  is to blame) or also failed there (the generation is), with the masks' IoU on both sides;
- the background PSNR of successes and failures.
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict


def edit_words(source: str, target: str):
    """The word the edit changes: (from, to), from the two captions."""
    s, t = source.split(), target.split()
    diff = [(a, b) for a, b in zip(s, t) if a != b]
    return diff[0] if len(diff) == 1 else (None, None)


def background(caption: str) -> str:
    """The background's pattern (world.Background.phrase: plain, gradient, striped or noisy)."""
    m = re.search(r"on an? (.+) background$", caption)
    words = m.group(1).split() if m else []
    return next((w for w in ("plain", "gradient", "striped", "noisy") if w in words), "?")


def rate(cases, method):
    n = len(cases)
    ok = sum(c["methods"][method]["success"] for c in cases)
    return f"{ok / n * 100:5.1f} % of {n:3d}" if n else "    — of   0"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="a RESULTS.json written by demo/benchmark.py --results")
    p.add_argument("--method", default="diffedit")
    a = p.parse_args()
    try:
        with open(a.results) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"failures.py: cannot read {a.results}: {e} — give a RESULTS.json of demo/benchmark.py")
    cases, m = run["cases"], a.method
    if not cases or m not in cases[0]["methods"]:
        sys.exit(f"failures.py: no method {m!r} in {a.results} — give one of "
                 f"{', '.join(cases[0]['methods']) if cases else '(no cases)'}")
    print(f"{a.results}: {len(cases)} cases, method {m}, settings {run.get('settings', {})}")

    groups = defaultdict(list)
    for c in cases:
        objects = "two objects" if " and " in c["source"] else "one object"
        groups[("kind", c["kind"])].append(c)
        groups[("scene", objects)].append(c)
        groups[("kind × scene", f"{c['kind']}, {objects}")].append(c)
        groups[("background", background(c["source"]))].append(c)
    print("\nedit success")
    for key in sorted(groups):
        print(f"  {key[0]:>12}: {key[1]:<24} {rate(groups[key], m)}   (gt-mask {rate(groups[key], 'gt-mask')})")

    failed = [c for c in cases if not c["methods"][m]["success"]]
    print(f"\nfailures: {len(failed)} of {len(cases)}")
    for kind in ("colour", "shape"):
        f = [c for c in failed if c["kind"] == kind]
        if not f:
            continue
        outcome = Counter()
        for c in f:
            was, want = edit_words(c["source"], c["target"])
            got = c["methods"][m]["got"]
            outcome["unchanged (the source " + kind + ")" if got == was else
                    "nothing measurable" if got is None else "another " + kind] += 1
        print(f"  {kind} edits, {len(f)} failed: " + ", ".join(f"{k} {v}" for k, v in outcome.most_common()))
        mask_blame = [c for c in f if c["methods"]["gt-mask"]["success"]]
        gen_blame = [c for c in f if not c["methods"]["gt-mask"]["success"]]
        for label, g in (("succeeds with the true mask (the inferred mask is to blame)", mask_blame),
                         ("fails with the true mask too (the generation is)", gen_blame)):
            if g:
                iou = sum(c["methods"][m]["mask_iou"] for c in g) / len(g)
                print(f"    {len(g):3d} {label}: inferred mask IoU {iou:.2f}")
    ok = [c for c in cases if c["methods"][m]["success"]]
    iou_ok = sum(c["methods"][m]["mask_iou"] for c in ok) / max(1, len(ok))
    iou_bad = sum(c["methods"][m]["mask_iou"] for c in failed) / max(1, len(failed))
    psnr = lambda g: sum(c["methods"][m]["bg_psnr"] for c in g) / max(1, len(g))  # noqa: E731
    print(f"\nmask IoU: successes {iou_ok:.2f}, failures {iou_bad:.2f}; "
          f"background PSNR: successes {psnr(ok):.2f} dB, failures {psnr(failed):.2f} dB")


if __name__ == "__main__":
    main()

"""The large-photo mode of demo/benchmark.py (`--photo-scale N`): the demo world's held-out scenes
rendered at N times the model's 64 pixels, edited at their own resolution by examples/photo.sh
(the mask on the whole photo at the model's size, the region around it cut at full resolution,
edited at the model's size, pasted back by composite), and scored at full resolution:

    mask IoU       composite's pixel mask (photo.mask.pgm, before feathering) vs the true mask G
                   (union of the edited object's source and target masks) at N×64 pixels
    background     input vs output over the pixels outside G: per-case PSNR (capped), the pooled
                   error's PSNR, the share of exact backgrounds, MAE
    untouched      the same outside every pixel the edited object covers at all, before or after
                   (world.EditPair.touched), where a perfect edit is exact
    ideal          a reference row: the true target render at N×64 pixels, scored the same way
    edit success   the output shrunk to 64×64 by area averaging, then benchmark.py's measure on the
                   64-px scene (the classifier and the colour rule were made for that scale)
    peak RSS       the largest resident set of any one process of the recipe (GNU time), per case;
                   the table reports the largest over all cases

The recipe runs with the model's defaults (diffedit_defaults.json) and seed k, as benchmark.py's
runs without flags do; settings of benchmark.py's command line are not passed (photo.sh takes
its own environment). Needs numpy, netpbm and the release tools.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE]
import measure  # noqa: E402
import world  # noqa: E402

PHOTO_SH = os.path.join(ROOT, "examples", "photo.sh")
ROW = "diffedit-photo"
IDEAL = "ideal"  # the true target render: what a perfect edit scores


def shrink(img, factor):
    """Area average by an integer factor: uint8 [H, W, 3] -> uint8 [H/f, W/f, 3]."""
    h, w, c = img.shape
    x = img.astype(np.float64).reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def edit_case(k, a, scale):
    """Runs examples/photo.sh on case k rendered at scale×64 pixels; returns (folder, seconds, rss)."""
    seed = a.first_seed + k
    kind = "colour" if k % 2 == 0 else "shape"
    big = world.make_edit_pair(seed, kind=kind, size=64 * scale)
    d = os.path.join(a.work, f"photo{scale}-case-{k:04d}")
    done = os.path.join(d, "done")
    if a.reuse and os.path.exists(done):
        secs, rss = open(done).read().split()
        return d, float(secs), int(rss)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    measure.write_pnm(f"{d}/src.ppm", big.source.image)
    env = dict(os.environ, BIN=a.bin, MODEL=a.model, SEED=str(k), WORK=f"{d}/work", OPENBLAS_NUM_THREADS="1")
    # GNU time's %M is the largest resident set of the command and every process it waited for:
    # bash waits for each stage of photo.sh, so this is the recipe's largest process.
    cmd = (f"/usr/bin/time -f %M -o rss.txt {shlex.quote(PHOTO_SH)} src.ppm "
           f"{shlex.quote(big.source_caption)} {shlex.quote(big.target_caption)} > out.ppm 2> log.txt")
    t0 = time.time()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=d, env=env)
    secs = time.time() - t0
    if r.returncode:
        raise RuntimeError(f"case {k}: photo.sh exit {r.returncode} (see {d}/log.txt)")
    rss = int(open(f"{d}/rss.txt").read().split()[-1])
    open(done, "w").write(f"{secs:.2f} {rss}\n")
    return d, secs, rss


def score_case(k, d, a, scale, clf, background_scores):
    """Metrics of the photo edit of case k at full resolution (success at 64 px), and of the
    `ideal` reference (the true target render) beside it."""
    seed = a.first_seed + k
    kind = "colour" if k % 2 == 0 else "shape"
    big = world.make_edit_pair(seed, kind=kind, size=64 * scale)
    small = world.make_edit_pair(seed, kind=kind)
    g, untouched = big.mask, ~big.touched
    i = small.index
    obj = small.target.objects[i]
    want = obj.colour if kind == "colour" else obj.shape

    def scores(out):
        low = shrink(out, scale)
        if kind == "colour":
            got = measure.dominant_colour(low, small.source.masks[i] & small.target.masks[i])[0]
        else:
            got = clf.predict(clf.segment(low, obj.colour, measure.dilate(small.mask, 3)))
        r = {**background_scores(out, big.source.image, ~g, "bg"),
             **background_scores(out, big.source.image, untouched, "untouched"), "got": got, "success": got == want}
        return {key: (round(v, 4) if isinstance(v, float) and not key.endswith("_sse") else v) for key, v in r.items()}

    pixel_mask = measure.read_pnm(f"{d}/work/photo.mask.pgm") > 0
    edit = scores(measure.read_pnm(f"{d}/out.ppm")) | {"mask_iou": round(measure.iou(pixel_mask, g), 4)}
    return {"case": k, "seed": seed, "kind": kind, "want": want,
            "methods": {ROW: edit, IDEAL: scores(big.target.image)}}


def run(a, clf, summarise, background_scores):
    """The large-photo mode: every case through photo.sh at a.photo_scale; writes RESULTS.json/.md."""
    scale = a.photo_scale
    if not os.access(PHOTO_SH, os.X_OK):
        sys.exit(f"benchmark: {PHOTO_SH} is missing or not executable")
    os.makedirs(a.work, exist_ok=True)
    t0 = time.time()
    rows, seconds, rss = [], [], []
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        futs = {ex.submit(edit_case, k, a, scale): k for k in range(a.cases)}
        for n, f in enumerate(cf.as_completed(futs), 1):
            k = futs[f]
            d, secs, r = f.result()
            seconds.append(secs)
            rss.append(r)
            rows.append(score_case(k, d, a, scale, clf, background_scores))
            if n % 10 == 0 or n == a.cases:
                print(f"benchmark: photos at {scale}x: {n}/{a.cases} cases, {time.time() - t0:.0f} s", file=sys.stderr)
    rows.sort(key=lambda r: r["case"])
    summary = summarise(rows, [ROW, IDEAL], references=())
    size = 64 * scale
    lines = [f"Large-photo mode: {a.cases} {'held-out' if a.first_seed == 2_000_000 else 'tuning'} scenes "
             f"rendered at {size}x{size} ({scale}x the model's 64 px), edited by examples/photo.sh at the "
             f"model's defaults; {np.mean(seconds):.1f} s per case ({a.jobs} at once), peak RSS of the "
             f"largest process {max(rss) / 1024:.0f} MiB (median {np.median(rss) / 1024:.0f} MiB).", "",
             "| method | mask IoU (pixels) | bg PSNR mean (dB) | bg PSNR pooled (dB) | exact bg | bg MAE | "
             "untouched PSNR mean (dB) | pooled | exact | edit success: all | colour | shape |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in (ROW, IDEAL):
        s = summary[name]
        e = s["all"]
        iou = f"{e['mask_iou']:.3f}" if "mask_iou" in e else "—"
        lines.append(f"| `{name}` ({size} px) | {iou} | {e['bg_psnr']:.2f} | {e['bg_psnr_pooled']:.2f} | "
                     f"{100 * e['bg_exact']:.1f} % | {e['bg_mae']:.2f} | {e['untouched_psnr']:.2f} | "
                     f"{e['untouched_psnr_pooled']:.2f} | {100 * e['untouched_exact']:.1f} % | "
                     f"{100 * e['success']:.1f} % | {100 * s['colour']['success']:.1f} % | "
                     f"{100 * s['shape']['success']:.1f} % |")
    md = "\n".join(lines) + "\n"
    print(md)
    if a.results:
        os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
        with open(a.results + ".json", "w") as f:
            json.dump({"summary": summary, "settings": {"cases": a.cases, "first_seed": a.first_seed,
                                                        "photo_scale": scale, "model": a.model},
                       "seconds_per_case": float(np.mean(seconds)), "peak_rss_kib": max(rss),
                       "rows": rows}, f, indent=1)
        with open(a.results + ".md", "w") as f:
            f.write(md)

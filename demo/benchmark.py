#!/usr/bin/env python3
"""DiffEdit's edit quality on held-out scenes of the demo world, measured through the Swift tools.

    python3 demo/benchmark.py [--cases 200] [--jobs 2] [--model demo/model] [--bin DIR]
        [--steps 50] [--scheduler ddim|dpm] [--guidance 3] [--invert-guidance G] [--strength 0.8]
        [--negative empty|source]
        [--work /tmp/diffedit-bench] [--reuse] [--results demo/benchmark/results] [--montage 8]

The defaults are the demo model's settings (examples.sh's): guidance 3 for every stage and the
empty negative prompt; `--guidance 7.5` gives the tools' own (diffusers') defaults.

Needs numpy and the release tools (`swift build -c release`); not torch. For each case k
(world.make_edit_pair(2_000_000 + k): colour edits for even k, shape edits for odd k; the training
set used seeds 0..23999) it runs, with tool seed k:

    vae-encode src.ppm > posterior            tokenize SRC | encode-text > src   (and tgt)
    tokenize '' | encode-text > empty       (every negative prompt is given: no model default applies)
    noise-diff-mask --source src --target tgt --source-negative empty --target-negative empty
        --guidance G --scheduler X < posterior > mask
    invert --prompt src --negative empty --guidance G|IG --strength S --scheduler X < posterior > inverted
    denoise --mask M --blend B --prompt tgt --negative src|empty --guidance G < inverted | vae-decode > V.ppm

(denoise takes the scheduler X, ddim or dpm, from the stack) for the methods
    diffedit         the inferred mask, diffusers' blending (the tools' defaults)
    diffedit-paper   the inferred mask, --blend paper (the paper's: end on the clean input)
    sdedit           an all-ones mask: SDEdit-style editing of the same inverted latents
    gt-mask          the ground-truth mask (cells touching the edited object): DiffEdit's upper bound
    gt-mask-paper    the same with --blend paper
and two references that edit nothing: `vae` (the input through the autoencoder: the best
background any method can keep) and `oracle` (the true target image through the autoencoder: what
a perfect edit scores, so the success measure's ceiling).

Metrics, per case, then averaged (the ground truth G = union of the edited object's source and
target masks, 64×64 pixels):
    mask IoU        the method's mask upsampled to pixels (nearest) vs G
    bg PSNR, MAE    input vs output over the pixels outside G (RGB 0..255)
    edit success    colour edits: the most frequent object colour inside the object is the target
                    colour; shape edits: the largest blob of the object's colour near G is
                    classified as the target shape by measure.ShapeClassifier (softmax regression
                    trained on the generator's scenes, 100 % on held-out renders, sharp or blurred)
Writes RESULTS.json (summary and every case), RESULTS.md (the table) and RESULTS.png (a montage).
"""
from __future__ import annotations

import argparse
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
sys.path[:0] = [HERE, os.path.join(ROOT, "python")]
import measure  # noqa: E402
import world  # noqa: E402
from diffedit_tools import edit, stream  # noqa: E402

METHODS = [  # name, mask, blend, description
    ("diffedit", "inferred", "diffusers", "DiffEdit: inferred mask, diffusers' blending (default)"),
    ("diffedit-paper", "inferred", "paper", "DiffEdit: inferred mask, the paper's blending"),
    ("sdedit", "ones", "diffusers", "SDEdit-style: all-ones mask, same inverted latents"),
    ("gt-mask", "gt", "diffusers", "DiffEdit with the ground-truth mask (upper bound)"),
    ("gt-mask-paper", "gt", "paper", "ground-truth mask, the paper's blending"),
]
REFERENCES = [
    ("vae", "no edit: the input through the VAE"),
    ("oracle", "the true target image through the VAE"),
]
FIRST_SEED = 2_000_000
SCHEDULERS = {"ddim": "DDIM", "dpm": "DPM-Solver++"}  # the tools' --scheduler


def run(cmd, env, log):
    """One shell pipeline (bash, pipefail); stderr goes to the case's log."""
    with open(log, "a") as f:
        f.write("$ " + cmd + "\n")
        f.flush()
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, stdout=subprocess.DEVNULL,
                           stderr=f)
    if r.returncode:
        raise RuntimeError(f"exit {r.returncode}: {cmd} (see {log})")


def invert_guidance(a):
    """invert's guidance: --invert-guidance, else --guidance (every stage the same)."""
    return a.guidance if a.invert_guidance is None else a.invert_guidance


def case_lines(k, a, pair):
    """The shell lines of case k, run in its folder: the embeddings, mask, inverted stack and the
    two references, then one denoise | vae-decode per method. Every negative prompt is given, so
    that no model folder's diffedit_defaults.json changes them."""
    e = edit.Edit(pair.source_caption, pair.target_caption, "src.ppm", steps=a.steps, seed=k,
                  scheduler=a.scheduler, guidance=a.guidance, invert_guidance=invert_guidance(a),
                  strength=a.strength, negative=a.negative, empty_negatives=True, quiet=True)
    c = edit.Commands(e, files={"source": "src.tensor", "target": "tgt.tensor"})
    refs = [edit.Stage("vae", [c.tool("vae-decode", "--record", "posterior.mean")], c.path("posterior"), "vae.ppm"),
            edit.Stage("oracle", [c.tool("vae-encode", "tgt.ppm"), c.tool("vae-decode", "--record", "posterior.mean")],
                       None, "oracle.ppm")]
    masks = {"inferred": "mask.tensor", "gt": "gt.tensor", "ones": "ones.tensor"}
    return [edit.shell_line(c.prepare() + refs)] + [
        c.denoise(mask=masks[mask], blend=blend, out=f"{name}.ppm", decode=True).shell() for name, mask, blend, _ in METHODS]


def edit_case(k, a, env):
    """Runs the tools on case k in its own folder; returns the folder. Reuses finished cases."""
    pair = world.make_edit_pair(FIRST_SEED + k, kind="colour" if k % 2 == 0 else "shape")
    d = os.path.join(a.work, f"case-{k:04d}")
    done = os.path.join(d, "done")
    if a.reuse and os.path.exists(done):
        return d, pair, 0.0
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    t0 = time.time()
    measure.write_pnm(f"{d}/src.ppm", pair.source.image)
    measure.write_pnm(f"{d}/tgt.ppm", pair.target.image)
    log = f"{d}/log.txt"
    cd = f"cd {shlex.quote(d)} && "
    prepare, *methods = case_lines(k, a, pair)
    run(cd + prepare, env, log)
    # The other masks carry the inferred mask's metadata, so denoise checks them the same way.
    inferred = stream.read_record(f"{d}/mask.tensor", "mask")
    factor = pair.mask.shape[0] // inferred.array.shape[-2]
    gt_cells = measure.to_latent(pair.mask, factor, "any").astype(np.float32)
    stream.write(f"{d}/gt.tensor", stream.Record("mask", "f32", gt_cells[None, None],
                                                 {**inferred.meta, "source": "ground truth"}))
    stream.write(f"{d}/ones.tensor", stream.Record("mask", "f32", np.ones_like(inferred.array),
                                                   {**inferred.meta, "source": "all ones"}))
    for line in methods:
        run(cd + line, env, log)
    open(done, "w").write(f"{time.time() - t0:.2f}\n")
    return d, pair, time.time() - t0


def score_case(k, d, pair, clf):
    """Metrics of every method and reference on one case."""
    src, tgt, i = pair.source, pair.target, pair.index
    g = pair.mask
    outside = ~g
    inferred = stream.read_record(f"{d}/mask.tensor", "mask").array[0, 0] > 0.5
    factor = g.shape[0] // inferred.shape[0]
    masks = {"inferred": inferred, "gt": measure.to_latent(g, factor, "any"),
             "ones": np.ones_like(inferred)}
    obj = tgt.objects[i]
    row = {"case": k, "seed": FIRST_SEED + k, "kind": pair.kind, "source": pair.source_caption,
           "target": pair.target_caption, "want": obj.colour if pair.kind == "colour" else obj.shape,
           "gt_pixels": int(g.sum()), "mask_cells": int(inferred.sum()), "methods": {}}
    names = [(m[0], m[1]) for m in METHODS] + [(r[0], None) for r in REFERENCES]
    for name, mask in names:
        out = measure.read_pnm(f"{d}/{name}.ppm")
        diff = out.astype(np.float64) - src.image.astype(np.float64)
        mse = float((diff[outside] ** 2).mean())
        if pair.kind == "colour":
            got = measure.dominant_colour(out, src.masks[i] & tgt.masks[i])[0]
        else:
            got = clf.predict(clf.segment(out, obj.colour, measure.dilate(g, 3)))
        r = {"bg_psnr": 10 * np.log10(255.0 ** 2 / max(mse, 1e-10)),
             "bg_mae": float(np.abs(diff[outside]).mean()), "got": got, "success": got == row["want"]}
        if mask is not None:
            r["mask_iou"] = measure.iou(measure.upsample(masks[mask], factor), g)
        row["methods"][name] = {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in r.items()}
    return row


def summarise(rows):
    """Means per method, overall and per edit kind."""
    out = {}
    for name in [m[0] for m in METHODS] + [r[0] for r in REFERENCES]:
        s = {}
        for kind in ("all", "colour", "shape"):
            rs = [r["methods"][name] for r in rows if kind == "all" or r["kind"] == kind]
            if not rs:
                continue
            e = {"n": len(rs), "success": float(np.mean([r["success"] for r in rs])),
                 "bg_psnr": float(np.mean([r["bg_psnr"] for r in rs])),
                 "bg_mae": float(np.mean([r["bg_mae"] for r in rs]))}
            if "mask_iou" in rs[0]:
                e["mask_iou"] = float(np.mean([r["mask_iou"] for r in rs]))
            s[kind] = e
        out[name] = s
    return out


def table(summary, rows, a, seconds):
    desc = {m[0]: m[3] for m in METHODS} | {r[0]: r[1] for r in REFERENCES}
    n = len(rows)
    lines = [f"{n} held-out cases ({sum(r['kind'] == 'colour' for r in rows)} colour edits, "
             f"{sum(r['kind'] == 'shape' for r in rows)} shape edits), {a.steps} {SCHEDULERS[a.scheduler]} steps, "
             f"guidance {a.guidance}, " + (f"invert guidance {a.invert_guidance}, " if a.invert_guidance is not None else "") +
             f"strength {a.strength}, mask: the tools' defaults (10 maps, encode strength 0.5, ratio 3.0); "
             f"negative prompt: {'the source caption' if a.negative == 'source' else 'empty'}; "
             f"model `{os.path.relpath(os.path.abspath(a.model), ROOT)}`. "
             f"{seconds / 60:.1f} min with {a.jobs} jobs.", "",
             "| method | mask IoU | background PSNR (dB) | background MAE (/255) | edit success: all | colour | shape |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        al, co, sh = s["all"], s.get("colour"), s.get("shape")
        iou = f"{al['mask_iou']:.3f}" if "mask_iou" in al else "—"
        pct = lambda e: f"{100 * e['success']:.1f} %" if e else "—"  # noqa: E731
        lines.append(f"| `{name}`: {desc[name]} | {iou} | {al['bg_psnr']:.2f} | {al['bg_mae']:.2f} | "
                     f"{pct(al)} | {pct(co)} | {pct(sh)} |")
    return "\n".join(lines) + "\n"


def montage(rows, a, path):
    """Rows of: input | target (truth) | inferred mask with the truth's outline | methods."""
    sep = np.full((64, 2, 3), 255, np.uint8)
    sheet = []
    for r in rows[:a.montage]:
        d = os.path.join(a.work, f"case-{r['case']:04d}")
        pair = world.make_edit_pair(r["seed"], kind=r["kind"])
        m = stream.read_record(f"{d}/mask.tensor", "mask").array[0, 0] > 0.5
        mk = measure.upsample(m, 64 // m.shape[0])
        mrgb = np.stack([mk * 255] * 3, -1).astype(np.uint8)
        g = pair.mask
        mrgb[g & measure.dilate(~g, 1)] = (255, 0, 0)  # the truth's outline
        tiles = [pair.source.image, pair.target.image, mrgb] + [measure.read_pnm(f"{d}/{n}.ppm")
                                                                for n in ("diffedit", "diffedit-paper", "sdedit", "gt-mask")]
        row = np.concatenate([x for t in tiles for x in (t, sep)][:-1], 1)
        sheet += [row, np.full((2, row.shape[1], 3), 255, np.uint8)]
    img = np.concatenate(sheet[:-1], 0)
    img = np.repeat(np.repeat(img, 2, 0), 2, 1)
    measure.write_pnm(path + ".ppm", img)
    if shutil.which("pnmtopng"):
        with open(path, "wb") as f:
            subprocess.run(["pnmtopng", path + ".ppm"], stdout=f, stderr=subprocess.DEVNULL, check=True)
        os.remove(path + ".ppm")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim",
                   help="the mask's, inversion's and denoising's scheduler: ddim (default) or dpm (DPM-Solver++)")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance of every stage (default 3)")
    p.add_argument("--invert-guidance", type=float, default=None,
                   help="invert's guidance only (default: --guidance; 1 inverts without guidance)")
    p.add_argument("--strength", type=float, default=0.8, help="invert --strength (default 0.8)")
    p.add_argument("--negative", choices=["source", "empty"], default="empty",
                   help="denoise's negative prompt: the empty prompt (default) or the source caption")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--model", default=os.path.join(HERE, "model"))
    p.add_argument("--bin", default=None, help="folder of the release tools (default: swift build's)")
    p.add_argument("--work", default="/tmp/diffedit-bench", help="every case's files stay here")
    p.add_argument("--results", default=None, help="write RESULTS.json, .md and .png (e.g. demo/benchmark)")
    p.add_argument("--montage", type=int, default=8, help="cases in the montage")
    p.add_argument("--reuse", action="store_true", help="keep cases already finished in --work")
    a = p.parse_args()
    if a.bin is None:
        a.bin = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    for tool in ("vae-encode", "vae-decode", "tokenize", "encode-text", "noise-diff-mask", "invert", "denoise"):
        if not os.access(os.path.join(a.bin, tool), os.X_OK):
            sys.exit(f"benchmark: {tool} is not in {a.bin} — run `swift build -c release` first or pass --bin")
    env = edit.tool_env(a.model, bin=a.bin)
    os.makedirs(a.work, exist_ok=True)

    t0 = time.time()
    print("benchmark: training the shape classifier on generator scenes ...", file=sys.stderr)
    cache = os.path.join(a.work, "shape-classifier.npz")  # deterministic; cached between runs
    if os.path.exists(cache):
        z = np.load(cache)
        clf = measure.ShapeClassifier(z["w"], z["b"], z["mu"], z["sd"])
    else:
        clf = measure.ShapeClassifier.train()
        np.savez(cache, w=clf.w, b=clf.b, mu=clf.mu, sd=clf.sd)
    acc = {"held_out_renders": clf.accuracy(), "held_out_blurred": clf.accuracy(blur=True)}
    print(f"benchmark: shape classifier accuracy {acc}", file=sys.stderr)

    rows, tool_seconds = [], []
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        futs = {ex.submit(edit_case, k, a, env): k for k in range(a.cases)}
        for n, f in enumerate(cf.as_completed(futs), 1):
            k = futs[f]
            d, pair, secs = f.result()
            tool_seconds.append(secs)
            rows.append(score_case(k, d, pair, clf))
            if n % 10 == 0 or n == a.cases:
                el = time.time() - t0
                print(f"benchmark: {n}/{a.cases} cases, {el:.0f} s, ETA {el / n * (a.cases - n):.0f} s",
                      file=sys.stderr)
    rows.sort(key=lambda r: r["case"])
    seconds = time.time() - t0
    summary = summarise(rows)
    md = table(summary, rows, a, seconds)
    print(md)
    if a.results:
        os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
        res = {"summary": summary, "shape_classifier_accuracy": acc,
               "settings": {"cases": a.cases, "steps": a.steps, "scheduler": a.scheduler, "guidance": a.guidance,
                            "invert_guidance": invert_guidance(a), "strength": a.strength,
                            "negative": a.negative, "first_seed": FIRST_SEED,
                            "model": os.path.relpath(os.path.abspath(a.model), ROOT), "jobs": a.jobs},
               "seconds": round(seconds, 1), "tool_seconds_per_case": round(float(np.mean(tool_seconds)), 2),
               "cases": rows}
        with open(a.results + ".json", "w") as f:
            json.dump(res, f, indent=1)
        with open(a.results + ".md", "w") as f:
            f.write(md)
        montage(rows, a, a.results + ".png")


if __name__ == "__main__":
    main()

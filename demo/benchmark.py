#!/usr/bin/env python3
"""DiffEdit's edit quality on held-out scenes of the demo world, measured through the Swift tools.

    python3 demo/benchmark.py [--cases 200] [--first-seed 2000000] [--jobs 2] [--model demo/model] [--bin DIR]
        [--steps N] [--mask-steps N] [--scheduler ddim|dpm] [--strength S]
        [--guidance G] [--mask-guidance G] [--invert-guidance G] [--denoise-guidance G]
        [--maps N] [--encode-strength S] [--threshold-ratio R] [--dilate CELLS]
        [--negative model|empty|source]
        [--methods diffedit ...] [--work /tmp/diffedit-bench] [--reuse] [--results demo/benchmark/results] [--montage 8]
    python3 demo/benchmark.py --photo-scale N [--cases 200] ...   # large-photo mode (demo/photo_benchmark.py)

A setting not given is left off the tools' command lines, so the model folder's
diffedit_defaults.json (man 5 diffedit-defaults), else the tools' own defaults, decide it: the
benchmark measures what a user of the model gets. The settings every stage actually used are read
back from the tools' outputs (their metadata) and recorded in RESULTS.json (`settings.stages`).
`--guidance` sets every stage's guidance; `--mask-guidance`, `--invert-guidance` and
`--denoise-guidance` one stage's; `--steps` sets noise-diff-mask's and invert's steps (denoise
takes the stack's), `--mask-steps` noise-diff-mask's only.

Cases: world.make_edit_pair(FIRST + k) for k < --cases, FIRST = --first-seed. The default,
2_000_000, gives the 200 held-out scenes every reported result uses; choose settings on other
scenes (`--first-seed 3000000`), or the reported numbers are fitted to their own test set. The
training set used seeds 0..23999. Colour edits for even k, shape edits for odd k; tool seed k.

Needs numpy and the release tools (`swift build -c release`); not torch. For each case it runs

    vae-encode src.ppm > posterior            tokenize SRC | encode-text > src   (and tgt)
    noise-diff-mask --source src --target tgt [mask settings] < posterior > mask
    invert --prompt src [invert settings] < posterior > inverted
    denoise --mask M --blend B --prompt tgt [denoise settings] < inverted | tee V.latents | vae-decode > V.ppm

(denoise takes the scheduler, steps and strength from the stack; with `--negative empty` or
`source` every negative prompt is given explicitly: the empty prompt, and for denoise the empty
prompt or the source caption) for the methods of METHODS:
    diffedit         the inferred mask, diffusers' blending (the tools' defaults)
    diffedit+paste   diffedit's picture pasted back into the input by composite through the soft map
                     (noise-diff-mask --soft-output) at pixels, brought to the edges of the input and
                     the edit by a guided filter, feathered by half a latent cell (composite's defaults;
                     --paste-flags gives it other options)
    diffedit-paper   the inferred mask, --blend paper (the paper's: end on the clean input)
    sdedit           an all-ones mask: SDEdit-style editing of the same inverted latents
    gt-mask          the ground-truth mask (cells touching the edited object): DiffEdit's upper bound
    gt-mask+paste    gt-mask's picture pasted back through the true pixel mask G (gt-pixels.pgm)
    gt-mask-paper    the same with --blend paper
and three references: `vae` (no edit, the input through the autoencoder: the best background any
method that decodes the whole picture can keep), `oracle` (the true target image through the
autoencoder: what a perfect edit scores, so the success measure's ceiling) and `ideal` (the true
target image itself: the background a perfect edit of the pixels keeps). A method may also
post-process another method's picture (`Method.after` and `Method.post`, run by `method_line`).

Metrics, per case, then summarised (the ground truth G = union of the edited object's source and
target masks, 64×64 pixels):
    mask IoU        the method's mask upsampled to pixels (nearest) vs G; for a pasted-back row
                    the pixel mask composite used (NAME.mask.pgm: bilinear, thresholded) vs G
    bg PSNR, MAE    input vs output over the pixels outside G (RGB 0..255). `bg_psnr` is the mean
                    of the per-case PSNRs, each capped at PSNR_CAP (100 dB: an exact background,
                    MSE 0, counts as 100 dB instead of making the mean infinite); `bg_psnr_pooled`
                    the PSNR of the pooled error (squared errors summed over every case's
                    background pixels, divided by their number), which no single case dominates;
                    `bg_exact` the share of cases whose background is exact (MSE 0)
    untouched PSNR  bg PSNR over the pixels the edited object does not cover at all, before or after
                    (world.EditPair.touched: G's pixels are those at least half covered, and the
                    antialiased rim just outside G changes in a perfect edit too: the `ideal` row
                    scores about 40 dB outside G at 64 px, and exact outside `touched`)
    edit success    colour edits: the most frequent object colour inside the object is the target
                    colour; shape edits: the largest blob of the object's colour near G is
                    classified as the target shape by measure.ShapeClassifier (softmax regression
                    trained on the generator's scenes, 100 % on held-out renders, sharp or blurred)
Writes RESULTS.json (summary, settings and every case), RESULTS.md (the table) and RESULTS.png (a
montage). With --reuse, rows added since a case was made (a post-processing one) run on it; a
soft map the case lacks is made by running its mask stage again, which must give its mask back
byte for byte.

--photo-scale N: the large-photo mode of demo/photo_benchmark.py: the scenes rendered at N×64
pixels, edited at their own resolution by examples/photo.sh, scored at full resolution.
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
from dataclasses import dataclass
from typing import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(ROOT, "python")]
import measure  # noqa: E402
import world  # noqa: E402
import photo_benchmark  # noqa: E402
from diffedit_tools import edit, stream  # noqa: E402


@dataclass(frozen=True)
class Method:
    """A row of the table. A denoised method runs denoise | vae-decode on the case's inverted stack
    with `mask` (inferred | gt | ones) and `blend`. A post-processing method (`after` set) makes
    its picture from the picture of the method named `after` (listed before it) with `post`:
    post(source_ppm, out_ppm, case) -> one shell line run in the case's folder, where `case` is the
    CaseFiles of the case; its mask IoU is that of `mask`."""
    name: str
    mask: str
    description: str
    blend: str | None = None
    after: str | None = None
    post: Callable | None = None
    kind: str = "diffedit"  # diffedit: denoise on invert's stack; ledits: denoise --method ledits on its noise maps


@dataclass(frozen=True)
class CaseFiles:
    """What a post-processing method may use, in the case's folder: the source picture, the
    masks as tensors (mask.tensor inferred, gt.tensor, ones.tensor), the tools' Commands."""
    k: int
    source: str
    masks: dict
    commands: edit.Commands
    soft: str = "mask-soft.tensor"  # noise-diff-mask's soft map (--soft-output), same run as mask.tensor
    paste_flags: str = ""  # --paste-flags: composite's options for the rows pasted back through an inferred mask


def paste_back(mask, inferred=True):
    """A post-processing row: composite pastes the picture back into the input through `mask` (a
    file of the case's folder) at its defaults (a tensor mask: bilinear to pixels, refined to the
    edges of the input and the edit, threshold 0.5, feather half a latent cell; a mask image: the
    same, unrefined; for an `inferred` mask, with --paste-flags added),
    writing the pixel mask it used beside the picture (NAME.mask.pgm: the row's mask IoU is that
    mask's, in pixels)."""
    def post(picture, out, case):
        q = shlex.quote
        flags = " ".join(q(f) for f in shlex.split(case.paste_flags)) + " " if inferred and case.paste_flags else ""
        return (f"{q(case.commands.tool('composite')[0])} --original {q(case.source)} --mask {q(mask)} {flags}"
                f"--mask-output {q(out[:-len('.ppm')] + '.mask.pgm')} {q(picture)} > {q(out)}")
    return post


METHODS = [
    Method("diffedit", "inferred", "DiffEdit: inferred mask, diffusers' blending (default)", blend="diffusers"),
    Method("diffedit+paste", "inferred", "DiffEdit pasted back: the soft map to pixels, feathered (composite)",
           after="diffedit", post=paste_back("mask-soft.tensor")),
    Method("diffedit-paper", "inferred", "DiffEdit: inferred mask, the paper's blending", blend="paper"),
    Method("sdedit", "ones", "SDEdit-style: all-ones mask, same inverted latents", blend="diffusers"),
    Method("gt-mask", "gt", "DiffEdit with the ground-truth mask (upper bound)", blend="diffusers"),
    Method("gt-mask+paste", "gt", "ground-truth mask, pasted back through the true pixel mask (composite)",
           after="gt-mask", post=paste_back("gt-pixels.pgm", inferred=False)),
    Method("gt-mask-paper", "gt", "ground-truth mask, the paper's blending", blend="paper"),
]
# LEDITS++ (Brack et al. 2024; --method ledits): the edit-friendly inversion's noise maps, the target
# caption added as the edit concept (--ledits-remove-source: and the source caption removed). Its
# implicit masks (the union over the guided steps, denoise --masks-output) are the `ledits` mask.
LEDITS_METHODS = [
    Method("ledits", "ledits", "LEDITS++: edit-friendly inversion, target added, implicit masks",
           kind="ledits"),
    Method("ledits+paste", "ledits", "LEDITS++ pasted back through its implicit mask (composite)",
           after="ledits", post=paste_back("ledits-masks.tensor")),
    Method("ledits+dmask", "inferred", "LEDITS++ with DiffEdit's inferred mask as the user mask, no implicit mask",
           kind="ledits"),
    Method("diffedit+lmask", "ledits", "DiffEdit's denoising through LEDITS++'s implicit mask", blend="diffusers"),
]
# The DiffEdit rows a --method ledits run shows beside LEDITS++'s.
LEDITS_BESIDE = ("diffedit", "diffedit+paste")
REFERENCES = [
    ("vae", "no edit: the input through the VAE"),
    ("oracle", "the true target image through the VAE"),
    ("ideal", "the true target image itself: a perfect edit, pixel for pixel"),
]
REFERENCE_FILES = {"ideal": "tgt.ppm"}  # a reference whose picture is not NAME.ppm
FIRST_SEED = 2_000_000  # the held-out scenes every reported result uses
SCHEDULERS = {"ddim": "DDIM", "dpm": "DPM-Solver++"}  # the tools' --scheduler
MASK_FILES = {"inferred": "mask.tensor", "gt": "gt.tensor", "ones": "ones.tensor", "ledits": "ledits-masks.tensor"}
PSNR_CAP = 100.0  # dB: a per-case PSNR of an exact background (MSE 0) counts as this

# The settings each stage reports in its output's metadata: (stage, metadata key, file, record).
STAGE_SETTINGS = {
    "noise-diff-mask": (("steps", "guidance", "maps", "encode_strength", "threshold_ratio", "dilate", "scheduler"),
                        "mask.tensor", "mask"),
    "invert": (("steps", "strength", "guidance", "scheduler"), "inverted.tensor", "inverted"),
    "denoise": (("guidance",), "{denoised}.latents.tensor", "latents"),  # the first denoised method's
}
# The same for LEDITS++'s stages, when a --method ledits run has them (every key they record).
LEDITS_STAGE_SETTINGS = {
    "invert --method ledits": ("ledits.tensor", "ledits.start"),
    "denoise --method ledits": ("ledits.latents.tensor", "latents"),
}


def check_methods(methods):
    """Every name once; a post-processing method follows the method it takes its picture from."""
    seen = set()
    for m in methods:
        if m.name in seen or m.name in dict(REFERENCES):
            raise ValueError(f"method {m.name} named twice")
        if (m.after is None) == (m.post is not None) or (m.after is None and m.kind == "diffedit") == (m.blend is None):
            raise ValueError(f"method {m.name}: a denoised method has a blend, a post-processing one after and post")
        if m.kind not in ("diffedit", "ledits") or (m.kind == "ledits" and (m.blend or m.after)):
            raise ValueError(f"method {m.name}: kind {m.kind}")
        if m.mask == "ledits" and m.name != "ledits" and "ledits" not in seen:
            raise ValueError(f"method {m.name} uses the ledits row's implicit mask, which does not come before it")
        if m.after is not None and m.after not in seen:
            raise ValueError(f"method {m.name} post-processes {m.after}, which does not come before it")
        if m.mask not in MASK_FILES:
            raise ValueError(f"method {m.name}: mask {m.mask}")
        seen.add(m.name)


def run(cmd, env, log):
    """One shell pipeline (bash, pipefail); stderr goes to the case's log."""
    with open(log, "a") as f:
        f.write("$ " + cmd + "\n")
        f.flush()
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, stdout=subprocess.DEVNULL,
                           stderr=f)
    if r.returncode:
        raise RuntimeError(f"exit {r.returncode}: {cmd} (see {log})")


def concept_phrases(source, target):
    """LEDITS++'s concepts from two captions of the demo world: the target's object phrases that the
    source lacks (added) and the source's that the target lacks (removed), a caption being phrases
    joined by " and " and " on " ("a red circle and a blue square on a plain white background")."""
    def phrases(caption):
        return [p for part in caption.split(" on ") for p in part.split(" and ")]
    s, t = phrases(source), phrases(target)
    return " and ".join(p for p in t if p not in s) or None, " and ".join(p for p in s if p not in t) or None


def edit_of(k, a, pair):
    """The edit of case k: every setting given on the benchmark's command line, None for the rest
    (left off the tools' command lines: the model's diffedit_defaults.json or the tools' own)."""
    negative = None if a.negative == "model" else a.negative
    add, remove = concept_phrases(pair.source_caption, pair.target_caption)
    phrases = getattr(a, "ledits_concepts", "caption") == "phrase"
    return edit.Edit(pair.source_caption, pair.target_caption, "src.ppm", steps=a.steps, mask_steps=a.mask_steps,
                     seed=k, scheduler=a.scheduler, guidance=a.guidance, mask_guidance=a.mask_guidance,
                     invert_guidance=a.invert_guidance, denoise_guidance=a.denoise_guidance, strength=a.strength,
                     maps=a.maps, encode_strength=a.encode_strength, threshold_ratio=a.threshold_ratio,
                     dilate=a.dilate, negative=negative, empty_negatives=negative is not None, quiet=True,
                     deep_cache=getattr(a, "deep_cache", None),
                     ledits_steps=getattr(a, "ledits_steps", None), skip=getattr(a, "skip", None),
                     source_guidance=getattr(a, "source_guidance", None),
                     ledits_source_prompt=getattr(a, "ledits_source_prompt", False),
                     edit_guidance=getattr(a, "edit_guidance", None), edit_threshold=getattr(a, "edit_threshold", None),
                     edit_warmup=getattr(a, "edit_warmup", None), ledits_mask=getattr(a, "ledits_mask", None),
                     edit_cooldown=getattr(a, "edit_cooldown", None),
                     attention_grid=getattr(a, "attention_grid", None),
                     ledits_remove_source=getattr(a, "ledits_remove_source", False),
                     ledits_add=add if phrases else None,
                     ledits_remove=remove if phrases and getattr(a, "ledits_remove_source", False) else None)


def method_line(m, c, case):
    """The shell line that makes {m.name}.ppm in the case's folder: m's post-processing of the
    picture of the method it follows, or denoise with m's mask and blend, piped into vae-decode
    (the edited latents kept as {m.name}.latents.tensor: their metadata records denoise's
    settings)."""
    if m.after is not None:
        return m.post(f"{m.after}.ppm", f"{m.name}.ppm", case)
    if m.kind == "ledits":
        own = m.mask == "ledits"  # the row whose implicit masks the others use
        return c.ledits_denoise(mask=None if own else MASK_FILES[m.mask], out=f"{m.name}.ppm", decode=True,
                                keep=f"{m.name}.latents.tensor", masks_output="ledits_masks" if own else None,
                                ledits_mask=None if own else "noise", threshold=None if own else 0).shell()
    return c.denoise(mask=MASK_FILES[m.mask], blend=m.blend, out=f"{m.name}.ppm", decode=True,
                     keep=f"{m.name}.latents.tensor").shell()


def case_lines(k, a, pair, methods=None):
    """The shell lines of case k, run in its folder: the embeddings, mask, inverted stack and the
    two references, then one line per method."""
    methods = METHODS if methods is None else methods
    c = edit.Commands(edit_of(k, a, pair), files={"source": "src.tensor", "target": "tgt.tensor", "soft": CaseFiles.soft})
    refs = [edit.Stage("vae", [c.tool("vae-decode", "--record", "posterior.mean")], c.path("posterior"), "vae.ppm"),
            edit.Stage("oracle", [c.tool("vae-encode", "tgt.ppm"), c.tool("vae-decode", "--record", "posterior.mean")],
                       None, "oracle.ppm")]
    case = CaseFiles(k, "src.ppm", dict(MASK_FILES), c, paste_flags=getattr(a, "paste_flags", None) or "")
    ledits = [*c.ledits_concepts(), c.ledits_invert()] if any(m.kind == "ledits" for m in methods) else []
    return [edit.shell_line(c.prepare() + ledits + refs)] + [method_line(m, c, case) for m in methods]


def edit_case(k, a, env):
    """Runs the tools on case k in its own folder; returns the folder. Reuses finished cases."""
    pair = world.make_edit_pair(a.first_seed + k, kind="colour" if k % 2 == 0 else "shape")
    d = os.path.join(a.work, f"case-{k:04d}")
    done = os.path.join(d, "done")
    if a.reuse and os.path.exists(done):
        # Rows added since the case was made (a post-processing one) run now; the rest is kept.
        _, *lines = case_lines(k, a, pair, a.method_rows)
        missing = [line for m, line in zip(a.method_rows, lines)
                   if not os.path.exists(os.path.join(d, f"{m.name}.ppm")) or (a.repaste and m.after is not None)]
        if any(m.after is None and not os.path.exists(os.path.join(d, f"{m.name}.ppm")) for m in a.method_rows):
            raise RuntimeError(f"case {k} in {d} lacks a denoised method's picture: run without --reuse")
        write_true_pixels(d, pair)
        if missing and not os.path.exists(os.path.join(d, CaseFiles.soft)):
            # A case made before the soft map was kept: the same mask run again (deterministic: the
            # mask must come out identical), keeping its soft map.
            c = edit.Commands(edit_of(k, a, pair), files={"source": "src.tensor", "target": "tgt.tensor",
                                                         "soft": CaseFiles.soft, "mask": "mask-again.tensor"})
            again = os.path.join(d, "mask-again.tensor")
            run(f"cd {shlex.quote(d)} && " + c.mask().shell(), env, os.path.join(d, "log.txt"))
            if open(again, "rb").read() != open(os.path.join(d, "mask.tensor"), "rb").read():
                raise RuntimeError(f"case {k}: noise-diff-mask gave another mask than the case's — run without --reuse")
            os.remove(again)
        for line in missing:
            run(f"cd {shlex.quote(d)} && " + line, env, os.path.join(d, "log.txt"))
        return d, pair, 0.0
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    t0 = time.time()
    measure.write_pnm(f"{d}/src.ppm", pair.source.image)
    measure.write_pnm(f"{d}/tgt.ppm", pair.target.image)
    log = f"{d}/log.txt"
    cd = f"cd {shlex.quote(d)} && "
    prepare, *methods = case_lines(k, a, pair, a.method_rows)
    run(cd + prepare, env, log)
    # The other masks carry the inferred mask's metadata, so denoise checks them the same way.
    inferred = stream.read_record(f"{d}/mask.tensor", "mask")
    factor = pair.mask.shape[0] // inferred.array.shape[-2]
    gt_cells = measure.to_latent(pair.mask, factor, "any").astype(np.float32)
    stream.write(f"{d}/gt.tensor", stream.Record("mask", "f32", gt_cells[None, None],
                                                 {**inferred.meta, "source": "ground truth"}))
    stream.write(f"{d}/ones.tensor", stream.Record("mask", "f32", np.ones_like(inferred.array),
                                                   {**inferred.meta, "source": "all ones"}))
    write_true_pixels(d, pair)
    for line in methods:
        run(cd + line, env, log)
    open(done, "w").write(f"{time.time() - t0:.2f}\n")
    return d, pair, time.time() - t0


def write_true_pixels(d, pair):
    """The true mask G at pixels as a PGM (gt-pixels.pgm: white inside), the ground-truth rows' paste-back mask."""
    measure.write_pnm(os.path.join(d, "gt-pixels.pgm"), np.where(pair.mask, 255, 0).astype(np.uint8))


def _number(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return text
    return int(v) if v.is_integer() and "." not in text else v


def stage_settings(d, methods=None):
    """The settings each stage of the case in folder d used, from its output's metadata; and the
    values it took from the model's diffedit_defaults.json (metadata `defaults`)."""
    methods = METHODS if methods is None else methods
    denoised = next(m.name for m in methods if m.after is None)
    out = {}
    for stage, (keys, file, record) in STAGE_SETTINGS.items():
        meta = stream.read_record(os.path.join(d, file.format(denoised=denoised)), record).meta
        s = {k: _number(meta[k]) for k in keys if k in meta}
        if stage == "noise-diff-mask" and "dilate" not in s:
            s["dilate"] = 0  # recorded only when the mask is dilated
        if "defaults" in meta:
            s["from_defaults_file"] = meta["defaults"].split(": ", 1)[-1]
        out[stage] = s
    if any(getattr(m, "kind", "") == "ledits" for m in methods):
        for stage, (file, record) in LEDITS_STAGE_SETTINGS.items():
            meta = stream.read_record(os.path.join(d, file), record).meta
            skip = ("model", "model.fingerprint", "scheduler.fingerprint", "timesteps", "version", "order", "seed")
            out[stage] = {k: _number(v) for k, v in sorted(meta.items())
                          if not k.startswith(("image.", "latent.", "diffedit.")) and k not in skip}
    return out


def background_error(out, src, outside):
    """Squared and absolute error of the picture `out` against `src` over the background pixels."""
    diff = out.astype(np.float64) - src.astype(np.float64)
    return float((diff[outside] ** 2).sum()), float(np.abs(diff[outside]).sum()), int(outside.sum()) * src.shape[-1]


def background_scores(out, src, outside, prefix):
    """The background metrics of one picture over one region, named PREFIX_psnr, _mae, _sse,
    _values, _exact."""
    sse, sae, n = background_error(out, src, outside)
    return {f"{prefix}_psnr": psnr(sse / n), f"{prefix}_mae": sae / n, f"{prefix}_sse": sse,
            f"{prefix}_values": n, f"{prefix}_exact": sse == 0}


def psnr(mse):
    """PSNR (dB) of a mean squared error on 0..255, capped at PSNR_CAP (MSE 0 gives the cap)."""
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10 * np.log10(255.0 ** 2 / mse))


def score_case(k, d, pair, clf, a=None, methods=None):
    """Metrics of every method and reference on one case."""
    methods = METHODS if methods is None else methods
    first = FIRST_SEED if a is None else a.first_seed
    src, tgt, i = pair.source, pair.target, pair.index
    g = pair.mask
    outside = ~g
    inferred = stream.read_record(f"{d}/mask.tensor", "mask").array[0, 0] > 0.5
    factor = g.shape[0] // inferred.shape[0]
    masks = {"inferred": inferred, "gt": measure.to_latent(g, factor, "any"),
             "ones": np.ones_like(inferred)}
    if os.path.exists(f"{d}/{MASK_FILES['ledits']}"):
        masks["ledits"] = stream.read_record(f"{d}/{MASK_FILES['ledits']}", "mask").array[0, 0] > 0.5
    obj = tgt.objects[i]
    row = {"case": k, "seed": first + k, "kind": pair.kind, "source": pair.source_caption,
           "target": pair.target_caption, "want": obj.colour if pair.kind == "colour" else obj.shape,
           "gt_pixels": int(g.sum()), "mask_cells": int(inferred.sum()), "methods": {}}
    names = [(m.name, m.mask) for m in methods] + [(r[0], None) for r in REFERENCES]
    for name, mask in names:
        out = measure.read_pnm(f"{d}/{REFERENCE_FILES.get(name, name + '.ppm')}")
        if pair.kind == "colour":
            got = measure.dominant_colour(out, src.masks[i] & tgt.masks[i])[0]
        else:
            got = clf.predict(clf.segment(out, obj.colour, measure.dilate(g, 3)))
        r = {**background_scores(out, src.image, outside, "bg"),
             **background_scores(out, src.image, ~pair.touched, "untouched"),
             "got": got, "success": got == row["want"]}
        pixels = f"{d}/{name}.mask.pgm"  # a pasted-back row's pixel mask (composite --mask-output)
        if os.path.exists(pixels):
            r["mask_iou"] = measure.iou(measure.read_pnm(pixels) > 0, g)
        elif mask is not None:
            r["mask_iou"] = measure.iou(measure.upsample(masks[mask], factor), g)
        row["methods"][name] = {k2: (round(v, 4) if isinstance(v, float) and not k2.endswith("_sse") else v)
                                for k2, v in r.items()}
    return row


def summarise(rows, methods=None, references=REFERENCES):
    """Per method (or row name), overall and per edit kind: success rate, mean per-case background
    PSNR (capped at PSNR_CAP), the pooled error's PSNR, the share of exact backgrounds, mean MAE and IoU."""
    methods = METHODS if methods is None else methods
    out = {}
    for name in [getattr(m, "name", m) for m in methods] + [r[0] for r in references]:
        s = {}
        for kind in ("all", "colour", "shape"):
            rs = [r["methods"][name] for r in rows if kind == "all" or r["kind"] == kind]
            if not rs:
                continue
            pooled_mse = sum(r["bg_sse"] for r in rs) / sum(r["bg_values"] for r in rs)
            e = {"n": len(rs), "success": float(np.mean([r["success"] for r in rs])),
                 "bg_psnr": float(np.mean([r["bg_psnr"] for r in rs])),
                 "bg_psnr_pooled": float(psnr(pooled_mse)),
                 "bg_exact": float(np.mean([r["bg_exact"] for r in rs])),
                 "bg_mae": float(np.mean([r["bg_mae"] for r in rs]))}
            if "untouched_sse" in rs[0]:  # results made since the untouched background was measured
                e |= {"untouched_psnr": float(np.mean([r["untouched_psnr"] for r in rs])),
                      "untouched_psnr_pooled": float(psnr(sum(r["untouched_sse"] for r in rs)
                                                          / sum(r["untouched_values"] for r in rs))),
                      "untouched_exact": float(np.mean([r["untouched_exact"] for r in rs]))}
            if "mask_iou" in rs[0]:
                e["mask_iou"] = float(np.mean([r["mask_iou"] for r in rs]))
            s[kind] = e
        out[name] = s
    return out


def describe_settings(stages):
    """One line of the settings each stage used."""
    m, i, dn = stages["noise-diff-mask"], stages["invert"], stages["denoise"]
    return (f"{SCHEDULERS[i.get('scheduler', 'ddim')]}; mask: {m['steps']} steps, guidance {m['guidance']}, "
            f"{m['maps']} maps, encode strength {m['encode_strength']}, ratio {m['threshold_ratio']}, "
            f"dilate {m['dilate']}; invert: {i['steps']} steps, strength {i['strength']}, guidance {i['guidance']}; "
            f"denoise: guidance {dn.get('guidance', '(no DiffEdit row)')}" + "".join(
                f"; {stage}: " + ", ".join(f"{k} {v}" for k, v in stages[stage].items())
                for stage in LEDITS_STAGE_SETTINGS if stage in stages))


def untouched_cells(e):
    """The untouched background's three table cells (mean, pooled, exact) of a summary entry."""
    if "untouched_psnr" not in e:
        return "— | — | —"
    return f"{e['untouched_psnr']:.2f} | {e['untouched_psnr_pooled']:.2f} | {100 * e['untouched_exact']:.1f} %"


def table(summary, rows, a, seconds, stages, methods=None):
    methods = METHODS if methods is None else methods
    desc = {m.name: m.description for m in methods} | {r[0]: r[1] for r in REFERENCES}
    n = len(rows)
    which = "held-out" if a.first_seed == FIRST_SEED else f"tuning (seeds from {a.first_seed})"
    negative = {"model": "the model's", "empty": "empty", "source": "the source caption (denoise)"}[a.negative]
    lines = [f"{n} {which} cases ({sum(r['kind'] == 'colour' for r in rows)} colour edits, "
             f"{sum(r['kind'] == 'shape' for r in rows)} shape edits); {describe_settings(stages)}; "
             f"negative prompt: {negative}; "
             + (f"pasted back with `composite {a.paste_flags}`; " if getattr(a, "paste_flags", None) else "")
             + f"model `{os.path.relpath(os.path.abspath(a.model), ROOT)}`. "
             f"{seconds / 60:.1f} min with {a.jobs} jobs. Background PSNR: mean of per-case PSNRs (each "
             f"capped at {PSNR_CAP:.0f} dB) and of the pooled error; exact: cases with MSE 0. Untouched: "
             f"the same outside every pixel the edited object covers at all (where a perfect edit is exact).", "",
             "| method | mask IoU | background PSNR (dB): mean | pooled | exact | background MAE (/255) "
             "| untouched PSNR (dB): mean | pooled | exact | edit success: all | colour | shape |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        al, co, sh = s["all"], s.get("colour"), s.get("shape")
        iou = f"{al['mask_iou']:.3f}" if "mask_iou" in al else "—"
        pct = lambda e: f"{100 * e['success']:.1f} %" if e else "—"  # noqa: E731
        lines.append(f"| `{name}`: {desc[name]} | {iou} | {al['bg_psnr']:.2f} | {al['bg_psnr_pooled']:.2f} | "
                     f"{100 * al['bg_exact']:.1f} % | {al['bg_mae']:.2f} | {untouched_cells(al)} | "
                     f"{pct(al)} | {pct(co)} | {pct(sh)} |")
    return "\n".join(lines) + "\n"


MONTAGE = {"diffedit": ("diffedit", "diffedit-paper", "sdedit", "gt-mask"),  # the rows a montage shows
           "ledits": ("diffedit", "diffedit+paste", "ledits", "ledits+paste")}


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
                                                                for n in MONTAGE[getattr(a, "method", "diffedit")]]
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
    p.add_argument("--first-seed", type=int, default=FIRST_SEED,
                   help=f"case k is the scene of seed FIRST + k (default {FIRST_SEED}: the held-out scenes; "
                        "tune on others, e.g. 3000000)")
    unset = " (default: the model's diffedit_defaults.json, else the tools')"
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None,
                   help="the mask's, inversion's and denoising's scheduler: ddim or dpm (DPM-Solver++)" + unset)
    p.add_argument("--steps", type=int, default=None, help="noise-diff-mask's and invert's --steps" + unset)
    p.add_argument("--mask-steps", type=int, default=None, help="noise-diff-mask's --steps only" + unset)
    p.add_argument("--guidance", type=float, default=None, help="every stage's --guidance" + unset)
    p.add_argument("--mask-guidance", type=float, default=None, help="noise-diff-mask's --guidance" + unset)
    p.add_argument("--invert-guidance", type=float, default=None,
                   help="invert's --guidance (1 inverts without guidance)" + unset)
    p.add_argument("--denoise-guidance", type=float, default=None, help="denoise's --guidance" + unset)
    p.add_argument("--strength", type=float, default=None, help="invert's --strength" + unset)
    p.add_argument("--maps", type=int, default=None, help="noise-diff-mask's --maps" + unset)
    p.add_argument("--encode-strength", type=float, default=None, help="noise-diff-mask's --encode-strength" + unset)
    p.add_argument("--threshold-ratio", type=float, default=None, help="noise-diff-mask's --threshold-ratio" + unset)
    p.add_argument("--dilate", type=int, default=None, help="noise-diff-mask's --dilate (latent cells)" + unset)
    p.add_argument("--deep-cache", type=int, default=None, help="invert's and denoise's --deep-cache N (DeepCache)" + unset)
    p.add_argument("--negative", choices=["model", "empty", "source"], default="model",
                   help="the negative prompts: the model's (default: none given), or every one the empty "
                        "prompt, denoise's the empty prompt or the source caption")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--model", default=os.path.join(HERE, "model"))
    p.add_argument("--bin", default=None, help="folder of the release tools (default: swift build's)")
    p.add_argument("--work", default="/tmp/diffedit-bench", help="every case's files stay here")
    p.add_argument("--results", default=None, help="write RESULTS.json, .md and .png (e.g. demo/benchmark)")
    p.add_argument("--montage", type=int, default=8, help="cases in the montage (0: none)")
    p.add_argument("--reuse", action="store_true", help="keep cases already finished in --work")
    p.add_argument("--repaste", action="store_true",
                   help="with --reuse, run the post-processing rows (the pasted-back ones) again even where their "
                        "pictures exist (to try other --paste-flags on the same cases)")
    p.add_argument("--paste-flags", default=None, metavar="FLAGS",
                   help="composite's options for the rows pasted back through an inferred mask (diffedit+paste, "
                        "ledits+paste), e.g. \"--refine 0\" or \"--feather 2\" (default: none: composite's defaults)")
    p.add_argument("--photo-scale", type=int, default=None, metavar="N",
                   help="large-photo mode: the scenes rendered at N×64 px, edited at their own resolution by "
                        "examples/photo.sh (the model's defaults) and scored at full resolution (demo/photo_benchmark.py)")
    p.add_argument("--method", choices=["diffedit", "ledits"], default="diffedit",
                   help="diffedit: DiffEdit's rows (default); ledits: LEDITS++'s rows and their combinations with "
                        f"DiffEdit's masks, beside {', '.join(LEDITS_BESIDE)}")
    p.add_argument("--ledits-steps", type=int, default=None, help="invert --method ledits --steps" + unset)
    p.add_argument("--skip", type=float, default=None, help="invert --method ledits --skip" + unset)
    p.add_argument("--source-guidance", type=float, default=None,
                   help="invert --method ledits --guidance (with --ledits-source-prompt)" + unset)
    p.add_argument("--ledits-source-prompt", action="store_true",
                   help="invert --method ledits under the source caption (default: the empty prompt, as diffusers)")
    p.add_argument("--edit-guidance", default=None, help="denoise --method ledits --edit-guidance (one, or add,remove)" + unset)
    p.add_argument("--edit-threshold", default=None, help="denoise --method ledits --edit-threshold" + unset)
    p.add_argument("--edit-warmup", default=None, help="denoise --method ledits --edit-warmup" + unset)
    p.add_argument("--edit-cooldown", default=None, help="denoise --method ledits --edit-cooldown" + unset)
    p.add_argument("--attention-grid", default=None, metavar="HxW",
                   help="denoise --method ledits --attention-grid (the cross-attention maps its masks read)" + unset)
    p.add_argument("--ledits-concepts", choices=["caption", "phrase"], default="caption",
                   help="LEDITS++'s concepts: the whole target (and source) caption, or the object phrases in "
                        "which they differ (\"an orange triangle\")")
    p.add_argument("--ledits-remove-source", action="store_true",
                   help="denoise --method ledits also removes the source caption (default: only the target added)")
    p.add_argument("--ledits-mask", choices=["intersect", "attention", "noise"], default=None,
                   help="denoise --method ledits --ledits-mask" + unset)
    p.add_argument("--methods", nargs="+", default=None,
                   help="run these methods only (default all; tuning runs need only diffedit, and the denoisings "
                        "are most of a case's time); no montage then")
    a = p.parse_args()
    table_methods = METHODS if a.method == "diffedit" else \
        [m for m in METHODS if m.name in LEDITS_BESIDE] + LEDITS_METHODS
    names = [m.name for m in table_methods]
    if a.methods:
        unknown = [n for n in a.methods if n not in names]
        if unknown:
            sys.exit(f"benchmark: no method {', '.join(unknown)} (methods: {', '.join(names)})")
    # The methods run, in the table's order, with every method a chosen one post-processes.
    wanted = set(a.methods or names)
    for m in reversed(table_methods):
        if m.name in wanted and m.after:
            wanted.add(m.after)
        if m.name in wanted and m.mask == "ledits":
            wanted.add("ledits")
    a.method_rows = [m for m in table_methods if m.name in wanted]
    check_methods(a.method_rows)
    if a.bin is None:
        a.bin = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    a.bin = os.path.abspath(a.bin)  # the cases run in their own folders
    for tool in ("vae-encode", "vae-decode", "tokenize", "encode-text", "noise-diff-mask", "invert", "denoise",
                 "composite", "tensor"):
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
    if a.photo_scale:
        photo_benchmark.run(a, clf, summarise, background_scores)
        return

    rows, tool_seconds, stages = [], [], None
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        futs = {ex.submit(edit_case, k, a, env): k for k in range(a.cases)}
        for n, f in enumerate(cf.as_completed(futs), 1):
            k = futs[f]
            d, pair, secs = f.result()
            tool_seconds.append(secs)
            rows.append(score_case(k, d, pair, clf, a, a.method_rows))
            # Every case runs with the same settings; a case that reports others is a bug here.
            used = stage_settings(d, a.method_rows)
            if stages is None:
                stages = used
            elif used != stages:
                sys.exit(f"benchmark: case {k} ran with {used}, case before it with {stages}")
            if n % 10 == 0 or n == a.cases:
                el = time.time() - t0
                print(f"benchmark: {n}/{a.cases} cases, {el:.0f} s, ETA {el / n * (a.cases - n):.0f} s",
                      file=sys.stderr)
    rows.sort(key=lambda r: r["case"])
    seconds = time.time() - t0
    summary = summarise(rows, a.method_rows)
    md = table(summary, rows, a, seconds, stages, a.method_rows)
    print(md)
    if a.results:
        os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
        given = {k: getattr(a, k) for k in ("scheduler", "steps", "mask_steps", "guidance", "mask_guidance",
                                             "invert_guidance", "denoise_guidance", "strength", "maps",
                                             "encode_strength", "threshold_ratio", "dilate", "deep_cache", "ledits_steps", "skip",
                                             "source_guidance", "edit_guidance", "edit_threshold", "edit_warmup",
                                             "edit_cooldown", "attention_grid", "ledits_mask") if getattr(a, k) is not None}
        if a.paste_flags:
            given["paste_flags"] = a.paste_flags
        if a.ledits_source_prompt:
            given["ledits_source_prompt"] = True
        if a.ledits_remove_source:
            given["ledits_remove_source"] = True
        if a.ledits_concepts != "caption":
            given["ledits_concepts"] = a.ledits_concepts
        res = {"summary": summary, "shape_classifier_accuracy": acc,
               "settings": {"cases": a.cases, "first_seed": a.first_seed, "negative": a.negative, "method": a.method,
                            "methods": [m.name for m in a.method_rows],
                            "given": given, "stages": stages,
                            # The fields earlier results hold (compare_benchmarks.py), from what ran:
                            "steps": stages["invert"]["steps"], "scheduler": stages["invert"]["scheduler"],
                            "guidance": stages["denoise"].get("guidance"), "invert_guidance": stages["invert"]["guidance"],
                            "strength": stages["invert"]["strength"], "psnr_cap_db": PSNR_CAP,
                            "model": os.path.relpath(os.path.abspath(a.model), ROOT), "jobs": a.jobs},
               "seconds": round(seconds, 1), "tool_seconds_per_case": round(float(np.mean(tool_seconds)), 2),
               "cases": rows}
        with open(a.results + ".json", "w") as f:
            json.dump(res, f, indent=1)
        with open(a.results + ".md", "w") as f:
            f.write(md)
        if a.montage > 0 and not a.methods:
            montage(rows, a, a.results + ".png")


if __name__ == "__main__":
    main()

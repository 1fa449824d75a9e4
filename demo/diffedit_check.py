"""DiffEdit on the demo model with diffusers' StableDiffusionDiffEditPipeline, measured.

    python demo/diffedit_check.py [--model demo/model] [--pairs 24] [--montage /tmp/diffedit_montage.png]
        [--strength 0.8] [--guidance 7.5] [--steps 50] [--ratio 3.0] [--maps 10] [--ours BIN]

1. The showcase: "a red circle on a striped white background" -> "a blue circle on a striped white
   background" (one image, seed 0), plus --pairs colour-edit pairs from world.make_edit_pair
   (seeds 1_000_000 + k, never in the training set).
2. For each: generate_mask (source, target prompts), IoU of the mask with the ground-truth object
   mask at latent resolution (16x16; a latent cell is "object" when >= 50 % of its 4x4 pixels are);
   invert (source prompt); denoise with the target prompt and the mask.
3. Edit success: the dominant object colour inside the ground-truth mask of the edited image is the
   target colour. Background kept: mean |edit - input| outside the (dilated) mask, RGB 0..255.
4. With --ours BIN (the folder of our release tools): the same edit through our tools
   (noise-diff-mask, invert, denoise, vae-decode with the same settings and seed, every negative
   prompt given explicitly), compared with diffusers': latent mask cells that differ, and the 8-bit
   edited images' max and mean |difference|. Each diffusers call then gets a fresh generator seeded
   with the case's seed, as each of our tools seeds its own.
Writes a montage: rows of (input, mask upsampled, edit, ground-truth target).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "python")]
import world  # noqa: E402
from diffedit_tools import edit as tools, stream  # noqa: E402
from measure import OBJ, dilate, object_pixels, read_pnm, to_latent, write_pnm  # noqa: E402
# torch, PIL and sample (which imports torch) are imported where used, so that the command lines
# of our side (ours_commands) can be tested without them.


def latent_mask(mask, factor):
    return to_latent(mask, factor, "half")


def edit(pipe, image_u8, src, tgt, a, seed=0):
    import torch
    from PIL import Image
    img = Image.fromarray(image_u8)
    shared = torch.Generator("cpu").manual_seed(seed)
    # With --ours every call starts from the seed, as each of our tools does.
    gen = (lambda: torch.Generator("cpu").manual_seed(seed)) if a.ours else (lambda: shared)  # noqa: E731
    with torch.no_grad():
        mask = pipe.generate_mask(image=img, source_prompt=src, target_prompt=tgt, generator=gen(),
                                  num_maps_per_mask=a.maps, mask_encode_strength=a.mask_strength,
                                  mask_thresholding_ratio=a.ratio, num_inference_steps=a.steps,
                                  guidance_scale=a.guidance)
        inv = pipe.invert(prompt=src, image=img, generator=gen(), inpaint_strength=a.strength,
                          num_inference_steps=a.steps, guidance_scale=a.invert_guidance).latents
        out = pipe(prompt=tgt, mask_image=mask, image_latents=inv, generator=gen(),
                   negative_prompt=src if a.negative_source else None, inpaint_strength=a.strength,
                   num_inference_steps=a.steps, guidance_scale=a.guidance, output_type="np").images[0]
    return mask[0], (out * 255).round().astype(np.uint8)


def ours_commands(src, tgt, a, seed):
    """Our tools with diffusers' settings of this edit, every negative prompt given explicitly
    (denoise takes the steps and the strength from the inverted stack)."""
    e = tools.Edit(src, tgt, "in.ppm", steps=a.steps, seed=seed, guidance=a.guidance,
                   invert_guidance=a.invert_guidance, strength=a.strength, maps=a.maps,
                   encode_strength=a.mask_strength, threshold_ratio=a.ratio, blend="diffusers",
                   negative="source" if a.negative_source else "empty", empty_negatives=True)
    return tools.Commands(e)


def ours_edit(image_u8, src, tgt, a, seed):
    """The same edit through our tools: (latent mask [h, w] of 0/1, edited uint8 image)."""
    with tempfile.TemporaryDirectory() as d:
        write_pnm(os.path.join(d, "in.ppm"), image_u8)
        line = tools.shell_line(ours_commands(src, tgt, a, seed).stages(pipe_decode=True))
        env = tools.tool_env(a.model, bin=a.ours)
        r = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=d, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"diffedit_check.py: our tools failed on {src!r} -> {tgt!r}: {r.stderr.strip()}")
        mask = stream.read_record(os.path.join(d, "mask.tensor"), "mask").array
        return mask.reshape(mask.shape[-2:]), read_pnm(os.path.join(d, "edited.ppm"))


def main():
    from sample import DEFAULT_MODEL, load_diffedit
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--strength", type=float, default=0.8)
    p.add_argument("--invert-guidance", type=float, default=7.5, help="guidance_scale for invert()")
    p.add_argument("--mask-strength", type=float, default=0.5)
    p.add_argument("--ratio", type=float, default=3.0)
    p.add_argument("--maps", type=int, default=10)
    p.add_argument("--negative-source", action="store_true", help="negative prompt = source prompt")
    p.add_argument("--kind", default="colour", choices=["colour", "shape"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--montage", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--ours", default=None, metavar="BIN",
                   help="also run each edit through our tools in BIN (e.g. .build/release) and compare")
    a = p.parse_args()
    if a.ours:
        a.ours = os.path.abspath(a.ours)
    import torch
    from PIL import Image
    torch.set_num_threads(a.threads)
    pipe = load_diffedit(a.model)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    show_bg = world.Background("white", "striped", {"angle": np.pi / 4, "width": 4.0, "phase": 0.0, "amount": -20.0})
    src_obj = [world.SceneObject("circle", "red", 30, 34, 12)]
    tgt_obj = [world.SceneObject("circle", "blue", 30, 34, 12)]
    cases = [(world.scene_from(src_obj, show_bg), world.scene_from(tgt_obj, show_bg), 0)]
    for k in range(a.pairs):
        pr = world.make_edit_pair(1_000_000 + k, kind=a.kind)
        cases.append((pr.source, pr.target, pr.index))

    ious, ok, bg_err, rows, log = [], 0, [], [], []
    for j, (s, t, i) in enumerate(cases):
        src_cap, tgt_cap = s.caption, t.caption
        mask, out = edit(pipe, s.image, src_cap, tgt_cap, a, seed=j)
        gt = s.masks[i] | t.masks[i]
        gtl = latent_mask(gt, factor)
        m = mask > 0.5
        iou = (m & gtl).sum() / max(1, (m | gtl).sum())
        lab = object_pixels(out)[s.masks[i] & t.masks[i]]
        counts = np.bincount(lab[lab >= 0], minlength=len(OBJ))
        got = OBJ[counts.argmax()] if counts.sum() else None
        want = t.objects[i].colour if a.kind == "colour" else None
        success = (got == want) if a.kind == "colour" else None
        keep = ~dilate(gt, 3)
        err = np.abs(out.astype(np.float32) - s.image.astype(np.float32))[keep].mean()
        ious.append(iou); bg_err.append(err); ok += bool(success)
        log.append({"source": src_cap, "target": tgt_cap, "mask_iou": round(float(iou), 3),
                    "edited_colour": got, "success": success, "background_mae": round(float(err), 2),
                    "mask_cells": int(m.sum()), "gt_cells": int(gtl.sum())})
        if a.ours:
            our_mask, our_out = ours_edit(s.image, src_cap, tgt_cap, a, seed=j)
            diff = np.abs(our_out.astype(np.int32) - out.astype(np.int32))
            log[-1]["ours"] = {"mask_cells_differ": int(((our_mask > 0.5) != m).sum()),
                               "image_max_abs_diff": int(diff.max()),
                               "image_mean_abs_diff": round(float(diff.mean()), 4)}
        print(json.dumps(log[-1]), flush=True)
        mask_img = np.repeat(np.repeat(m, factor, 0), factor, 1)
        mask_rgb = np.stack([mask_img * 255] * 3, -1).astype(np.uint8)
        eroded = gt & np.roll(gt, 1, 0) & np.roll(gt, -1, 0) & np.roll(gt, 1, 1) & np.roll(gt, -1, 1)
        gt_edge = gt & ~eroded  # ground-truth outline in red
        mask_rgb[gt_edge] = (255, 0, 0)
        rows.append(np.concatenate([s.image, np.full((64, 2, 3), 255, np.uint8), mask_rgb,
                                    np.full((64, 2, 3), 255, np.uint8), out,
                                    np.full((64, 2, 3), 255, np.uint8), t.image], 1))
    res = {"cases": len(cases), "mean_mask_iou": float(np.mean(ious)), "showcase_mask_iou": float(ious[0]),
           "edit_success": ok / len(cases) if a.kind == "colour" else None,
           "mean_background_mae": float(np.mean(bg_err)),
           "settings": {k: v for k, v in vars(a).items() if k not in ("montage", "json", "model", "ours")}}
    if a.ours:
        o = [c["ours"] for c in log]
        res["ours_vs_diffusers"] = {
            "cases_with_identical_mask": sum(c["mask_cells_differ"] == 0 for c in o),
            "mask_cells_differ_total": sum(c["mask_cells_differ"] for c in o),
            "image_max_abs_diff": max(c["image_max_abs_diff"] for c in o),
            "image_mean_abs_diff": round(float(np.mean([c["image_mean_abs_diff"] for c in o])), 4)}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": res, "cases": log}, f, indent=2)
    if a.montage:
        n = min(len(rows), 9)
        sheet = np.concatenate([np.concatenate([r, np.full((2, r.shape[1], 3), 255, np.uint8)], 0) for r in rows[:n]], 0)
        Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST).save(a.montage)


if __name__ == "__main__":
    main()

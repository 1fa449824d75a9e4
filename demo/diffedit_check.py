"""DiffEdit on the demo model with diffusers' StableDiffusionDiffEditPipeline, measured.

    python demo/diffedit_check.py [--model demo/model] [--pairs 24] [--montage /tmp/diffedit_montage.png]
        [--strength 0.8] [--guidance 7.5] [--steps 50] [--ratio 3.0] [--maps 10]

1. The showcase: "a red circle on a striped white background" -> "a blue circle on a striped white
   background" (one image, seed 0), plus --pairs colour-edit pairs from world.make_edit_pair
   (seeds 1_000_000 + k, never in the training set).
2. For each: generate_mask (source, target prompts), IoU of the mask with the ground-truth object
   mask at latent resolution (16x16; a latent cell is "object" when >= 50 % of its 4x4 pixels are);
   invert (source prompt); denoise with the target prompt and the mask.
3. Edit success: the dominant object colour inside the ground-truth mask of the edited image is the
   target colour. Background kept: mean |edit - input| outside the (dilated) mask, RGB 0..255.
Writes a montage: rows of (input, mask upsampled, edit, ground-truth target).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import world  # noqa: E402
from measure import OBJ, dilate, object_pixels, to_latent  # noqa: E402
from sample import DEFAULT_MODEL, load_diffedit  # noqa: E402


def latent_mask(mask, factor):
    return to_latent(mask, factor, "half")


@torch.no_grad()
def edit(pipe, image_u8, src, tgt, a, seed=0):
    img = Image.fromarray(image_u8)
    g = torch.Generator("cpu").manual_seed(seed)
    mask = pipe.generate_mask(image=img, source_prompt=src, target_prompt=tgt, generator=g,
                              num_maps_per_mask=a.maps, mask_encode_strength=a.mask_strength,
                              mask_thresholding_ratio=a.ratio, num_inference_steps=a.steps,
                              guidance_scale=a.guidance)
    inv = pipe.invert(prompt=src, image=img, generator=g, inpaint_strength=a.strength,
                      num_inference_steps=a.steps, guidance_scale=a.invert_guidance).latents
    out = pipe(prompt=tgt, mask_image=mask, image_latents=inv, generator=g,
               negative_prompt=src if a.negative_source else None, inpaint_strength=a.strength,
               num_inference_steps=a.steps, guidance_scale=a.guidance, output_type="np").images[0]
    return mask[0], (out * 255).round().astype(np.uint8)


def main():
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
    a = p.parse_args()
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
           "settings": {k: v for k, v in vars(a).items() if k not in ("montage", "json", "model")}}
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

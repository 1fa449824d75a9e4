"""Text-to-image sampling with the demo model through diffusers.

    python demo/sample.py "a red circle on a plain gray background" "a blue square" -o out.png
        [--model demo/model] [--steps 50] [--guidance 7.5] [--seed 0] [--n 4]

Writes one row per prompt (n samples each), upscaled 2x with nearest neighbour.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "model")


def load_diffedit(model=DEFAULT_MODEL):
    from diffusers import StableDiffusionDiffEditPipeline
    from diffusers.utils import logging
    logging.set_verbosity_error()
    pipe = StableDiffusionDiffEditPipeline.from_pretrained(model, torch_dtype=torch.float32,
                                                           safety_checker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_t2i(model=DEFAULT_MODEL):
    """A StableDiffusionPipeline sharing the DiffEdit pipeline's components."""
    from diffusers import StableDiffusionPipeline
    d = load_diffedit(model)
    pipe = StableDiffusionPipeline(vae=d.vae, text_encoder=d.text_encoder, tokenizer=d.tokenizer, unet=d.unet,
                                   scheduler=d.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts, seed=0, steps=50, guidance=7.5, batch=64):
    """uint8 images [len(prompts), 64, 64, 3]; sample k uses generator seed `seed + k`... in one
    batched call per chunk, drawn from one generator seeded with `seed + chunk index`."""
    out = []
    for c, i in enumerate(range(0, len(prompts), batch)):
        g = torch.Generator("cpu").manual_seed(seed + c)
        r = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                 output_type="np")
        out.append((r.images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def grid(images, cols, scale=2):
    from PIL import Image
    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = im
    return Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("prompts", nargs="+")
    p.add_argument("-o", "--out", default="samples.png")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_t2i(a.model)
    prompts = [q for q in a.prompts for _ in range(a.n)]
    imgs = generate(pipe, prompts, a.seed, a.steps, a.guidance)
    grid(imgs, a.n).save(a.out)
    print("wrote", a.out, file=sys.stderr)


if __name__ == "__main__":
    main()

"""Caption following of the demo model: generate "a <colour> <shape>" scenes, measure what came out.

    python demo/eval_t2i.py [--model demo/model] [--seeds 3] [--steps 50] [--guidance 7.5]
        [--grid demo/eval_t2i.png]

Prompts: every colour x shape, once alone ("a red circle") and once with a plain background
("a red circle on a plain gray background", background cycling through world.BACKGROUNDS),
times --seeds. For each image:
  * object pixels = pixels whose nearest colour in (object palette + background palette) is an
    object colour, within distance 80 (RGB 0..255);
  * colour correct = the most frequent object colour among those pixels is the prompt's colour;
  * shape correct = the largest blob of the dominant colour is classified as the prompt's shape
    by measure.ShapeClassifier (trained on the generator's scenes).
Also two-object prompts ("a red circle and a blue square"): both colours present (>= 25 px each).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import world  # noqa: E402
from measure import OBJ, ShapeClassifier, dominant_colour, largest_component, object_pixels  # noqa: E402
from sample import DEFAULT_MODEL, generate, grid, load_t2i  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_t2i(a.model)
    clf = ShapeClassifier.train()

    bgs = list(world.BACKGROUNDS)
    single = []
    for k, (c, s) in enumerate(itertools.product(OBJ, world.SHAPES)):
        single.append((c, s, f"{world.article(c)} {c} {s}"))
        single.append((c, s, f"{world.article(c)} {c} {s} on a plain {bgs[k % len(bgs)]} background"))
    single = single * a.seeds
    imgs = generate(pipe, [q for _, _, q in single], seed=1000, steps=a.steps, guidance=a.guidance)
    col_ok = shape_ok = 0
    per_colour = {c: [0, 0] for c in OBJ}
    for (c, s, q), im in zip(single, imgs):
        dom, _ = dominant_colour(im)
        col_ok += dom == c
        per_colour[c][0] += dom == c
        per_colour[c][1] += 1
        if dom is not None:
            shape_ok += clf.predict(largest_component(object_pixels(im) == OBJ.index(dom))) == s
    n = len(single)

    rng = np.random.default_rng(5)
    pairs = []
    for _ in range(12 * a.seeds):
        (c1, c2) = rng.choice(OBJ, 2, replace=False)
        s1, s2 = rng.choice(world.SHAPES, 2)
        pairs.append((c1, c2, f"{world.article(c1)} {c1} {s1} and {world.article(c2)} {c2} {s2}"))
    pimgs = generate(pipe, [q for _, _, q in pairs], seed=2000, steps=a.steps, guidance=a.guidance)
    both = 0
    for (c1, c2, q), im in zip(pairs, pimgs):
        _, counts = dominant_colour(im)
        both += counts[OBJ.index(c1)] >= 25 and counts[OBJ.index(c2)] >= 25

    res = {"single_object_samples": n, "colour_accuracy": col_ok / n, "shape_accuracy": shape_ok / n,
           "per_colour": {c: v[0] / v[1] for c, v in per_colour.items()},
           "two_object_samples": len(pairs), "two_object_both_colours": both / len(pairs),
           "steps": a.steps, "guidance": a.guidance}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    if a.grid:
        grid(np.concatenate([imgs[:36], pimgs[:12]]), 12).save(a.grid)


if __name__ == "__main__":
    main()

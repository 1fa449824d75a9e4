#!/usr/bin/env python3
"""The error of the opt-in bf16 products, stage by stage: each tool run at --precision bf16 on the
f32 output of the stage before it, against the same tool at f32 (which gives diffusers' numbers
within the parity tests' tolerances), and the whole edit at bf16 end to end.

    python3 bench/precision_error.py [--model DIR] [--size 256] [--steps 20] [--bin .build/release]

Prints a Markdown table: per stage the largest difference and the RMS difference relative to the
RMS of the f32 output, the mask's differing cells, and the decoded pictures' 8-bit differences.
Needs numpy and a CPU with AVX512-BF16 (elsewhere the tools compute in f32 and say so).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python"))
from diffedit_tools import stream  # noqa: E402

SOURCE, TARGET = "a bowl of fruits", "a bowl of pears"


def run(argv, stdin=None, stdout=None, precision="f32"):
    env = dict(os.environ, DIFFEDIT_PRECISION=precision)
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as i, open(stdout, "wb") as o:
        r = subprocess.run(argv, stdin=i, stdout=o, stderr=subprocess.PIPE, env=env)
    if r.returncode != 0:
        sys.exit(f"precision_error: {' '.join(argv)} failed: {r.stderr.decode()}")
    if "lacks" in r.stderr.decode():
        sys.exit("precision_error: this CPU has no AVX512-BF16 — the bf16 path runs in f32 here; run it on a CPU that has it")


def floats(path, record=None):
    recs = stream.read(path)
    r = next((x for x in recs if record is None or x.name == record), recs[0])
    return np.asarray(r.array, dtype=np.float64)


def ppm(path):
    with open(path, "rb") as f:
        data = f.read()
    parts, i = [], 0
    while len(parts) < 4:
        while data[i:i + 1].isspace():
            i += 1
        j = i
        while not data[j:j + 1].isspace():
            j += 1
        parts.append(data[i:j])
        i = j
    w, h, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    return np.frombuffer(data[i + 1:i + 1 + w * h * 3 * (2 if maxval > 255 else 1)],
                         dtype=">u2" if maxval > 255 else np.uint8).astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/diffedit-bench/sd15-random"))
    ap.add_argument("--image", default=None, help="input picture (default: bench's 256² image in --work, else demo/scenes/red-circle.ppm scaled)")
    ap.add_argument("--source", default=SOURCE, help=f"source caption (default: {SOURCE!r})")
    ap.add_argument("--target", default=TARGET, help=f"target caption (default: {TARGET!r})")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", default="7.5")
    ap.add_argument("--bin", default=os.path.join(REPO, ".build", "release"))
    a = ap.parse_args()
    tool = lambda name, *args: [os.path.join(a.bin, name), "--model", a.model, *args]  # noqa: E731
    d = tempfile.mkdtemp(prefix="precision-error-")
    p = lambda name: os.path.join(d, name)  # noqa: E731
    image = a.image
    if image is None:
        image = p("image.ppm")
        with open(image, "wb") as o:
            subprocess.run(["pamscale", "-width", "256", "-height", "256", os.path.join(REPO, "demo/scenes/red-circle.ppm")],
                           stdout=o, check=True)
    rows = []

    def compare(stage, name, record=None):
        x, y = floats(p(name + ".f32"), record), floats(p(name + ".bf16"), record)
        rms = np.sqrt(np.mean(x ** 2))
        rows.append((stage, f"{np.max(np.abs(x - y)):.3g}", f"{np.sqrt(np.mean((x - y) ** 2)) / rms:.3g}", ""))

    # Captions: the text encoder at each precision (its output feeds the others at f32).
    for prec in ("f32", "bf16"):
        for cap, text in (("src", a.source), ("tgt", a.target)):
            run(tool("tokenize", "--", text), stdout=p(f"{cap}.ids"))
            run(tool("encode-text", p(f"{cap}.ids")), stdout=p(f"{cap}.{prec}"), precision=prec)
    compare("encode-text", "src")
    for prec in ("f32", "bf16"):
        run(tool("vae-encode", image), stdout=p(f"post.{prec}"), precision=prec)
    compare("vae-encode (posterior mean)", "post", "posterior.mean")
    S, T = p("src.f32"), p("tgt.f32")
    common = ["--steps", str(a.steps), "--guidance", a.guidance]
    for prec in ("f32", "bf16"):
        run(tool("noise-diff-mask", "--source", S, "--target", T, "--soft-output", p(f"soft.{prec}"), *common),
            stdin=p("post.f32"), stdout=p(f"mask.{prec}"), precision=prec)
    compare("noise-diff-mask (soft map)", "soft")
    m32, m16 = floats(p("mask.f32")), floats(p("mask.bf16"))
    rows[-1] = rows[-1][:3] + (f"{int(np.sum(m32 != m16))} of {m32.size} mask cells differ",)
    for prec in ("f32", "bf16"):
        run(tool("invert", "--prompt", S, *common), stdin=p("post.f32"), stdout=p(f"inv.{prec}"), precision=prec)
    compare("invert (the stack)", "inv")
    for prec in ("f32", "bf16"):
        run(tool("denoise", "--mask", p("mask.f32"), "--prompt", T, "--negative", S, "--guidance", a.guidance),
            stdin=p("inv.f32"), stdout=p(f"lat.{prec}"), precision=prec)
    compare("denoise (edited latents)", "lat")
    for prec in ("f32", "bf16"):
        run(tool("vae-decode", p("lat.f32")), stdout=p(f"img.{prec}"), precision=prec)
    x, y = ppm(p("img.f32")), ppm(p("img.bf16"))
    rows.append(("vae-decode (8-bit picture)", f"{np.max(np.abs(x - y))} levels", "", f"mean |Δ| {np.mean(np.abs(x - y)):.3f} levels"))
    # The whole edit at bf16, every stage on the bf16 output of the one before.
    run(tool("noise-diff-mask", "--source", p("src.bf16"), "--target", p("tgt.bf16"), *common),
        stdin=p("post.bf16"), stdout=p("wmask"), precision="bf16")
    run(tool("invert", "--prompt", p("src.bf16"), *common), stdin=p("post.bf16"), stdout=p("winv"), precision="bf16")
    run(tool("denoise", "--mask", p("wmask"), "--prompt", p("tgt.bf16"), "--negative", p("src.bf16"), "--guidance", a.guidance),
        stdin=p("winv"), stdout=p("wlat"), precision="bf16")
    run(tool("vae-decode", p("wlat")), stdout=p("wimg"), precision="bf16")
    w = ppm(p("wimg"))
    wm = floats(p("wmask"))
    rows.append(("whole edit at bf16 (8-bit picture)", f"{np.max(np.abs(x - w))} levels", "",
                 f"mean |Δ| {np.mean(np.abs(x - w)):.3f} levels; {int(np.sum(wm != m32))} mask cells differ"))
    print(f"model {a.model}, picture {image}, {a.steps} steps, guidance {a.guidance}; "
          f"the f32 mask covers {int(np.sum(m32))} of {m32.size} cells\n")
    print("| stage at bf16, on f32 inputs | max abs difference from f32 | RMS difference / RMS | |")
    print("|---|--:|--:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()

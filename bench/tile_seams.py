#!/usr/bin/env python3
"""Seams of the tiled VAE: `--tile-norm tile` (diffusers' enable_tiling) against `--tile-norm shared`.

Usage:  python3 bench/tile_seams.py --model DIR --size PX [--tile-size PX] [--what encode,decode]
                                    [--bin .build/release] [--seed N] [--work DIR] [--lock PATH]

    e.g. python3 bench/tile_seams.py --model demo/model --size 1024 --lock /tmp/diffedit-cpu.lock
         python3 bench/tile_seams.py --model ~/.cache/diffedit-bench/sd15-random --size 2048 --what decode

Renders demo scene SEED (demo/world.py) at SIZE×SIZE and runs the release tools on it:
* encode: `vae-encode` untiled, `--tile-norm tile` and `--tile-norm shared` (tile --tile-size);
  compared in latent space (posterior.mean): RMSE relative to the untiled latents' std.
* decode: the untiled posterior mean (with `--what decode` alone: the scene's pixels averaged to
  the latent grid and mixed to the latent channels, a cheap stand-in) decoded untiled, `tile` and
  `shared`; PSNR of the 8-bit images against the untiled image.
Seam metric (both): the mean absolute step between neighbouring rows/columns where tiles meet
(the blend bands of diffusers' tiling: tile j's output starts at j·keep and is crossfaded with
tile j−1 over `blend` positions; the steps into, across and out of each band) divided by the
mean step everywhere else ("seam ratio": the untiled output's is the picture's own), and the
mean absolute step of the error image (tiled − untiled) at the bands and elsewhere: the seams
themselves, in 8-bit levels for images.
Peak RSS and wall time of every run from GNU time (/usr/bin/time -v). Needs numpy only.
The machine is whatever runs it: on a shared machine, read the times as rough.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "demo"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import world  # noqa: E402
from diffedit_tools import stream  # noqa: E402


def write_ppm(path, rgb):
    h, w, _ = rgb.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())


def read_ppm(path):
    data = open(path, "rb").read()
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    w, h, maxval = map(int, m.groups())
    assert maxval == 255, maxval
    return np.frombuffer(data, np.uint8, count=w * h * 3, offset=m.end()).reshape(h, w, 3).astype(np.float64)


LOCK = []  # ["flock", PATH] with --lock: each run waits for the machine's CPU lock


def run(argv, stdin, stdout):
    """Runs a tool under /usr/bin/time -v; returns (peak RSS in MB, wall seconds)."""
    with open(stdin, "rb") as i, open(stdout, "wb") as o:
        p = subprocess.run(LOCK + ["/usr/bin/time", "-v"] + argv, stdin=i, stdout=o, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"tile_seams: {' '.join(argv)} failed:\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    t = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    wall = int(t.group(1) or 0) * 3600 + int(t.group(2)) * 60 + float(t.group(3))
    return rss, wall


def boundary_steps(n, tile, keep, blend):
    """Indices c (step c → c+1) inside or at the edges of the blend bands along an axis of n."""
    s = np.zeros(n - 1, bool)
    if n <= tile:  # one tile: not tiled
        return s
    for start in range(keep, n, keep):
        s[max(0, start - 1):min(n - 1, start + blend)] = True
    return s


def steps(x, bands_y, bands_x):
    """x [..., H, W]: (mean |step| across the bands, mean |step| elsewhere), rows and columns together."""
    dy = np.abs(np.diff(x, axis=-2)).mean(axis=tuple(i for i in range(x.ndim) if i != x.ndim - 2))
    dx = np.abs(np.diff(x, axis=-1)).mean(axis=tuple(i for i in range(x.ndim) if i != x.ndim - 1))
    at = np.concatenate([dy[bands_y], dx[bands_x]])
    off = np.concatenate([dy[~bands_y], dx[~bands_x]])
    return (at.mean() if at.size else float("nan")), off.mean()


def seam_report(x, ref, bands_y, bands_x, unit):
    """The seam ratio of x (band steps / other steps) and the error's mean steps at and off the bands."""
    at, off = steps(x, bands_y, bands_x)
    eat, eoff = steps(x - ref, bands_y, bands_x)
    return f"seam ratio {at / max(off, 1e-12):.3f}   error step at bands {eat:.4f} {unit}, elsewhere {eoff:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile-size", type=int, help="default: the tools' (the VAE's sample_size)")
    ap.add_argument("--what", default="encode,decode")
    ap.add_argument("--bin", default=os.path.join(HERE, "..", ".build", "release"))
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--work", help="keep the files here (default: a temporary directory)")
    ap.add_argument("--lock", help="take this flock(1) lock around each tool run (a shared machine's CPU lock)")
    a = ap.parse_args()
    if a.lock:
        LOCK[:] = ["flock", a.lock]
    what = a.what.split(",")
    work = a.work or tempfile.mkdtemp(prefix="tile-seams-")
    os.makedirs(work, exist_ok=True)
    tool = lambda name: os.path.join(a.bin, name)  # noqa: E731
    vae_config = __import__("json").load(open(os.path.join(a.model, "vae", "config.json")))
    f = 2 ** (len(vae_config["block_out_channels"]) - 1)
    tile = a.tile_size or vae_config.get("sample_size", 32)
    if isinstance(tile, list):
        tile = tile[0]
    tile_opts = ["--tile-size", str(tile)]
    print(f"model {a.model} (factor {f}), scene {a.seed} at {a.size}², tile {tile} px, files in {work}")

    scene = os.path.join(work, "scene.ppm")
    write_ppm(scene, world.make_scene(a.seed, size=a.size).image)
    norms = {"untiled": [], "tile": tile_opts + ["--tile-norm", "tile"], "shared": tile_opts + ["--tile-norm", "shared"]}
    rows = []

    def latent_bands(n):
        lt = tile // f
        return boundary_steps(n, lt, lt - lt // 4, lt // 4)

    encoded = {}
    if "encode" in what:
        for name, opts in norms.items():
            out = os.path.join(work, f"enc-{name}.tensor")
            rss, wall = run([tool("vae-encode"), "--model", a.model, "-q"] + opts, scene, out)
            encoded[name] = stream.read_record(out, "posterior.mean").array.astype(np.float64)
            rows.append(("vae-encode", name, rss, wall))
        ref = encoded["untiled"]
        by, bx = latent_bands(ref.shape[-2]), latent_bands(ref.shape[-1])
        print(f"\nencode ({ref.shape[-1]}×{ref.shape[-2]} latents): RMSE / std of the untiled latents, seams")
        for name, x in encoded.items():
            rel = np.sqrt(((x - ref) ** 2).mean()) / ref.std()
            print(f"  {name:8} rel. RMSE {rel:.4f}   {seam_report(x, ref, by, bx, '')}")

    if "decode" in what:
        latents = os.path.join(work, "enc-untiled.tensor")
        if "encode" not in what:
            # Without the encode runs (a large image through a big VAE's encoder takes long): the
            # scene's pixels box-averaged to the latent grid and mixed to the latent channels by
            # a fixed random matrix, about unit variance in the VAE's space — an input with the
            # picture's layout, which for a random-weight VAE is as meaningful as its encoding.
            latents = os.path.join(work, "latents-from-pixels.tensor")
            img = world.make_scene(a.seed, size=a.size).image.astype(np.float64) / 127.5 - 1
            h, w = a.size // f, a.size // f
            small = img.reshape(h, f, w, f, 3).mean(axis=(1, 3))
            mix = np.random.default_rng(0).standard_normal((3, vae_config.get("latent_channels", 4)))
            z = (small @ mix).transpose(2, 0, 1)[None]
            z = (z - z.mean()) / z.std() * vae_config.get("scaling_factor", 0.18215)
            stream.write(latents, stream.Record("latents", "f32", z.astype(np.float32)))
        images = {}
        for name, opts in norms.items():
            out = os.path.join(work, f"dec-{name}.ppm")
            rss, wall = run([tool("vae-decode"), "--model", a.model, "-q"] + opts, latents, out)
            images[name] = read_ppm(out).transpose(2, 0, 1)
            rows.append(("vae-decode", name, rss, wall))
        ref = images["untiled"]
        by = boundary_steps(ref.shape[1], tile, tile - tile // 4, tile // 4)
        bx = boundary_steps(ref.shape[2], tile, tile - tile // 4, tile // 4)
        print(f"\ndecode ({ref.shape[2]}×{ref.shape[1]} image): PSNR against untiled (8-bit), seams")
        for name, x in images.items():
            mse = ((x - ref) ** 2).mean()
            psnr = 10 * np.log10(255 ** 2 / mse) if mse > 0 else float("inf")
            print(f"  {name:8} PSNR {psnr:6.2f} dB   {seam_report(x, ref, by, bx, 'levels')}")

    print("\nrun                   peak RSS    wall")
    for t, name, rss, wall in rows:
        print(f"  {t:11} {name:8} {rss:7.0f} MB {wall:7.1f} s")


if __name__ == "__main__":
    main()

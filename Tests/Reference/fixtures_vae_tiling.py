#!/usr/bin/env python3
"""Tiled VAE encode/decode against diffusers (issue 28 part 3): `vae-tiling.tensor`.

Usage:  python Tests/Reference/fixtures_vae_tiling.py [OUT_DIR]     (default: <repo>/Tests/Fixtures)
        or `write_all(out, mf)` from make_fixtures.py (after everything else: it only adds this file).

Reads OUT_DIR/sd1/vae (the committed tiny sd1 VAE, factor 8, sample_size 64) and writes
OUT_DIR/vae-tiling.tensor. The reference is diffusers 0.42.1's AutoencoderKL with enable_tiling():
_tiled_encode / tiled_decode, blend_v / blend_h, tile_overlap_factor 0.25, taken when the image (latent)
exceeds tile_sample_min_size (tile_latent_min_size).

Records, per case <c> (metadata tile_sample_min_size, tile_latent_min_size, tile_overlap_factor):
* `<c>.image` f32 [2, 3, 80, 96]: uniform in [-1, 1]; `<c>.posterior.mean` / `.std` [2, 4, 10, 12]:
  vae.encode(image).latent_dist.mean / .std (unscaled) with tiling.
* `<c>.decode.in` f32 [2, 4, 10, 12]: normal latents, already divided by scaling_factor (vae.decode's input);
  `<c>.decode.out` [2, 3, 80, 96]: vae.decode(z).sample with tiling.
Cases: `tile32` (tile_sample_min_size 32, tile_latent_min_size 4: 4x4 tiles over both), `tile64` (the
config's sample_size 64, latent 8: diffusers' default tile, 2x2 tiles).
"""
import os

import torch

GENERATED = ["vae-tiling.tensor"]
CASES = (("tile32", 32, 2801), ("tile64", None, 2802))


def write_all(out, mf):
    """Everything of this module; `mf` is the make_fixtures module (its Stream writer)."""
    from diffusers import AutoencoderKL
    print("[shared] tiled VAE")
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "sd1"), subfolder="vae").eval()
    vae.enable_tiling()
    default_tile = vae.tile_sample_min_size
    st = mf.Stream(os.path.join(out, "vae-tiling.tensor"))
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    for case, tile, seed in CASES:
        vae.tile_sample_min_size = tile or default_tile
        vae.tile_latent_min_size = vae.tile_sample_min_size // f
        meta = dict(tile_sample_min_size=vae.tile_sample_min_size, tile_latent_min_size=vae.tile_latent_min_size,
                    tile_overlap_factor=vae.tile_overlap_factor)
        g = torch.Generator("cpu").manual_seed(seed)
        image = torch.rand(2, 3, 80, 96, generator=g) * 2 - 1
        z = torch.randn(2, vae.config.latent_channels, 10, 12, generator=g)
        with torch.no_grad():
            dist = vae.encode(image).latent_dist
            out_ = vae.decode(z).sample
        st.add(case + ".image", image, **meta)
        st.add(case + ".posterior.mean", dist.mean, call="vae.encode(image).latent_dist.mean, tiling on", **meta)
        st.add(case + ".posterior.std", dist.std, call="vae.encode(image).latent_dist.std, tiling on", **meta)
        st.add(case + ".decode.in", z, **meta)
        st.add(case + ".decode.out", out_, call="vae.decode(z).sample, tiling on", **meta)
    st.write()
    return {}


if __name__ == "__main__":
    import standalone
    standalone.run(write_all, __file__)

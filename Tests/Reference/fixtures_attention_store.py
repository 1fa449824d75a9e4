#!/usr/bin/env python3
"""LEDITS++'s attention store against diffusers (issue 26): `attention-store.tensor`.

Usage:  python Tests/Reference/fixtures_attention_store.py [OUT_DIR]     (default: <repo>/Tests/Fixtures)
        or `write_all(out, mf)` from make_fixtures.py (after everything else: it only adds this file).

Reads OUT_DIR/sd1/unet (the committed tiny sd1 UNet) and writes OUT_DIR/attention-store.tensor; the file
holds every input its references were computed from, so it is consistent with itself on any machine.
The reference is diffusers 0.42.1's pipeline_leditspp_stable_diffusion.py: LeditsAttentionStore,
LEDITSCrossAttnProcessor, LEditsPPPipelineStableDiffusion.prepare_unet's processor choice (attn2 of
up and down blocks, never the mid block), aggregate_attention, and __call__'s map code (tokens
1 ... n summed, F.pad reflect 1, LeditsGaussianSmoothing).

Records (C = 2 edit concepts; UNet batch 1 + C, item 0 the unconditional branch):
* `smooth.kernel` f32 [3,3]: LeditsGaussianSmoothing's weight.
* `smooth.<H>x<W>.input` / `.output` f32 [H,W]: random maps, and F.pad(reflect, 1) + the smoothing.
* `random.layer<i>.probs` f32 [(1+C)*heads, Q, K] (metadata heads, place): softmax rows handed straight
  to the store's __call__ (as LEDITSCrossAttnProcessor does), grid 3x5 (Q = 15), K = 7; one more layer of
  Q = 4 is handed to diffusers too (stored there, ignored by aggregate_attention: another grid) and is
  recorded as `random.other.probs`.
* `random.maps` f32 [C, 3, 5, K]: aggregate_attention(res=(3, 5), from_where=["up", "down"], select=c).
* `random.map.tokens<n>` f32 [C, 3, 5]: maps[..., 1:1+n].sum(3); `random.smoothed.tokens<n>`: then padded
  and smoothed as __call__ does.
* `unet.<case>.sample` [1+C, 4, h, w], `.timestep` f32 scalar, `.encoder_hidden_states` [1+C, 77, 32]:
  the sd1 UNet's inputs; `.grid` i64 [2] the store's grid (metadata max_size); `.grids` i64 [G, 2] the
  query grids (h, w) of the up/down cross-attention layers, in forward order, each once; `.layers` i64
  scalar: layers whose maps aggregate_attention used; `.maps` [C, gh, gw, 77]; `.map.tokens<n>`
  [C, gh, gw]; `.smoothed.tokens<n>` [C, gh, gw]; `.out` the UNet's output with the LEDITS processors.
  Cases: `sq` latent 8x8 grid 4x4, `sq8` latent 8x8 grid 8x8, `wide` latent 8x12 grid 4x6.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

GENERATED = ["attention-store.tensor"]

CONCEPTS = 2
TOKENS = (1, 3, 6)            # random case (K = 7)
UNET_TOKENS = (3, 75)         # 75: num_edit_tokens of a 77-token encoder with transformers 5
UNET_CASES = (("sq", (8, 8), (4, 4), 501.0, 11), ("sq8", (8, 8), (8, 8), 501.0, 11),
              ("wide", (8, 12), (4, 6), 261.0, 12))


def ledits_module():
    import diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion as L
    return L


def smoothed(L, attn_map):
    """__call__'s lines: F.pad(attn_map.unsqueeze(1), (1, 1, 1, 1), mode="reflect"), smoothing, squeeze."""
    smoothing = L.LeditsGaussianSmoothing("cpu")
    return smoothing(F.pad(attn_map.unsqueeze(1), (1, 1, 1, 1), mode="reflect")).squeeze(1)


def aggregate(L, store, res, select):
    """aggregate_attention as __call__ calls it: [1, gh, gw, K]."""
    return store.aggregate_attention(attention_maps=store.step_store, prompts=["c%d" % i for i in range(CONCEPTS)],
                                     res=res, from_where=["up", "down"], is_cross=True, select=select)


def ref_smoothing(st, L):
    st.add("smooth.kernel", L.LeditsGaussianSmoothing("cpu").weight[0, 0].clone(),
           call="LeditsGaussianSmoothing('cpu').weight[0, 0]")
    g = torch.Generator("cpu").manual_seed(2601)
    for h, w in ((2, 2), (3, 5), (4, 4), (7, 3), (16, 16)):
        x = torch.rand(1, h, w, generator=g) * 3
        st.add("smooth.%dx%d.input" % (h, w), x[0])
        st.add("smooth.%dx%d.output" % (h, w), smoothed(L, x)[0],
               call="LeditsGaussianSmoothing(F.pad(x.unsqueeze(1), (1,1,1,1), mode='reflect')).squeeze(1)")


def ref_random_store(st, L):
    g = torch.Generator("cpu").manual_seed(2602)
    res, keys = (3, 5), 7
    q = res[0] * res[1]
    store = L.LeditsAttentionStore(average=False, batch_size=1, max_size=q, max_resolution=None)
    layers = (("down", 2), ("up", 4), ("down", 2), ("up", 1))
    for i, (place, heads) in enumerate(layers):
        probs = torch.softmax(torch.randn((1 + CONCEPTS) * heads, q, keys, generator=g) * 3, dim=-1)
        store(probs, is_cross=True, place_in_unet=place, editing_prompts=CONCEPTS, PnP=False)
        st.add("random.layer%d.probs" % i, probs, heads=heads, place=place)
        if i == 1:  # another grid in between: stored (Q <= max_size), ignored by aggregate_attention
            other = torch.softmax(torch.randn((1 + CONCEPTS) * 2, 4, keys, generator=g) * 3, dim=-1)
            store(other, is_cross=True, place_in_unet="down", editing_prompts=CONCEPTS, PnP=False)
            st.add("random.other.probs", other, heads=2, place="down")
    maps = torch.cat([aggregate(L, store, res, c) for c in range(CONCEPTS)])
    st.add("random.maps", maps, call="aggregate_attention(step_store, res=(3, 5), from_where=[up, down], select=c)")
    for n in TOKENS:
        m = maps[:, :, :, 1:1 + n].sum(3)
        st.add("random.map.tokens%d" % n, m, call="maps[..., 1:1+n].sum(3)")
        st.add("random.smoothed.tokens%d" % n, smoothed(L, m))


def attn2_processors(L, unet, store):
    """prepare_unet(store, PnP=False) with CONCEPTS enabled editing prompts."""
    procs = {}
    for name in unet.attn_processors.keys():
        place = "mid" if name.startswith("mid_block") else "up" if name.startswith("up_blocks") else \
            "down" if name.startswith("down_blocks") else None
        if place is None:
            continue
        if "attn2" in name and place != "mid":
            procs[name] = L.LEDITSCrossAttnProcessor(attention_store=store, place_in_unet=place, pnp=False,
                                                     editing_prompts=CONCEPTS)
        else:
            procs[name] = L.AttnProcessor()
    return procs


def ref_unet(st, L, out):
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(out, "sd1", "unet"), dtype=torch.float32).eval()
    seen = []

    def note(module, args):
        x = args[0]
        if tuple(x.shape[-2:]) not in seen:
            seen.append(tuple(x.shape[-2:]))
    hooks = [a.register_forward_pre_hook(note) for blocks in (unet.down_blocks, unet.up_blocks)
             for b in blocks for a in getattr(b, "attentions", [])]
    for case, latent, res, t, seed in UNET_CASES:
        g = torch.Generator("cpu").manual_seed(2600 + seed)
        batch = 1 + CONCEPTS
        sample = torch.randn(batch, 4, *latent, generator=g)
        enc = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
        max_size = res[0] * res[1]
        store = L.LeditsAttentionStore(average=False, batch_size=1, max_size=max_size, max_resolution=None)
        unet.set_attn_processor(attn2_processors(L, unet, store))
        seen.clear()
        with torch.no_grad():
            o = unet(sample, torch.tensor(t), encoder_hidden_states=enc).sample
        p = "unet.%s." % case
        st.add(p + "sample", sample)
        st.add(p + "timestep", torch.tensor(t, dtype=torch.float32))
        st.add(p + "encoder_hidden_states", enc)
        st.add(p + "grid", torch.tensor(res, dtype=torch.int64), max_size=max_size)
        st.add(p + "grids", torch.tensor(seen, dtype=torch.int64),
               call="(h, w) of every up/down Transformer2DModel input, forward order, each once")
        used = sum(1 for k in ("up_cross", "down_cross") for a in store.step_store[k] if a.shape[2] == max_size)
        st.add(p + "layers", torch.tensor(used, dtype=torch.int64))
        maps = torch.cat([aggregate(L, store, res, c) for c in range(CONCEPTS)])
        st.add(p + "maps", maps)
        for n in UNET_TOKENS:
            m = maps[:, :, :, 1:1 + n].sum(3)
            st.add(p + "map.tokens%d" % n, m)
            st.add(p + "smoothed.tokens%d" % n, smoothed(L, m))
        st.add(p + "out", o, call="unet(sample, t, enc).sample with prepare_unet's LEDITS processors")
    for h in hooks:
        h.remove()


def write_all(out, mf):
    """Everything of this module; `mf` is the make_fixtures module (its Stream writer)."""
    L = ledits_module()
    print("[shared] LEDITS++ attention store")
    st = mf.Stream(os.path.join(out, "attention-store.tensor"))
    ref_smoothing(st, L)
    ref_random_store(st, L)
    ref_unet(st, L, out)
    st.write()
    return {}


if __name__ == "__main__":
    import standalone
    standalone.run(write_all, __file__)

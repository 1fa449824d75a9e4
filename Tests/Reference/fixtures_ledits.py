"""LEDITS++ fixtures (issue 26): diffusers' LEditsPPPipelineStableDiffusion on two tiny pipelines.

Called by make_fixtures.py after everything else (it reads the sd1/ and sd2/ folders written before), so
no file written earlier changes. It writes two model folders in diffusers' layout:

* `sd1-ledits/`: sd1's text encoder, tokenizer, VAE and scheduler, and a NEW tiny UNet with cross-attention
  in every down and up block (latent 8x8 -> levels 8x8, 4x4, 2x2), so that the attention store's grid
  (int(h/4), int(w/4)) = 2x2 has cross-attention (diffusers reads the store only there).
* `sd2-ledits/`: sd2's text encoder (f16 file), tokenizer, VAE and scheduler (v-prediction) and a new tiny
  UNet likewise; image 64 wide x 96 high -> latent 8 wide x 12 high -> levels (12,8), (6,4), (3,2); grid (3,2).
  (Not 32 wide: the grid would be 1 wide and diffusers' reflect padding of the attention map needs >= 2.)

The components taken from sd1/ and sd2/ are the same files: the JSON configs are copied, the weight and
vocabulary files are relative symlinks into ../../sd1/ and ../../sd2/ (as sd2/tokenizer already does):
copies would add ~12 MB (the text encoders) for nothing.

Each folder holds `cat.ppm` (the input image) and `ref/ledits.tensor`: per case, diffusers' `invert` followed by
its `__call__` on the same pipeline (invert changes the scheduler), records `ledits.<case>.<field>`.
See Tests/Fixtures/README.md (section 16) and Tests/Reference/ledits-notes.md (the traps).

Patch (the only one): with a DDIMScheduler, `invert` calls `scheduler.add_noise(x0, noise, torch.Tensor([t]))`
and DDIM's add_noise indexes alphas_cumprod with that float tensor -> IndexError. The DDIM scheduler's
`add_noise` is wrapped (on the instance) to cast a floating timestep tensor to int64 (the values are integers,
so nothing else changes). DPMSolverMultistepScheduler looks the timestep up by equality and needs no patch.
"""
import math
import os
import shutil

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    LEditsPPPipelineStableDiffusion,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from capture_base import CaptureBase

LEDITS_MODULE = __import__("sys").modules[LEditsPPPipelineStableDiffusion.__module__]

GENERATED = ["sd1-ledits", "sd2-ledits"]

_UNET_COMMON = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                    mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True,
                    freq_shift=0)

LEDITS_SPECS = {
    "sd1-ledits": dict(
        base="sd1", width=64, height=64, seed=3000,
        unet=dict(_UNET_COMMON, block_out_channels=(8, 16, 16), attention_head_dim=(2, 4, 2), cross_attention_dim=32,
                  use_linear_projection=False, norm_num_groups=4, upcast_attention=False),
        source="a photo of a cat",
        concepts=("sunglasses", "a tiger", "the cat"),
        seeds={"ddim-one-add": 118, "ddim-two": 119, "ddim-attn": 124, "ddim-noise": 113, "ddim-user": 103,
               "dpm-one-add": 106, "dpm-two": 118},
    ),
    "sd2-ledits": dict(
        base="sd2", width=64, height=96, seed=4000,
        unet=dict(_UNET_COMMON, block_out_channels=(8, 12, 16), attention_head_dim=(2, 3, 4), cross_attention_dim=40,
                  use_linear_projection=True, norm_num_groups=4, upcast_attention=True),
        source="a photo of a cat",
        concepts=("a dog", "a red hat", "the cat"),
        seeds={"ddim-one-add": 117, "ddim-two": 125, "ddim-attn": 113, "ddim-noise": 111, "ddim-user": 101,
               "dpm-one-add": 102, "dpm-two": 117},
    ),
}

N_STEPS = 6


# Masks must come out identical in the Swift port, whose UNet differs from torch's by ~1e-6: every threshold must
# separate values by more than that. The smallest gap between the last excluded and the first included value
# (relative to the largest) must be at least MIN_MARGIN; the invert seeds were picked, among 100..129, for the
# largest smallest gap (all >= 1e-3).
MIN_MARGIN = 5e-4


def cases(spec):
    """(name, scheduler, invert kwargs without image/generator, seed, __call__ kwargs). skip 0.2 gives 7 timesteps of
    which the last 6 are used (DDIM 711..1, DPM 751..126: all <= 800); skip 0.1 gives 6 (DDIM 831..1, DPM 853..143):
    the first step is above 800, where the intersect mask is the attention mask alone."""
    one, add2, rem2 = spec["concepts"]
    seed = spec["seeds"]
    h, w = spec["height"] // 8, spec["width"] // 8
    two = dict(editing_prompt=[add2, rem2], reverse_editing_direction=[False, True], edit_guidance_scale=[6.0, 4.0],
               edit_threshold=[0.6, 0.7], edit_warmup_steps=[1, 0])
    inv0 = dict(source_prompt="", source_guidance_scale=3.5, num_inversion_steps=N_STEPS)
    inv_src = dict(source_prompt=spec["source"], source_guidance_scale=2.5, num_inversion_steps=N_STEPS)
    table = [
        ("ddim-one-add", "ddim", dict(inv0, skip=0.1),
         dict(editing_prompt=[one], reverse_editing_direction=False, edit_guidance_scale=5.0, edit_threshold=0.6)),
        ("ddim-two", "ddim", dict(inv_src, skip=0.2), dict(two)),
        ("ddim-attn", "ddim", dict(inv0, skip=0.2),
         dict(editing_prompt=[one], edit_guidance_scale=5.0, edit_threshold=0.7, use_cross_attn_mask=True,
              use_intersect_mask=False)),
        ("ddim-noise", "ddim", dict(inv0, skip=0.2),
         dict(editing_prompt=[rem2], reverse_editing_direction=True, edit_guidance_scale=4.0, edit_threshold=0.8,
              use_cross_attn_mask=False, use_intersect_mask=False)),
        ("ddim-user", "ddim", dict(inv0, skip=0.2),
         dict(editing_prompt=[one], edit_guidance_scale=5.0, edit_threshold=0.6, user_mask=user_rectangle(h, w))),
        ("dpm-one-add", "dpm", dict(inv0, skip=0.1),
         dict(editing_prompt=[one], reverse_editing_direction=False, edit_guidance_scale=5.0, edit_threshold=0.6)),
        ("dpm-two", "dpm", dict(inv_src, skip=0.2), dict(two, edit_cooldown_steps=[N_STEPS, 4])),
    ]
    return [(name, kind, inv, seed[name], call) for name, kind, inv, call in table]


def user_rectangle(h, w):
    """[1,1,h,w] f32: ones on rows [h/4, h), columns [w/4, w) (a corner rectangle, 9/16 of the latent), zeros
    elsewhere. Less than half of the guidance is zeroed, so the noise quantile (threshold 0.6) falls among the
    rectangle's values and the noise mask is not all ones."""
    m = torch.zeros(1, 1, h, w)
    m[:, :, h // 4:, w // 4:] = 1.0
    return m


# ----------------------------------------------------------------------------------------------
# model folders
# ----------------------------------------------------------------------------------------------
def mirror_component(src_dir, dst_dir):
    """JSON configs copied; weight/vocabulary files as relative symlinks to the real file (no chains)."""
    os.makedirs(dst_dir)
    for f in sorted(os.listdir(src_dir)):
        src = os.path.join(src_dir, f)
        if f.endswith(".json") and f != "vocab.json" and not os.path.islink(src):
            shutil.copyfile(src, os.path.join(dst_dir, f))
        else:
            os.symlink(os.path.relpath(os.path.realpath(src), os.path.realpath(dst_dir)), os.path.join(dst_dir, f))


CROSS_ATTENTION_SHARPNESS = 25.0


def sharpen_cross_attention(unet):
    """Scale every cross-attention (attn2) query projection by CROSS_ATTENTION_SHARPNESS: the random UNet's softmax
    is nearly uniform over the 77 tokens, so the concept map (sum over tokens 1..75) is ~0.97 everywhere and its
    quantile threshold would separate values that differ by 1e-5. Sharper logits spread the map (SD's own maps are
    far from uniform), so the masks do not depend on rounding."""
    with torch.no_grad():
        for name, m in unet.named_modules():
            if name.endswith("attn2"):
                m.to_q.weight.mul_(CROSS_ATTENTION_SHARPNESS)


def build_folder(out, key, spec, mf):
    base = os.path.join(out, spec["base"])
    folder = os.path.join(out, key)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    torch.manual_seed(spec["seed"] + 2)
    unet = UNet2DConditionModel(**spec["unet"])
    mf.perturb(unet, spec["seed"] + 12)
    sharpen_cross_attention(unet)
    te = CLIPTextModel.from_pretrained(os.path.join(base, "text_encoder"), dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(base, "vae"), dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(os.path.join(base, "tokenizer"))
    sched = DDIMScheduler.from_pretrained(os.path.join(base, "scheduler"))
    pipe = LEditsPPPipelineStableDiffusion(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for comp in ("text_encoder", "tokenizer", "vae", "scheduler"):
        shutil.rmtree(os.path.join(folder, comp))
        mirror_component(os.path.join(base, comp), os.path.join(folder, comp))
    mf.scrub_json_configs(folder)
    # the UNet file loads back bit-exactly
    u2 = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), dtype=torch.float32)
    sa, sb = u2.state_dict(), unet.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def load_pipeline(out, key, spec):
    """The whole folder through the one-call API, float32 (sd2's f16 text encoder upcast), checked against the
    base folder's components."""
    folder = os.path.join(out, key)
    pipe = LEditsPPPipelineStableDiffusion.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base = os.path.join(out, spec["base"])
    te = CLIPTextModel.from_pretrained(os.path.join(base, "text_encoder"), dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(base, "vae"), dtype=torch.float32)
    for a, b in ((pipe.text_encoder, te), (pipe.vae, vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert type(pipe.tokenizer) is CLIPTokenizer and isinstance(pipe.scheduler, DDIMScheduler)
    for m in (pipe.text_encoder, pipe.unet, pipe.vae):
        m.eval()
        assert all(p.dtype == torch.float32 for p in m.parameters())
    return pipe


# ----------------------------------------------------------------------------------------------
# capture
# ----------------------------------------------------------------------------------------------
class Capture(CaptureBase):
    """Records encode_prompt / encode_image outputs, every UNet call, every randn_tensor draw of the pipeline
    module and every aggregated attention map (LeditsAttentionStore.aggregate_attention), in call order."""

    def __enter__(self):
        pipe, log = self.pipe, self.log
        self.wrap(pipe, "encode_prompt", "encode_prompt",
                   lambda a, k, r: dict(kwargs=dict(k), edit=None if r[0] is None else r[0].clone(),
                                        uncond=r[1].clone(), num_edit_tokens=r[2]))
        self.wrap(pipe, "encode_image", "x0", lambda a, k, r: r[0].clone())

        def unet_rec(a, k, r):
            t = a[1] if len(a) > 1 else k["timestep"]
            return dict(sample=a[0].clone(), t=int(t), ehs=k["encoder_hidden_states"].clone(), out=r.sample.clone())
        self.wrap(pipe.unet, "forward", "unet", unet_rec)
        orig_randn = LEDITS_MODULE.randn_tensor

        def randn(*a, **k):
            r = orig_randn(*a, **k)
            log.append(("randn", r.clone()))
            return r
        LEDITS_MODULE.randn_tensor = randn
        self.undo.append(lambda: setattr(LEDITS_MODULE, "randn_tensor", orig_randn))
        store_cls = LEDITS_MODULE.LeditsAttentionStore
        orig_agg = store_cls.aggregate_attention

        def agg(store, *a, **k):
            r = orig_agg(store, *a, **k)
            log.append(("aggregate", dict(select=k["select"], res=k["res"], out=r.clone(),
                                          unet_calls=sum(1 for t, _ in log if t == "unet"))))
            return r
        store_cls.aggregate_attention = agg
        self.undo.append(lambda: setattr(store_cls, "aggregate_attention", orig_agg))
        return self



def patch_ddim_add_noise(sched):
    """diffusers 0.42.1 invert: add_noise(x0, noise, torch.Tensor([t])) -- float timesteps, which DDIM cannot index
    with. Cast to int64 (exact: the values are integers)."""
    orig = sched.add_noise

    def add_noise(original_samples, noise, timesteps):
        if torch.is_tensor(timesteps) and timesteps.is_floating_point():
            assert torch.equal(timesteps, timesteps.round())
            timesteps = timesteps.to(torch.int64)
        return orig(original_samples, noise, timesteps)
    sched.add_noise = add_noise


def make_scheduler(pipe_sched_config, kind):
    if kind == "ddim":
        s = DDIMScheduler.from_config(pipe_sched_config)
        patch_ddim_add_noise(s)
        return s
    return DPMSolverMultistepScheduler.from_config(pipe_sched_config, algorithm_type="sde-dpmsolver++", solver_order=2)


# ----------------------------------------------------------------------------------------------
# independent re-derivation (the spec's math, not the pipeline's code)
# ----------------------------------------------------------------------------------------------
def gaussian_kernel():
    """3x3, sigma 0.5, as diffusers' LeditsGaussianSmoothing: exp(-((x - mean) / (2 sigma))^2) per axis (note the 2
    sigma: not the textbook 2 sigma^2 inside), product, normalised to sum 1."""
    x = torch.arange(3, dtype=torch.float32)
    g = 1 / (0.5 * math.sqrt(2 * math.pi)) * torch.exp(-(((x - 1.0) / (2 * 0.5)) ** 2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def quantile_linear(v, q):
    """torch.quantile(v, q) (linear interpolation) of a float32 tensor, written out as torch 2.15 computes it (checked
    bit for bit on random data): q is rounded to float32 first; rank = q_f32 * (n - 1) without rounding (e.g.
    0.6 -> 0.6000000238 * 95 = 57.0000023, not 57), below = floor(rank), weight w = float32(rank - below); then
    torch's lerp: w < 0.5 ? fma(w, b - a, a) : fma(w - 1, b - a, b) with a, b the sorted values at below, below+1."""
    s = torch.sort(v.flatten().to(torch.float32)).values.numpy()
    n = s.size
    rank = np.float64(np.float32(q)) * (n - 1)  # exact: a 24-bit value times a small integer
    lo = int(np.floor(rank))
    w = np.float32(rank - lo)
    a, b = s[lo], s[min(lo + 1, n - 1)]
    d = np.float64(np.float32(b - a))
    # a float64 product of two float32 is exact, so one rounding to float32 of the sum emulates the fma
    r = np.float64(w) * d + np.float64(a) if w < 0.5 else np.float64(np.float32(w - np.float32(1))) * d + np.float64(b)
    return torch.tensor(np.float32(r))


def quantile_checked(v, q):
    """quantile_linear, and the proof that it is torch.quantile bit for bit on this input."""
    r = quantile_linear(v, q)
    assert torch.equal(r, torch.quantile(v.flatten(), q)), (q, v.numel())
    return r


def threshold_margin(v, q):
    """How far the thresholding `v >= q` is from changing under small perturbations of v: the gap between the largest
    excluded and the smallest included value, relative to max |v| (inf when nothing or everything is excluded).
    Exact ties do not count: equal values are computed the same way (e.g. the zeros outside a user mask)."""
    s = torch.sort(v.flatten()).values
    k = int((s < q).sum())
    if k == 0 or k == s.numel():
        return float("inf")
    return float(s[k] - s[k - 1]) / max(float(s.abs().max()), 1e-30)


def rederive_masks(call_unet, aggs, kwargs, timesteps, num_edit_tokens, user_mask):
    """Masks [T,C,4,h,w] and guidance [T,1,4,h,w] from the captured UNet outputs and aggregated attention maps;
    plus the smallest distance of any thresholded value to its quantile (robustness of the masks) and which mask
    branches ran."""
    C = len(kwargs["editing_prompt"])

    def per(name, default):
        v = kwargs.get(name, default)
        return v if isinstance(v, list) else [v] * C
    rev, scale = per("reverse_editing_direction", False), per("edit_guidance_scale", 5)
    thr, warm = per("edit_threshold", 0.9), per("edit_warmup_steps", 0)
    cool = kwargs.get("edit_cooldown_steps")
    intersect = kwargs.get("use_intersect_mask", True)
    cross = kwargs.get("use_cross_attn_mask", False) or intersect
    kernel = gaussian_kernel()
    T = len(timesteps)
    out0 = call_unet[0]["out"]
    h, w = out0.shape[-2:]
    masks = torch.zeros(T, C, 4, h, w)
    guidance = torch.zeros(T, 1, 4, h, w)
    attention = torch.zeros(T, C, int(h / 4), int(w / 4))
    margins = []
    branch = [["skipped"] * C for _ in range(T)]  # per step and concept: which mask code ran
    agg_by = {(a["unet_calls"] - 1, a["select"]): a["out"] for a in aggs}
    for i in range(T):
        chunks = call_unet[i]["out"].chunk(1 + C)
        u = chunks[0]
        t = int(timesteps[i])
        for c in range(C):
            cool_c = (i + 1) if cool is None else (cool[c] if isinstance(cool, list) else cool)
            if i < warm[c] or i >= cool_c:
                assert (i, c) not in agg_by
                continue
            g = (chunks[1 + c] - u) * (-1.0 if rev[c] else 1.0) * scale[c]
            if user_mask is not None:
                g = g * user_mask
            if cross:
                amap = agg_by[(i, c)][:, :, :, 1:1 + num_edit_tokens[c]].sum(3)  # [1,gh,gw]
                attention[i, c] = amap[0]
                sm = F.conv2d(F.pad(amap[:, None], (1, 1, 1, 1), mode="reflect"), kernel[None, None])[:, 0]
                q = quantile_checked(sm[0], thr[c])
                margins.append(("attention", threshold_margin(sm[0], q)))
                am = (sm >= q).float()
                # nearest upsample (integer factors here), repeated over the 4 channels
                am = am.repeat_interleave(h // am.shape[1], 1).repeat_interleave(w // am.shape[2], 2)
                am = am[:, None].repeat(1, 4, 1, 1)
                mask = am
                if not intersect:
                    g = g * am
                    branch[i][c] = "attention"
            if intersect and t <= 800:
                s = g.abs().sum(1, keepdim=True)
                q = quantile_checked(s[0, 0], thr[c])
                margins.append(("noise", threshold_margin(s, q)))
                mask = (s >= q).float().repeat(1, 4, 1, 1) * am
                g = g * mask
                branch[i][c] = "intersect"
            elif intersect:
                g = g * am
                branch[i][c] = "attention>800"
            elif not cross:
                s = g.abs().sum(1, keepdim=True)
                q = quantile_checked(s[0, 0], thr[c])
                margins.append(("noise", threshold_margin(s, q)))
                keep = (s >= q).repeat(1, 4, 1, 1)
                mask = keep.float()
                g = torch.where(keep, g, torch.zeros_like(g))
                branch[i][c] = "noise"
            masks[i, c] = mask[0]
            guidance[i] += g
    margin = {k: min([m for kk, m in margins if kk == k], default=float("inf")) for k in ("attention", "noise")}
    return masks, guidance, attention, margin, branch


def rederive_invert_ddim(sched, x0, draws, inv_unet, timesteps, source_prompt, gs):
    """The noise maps [N,1,4,h,w] (denoising order) and x_T of diffusers' DDIM edit-friendly inversion from the captured
    draws and UNet outputs, with the pipeline's own formula: compute_noise_ddim treats the model output as epsilon
    whatever prediction_type says."""
    N = len(timesteps)
    ac = sched.alphas_cumprod
    asc = list(reversed([int(t) for t in timesteps]))  # lowest t first: the draw order
    xts = [x0] + [ac[t] ** 0.5 * x0 + (1 - ac[t]) ** 0.5 * n for t, n in zip(asc, draws)]
    step = sched.config.num_train_timesteps // sched.num_inference_steps
    zs = [None] * N
    calls = iter(inv_unet)
    for t in [int(t) for t in timesteps]:  # highest first
        idx = asc.index(t)
        xt = xts[idx + 1]
        e = next(calls)
        assert e["t"] == t and float((e["sample"] - xt).abs().max()) < 1e-5, (t, float((e["sample"] - xt).abs().max()))
        eps = e["out"]
        if source_prompt != "":
            e2 = next(calls)
            eps = eps + gs * (e2["out"] - eps)
        a_t = ac[t]
        a_p = ac[t - step] if t - step >= 0 else sched.final_alpha_cumprod
        x0p = (xt - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        mu = a_p ** 0.5 * x0p + (1 - a_p - var) ** 0.5 * eps
        zs[idx] = (xts[idx] - mu) / var ** 0.5
        xts[idx] = mu + var ** 0.5 * zs[idx]
    return torch.stack(zs).flip(0), xts[-1]


def rederive_invert_dpm(sched, x0, draws, inv_unet, timesteps, source_prompt, gs):
    """The same for DPM-Solver++ (SDE, order 2), as compute_noise_sde_dpm_pp_2nd: x_t drawn with the scheduler's own
    alpha/sigma of the timestep's sigma; the solver's state (previous x0 prediction, order) carried from step to step;
    first order at the first step, second order after -- also at the last step, where sigma_next = 0 makes h infinite
    and the noise map is 0 (the corrected x0 slot becomes inf/nan, never read)."""
    N = len(timesteps)
    sig = sched.sigmas
    ts = [int(t) for t in timesteps]
    start = int((sched.timesteps == ts[0]).nonzero()[0])  # index of the first inverted timestep among the T

    def ab(sigma):
        alpha = 1 / (sigma ** 2 + 1) ** 0.5
        return alpha, sigma * alpha
    asc = list(reversed(ts))
    xts = [x0]
    for t, n in zip(asc, draws):
        a, sg = ab(sig[start + ts.index(t)])
        xts.append(a * x0 + sg * n)
    zs = [None] * N
    calls = iter(inv_unet)
    prev_m = None
    for k, t in enumerate(ts):
        idx = asc.index(t)
        xt = xts[idx + 1]
        e = next(calls)
        assert e["t"] == t and float((e["sample"] - xt).abs().max()) < 1e-5
        eps = e["out"]
        if source_prompt != "":
            eps = eps + gs * (next(calls)["out"] - eps)
        si = start + k
        a_s, s_s = ab(sig[si])
        a_t, s_t = ab(sig[si + 1])
        m = a_s * xt - s_s * eps if sched.config.prediction_type == "v_prediction" else (xt - s_s * eps) / a_s
        lam = lambda a, sg: torch.log(a) - torch.log(sg)  # noqa: E731
        h = lam(a_t, s_t) - lam(a_s, s_s)
        mu = (s_t / s_s * torch.exp(-h)) * xt + (a_t * (1 - torch.exp(-2.0 * h))) * m
        if prev_m is not None:
            a_p, s_p = ab(sig[si - 1])
            r0 = (lam(a_s, s_s) - lam(a_p, s_p)) / h
            mu = mu + 0.5 * (a_t * (1 - torch.exp(-2.0 * h))) * ((1.0 / r0) * (m - prev_m))
        sigma = s_t * torch.sqrt(1.0 - torch.exp(-2 * h))
        if sigma > 0:
            zs[idx] = (xts[idx] - mu) / sigma
            xts[idx] = mu + sigma * zs[idx]
        else:
            zs[idx] = torch.zeros_like(x0)
        prev_m = m
    return torch.stack(zs).flip(0), xts[-1]


# ----------------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------------
# __call__'s defaults (diffusers 0.42.1) for the arguments the cases leave out, so that args_json is complete
CALL_DEFAULTS = dict(negative_prompt=None, reverse_editing_direction=False, edit_guidance_scale=5,
                     edit_warmup_steps=0, edit_cooldown_steps=None, edit_threshold=0.9, user_mask=None,
                     use_cross_attn_mask=False, use_intersect_mask=True, guidance_rescale=0.0, clip_skip=None)


def describe(name, kwargs):
    d = dict(CALL_DEFAULTS, **kwargs)
    if d["user_mask"] is not None:
        d["user_mask"] = "ledits.%s.user_mask" % name
    return d


def run_case(mf, pipe, st, spec, cat, name, kind, inv_kwargs, seed, call_kwargs):
    pipe.scheduler = make_scheduler(pipe.scheduler.config, kind)
    pil = PIL.Image.fromarray(cat)
    args = dict(invert=dict(inv_kwargs, image="cat.ppm (PIL RGB)",
                            generator="torch.Generator('cpu').manual_seed(%d), fresh" % seed),
                call=dict(describe(name, call_kwargs), output_type="latent | np"),
                scheduler=("DDIMScheduler.from_config(scheduler/scheduler_config.json) (add_noise patched: float "
                           "timestep -> int64)" if kind == "ddim" else
                           "DPMSolverMultistepScheduler.from_config(scheduler/scheduler_config.json, "
                           "algorithm_type='sde-dpmsolver++', solver_order=2)"))
    with Capture(pipe) as cap:
        pipe.invert(image=pil, generator=torch.Generator("cpu").manual_seed(seed), **inv_kwargs)
    (x0,) = cap.get("x0")
    (enc,) = cap.get("encode_prompt")
    draws = cap.get("randn")
    inv_unet = cap.get("unet")
    timesteps = pipe.inversion_steps.clone()
    zs, init = pipe.zs.clone(), pipe.init_latents.clone()
    N = inv_kwargs["num_inversion_steps"]
    total = int(N * (1 + inv_kwargs["skip"]))
    assert len(timesteps) == N and len(pipe.scheduler.timesteps) == total and len(draws) == N
    assert zs.shape == (N, 1, 4, *x0.shape[-2:])
    # x0 = the posterior MEAN (mode) * scaling_factor
    image = pipe.image_processor.preprocess(pil)
    assert torch.equal(image, torch.from_numpy(cat.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0)
    with torch.no_grad():
        dist = pipe.vae.encode(image).latent_dist
    assert torch.equal(x0, dist.mode() * pipe.vae.config.scaling_factor) and torch.equal(dist.mode(), dist.mean)
    # invert's encode_prompt: (source prompt, "") are unpacked as (uncond_embedding, text_embeddings) -- the UNet's
    # first call gets the SOURCE prompt, the second (only when source_prompt != "") the empty prompt:
    # eps = e(source) + g * (e("") - e(source)).
    tok, te = pipe.tokenizer, pipe.text_encoder

    def embed(prompts):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return te(ids)[0]
    uncond = embed([""])
    src = inv_kwargs["source_prompt"]
    assert torch.equal(enc["uncond"], uncond) and torch.equal(enc["edit"], embed([src]))
    per_step = 2 if src != "" else 1
    assert len(inv_unet) == N * per_step
    assert all(torch.equal(u["ehs"], enc["edit"]) for u in inv_unet[0::per_step])
    if per_step == 2:
        assert all(torch.equal(u["ehs"], uncond) for u in inv_unet[1::2])
    if kind == "ddim":
        z2, xT2 = rederive_invert_ddim(pipe.scheduler, x0, draws, inv_unet, timesteps, src,
                                       inv_kwargs["source_guidance_scale"])
    else:
        z2, xT2 = rederive_invert_dpm(pipe.scheduler, x0, draws, inv_unet, timesteps, src,
                                      inv_kwargs["source_guidance_scale"])
    zerr = float((z2 - zs).abs().max())
    assert zerr < 1e-4 and float((xT2 - init).abs().max()) < 1e-4, (name, zerr)

    call = dict(call_kwargs)
    user_mask = call.get("user_mask")
    with Capture(pipe) as cap:
        lat = pipe(output_type="latent", **call).images
    (enc2,) = cap.get("encode_prompt")
    call_unet, aggs = cap.get("unet"), cap.get("aggregate")
    assert not cap.get("randn")
    # activation_mask is [T, C, batch=1, 4, h, w]; stored without the batch axis
    assert pipe.activation_mask.shape[2] == 1
    masks = pipe.activation_mask[:, :, 0].clone()
    sem = pipe.sem_guidance.clone()
    concepts = embed(call["editing_prompt"])
    assert torch.equal(enc2["uncond"], uncond) and torch.equal(enc2["edit"], concepts)
    nets = [int(n) for n in enc2["num_edit_tokens"]]
    assert len(call_unet) == N and [u["t"] for u in call_unet] == [int(t) for t in timesteps]
    assert all(torch.equal(u["ehs"], torch.cat([uncond, concepts])) for u in call_unet)
    assert torch.equal(call_unet[0]["sample"][:1], init)
    m2, g2, attention, margin, branch = rederive_masks(call_unet, aggs, call, timesteps, nets, user_mask)
    branches = sorted(set(b for row in branch for b in row))
    assert torch.equal(m2, masks), name
    gerr = float((g2 - sem).abs().max())
    assert gerr < 1e-5 * max(1.0, float(sem.abs().max())), (name, gerr)
    # the decoded run: the same __call__ again (it resets the scheduler's timesteps/state itself), output_type="np"
    img = pipe(output_type="np", **call).images
    with torch.no_grad():
        dec = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    assert np.array_equal(pipe.image_processor.postprocess(dec, output_type="np"), img)
    u8 = (img[0] * 255).round().astype(np.uint8)

    C = len(call["editing_prompt"])
    frac = [[float(masks[i, c].mean()) for c in range(C)] for i in range(N)]
    assert 0.0 < float(masks.mean()) < 1.0, name
    assert min(margin.values()) >= MIN_MARGIN, (name, margin)
    meta = dict(args_json=mf.jdump(args), scheduler=kind, case=name, seed=seed, steps=N, skip=repr(inv_kwargs["skip"]),
                total_steps=total, timesteps=",".join(str(int(t)) for t in timesteps))
    p = "ledits.%s." % name
    uses_attention = call.get("use_intersect_mask", True) or call.get("use_cross_attn_mask", False)
    grid = "%dx%d" % tuple(attention.shape[-2:])
    st.add(p + "x0", x0, call="vae.encode(image).latent_dist.mode() * scaling_factor (the posterior mean)", **meta)
    st.add(p + "start", init, call="pipe.init_latents = x_T (xts[-1] after the correction loop)", **meta)
    st.add(p + "noise", zs.permute(1, 0, 2, 3, 4).contiguous(),
           call="pipe.zs [T,1,4,h,w] as [1,T,4,h,w]: zs[0] is the first (noisiest) denoising step's variance noise",
           **meta)
    st.add(p + "timesteps", timesteps.to(torch.int64), call="pipe.inversion_steps (denoising order)", **meta)
    st.add(p + "uncond", uncond, call='text_encoder(tokenizer([""], padding="max_length", max_length=77))[0]', **meta)
    if src != "":
        st.add(p + "source", embed([src]), prompt=src,
               call="text_encoder(tokenizer([source_prompt], ...))[0] (invert's first UNet call per step)", **meta)
    st.add(p + "concepts", concepts, prompts_json=mf.jdump(call["editing_prompt"]),
           num_edit_tokens_json=mf.jdump(nets), call="text_encoder(tokenizer(editing_prompt, ...))[0]", **meta)
    if user_mask is not None:
        st.add(p + "user_mask", user_mask, call="__call__(user_mask=this): multiplies each concept's guidance", **meta)
    st.add(p + "masks", masks, fraction_ones_json=mf.jdump([[round(x, 6) for x in r] for r in frac]),
           branch_json=mf.jdump(branch), min_relative_margin_attention="%.3g" % margin["attention"],
           min_relative_margin_noise="%.3g" % margin["noise"], attention_grid=grid if uses_attention else "none",
           call="pipe.activation_mask [T,C,1,4,h,w] without its batch axis (zeros where a concept is skipped: "
                "warmup/cooldown); branch_json[i][c] says which mask it is", **meta)
    if uses_attention:
        st.add(p + "attention", attention, attention_grid=grid,
               call="aggregate_attention(...)[:, :, :, 1:1+num_edit_tokens].sum(3) per step and concept: the map "
                    "before smoothing, [T,C,int(h/4),int(w/4)] (zeros where skipped)", **meta)
    st.add(p + "latents", lat, call='pipe(..., output_type="latent").images', **meta)
    st.add(p + "image", u8, call='(pipe(..., output_type="np").images[0] * 255).round().astype(uint8), HWC', **meta)
    recon = None
    if name == "ddim-one-add":
        # not a record: with source_prompt "" the inversion's eps is the denoising's uncond eps, so without edits DDIM
        # gives x0 back -- unless the model is v-prediction (compute_noise_ddim reads the output as epsilon)
        rec = pipe(output_type="latent").images
        recon = float((rec - x0).abs().max())
    return dict(timesteps=[int(t) for t in timesteps], branches=branches, mask_fraction=round(float(masks.mean()), 4),
                fractions=[[round(x, 3) for x in r] for r in frac], reconstruction_err_no_edit=recon,
                margin_attention=float("%.3g" % margin["attention"]), margin_noise=float("%.3g" % margin["noise"]),
                zs_rederive_err=zerr, num_edit_tokens=nets,
                latents_std=round(float(lat.std()), 4), u8_unique=int(len(np.unique(u8))))


def write_all(out, mf):
    report = {}
    for key, spec in LEDITS_SPECS.items():
        print("[%s] LEDITS++ model folder and references" % key)
        build_folder(out, key, spec, mf)
        pipe = load_pipeline(out, key, spec)
        cat, box = mf.make_cat(spec)
        mf.write_ppm(os.path.join(out, key, "cat.ppm"), cat)
        st = mf.Stream(os.path.join(out, key, "ref", "ledits.tensor"))
        assert torch.equal(gaussian_kernel(), LEDITS_MODULE.LeditsGaussianSmoothing("cpu").weight[0, 0])
        st.add("ledits.smoothing.kernel", gaussian_kernel(),
               call="LeditsGaussianSmoothing weight [3,3]: exp(-((x-1)/(2*0.5))^2) per axis, product, / sum")
        for name, kind, inv_kwargs, seed, call_kwargs in cases(spec):
            r = run_case(mf, pipe, st, spec, cat, name, kind, inv_kwargs, seed, call_kwargs)
            report["%s.%s" % (key, name)] = r
        st.write()
        report[key + ".cat_crop_box"] = list(box)
    return report

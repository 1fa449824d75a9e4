"""Train the diffedit demo model: a tiny Stable-Diffusion-shaped latent diffusion model on the
procedural world in world.py, saved in diffusers' StableDiffusionDiffEditPipeline layout.

Stages (each resumable from its checkpoint in --work):

    python demo/make_data.py  WORK/data.npz 24000          # render the training scenes
    python demo/train.py vae     --work WORK --steps 1500  # AutoencoderKL, 64x64 -> 4x16x16
    python demo/train.py latents --work WORK               # encode the dataset once
    python demo/train.py unet    --work WORK --steps 3000  # UNet + CLIP text encoder, eps objective
    python demo/train.py export  --work WORK --out demo/model

Everything is seeded; the machine has few shared cores so --threads defaults to 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
TOKENIZER_SRC = os.path.join(HERE, "..", "Tests", "Fixtures", "sd1", "tokenizer")

# ------------------------------------------------------------------ model configurations

VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 64],  # three levels: 64x64 -> 16x16 latents (factor 4)
    layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64,
    act_fn="silu",
)

TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=64, pad_token_id=49407, bos_token_id=49406, eos_token_id=49407,
    layer_norm_eps=1e-5,
)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64, 64], layers_per_block=1,
    cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16,
)

# Demo model v2 (issue 17): the v1 model's failures are generation failures (shape following
# 67 %, edits with the ground-truth mask 62 %), so the UNet grows — twice the width and 8 heads,
# 5.8 M parameters instead of 1.5 M (a training step of batch 32 on 2 threads: 0.98 s against
# 0.41 s; 10.3 M with two layers per block and cross-attention at every level took 1.50 s) —
# while the VAE and text encoder stay v1's.
UNET_CONFIGS = {
    "v1": UNET_CONFIG,
    "v2": dict(UNET_CONFIG, block_out_channels=[64, 128, 128], attention_head_dim=8, norm_num_groups=32),
}

# Stable Diffusion 1.5's scheduler.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading",
    prediction_type="epsilon",
)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def load_data(work):
    d = np.load(os.path.join(work, "data.npz"))
    return d["images"], json.loads(str(d["captions"]))


def to_tensor(images_u8):
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1


def make_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_CONFIG)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def make_unet(arch="v1"):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**UNET_CONFIGS[arch])


def load_vae(a):
    """The VAE to encode with or export: --vae-from MODEL's (a trained model folder, e.g. v1's
    demo/model when only the UNet is retrained), else this work folder's checkpoint."""
    if a.vae_from:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(a.vae_from, subfolder="vae", torch_dtype=torch.float32)
        log(f"VAE from {a.vae_from} (scaling_factor {vae.config.scaling_factor})")
        return vae
    vae = make_vae()
    dec = os.path.join(a.work, "vae_decoder.pt")
    vae.load_state_dict(torch.load(dec if os.path.exists(dec) else os.path.join(a.work, "vae.pt"),
                                   weights_only=False)["model"])
    return vae


def make_tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer(os.path.join(TOKENIZER_SRC, "vocab.json"), os.path.join(TOKENIZER_SRC, "merges.txt"),
                         model_max_length=77, pad_token="<|endoftext|>")


def lr_at(step, total, peak, warmup=100, progress=None):
    """Linear warmup, then cosine from peak to peak/10. progress (0..1) overrides step/total."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ------------------------------------------------------------------ stage 1: VAE

def train_vae(a):
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    images, _ = load_data(a.work)
    vae = make_vae()
    opt = torch.optim.Adam(vae.parameters(), lr=a.lr)
    ck = os.path.join(a.work, "vae.pt")
    step = 0
    if os.path.exists(ck):
        s = torch.load(ck, weights_only=False)
        vae.load_state_dict(s["model"]); opt.load_state_dict(s["opt"]); step = s["step"]
        torch.set_rng_state(s["rng"]); rng = s["nprng"]
        log(f"resumed vae at step {step}")
    log(f"vae params {sum(p.numel() for p in vae.parameters())}")
    t0 = time.time()
    ema = None
    while step < a.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        idx = rng.integers(0, len(images), a.batch)
        x = to_tensor(images[idx])
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample()).sample
        l1 = (y - x).abs().mean()
        l2 = ((y - x) ** 2).mean()
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        loss = l1 + l2 + a.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0 or step == a.steps:
            log(f"vae step {step}/{a.steps} loss {ema:.4f} l1 {l1.item():.4f} l2 {l2.item():.5f} "
                f"kl {kl.item():.2f} ({time.time() - t0:.0f}s)")
        if step % 200 == 0 or step == a.steps or (a.max_minutes and time.time() - t0 > 60 * a.max_minutes):
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                        "rng": torch.get_rng_state(), "nprng": rng}, ck)
            if a.max_minutes and time.time() - t0 > 60 * a.max_minutes:
                log(f"time budget reached at step {step}")
                break


# ------------------------------------------------------------------ stage 2: latents

@torch.no_grad()
def encode_latents(a):
    images, _ = load_data(a.work)
    if a.vae_from:
        vae = load_vae(a)
    else:
        vae = make_vae()
        vae.load_state_dict(torch.load(os.path.join(a.work, "vae.pt"), weights_only=False)["model"])
    vae.eval()
    means, stds = [], []
    l1s = []
    for i in range(0, len(images), 256):
        x = to_tensor(images[i:i + 256])
        post = vae.encode(x).latent_dist
        means.append(post.mean.half()); stds.append(post.std.half())
        if i < 2048:
            l1s.append((vae.decode(post.mean).sample - x).abs().mean().item())
    mean = torch.cat(means).float(); std = torch.cat(stds).float()
    sample = mean + std * torch.randn_like(mean)
    # A VAE from a finished model keeps its scaling_factor (the UNet is trained in its units).
    scaling = vae.config.scaling_factor if a.vae_from else 1.0 / sample.std().item()
    log(f"latents {tuple(mean.shape)}: channel means {mean.mean((0, 2, 3)).tolist()} "
        f"std {sample.std().item():.4f} -> scaling_factor {scaling:.5f}; posterior std mean "
        f"{std.mean().item():.4f}; reconstruction L1 (first 2048, [-1,1] units) {np.mean(l1s):.4f}")
    torch.save({"mean": mean.half(), "std": std.half(), "scaling_factor": scaling}, os.path.join(a.work, "latents.pt"))



# ------------------------------------------------------------------ stage 2b: decoder fine-tune

def train_decoder(a):
    """Decoder-only fine-tuning on the cached latents (like sd-vae-ft-mse): the encoder, hence the
    latent space the UNet is trained on, stays fixed, so this can run alongside the UNet stage."""
    torch.manual_seed(a.seed + 2)
    rng = np.random.default_rng(a.seed + 2)
    images, _ = load_data(a.work)
    lat = torch.load(os.path.join(a.work, "latents.pt"), weights_only=False)
    lmean, lstd = lat["mean"].float(), lat["std"].float()
    vae = make_vae()
    src = os.path.join(a.work, "vae.pt")
    ck = os.path.join(a.work, "vae_decoder.pt")
    step = 0
    s = torch.load(ck if os.path.exists(ck) else src, weights_only=False)
    vae.load_state_dict(s["model"])
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    if os.path.exists(ck):
        opt.load_state_dict(s["opt"]); step = s["step"]; rng = s["nprng"]; torch.set_rng_state(s["rng"])
        log(f"resumed decoder at step {step}")
    t0 = time.time()
    ema = None
    budget = 60 * a.max_minutes if a.max_minutes else None
    while step < a.steps:
        progress = step / a.steps
        if budget:
            progress = max(progress, (time.time() - t0) / budget)
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, warmup=50, progress=progress)
        idx = rng.integers(0, len(images), a.batch)
        x = to_tensor(images[idx])
        z = lmean[idx] + lstd[idx] * torch.randn_like(lmean[idx])
        y = vae.decode(z).sample
        l1 = (y - x).abs().mean()
        loss = l1 + ((y - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0:
            log(f"decoder step {step} loss {ema:.4f} l1 {l1.item():.4f} progress {progress:.3f} ({time.time() - t0:.0f}s)")
        if step % 100 == 0:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                        "rng": torch.get_rng_state(), "nprng": rng}, ck)
    torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                "rng": torch.get_rng_state(), "nprng": rng}, ck)
    log(f"decoder done at step {step}")


# ------------------------------------------------------------------ stage 3: UNet + text encoder

class CaptionIds:
    """Caption -> token ids [77], cached (the captions repeat a lot)."""

    def __init__(self):
        self.tok = make_tokenizer()
        self.cache = {}

    def __call__(self, captions):
        out = []
        for c in captions:
            if c not in self.cache:
                self.cache[c] = self.tok(c, padding="max_length", max_length=77, truncation=True,
                                         return_tensors="pt").input_ids[0]
            out.append(self.cache[c])
        return torch.stack(out)


def train_unet(a):
    from diffusers import DDPMScheduler
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed + 1)
    _, captions = load_data(a.work)
    lat = torch.load(os.path.join(a.work, "latents.pt"), weights_only=False)
    lmean, lstd, scaling = lat["mean"].float(), lat["std"].float(), lat["scaling_factor"]
    ids_of = CaptionIds()
    ck = os.path.join(a.work, "unet.pt")
    saved = torch.load(ck, weights_only=False) if os.path.exists(ck) else None
    arch = saved.get("arch", "v1") if saved else a.unet_arch
    unet, te = make_unet(arch), make_text_encoder()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    ema_unet, ema_te = make_unet(arch), make_text_encoder()
    ema_unet.load_state_dict(unet.state_dict()); ema_te.load_state_dict(te.state_dict())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset", "timestep_spacing")})
    step = 0
    elapsed0 = 0.0
    if saved:
        s = saved
        elapsed0 = s.get("elapsed", 0.0)
        unet.load_state_dict(s["unet"]); te.load_state_dict(s["te"])
        ema_unet.load_state_dict(s["ema_unet"]); ema_te.load_state_dict(s["ema_te"])
        opt.load_state_dict(s["opt"]); step = s["step"]; torch.set_rng_state(s["rng"]); rng = s["nprng"]
        log(f"resumed unet ({arch}) at step {step}")
    step0 = 0
    if a.restart_schedule:
        # A second phase: a fresh warmup + cosine from --lr over --steps more steps or a fresh
        # --max-minutes budget, keeping weights, EMA and Adam moments.
        step0, elapsed0 = step, 0.0
        a.steps = step + a.steps
        log(f"new learning-rate schedule from step {step0}: peak {a.lr:.1e}, until step {a.steps} "
            f"or {a.max_minutes} min")
    log(f"unet {arch} params {sum(p.numel() for p in unet.parameters())}, text encoder params "
        f"{sum(p.numel() for p in te.parameters())}, scaling_factor {scaling:.5f}")
    t0 = time.time()
    ema_loss = None
    n = len(captions)
    budget = 60 * a.max_minutes if a.max_minutes else None
    while step < a.steps:
        # The schedule follows whichever runs out first, steps or the wall-time budget (the
        # machine is shared, so step times vary 3x); the log records the progress actually used.
        progress = (step - step0) / (a.steps - step0)
        if budget:
            progress = max(progress, (time.time() - t0 + elapsed0) / budget)
        if progress >= 1:
            log(f"time budget reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step - step0, a.steps - step0, a.lr, warmup=200 if step0 == 0 else 50,
                            progress=progress)
        idx = rng.integers(0, n, a.batch)
        caps = []
        for i in idx:
            if rng.random() < a.uncond_prob:
                caps.append("")  # classifier-free guidance: learn the unconditional prediction too
            else:
                opts = captions[i]
                caps.append(opts[rng.integers(len(opts))])
        ids = ids_of(caps)
        x0 = (lmean[idx] + lstd[idx] * torch.randn_like(lmean[idx])) * scaling
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (a.batch,))
        xt = sched.add_noise(x0, noise, t)
        emb = te(ids)[0]
        pred = unet(xt, t, emb).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_params, params):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == a.steps:
            log(f"unet step {step}/{a.steps} loss {ema_loss:.4f} (batch {loss.item():.4f}) "
                f"lr {opt.param_groups[0]['lr']:.2e} progress {progress:.3f} ({time.time() - t0 + elapsed0:.0f}s)")
        if step % 100 == 0 or step == a.steps:
            torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(),
                        "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "step": step,
                        "rng": torch.get_rng_state(), "nprng": rng, "arch": arch,
                        "elapsed": time.time() - t0 + elapsed0}, ck + ".tmp")
            os.replace(ck + ".tmp", ck)
    torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(),
                "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "step": step,
                "rng": torch.get_rng_state(), "nprng": rng, "arch": arch, "elapsed": time.time() - t0 + elapsed0}, ck + ".tmp")
    os.replace(ck + ".tmp", ck)
    log(f"unet done at step {step}, {time.time() - t0 + elapsed0:.0f}s")


# ------------------------------------------------------------------ stage 4: export

def export(a):
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline
    lat = torch.load(os.path.join(a.work, "latents.pt"), weights_only=False)
    vae = load_vae(a)
    vae.register_to_config(scaling_factor=float(round(lat["scaling_factor"], 5)))
    s = torch.load(os.path.join(a.work, "unet.pt"), weights_only=False)
    unet, te = make_unet(s.get("arch", "v1")), make_text_encoder()
    key = "" if a.raw else "ema_"
    unet.load_state_dict(s[key + "unet"]); te.load_state_dict(s[key + "te"])
    log(f"exporting {'raw' if a.raw else 'EMA'} weights from unet step {s['step']}")
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    pipe = StableDiffusionDiffEditPipeline(
        vae=vae.half(), text_encoder=te.half(), tokenizer=make_tokenizer(), unet=unet.half(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, inverse_scheduler=inverse,
        requires_safety_checker=False)
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    pipe.save_pretrained(a.out, safe_serialization=True)
    # The real CLIP tokenizer files, verbatim, plus the special-token map transformers 5 no longer writes.
    tokdir = os.path.join(a.out, "tokenizer")
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOKENIZER_SRC, f), os.path.join(tokdir, f))
    if os.path.exists(os.path.join(tokdir, "tokenizer.json")):  # 3.6 MB, derivable from vocab + merges
        os.remove(os.path.join(tokdir, "tokenizer.json"))
    with open(os.path.join(tokdir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f, indent=2)
        f.write("\n")
    total = 0
    for root, _, files in os.walk(a.out):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
            total += os.path.getsize(os.path.join(root, f))
    log(f"wrote {a.out}: {total / 1e6:.2f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["vae", "latents", "decoder", "unet", "export"])
    p.add_argument("--work", default="/tmp/demo-work")
    p.add_argument("--out", default=os.path.join(HERE, "model"))
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--lr", type=float, default=0)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--max-minutes", type=float, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart-schedule", action="store_true",
                   help="unet: resume weights but start a new LR schedule (--steps more steps)")
    p.add_argument("--raw", action="store_true", help="export raw instead of EMA weights")
    p.add_argument("--unet-arch", choices=sorted(UNET_CONFIGS), default="v1",
                   help="unet: the UNet configuration of a new run (a resumed run keeps its own)")
    p.add_argument("--vae-from", help="latents/export: the VAE of this model folder (e.g. demo/model) "
                   "instead of the work folder's checkpoint")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    defaults = {"vae": (1500, 16, 1e-3), "decoder": (5000, 16, 5e-4), "unet": (3000, 64, 5e-4)}
    if a.stage in defaults:
        s, b, lr = defaults[a.stage]
        a.steps, a.batch, a.lr = a.steps or s, a.batch or b, a.lr or lr
    {"vae": train_vae, "latents": encode_latents, "decoder": train_decoder, "unet": train_unet,
     "export": export}[a.stage](a)


if __name__ == "__main__":
    main()

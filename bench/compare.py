#!/usr/bin/env python3
"""Side-by-side CPU speed benchmark: diffedit's Swift tools against PyTorch/diffusers.

One run measures, on the same machine and in the same hour, each row below with our release
binaries and with PyTorch (float32, torch.set_num_threads(2), inference_mode), on random weights of
the real Stable Diffusion 1.5 shapes, and writes a Markdown and a JSON table:

  unet32, unet64   one classifier-free-guidance UNet step (batch 2) at 32x32 / 64x64 latents
  vae-enc256/512   VAE encoder on a 256x256 / 512x512 image
  vae-dec256/512   VAE decoder to a 256x256 / 512x512 image
  text             CLIP ViT-L/14 text tower, batch 2 x 77 tokens
  edit             one whole DiffEdit edit at 256x256, 20 steps: our tools as examples.sh runs them
                   against StableDiffusionDiffEditPipeline (generate_mask + invert + __call__)

Run it under the machine's CPU lock, e.g.

    flock /tmp/diffedit-cpu.lock /opt/venv-bench/bin/python bench/compare.py

See bench/README.md for the method, the environment and the options.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

VENV_HELP = """\
This benchmark needs PyTorch, diffusers and transformers in a Python venv outside the repo:

    python3 -m venv /opt/venv-bench
    /opt/venv-bench/bin/pip install -r bench/requirements.txt

(CPU-only torch: on Linux, plain `pip install torch` also pulls CUDA libraries of several GB;
a `+cpu` wheel, if you have one, is enough.) Then run, under the CPU lock:

    flock /tmp/diffedit-cpu.lock /opt/venv-bench/bin/python bench/compare.py
"""

# Version of the cached random model's recipe; bump it when make_model changes.
MODEL_RECIPE = 1
MODEL_SEED = 1234

# ---------------------------------------------------------------------------------------------
# Stable Diffusion 1.5 configurations (runwayml/stable-diffusion-v1-5), weights random.

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
SD15_TEXT = {  # text_encoder/config.json of SD 1.5 (its legacy bos/eos/pad ids included)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05, "projection_dim": 768, "initializer_range": 0.02, "initializer_factor": 1.0,
    "attention_dropout": 0.0, "dropout": 0.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SD15_SCHEDULER = {  # scheduler/scheduler_config.json of SD 1.5 (a PNDM config; DDIM reads its keys)
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False, "timestep_spacing": "leading", "prediction_type": "epsilon",
}
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# ---------------------------------------------------------------------------------------------
# Rows

ROWS = [
    # id, title, kind, parameters
    ("unet32", "UNet CFG step (batch 2), 32×32 latents (256² image)", "unet", {"size": 32}),
    ("unet64", "UNet CFG step (batch 2), 64×64 latents (512² image)", "unet", {"size": 64}),
    ("vae-enc256", "VAE encode, 256² image", "vae-enc", {"size": 256}),
    ("vae-enc512", "VAE encode, 512² image", "vae-enc", {"size": 512}),
    ("vae-dec256", "VAE decode, 256² image", "vae-dec", {"size": 256}),
    ("vae-dec512", "VAE decode, 512² image", "vae-dec", {"size": 512}),
    ("text", "CLIP ViT-L/14 text encoder, batch 2 × 77 tokens", "text", {}),
    ("edit", "whole DiffEdit edit, 256², 20 steps, guidance 7.5", "edit", {"size": 256, "steps": 20}),
    ("edit512", "whole DiffEdit edit, 512², 10 steps, guidance 7.5", "edit", {"size": 512, "steps": 10}),
]
EDIT_IDS = [r[0] for r in ROWS if r[2] == "edit"]
ROW_IDS = [r[0] for r in ROWS]

SOURCE = "a bowl of fruits"
TARGET = "a bowl of pears"
ENV_KEYS = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_VERBOSE",
            "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS",
            "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DIFFEDIT_MODEL", "DIFFEDIT_MEMORY_LIMIT"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# Processes: wall time and peak RSS of each child

TIME = "/usr/bin/time"   # GNU time: the peak RSS of exactly the process it starts


def run_procs(cmds, stdin_path=None, stdout_path=None, env=None, cwd=None):
    """Run argv lists as one shell-style pipeline cmds[0] | cmds[1] | ... Returns (wall seconds,
    [(argv, maxrss_kB, returncode, stderr text)]).

    Each process is started under GNU time (-f %M), which reports that process's own peak RSS.
    (os.wait4's ru_maxrss of a child started straight from this Python process is not usable:
    Linux carries the parent's high-water RSS into a vfork()ed child across exec.)"""
    procs, errs, rss_files = [], [], []
    fin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    fout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    prev = fin
    try:
        for i, argv in enumerate(cmds):
            last = i == len(cmds) - 1
            err = tempfile.TemporaryFile()
            fd, rss_path = tempfile.mkstemp(suffix=".rss")
            os.close(fd)
            p = subprocess.Popen([TIME, "-f", "%M", "-o", rss_path] + list(argv), stdin=prev,
                                 stdout=fout if last else subprocess.PIPE, stderr=err, env=env, cwd=cwd)
            if i > 0:
                prev.close()   # the parent's copy of the previous pipe's read end
            prev = p.stdout if not last else None
            procs.append(p)
            errs.append(err)
            rss_files.append(rss_path)
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
    finally:
        if stdin_path:
            fin.close()
        if stdout_path:
            fout.close()
    out = []
    for p, argv, err, rss_path in zip(procs, cmds, errs, rss_files):
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        err.close()
        lines = open(rss_path).read().split()
        os.unlink(rss_path)
        rss = int(lines[-1]) if lines and lines[-1].isdigit() else None
        out.append((argv, rss, p.returncode, text))
    return wall, out


def check(out, what):
    for argv, rss, rc, text in out:
        if rc != 0:
            raise RuntimeError(f"{what}: `{' '.join(argv)}` exited {rc}:\n{text.strip()}")


def run_worker(spec, env=None):
    """Run one PyTorch measurement in its own Python process; returns (result dict, maxrss kB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        res_path = f.name
    argv = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec), "--worker-out", res_path]
    wall, out = run_procs([argv], env=env)
    check(out, f"PyTorch worker {spec['row']}")
    if spec["row"] == "make-model" and out[0][3].strip():
        log(out[0][3].strip())
    with open(res_path) as f:
        res = json.load(f)
    os.unlink(res_path)
    res["maxrss_kb"] = out[0][1]
    res["process_wall_s"] = wall
    return res


# ---------------------------------------------------------------------------------------------
# Inputs

def write_ppm(path, size):
    """A deterministic smooth RGB test picture (a disc on a gradient, light noise)."""
    import numpy as np
    rng = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.55) ** 2 + (y - 0.45) ** 2 < 0.08).astype(np.float64)
    r = 0.2 + 0.6 * x + 0.3 * disc
    g = 0.3 + 0.4 * y - 0.2 * disc
    b = 0.5 + 0.2 * np.sin(12 * x) * (1 - disc)
    img = np.stack([r, g, b], -1) + rng.normal(0, 0.02, (size, size, 3))
    img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (size, size))
        f.write(img.tobytes())


# ---------------------------------------------------------------------------------------------
# The random SD 1.5-shaped model (made once, outside the repo)

def make_model(cache):
    marker = os.path.join(cache, "bench-model.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f).get("recipe") == MODEL_RECIPE:
                return False
    import numpy  # noqa: F401
    import safetensors.torch
    import torch
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    log(f"making the random SD 1.5-shaped model in {cache} (once; about 2 GB, 1-3 min) ...")
    t0 = time.perf_counter()
    tmp = cache.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.manual_seed(MODEL_SEED)
    unet = UNet2DConditionModel(**SD15_UNET)
    unet.to(torch.float16).save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
    del unet
    torch.manual_seed(MODEL_SEED + 1)
    vae = AutoencoderKL(**SD15_VAE)
    vae.to(torch.float16).save_pretrained(os.path.join(tmp, "vae"), safe_serialization=True)
    del vae
    torch.manual_seed(MODEL_SEED + 2)
    te = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    te_dir = os.path.join(tmp, "text_encoder")
    te.to(torch.float16).save_pretrained(te_dir, safe_serialization=True)
    # transformers 5 writes the keys without the "text_model." prefix; SD 1.5's file (written by
    # transformers 4) has it. Use SD 1.5's layout.
    path = os.path.join(te_dir, "model.safetensors")
    sd = safetensors.torch.load_file(path)
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in sd.items()}
    safetensors.torch.save_file(sd, path, metadata={"format": "pt"})
    del te, sd
    tok = os.path.join(tmp, "tokenizer")
    os.makedirs(tok)
    for name in os.listdir(os.path.join(REPO, "demo", "model", "tokenizer")):
        shutil.copy(os.path.join(REPO, "demo", "model", "tokenizer", name), tok)
    os.makedirs(os.path.join(tmp, "scheduler"))
    with open(os.path.join(tmp, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SD15_SCHEDULER, f, indent=2)
    with open(os.path.join(tmp, "model_index.json"), "w") as f:
        json.dump(SD15_MODEL_INDEX, f, indent=2)
    with open(os.path.join(tmp, "bench-model.json"), "w") as f:
        json.dump({"recipe": MODEL_RECIPE, "seed": MODEL_SEED, "made": datetime.datetime.now().isoformat(),
                   "torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__,
                   "what": "random weights (torch default init, fixed seed) of SD 1.5's shapes, f16"}, f, indent=2)
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    os.rename(tmp, cache)
    log(f"  made in {time.perf_counter() - t0:.0f} s")
    return True


# ---------------------------------------------------------------------------------------------
# PyTorch side (runs in a worker process: python compare.py --worker SPEC)

class FlopCounter:
    """Counts 2 FLOPs per multiply-accumulate of convolutions, linear layers and attention
    products (QK^T and softmax·V), the convention of unet-bench."""

    def __init__(self, model):
        import torch
        from torch import nn
        self.macs = 0
        self.handles = []
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                self.handles.append(m.register_forward_hook(self._conv))
            elif isinstance(m, nn.Linear):
                self.handles.append(m.register_forward_hook(self._linear))
            elif type(m).__name__ in ("Attention", "CLIPAttention") and not isinstance(m, nn.Linear):
                self.handles.append(m.register_forward_pre_hook(self._attn, with_kwargs=True))
        self.torch = torch

    def _conv(self, m, inp, out):
        kh, kw = m.kernel_size
        self.macs += out.numel() * (m.in_channels // m.groups) * kh * kw

    def _linear(self, m, inp, out):
        self.macs += out.numel() * m.in_features

    def _attn(self, m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        e = kwargs.get("encoder_hidden_states")
        if e is None and len(args) > 1 and type(m).__name__ == "Attention":
            e = args[1]
        if h.dim() == 4:   # diffusers' Attention on an image (the VAE's mid block)
            b, c, hh, ww = h.shape
            nq, width = hh * ww, getattr(m, "inner_dim", c)
        else:
            b, nq, c = h.shape
            width = getattr(m, "inner_dim", None) or getattr(m, "embed_dim", c)
        nk = e.shape[1] if e is not None else nq
        self.macs += 2 * b * nq * nk * width

    def remove(self):
        for h in self.handles:
            h.remove()

    @property
    def gflop(self):
        return 2 * self.macs / 1e9


def torch_info():
    import torch
    import diffusers
    import transformers
    cfg = torch.__config__.show()
    keep = [ln.strip().lstrip("- ") for ln in cfg.splitlines()
            if re.search(r"CPU capability|Intel\(R\)|oneDNN|MKL-DNN|OpenMP", ln)]
    m = re.search(r"Build settings: (.*)", cfg)
    if m:
        wanted = ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP", "BUILD_TYPE")
        keep.append("Build settings: " + ", ".join(
            kv.strip() for kv in m.group(1).split(",") if kv.strip().split("=")[0] in wanted))
    par = torch.__config__.parallel_info().splitlines()
    return {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
        "config": keep, "parallel": [ln.strip() for ln in par if ln.strip()][:8],
    }


def worker(spec, out_path):
    import numpy as np
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    row, cache, runs = spec["row"], spec["cache"], spec["runs"]
    res = {"row": row, "threads": torch.get_num_threads()}
    if row == "info":
        res.update(torch_info())
        json.dump(res, open(out_path, "w"))
        return
    if row == "make-model":
        res["made"] = make_model(cache)
        json.dump(res, open(out_path, "w"))
        return

    def timed(fn, count):
        ts = []
        for _ in range(count):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return ts

    def warm_and_count(model, fn):
        fc = FlopCounter(model)
        t0 = time.perf_counter()
        fn()
        res["warmup_s"] = time.perf_counter() - t0
        fc.remove()
        res["gflop"] = fc.gflop

    kind = dict((r[0], r[2]) for r in ROWS)[row]
    params = dict((r[0], r[3]) for r in ROWS)[row]
    with torch.inference_mode():
        if kind == "unet":
            from diffusers import UNet2DConditionModel
            t0 = time.perf_counter()
            unet = UNet2DConditionModel.from_pretrained(os.path.join(cache, "unet"), dtype=torch.float32).eval()
            res["load_s"] = time.perf_counter() - t0
            s = params["size"]
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 4, s, s, generator=g)
            enc = torch.randn(2, 77, 768, generator=g)
            f = lambda: unet(x, 981, encoder_hidden_states=enc).sample  # noqa: E731
            warm_and_count(unet, f)
            res["times"] = timed(f, runs)
        elif kind in ("vae-enc", "vae-dec"):
            from diffusers import AutoencoderKL
            t0 = time.perf_counter()
            vae = AutoencoderKL.from_pretrained(os.path.join(cache, "vae"), dtype=torch.float32).eval()
            res["load_s"] = time.perf_counter() - t0
            s, sf = params["size"], vae.config.scaling_factor
            if kind == "vae-enc":
                from PIL import Image
                img = np.asarray(Image.open(spec["image"]).convert("RGB"), dtype=np.float32) / 255
                x = torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1

                def f():
                    d = vae.encode(x).latent_dist
                    return d.mean * sf, d.std * sf
            else:
                z = torch.randn(1, 4, s // 8, s // 8, generator=torch.Generator().manual_seed(0))

                def f():
                    im = vae.decode(z / sf).sample
                    return ((im / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            warm_and_count(vae, f)
            res["times"] = timed(f, runs)
        elif kind == "text":
            from transformers import CLIPTextModel, CLIPTokenizer
            t0 = time.perf_counter()
            te = CLIPTextModel.from_pretrained(os.path.join(cache, "text_encoder"), dtype=torch.float32).eval()
            res["load_s"] = time.perf_counter() - t0
            tok = CLIPTokenizer.from_pretrained(os.path.join(cache, "tokenizer"))
            ids = tok([SOURCE, TARGET], padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids
            f = lambda: te(ids).last_hidden_state  # noqa: E731
            warm_and_count(te, f)
            res["times"] = timed(f, runs)
        elif kind == "edit":
            res.update(worker_edit(spec, params, runs))
    json.dump(res, open(out_path, "w"))


def worker_edit(spec, params, runs):
    import numpy as np
    import torch
    from PIL import Image
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline
    res = {}
    t0 = time.perf_counter()
    pipe = StableDiffusionDiffEditPipeline.from_pretrained(spec["cache"], dtype=torch.float32,
                                                           safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    res["load_s"] = time.perf_counter() - t0
    steps = params["steps"]
    img = Image.open(spec["image"]).convert("RGB")
    gen = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731  fresh per call, as our tools seed

    # Warm-up (not counted): one pass of each component at the edit's shapes. A whole warm-up edit
    # would cost as much as a timed one.
    t0 = time.perf_counter()
    s = params["size"] // 8
    x = pipe.image_processor.preprocess(img)
    pipe.vae.encode(x)
    pipe.unet(torch.randn(2, 4, s, s), 981, encoder_hidden_states=torch.randn(2, 77, 768))
    pipe.vae.decode(torch.randn(1, 4, s, s))
    pipe.encode_prompt(SOURCE, "cpu", 1, True)
    res["warmup_s"] = time.perf_counter() - t0

    times, stages = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        mask = pipe.generate_mask(image=img, source_prompt=SOURCE, target_prompt=TARGET,
                                  num_inference_steps=steps, generator=gen())
        t1 = time.perf_counter()
        inv = pipe.invert(prompt=SOURCE, image=img, num_inference_steps=steps, generator=gen()).latents
        t2 = time.perf_counter()
        out = pipe(prompt=TARGET, mask_image=mask, image_latents=inv, negative_prompt=SOURCE,
                   num_inference_steps=steps, generator=gen()).images[0]
        t3 = time.perf_counter()
        times.append(t3 - t0)
        stages.append({"generate_mask": t1 - t0, "invert": t2 - t1, "__call__ (incl. decode)": t3 - t2})
    res["times"] = times
    res["stages"] = stages
    np.save(spec["mask_out"], np.asarray(mask, dtype=np.float32))
    out.save(spec["image_out"])
    return res


# ---------------------------------------------------------------------------------------------
# Our side

class Ours:
    def __init__(self, bin_dir, cache, work, env):
        self.bin, self.cache, self.work, self.env = bin_dir, cache, work, env

    def tool(self, name):
        return os.path.join(self.bin, name)

    def unet(self, size, runs):
        argv = [self.tool("unet-bench"), "--model", self.cache, "--height", str(size), "--width", str(size),
                "--batch", "2", "--runs", str(runs + 1)]
        out_path = os.path.join(self.work, f"unet-bench-{size}.txt")
        wall, out = run_procs([argv], stdout_path=out_path, env=self.env)
        check(out, "unet-bench")
        text = open(out_path).read()
        runs_ = [(float(a), float(b)) for a, b in re.findall(r"run \d+: ([\d.]+) s, ([\d.]+) GFLOP,", text)]
        load = re.search(r"loaded in ([\d.]+) s", out[0][3])
        if any("non-finite" in ln for ln in text.splitlines()):
            raise RuntimeError(f"unet-bench on {self.cache}: output has non-finite values:\n{text}")
        return {
            "cmd": argv, "times": [t for t, _ in runs_[1:]], "warmup_s": runs_[0][0], "gflop": runs_[0][1],
            "load_s": float(load.group(1)) if load else None, "maxrss_kb": out[0][1], "process_wall_s": wall,
            "stdout": text.strip(), "stderr": out[0][3].strip(),
        }

    def _tool_runs(self, argv, inp, runs, outname, stdin=False):
        """A warm-up invocation (weights into the page cache), then `runs` timed ones."""
        times, rss = [], []
        for i in range(runs + 1):
            a = argv + ([] if stdin else [inp])
            wall, out = run_procs([a], stdin_path=inp if stdin else None,
                                  stdout_path=os.path.join(self.work, outname), env=self.env)
            check(out, argv[0])
            if i > 0:
                times.append(wall)
            rss.append(out[0][1])
        return times, max(rss)

    def vae_enc(self, image, tiny, runs):
        argv = [self.tool("vae-encode"), "--model", self.cache]
        times, rss = self._tool_runs(argv, image, runs, "enc.tensor")
        tiny_times, _ = self._tool_runs(argv, tiny, runs, "enc-tiny.tensor")
        return {"cmd": argv + [os.path.basename(image)], "process_times": times, "load_times": tiny_times,
                "maxrss_kb": rss}

    def vae_dec(self, posterior, tiny_posterior, runs):
        argv = [self.tool("vae-decode"), "--model", self.cache]
        times, rss = self._tool_runs(argv, posterior, runs, "dec.ppm")
        tiny_times, _ = self._tool_runs(argv, tiny_posterior, runs, "dec-tiny.ppm")
        return {"cmd": argv + [os.path.basename(posterior)], "process_times": times, "load_times": tiny_times,
                "maxrss_kb": rss}

    def text(self, tokens, tiny_tokens, runs):
        argv = [self.tool("encode-text"), "--model", self.cache]
        times, rss = self._tool_runs(argv, tokens, runs, "text.tensor")
        tiny_times, _ = self._tool_runs(argv, tiny_tokens, runs, "text-tiny.tensor")
        return {"cmd": argv + [os.path.basename(tokens)], "process_times": times, "load_times": tiny_times,
                "maxrss_kb": rss}

    def edit_commands(self, image, d, steps, seed=0, guidance="7.5"):
        """examples.sh's edit, stage by stage (MODEL=cache, STEPS=20, NEGATIVE=source): list of
        (label, [argv...] pipeline, stdin file, stdout file)."""
        t = self.tool
        j = lambda n: os.path.join(d, n)  # noqa: E731
        return [
            ("vae-encode", [[t("vae-encode"), image]], None, j("posterior.tensor")),
            ("tokenize | encode-text (source)", [[t("tokenize"), SOURCE], [t("encode-text")]], None, j("source.tensor")),
            ("tokenize | encode-text (target)", [[t("tokenize"), TARGET], [t("encode-text")]], None, j("target.tensor")),
            ("noise-diff-mask", [[t("noise-diff-mask"), "--source", j("source.tensor"), "--target", j("target.tensor"),
                                  "--steps", str(steps), "--seed", str(seed), "--guidance", guidance]],
             j("posterior.tensor"), j("mask.tensor")),
            ("invert", [[t("invert"), "--prompt", j("source.tensor"), "--steps", str(steps), "--seed", str(seed),
                         "--guidance", guidance]], j("posterior.tensor"), j("inverted.tensor")),
            ("denoise", [[t("denoise"), "--mask", j("mask.tensor"), "--prompt", j("target.tensor"),
                          "--negative", j("source.tensor"), "--guidance", guidance]],
             j("inverted.tensor"), j("edited.tensor")),
            ("vae-decode", [[t("vae-decode")]], j("edited.tensor"), j("edited.ppm")),
        ]

    def edit(self, image, steps, runs, name="edit"):
        env = dict(self.env, DIFFEDIT_MODEL=self.cache)   # as examples.sh: export DIFFEDIT_MODEL
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        times, stages, rss = [], [], []
        for _ in range(runs):
            total, st = 0.0, {}
            for label, cmds, fin, fout in self.edit_commands(image, d, steps):
                wall, out = run_procs(cmds, stdin_path=fin, stdout_path=fout, env=env)
                check(out, label)
                total += wall
                st[label] = wall
                for argv, r, _, _ in out:
                    rss.append((r, os.path.basename(argv[0])))
            times.append(total)
            stages.append(st)
        shown = []
        for label, cmds, fin, fout in self.edit_commands("out/" + os.path.basename(image), "out", steps):
            s = " | ".join(" ".join([os.path.basename(a[0])] + [shquote(x) for x in a[1:]]) for a in cmds)
            shown.append(s + (f" < {fin}" if fin else "") + f" > {fout}")
        top = max(rss)
        return {"cmd": shown, "times": times, "stages": stages, "maxrss_kb": top[0], "maxrss_tool": top[1], "steps": steps,
                "maxrss_by_tool": {n: max(r for r, m in rss if m == n) for _, n in rss}, "dir": d}


def shquote(s):
    return s if re.fullmatch(r"~?[\w./:=+-]+", s) else "'" + s.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------------------------
# Machine, versions, BLAS

def machine_info(bin_dir, env):
    info = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "host_cores": os.cpu_count()}
    model, flags, fam = "unknown", [], {}
    try:
        for ln in open("/proc/cpuinfo"):
            k, _, v = ln.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name" and model == "unknown":
                model = v
            elif k in ("cpu family", "model", "stepping") and k not in fam:
                fam[k] = v
            elif k == "flags" and not flags:
                flags = [f for f in v.split() if re.match(r"avx|fma|amx", f)]
    except OSError:
        pass
    info["cpu"] = model
    info["cpu_family_model"] = fam
    info["cpu_flags"] = flags
    info["env"] = {k: os.environ.get(k) for k in ENV_KEYS if os.environ.get(k) is not None}
    try:
        info["swift"] = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[0]
    except OSError:
        info["swift"] = "?"
    try:
        git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
        info["git"] = git("describe", "--always", "--dirty")
        # What the binaries are built from: the last commit that touched the sources, and whether
        # they have uncommitted changes (other files, like this benchmark, do not matter).
        info["sources"] = git("log", "-1", "--format=%h", "--", "Sources", "Package.swift") + (
            " + uncommitted changes" if git("status", "--porcelain", "--", "Sources", "Package.swift") else "")
    except OSError:
        info["git"] = "?"
    # OpenBLAS as the tools load it: the library they link, its core as it decides with the
    # environment as it is (a tiny ctypes call), and OPENBLAS_VERBOSE=2 of a real tool process.
    lib = None
    try:
        ldd = subprocess.run(["ldd", os.path.join(bin_dir, "unet-bench")], capture_output=True, text=True).stdout
        m = re.search(r"libopenblas\S*\s*=>\s*(\S+)", ldd)
        lib = m.group(1) if m else None
    except OSError:
        pass
    info["openblas_lib"] = lib
    try:
        code = ("import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); l.openblas_get_corename.restype=ctypes.c_char_p;"
                "l.openblas_get_config.restype=ctypes.c_char_p;"
                "print(l.openblas_get_corename().decode()); print(l.openblas_get_config().decode());"
                "print(l.openblas_get_num_threads())")
        r = subprocess.run([sys.executable, "-c", code, lib or "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"],
                           capture_output=True, text=True, env=env).stdout.splitlines()
        info["openblas_core"], info["openblas_config"], info["openblas_threads"] = r[0], r[1], int(r[2])
    except Exception as e:  # noqa: BLE001
        info["openblas_core"] = f"? ({e})"
    try:
        r = subprocess.run([os.path.join(bin_dir, "unet-bench"), "--gemm", "64", "64", "64", "--runs", "1"],
                           capture_output=True, text=True, env=dict(env, OPENBLAS_VERBOSE="2"))
        info["openblas_verbose"] = " ".join(ln.strip() for ln in r.stderr.splitlines() + r.stdout.splitlines()
                                            if "Core" in ln or "core" in ln) or "(nothing printed)"
    except OSError:
        pass
    try:
        info["openblas_package"] = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n", "libopenblas0-pthread",
             "libopenblas0-openmp", "libopenblas0-serial"], capture_output=True, text=True).stdout
        info["openblas_package"] = "; ".join(ln.rsplit(" ", 1)[0] for ln in info["openblas_package"].splitlines()
                                             if ln.endswith(" installed"))
    except OSError:
        pass
    return info


def cpu_short(cpu):
    s = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", cpu)
    s = re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()
    return s or "cpu"


# ---------------------------------------------------------------------------------------------
# Report

def show_path(x, meta):
    """A path as a reader would type it: the repo as ., the home folder as ~."""
    if x.startswith(REPO + "/"):
        return "./" + x[len(REPO) + 1:]
    if x == meta["cache"]:
        return meta["cache_shown"]
    return x


def fmt_s(x):
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_mb(kb):
    return "—" if kb is None else f"{kb / 1024:,.0f} MB"


def summarize(row_id, o, p):
    """One table line: ours and PyTorch's median seconds, ratio, GFLOP/s, RSS, notes."""
    title = dict((r[0], r[1]) for r in ROWS)[row_id]
    kind = dict((r[0], r[2]) for r in ROWS)[row_id]
    line = {"id": row_id, "row": title, "notes": []}
    pt = median(p["times"]) if p else None
    if kind == "unet":
        ot, gflop = median(o["times"]), o["gflop"]
        if p and p.get("gflop") and abs(p["gflop"] - gflop) > 0.01 * gflop:
            line["notes"].append(f"FLOP count differs: unet-bench {gflop:.1f}, hook count {p['gflop']:.1f} GFLOP")
        line["notes"].append(f"unet-bench, first of {len(o['times']) + 1} runs dropped; weights load {fmt_s(o['load_s'])} s")
    elif kind in ("vae-enc", "vae-dec", "text"):
        proc, load = median(o["process_times"]), median(o["load_times"])
        ot = max(proc - load, 1e-9)
        gflop = p.get("gflop") if p else None
        line["ours_process_s"], line["ours_load_s"] = proc, load
        line["notes"].append(f"ours = process {fmt_s(proc)} s − load {fmt_s(load)} s (same tool on a tiny input)")
    else:
        ot, gflop = median(o["times"]), None
        line["notes"].append(f"ours: {len(o['edit_cmds'])} tool stages, sum of wall times; peak RSS is "
                             f"the largest single process ({o['maxrss_tool']})")
    line.update({
        "ours_s": ot, "torch_s": pt, "ratio": (ot / pt) if pt else None, "gflop": gflop,
        "ours_gflops": (gflop / ot) if gflop else None, "torch_gflops": (gflop / pt) if gflop and pt else None,
        "ours_rss_kb": o["maxrss_kb"], "torch_rss_kb": p["maxrss_kb"] if p else None,
        "ours_runs": len(o.get("times") or o.get("process_times")), "torch_runs": len(p["times"]) if p else 0,
        "torch_load_s": p.get("load_s") if p else None,
    })
    return line


def write_report(path_base, meta, lines, raw, elapsed, args):
    md = []
    t = meta["torch"]
    m = meta["machine"]
    md.append(f"# diffedit vs PyTorch/diffusers — {m['date']}, {m['cpu']}\n")
    md.append(f"Random weights of Stable Diffusion 1.5's shapes (f16 safetensors, computed in f32), "
              f"made by `bench/compare.py` in `{meta['cache_shown']}`. Times are medians; ratio = ours / PyTorch "
              f"(below 1: ours is faster). GFLOP counts 2 per multiply–accumulate of convolutions, linear layers "
              f"and attention products (unet-bench's count for the UNet; the same count by hooks on the PyTorch "
              f"modules for the VAE and the text encoder).\n")
    md.append("| row | ours (s) | PyTorch (s) | ours/PyTorch | GFLOP | ours GFLOP/s | PyTorch GFLOP/s | "
              "ours peak RSS | PyTorch peak RSS | runs (ours, PyTorch) |")
    md.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for ln in lines:
        md.append("| {row} | {o} | {p} | {r} | {g} | {og} | {pg} | {orss} | {prss} | {n} |".format(
            row=ln["row"], o=fmt_s(ln["ours_s"]), p=fmt_s(ln["torch_s"]),
            r="—" if ln["ratio"] is None else f"**{ln['ratio']:.2f}**",
            g="—" if ln["gflop"] is None else f"{ln['gflop']:.1f}",
            og="—" if ln["ours_gflops"] is None else f"{ln['ours_gflops']:.1f}",
            pg="—" if ln["torch_gflops"] is None else f"{ln['torch_gflops']:.1f}",
            orss=fmt_mb(ln["ours_rss_kb"]), prss=fmt_mb(ln["torch_rss_kb"]),
            n=f"{ln['ours_runs']}, {ln['torch_runs']}"))
    md.append("")
    md.append("Notes per row:\n")
    for ln in lines:
        extra = list(ln["notes"])
        if ln.get("torch_load_s") is not None:
            extra.append(f"PyTorch from_pretrained {fmt_s(ln['torch_load_s'])} s (not in its time)")
        md.append(f"- **{ln['row']}**: " + "; ".join(extra) + ".")
    md.append("")
    for edit_id in [i for i in EDIT_IDS if i in raw]:
        title = dict((r[0], r[1]) for r in ROWS)[edit_id]
        steps = dict((r[0], r[3]) for r in ROWS)[edit_id]["steps"]
        o, p = raw[edit_id]["ours"], raw[edit_id]["torch"]
        md.append(f"## The {title[len('whole '):]}, stage by stage (median seconds)\n")
        md.append("| ours: tool stage | s | peak RSS |")
        md.append("|---|--:|--:|")
        for label in o["stages"][0]:
            tool = label.split(" ")[0] if "|" not in label else "encode-text"
            md.append(f"| `{label}` | {fmt_s(median([s[label] for s in o['stages']]))} | "
                      f"{fmt_mb(o['maxrss_by_tool'].get(tool))} |")
        md.append(f"| **total** | **{fmt_s(median(o['times']))}** | largest process: {o['maxrss_tool']} |")
        md.append("")
        md.append("| PyTorch: pipeline call | s |")
        md.append("|---|--:|")
        for label in p["stages"][0]:
            md.append(f"| `{label}` | {fmt_s(median([s[label] for s in p['stages']]))} |")
        md.append(f"| **total** (after from_pretrained, {fmt_s(p['load_s'])} s, and a warm-up of "
                  f"{fmt_s(p['warmup_s'])} s) | **{fmt_s(median(p['times']))}** |")
        md.append("")
        lt = median(p["times"]) + p["load_s"]
        md.append(f"Counting diffusers' `from_pretrained` too (every one of our tools loads its weights in its own "
                  f"process): PyTorch {fmt_s(lt)} s, ours/PyTorch **{median(o['times']) / lt:.2f}**.\n")
        if raw[edit_id].get("agreement"):
            md.append(f"Same result? {raw[edit_id]['agreement']}\n")
        md.append(f"Our commands (examples.sh's edit with MODEL=the cache folder, STEPS={steps}, SEED=0, GUIDANCE=7.5, "
                  "NEGATIVE=source; `DIFFEDIT_MODEL` exported):\n")
        md.append("```")
        md.extend(o["cmd"])
        md.append("```\n")
        md.append("PyTorch: `StableDiffusionDiffEditPipeline.from_pretrained(cache, dtype=float32)`, scheduler "
                  "`DDIMScheduler.from_config`, inverse scheduler `DDIMInverseScheduler.from_config`, then "
                  f"`generate_mask(image, source, target, num_inference_steps={steps}, generator=seed 0)`, "
                  f"`invert(source, image, num_inference_steps={steps}, generator=seed 0)`, "
                  f"`__call__(target, mask, latents, negative_prompt=source, num_inference_steps={steps}, generator=seed 0)` "
                  "→ PIL image; defaults otherwise (guidance 7.5, 10 maps, mask strength 0.5, inpaint strength 0.8). "
                  "Its warm-up is one VAE encode, UNet step, VAE decode and prompt encoding at the edit's shapes, "
                  "not a whole edit.\n")
    md.append("## Machine and software\n")
    md.append(f"- CPU: {m['cpu']} (family {m['cpu_family_model'].get('cpu family')}, model "
              f"{m['cpu_family_model'].get('model')}), {m['host_cores']} cores; "
              f"{' '.join(m['cpu_flags'])}")
    md.append(f"- Environment variables: " + (", ".join(f"`{k}={v}`" for k, v in m["env"].items())
                                               if m["env"] else "none of " + ", ".join(f"`{k}`" for k in ENV_KEYS) + " set")
              + (" (the benchmark sets none of them)" if not args.unset_openblas_env else
                 " (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed for our tools by --unset-openblas-env)"))
    src = f" (Sources/ and Package.swift as at {m['sources']})" if m.get("sources") else ""
    md.append(f"- Ours: diffedit {m['git']}{src}, {m['swift']}, `swift build -c release`; OpenBLAS "
              f"{m.get('openblas_package', '?')} (`{m.get('openblas_lib')}`): core **{m.get('openblas_core')}** "
              f"(`openblas_get_corename()`), `{m.get('openblas_config')}`, {m.get('openblas_threads')} threads; "
              f"OPENBLAS_VERBOSE=2 in a tool: `{m.get('openblas_verbose')}`")
    md.append(f"- PyTorch {t['torch']} (CPU capability {t['cpu_capability']}, MKL {t['mkl']}, oneDNN {t['mkldnn']}), "
              f"diffusers {t['diffusers']}, transformers {t['transformers']}, Python {platform.python_version()}; "
              f"float32, torch.set_num_threads({args.threads}), inference_mode; each row in its own Python process, "
              f"one warm-up call not counted")
    for c in t["config"]:
        md.append(f"  - `{c}`")
    md.append("- Peak RSS: each process's maximum resident set size as GNU `/usr/bin/time -f %M` reports it "
              "(the tool process alone; for PyTorch the whole Python process, imports and model loading included); "
              "the largest over the row's runs.")
    md.append(f"- Whole benchmark run: {elapsed / 60:.1f} min (`{' '.join(meta['argv'])}`)\n")
    md.append("## Our commands\n")
    for ln in lines:
        if ln["id"] not in EDIT_IDS:
            cmd = raw[ln["id"]]["ours"]["cmd"]
            md.append(f"- {ln['row']}: `{' '.join(shquote(show_path(x, meta)) for x in cmd)}`")
    md.append("")
    text = "\n".join(md) + "\n"
    with open(path_base + ".md", "w") as f:
        f.write(text)
    with open(path_base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": lines, "raw": raw, "elapsed_s": elapsed}, f, indent=1, default=str)
    return text


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=VENV_HELP)
    ap.add_argument("--only", action="append", default=[],
                    help="rows to run, comma-separated or repeated: " + ", ".join(ROW_IDS) + " (default: all)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row, after one warm-up (default 3)")
    ap.add_argument("--edit-runs", type=int, default=2, help="timed whole edits per side (default 2)")
    ap.add_argument("--cache", default=os.environ.get("DIFFEDIT_BENCH_CACHE",
                                                     os.path.expanduser("~/.cache/diffedit-bench/sd15-random")),
                    help="the random SD 1.5-shaped model folder, made on first use "
                         "(default ~/.cache/diffedit-bench/sd15-random or $DIFFEDIT_BENCH_CACHE)")
    ap.add_argument("--bin", default=os.path.join(REPO, ".build", "release"),
                    help="our release binaries (default .build/release; build with swift build -c release)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--out", help="results path without extension (default bench/results/DATE-CPU, "
                                  "with -only-ROWS for partial runs)")
    ap.add_argument("--work", help="folder for inputs and outputs (default: a temporary one, removed)")
    ap.add_argument("--unset-openblas-env", action="store_true",
                    help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for our tools (default: leave the environment alone)")
    ap.add_argument("--rerender", metavar="JSON",
                    help="only write the Markdown again from a results .json (next to it)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(json.loads(args.worker), args.worker_out)
        return
    if args.rerender:
        with open(args.rerender) as f:
            d = json.load(f)
        args.threads = d["meta"].get("threads", args.threads)
        args.unset_openblas_env = d["meta"].get("unset_openblas_env", False)
        base = args.rerender[:-len(".json")] if args.rerender.endswith(".json") else args.rerender
        lines = [summarize(ln["id"], d["raw"][ln["id"]]["ours"], d["raw"][ln["id"]]["torch"]) for ln in d["rows"]]
        for ln in lines:
            if ln["id"] in EDIT_IDS:
                d["raw"][ln["id"]]["ours"]["cmd"] = d["raw"][ln["id"]]["ours"]["edit_cmds"]
        print(write_report(base, d["meta"], lines, d["raw"], d["elapsed_s"], args))
        return

    # The parent stays small (no torch import): torch runs in worker processes only.
    import importlib.util
    absent = [m for m in ("numpy", "torch", "diffusers", "transformers", "safetensors", "PIL")
              if importlib.util.find_spec(m) is None]
    if absent:
        print(f"compare.py: {', '.join(absent)} not installed for {sys.executable}.\n\n{VENV_HELP}", file=sys.stderr)
        sys.exit(2)
    if not os.access(TIME, os.X_OK):
        sys.exit(f"compare.py: {TIME} (GNU time, Debian package 'time') is needed for peak RSS: apt-get install time")

    only = [x for a in args.only for x in a.split(",") if x]
    for x in only:
        if x not in ROW_IDS:
            ap.error(f"--only {x}: not a row (rows: {', '.join(ROW_IDS)})")
    rows = [r for r in ROWS if not only or r[0] in only]
    if args.runs < 1 or args.edit_runs < 1:
        ap.error("--runs and --edit-runs must be at least 1")
    needed = ["unet-bench", "vae-encode", "vae-decode", "tokenize", "encode-text", "noise-diff-mask", "invert",
              "denoise", "tensor"]
    missing = [n for n in needed if not os.access(os.path.join(args.bin, n), os.X_OK)]
    if missing:
        sys.exit(f"compare.py: {', '.join(missing)} not in {args.bin} — build first: "
                 f"flock /tmp/diffedit-cpu.lock swift build -c release")

    start = time.perf_counter()
    cache = os.path.abspath(os.path.expanduser(args.cache))
    made = run_worker({"row": "make-model", "cache": cache, "runs": 0, "threads": args.threads})["made"]
    env = dict(os.environ)
    env.pop("DIFFEDIT_MODEL", None)
    if args.unset_openblas_env:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    penv = dict(os.environ)
    for k in ("OPENBLAS_VERBOSE",):
        penv.pop(k, None)

    work = args.work or tempfile.mkdtemp(prefix="diffedit-speed-")
    os.makedirs(work, exist_ok=True)
    machine = machine_info(args.bin, env)
    log(f"{machine['cpu']}, {machine['host_cores']} cores; OpenBLAS core {machine.get('openblas_core')}; "
        f"environment: {machine['env'] or 'no OpenBLAS/OMP/MKL variables'}")
    tinfo = run_worker({"row": "info", "cache": cache, "runs": 0, "threads": args.threads}, env=penv)
    log(f"torch {tinfo['torch']} ({tinfo['cpu_capability']}), diffusers {tinfo['diffusers']}, "
        f"transformers {tinfo['transformers']}")

    ours = Ours(args.bin, cache, work, env)
    tool = ours.tool
    # Inputs
    images = {}
    for s in (8, 256, 512):
        images[s] = os.path.join(work, f"image{s}.ppm")
        write_ppm(images[s], s)

    def posterior(s):
        p = os.path.join(work, f"posterior{s}.tensor")
        if not os.path.exists(p):
            _, out = run_procs([[tool("vae-encode"), "--model", cache, images[s]]], stdout_path=p, env=env)
            check(out, "vae-encode (decoder input)")
        return p

    raw, lines = {}, []
    for row_id, title, kind, params in rows:
        log(f"== {row_id}: {title}")
        spec = {"row": row_id, "cache": cache, "runs": args.runs, "threads": args.threads}
        t0 = time.perf_counter()
        if kind == "unet":
            o = ours.unet(params["size"], args.runs)
        elif kind == "vae-enc":
            o = ours.vae_enc(images[params["size"]], images[8], args.runs)
            spec["image"] = images[params["size"]]
        elif kind == "vae-dec":
            o = ours.vae_dec(posterior(params["size"]), posterior(8), args.runs)
        elif kind == "text":
            tok, tiny = os.path.join(work, "tokens.tensor"), os.path.join(work, "tokens-tiny.tensor")
            check(run_procs([[tool("tokenize"), "--model", cache, SOURCE, TARGET]], stdout_path=tok, env=env)[1], "tokenize")
            check(run_procs([[tool("tokenize"), "--model", cache, "--no-pad", "a"]], stdout_path=tiny, env=env)[1], "tokenize")
            o = ours.text(tok, tiny, args.runs)
        else:
            spec["runs"] = args.edit_runs
            o = ours.edit(images[params["size"]], params["steps"], args.edit_runs, name=row_id)
            o["edit_cmds"] = o["cmd"]
            spec.update(image=images[params["size"]], mask_out=os.path.join(work, f"torch-mask-{row_id}.npy"),
                        image_out=os.path.join(work, f"torch-edited-{row_id}.png"))
        log(f"   ours: {[round(x, 3) for x in (o.get('times') or o.get('process_times'))]} s "
            f"({time.perf_counter() - t0:.0f} s)")
        t0 = time.perf_counter()
        p = run_worker(spec, env=penv)
        log(f"   PyTorch: {[round(x, 3) for x in p['times']]} s ({time.perf_counter() - t0:.0f} s)")
        raw[row_id] = {"ours": o, "torch": p}
        if kind == "edit":
            raw[row_id]["agreement"] = edit_agreement(o["dir"], spec, tool)
        lines.append(summarize(row_id, o, p))
        log(f"   ours/PyTorch {lines[-1]['ratio']:.2f}")

    elapsed = time.perf_counter() - start
    date = datetime.date.today().isoformat()
    base = args.out or os.path.join(HERE, "results", f"{date}-{cpu_short(machine['cpu'])}"
                                    + (("-only-" + "-".join(only)) if only else ""))
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    home = os.path.expanduser("~")
    meta = {"machine": machine, "torch": tinfo, "cache": cache,
            "cache_shown": cache.replace(home, "~", 1) if cache.startswith(home) else cache,
            "model_made_this_run": made, "runs": args.runs, "edit_runs": args.edit_runs,
            "threads": args.threads, "unset_openblas_env": args.unset_openblas_env,
            "argv": ["bench/compare.py"] + sys.argv[1:]}
    text = write_report(base, meta, lines, raw, elapsed, args)
    print(text)
    log(f"wrote {base}.md and {base}.json ({elapsed / 60:.1f} min)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def edit_agreement(d, spec, tool):
    """Compare our mask and edited image with diffusers' (same settings and seed)."""
    import numpy as np
    from PIL import Image
    try:
        npy = os.path.join(d, "mask.npy")
        with open(npy, "wb") as f:
            subprocess.run([tool("tensor"), "to-npy", os.path.join(d, "mask.tensor")], stdout=f, check=True)
        ours_mask = np.load(npy).reshape(-1)
        torch_mask = np.load(spec["mask_out"]).reshape(-1)
        a = np.asarray(Image.open(os.path.join(d, "edited.ppm")).convert("RGB"), dtype=np.int32)
        b = np.asarray(Image.open(spec["image_out"]).convert("RGB"), dtype=np.int32)
        diff = np.abs(a - b)
        return (f"mask: {int((ours_mask != torch_mask).sum())} of {ours_mask.size} latent pixels differ "
                f"({ours_mask.mean() * 100:.1f} % ones in ours); edited 8-bit image: max |Δ| {diff.max()}, "
                f"mean |Δ| {diff.mean():.3f}")
    except Exception as e:  # noqa: BLE001
        return f"could not compare ({e})"


if __name__ == "__main__":
    main()

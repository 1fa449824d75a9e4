"""The PyTorch side of bench/compare.py: diffusers and transformers on the same model and shapes.

Runs only in worker processes (peer_worker.py), one per measurement, so that the parent never
imports torch. rows.py names, for each kind of row, the function here that measures it; each
takes the worker's spec (paths, runs, the inputs the row chose) and the row's parameters, and
returns the result fields (times, load_s, warmup_s, gflop, ...).
"""
import os
import re
import time

import sd15_random

# What the parent checks before it starts (it prints the venv's recipe when one is missing).
REQUIRES = ("numpy", "torch", "diffusers", "transformers", "safetensors", "PIL")
OPTIONAL = False
NAME = "PyTorch"


def measure(spec, run):
    """A row's measurement: one worker process (run(spec) starts it and returns its result)."""
    return run(spec)


def brief(res):
    """One log line."""
    return f"{[round(x, 3) for x in res['times']]} s"


def worker(spec, task, params):
    """One measurement in this process: every task starts from the same threads and seed."""
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    res = {"row": spec["row"], "threads": torch.get_num_threads()}
    if spec["row"] == "info":
        res.update(info())
    elif spec["row"] == "make-model":
        res["made"] = sd15_random.make_model(spec["cache"])
    else:
        with torch.inference_mode():
            res.update(task(spec, params))
    return res


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


def info():
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


def _timed(fn, count):
    ts = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def _warm_count_time(model, fn, runs, res):
    """One warm-up call counting FLOPs, then `runs` timed calls (the result fields in their order)."""
    fc = FlopCounter(model)
    t0 = time.perf_counter()
    fn()
    res["warmup_s"] = time.perf_counter() - t0
    fc.remove()
    res["gflop"] = fc.gflop
    res["times"] = _timed(fn, runs)
    return res


def _load(cls, path):
    import torch
    t0 = time.perf_counter()
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    return model, {"load_s": time.perf_counter() - t0}


# The rows' inputs and computations, shared with the other engines' sides (openvino_side converts
# these modules and feeds them these inputs, so that every engine computes the same thing).
UNET_TIMESTEP = 981


def unet_inputs(size):
    """The UNet row's latents (batch 2, 4 channels) and text embeddings (2 × 77 × 768), seed 0."""
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, size, size, generator=g), torch.randn(2, 77, 768, generator=g)


def decode_input(size):
    """The VAE decoder row's latent (1 × 4 × size/8 × size/8), seed 0."""
    import torch
    return torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))


def load_unet(spec):
    from diffusers import UNet2DConditionModel
    return _load(UNet2DConditionModel, os.path.join(spec["cache"], "unet"))


def load_decoder(spec):
    """The VAE decoder row's computation as one module: latent → uint8 image (N, H, W, 3)."""
    import torch
    from diffusers import AutoencoderKL
    vae, res = _load(AutoencoderKL, os.path.join(spec["cache"], "vae"))

    class DecodeToImage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae, self.sf = vae, vae.config.scaling_factor

        def forward(self, z):
            im = self.vae.decode(z / self.sf).sample
            return ((im / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return DecodeToImage().eval(), res


def unet_step(spec, params):
    unet, res = load_unet(spec)
    x, enc = unet_inputs(params["size"])
    return _warm_count_time(unet, lambda: unet(x, UNET_TIMESTEP, encoder_hidden_states=enc).sample, spec["runs"], res)


def vae_encode(spec, params):
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image
    vae, res = _load(AutoencoderKL, os.path.join(spec["cache"], "vae"))
    sf = vae.config.scaling_factor
    img = np.asarray(Image.open(spec["image"]).convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1

    def f():
        d = vae.encode(x).latent_dist
        return d.mean * sf, d.std * sf
    return _warm_count_time(vae, f, spec["runs"], res)


def vae_decode(spec, params):
    dec, res = load_decoder(spec)
    z = decode_input(params["size"])
    return _warm_count_time(dec, lambda: dec(z).numpy(), spec["runs"], res)


def text_encoder(spec, params):
    from transformers import CLIPTextModel, CLIPTokenizer
    te, res = _load(CLIPTextModel, os.path.join(spec["cache"], "text_encoder"))
    tok = CLIPTokenizer.from_pretrained(os.path.join(spec["cache"], "tokenizer"))
    ids = tok(spec["prompts"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return _warm_count_time(te, lambda: te(ids).last_hidden_state, spec["runs"], res)


def whole_edit(spec, params):
    """StableDiffusionDiffEditPipeline: generate_mask, invert, __call__ (DDIM), as our edit."""
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
    steps, runs = params["steps"], spec["runs"]
    source, target = spec["source"], spec["target"]
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
    pipe.encode_prompt(source, "cpu", 1, True)
    res["warmup_s"] = time.perf_counter() - t0

    times, stages = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        mask = pipe.generate_mask(image=img, source_prompt=source, target_prompt=target,
                                  num_inference_steps=steps, generator=gen())
        t1 = time.perf_counter()
        inv = pipe.invert(prompt=source, image=img, num_inference_steps=steps, generator=gen()).latents
        t2 = time.perf_counter()
        out = pipe(prompt=target, mask_image=mask, image_latents=inv, negative_prompt=source,
                   num_inference_steps=steps, generator=gen()).images[0]
        t3 = time.perf_counter()
        times.append(t3 - t0)
        stages.append({"generate_mask": t1 - t0, "invert": t2 - t1, "__call__ (incl. decode)": t3 - t2})
    res["times"] = times
    res["stages"] = stages
    np.save(spec["mask_out"], np.asarray(mask, dtype=np.float32))
    out.save(spec["image_out"])
    return res


def ledits_edit(spec, params):
    """LEditsPPPipelineStableDiffusion with DDIM: invert (edit-friendly, source prompt ""), then
    __call__ adding the target and removing the source caption (intersect masks), as our edit."""
    import numpy as np
    import torch
    from PIL import Image
    from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion
    res = {}
    t0 = time.perf_counter()
    pipe = LEditsPPPipelineStableDiffusion.from_pretrained(spec["cache"], dtype=torch.float32,
                                                           safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    # diffusers 0.42.1's invert calls add_noise with a float timestep tensor, which DDIM cannot
    # index with (Tests/Reference/ledits-notes.md): the smallest fix, a cast to long.
    add_noise = pipe.scheduler.add_noise
    pipe.scheduler.add_noise = lambda x, n, t: add_noise(x, n, t.long() if t.is_floating_point() else t)
    pipe.set_progress_bar_config(disable=True)
    res["load_s"] = time.perf_counter() - t0
    steps, runs = params["steps"], spec["runs"]
    img = Image.open(spec["image"]).convert("RGB")
    gen = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731

    t0 = time.perf_counter()
    s = params["size"] // 8
    x = pipe.image_processor.preprocess(img)
    pipe.vae.encode(x)
    pipe.unet(torch.randn(3, 4, s, s), 981, encoder_hidden_states=torch.randn(3, 77, 768))
    pipe.vae.decode(torch.randn(1, 4, s, s))
    res["warmup_s"] = time.perf_counter() - t0

    times, stages = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        pipe.invert(image=img, num_inversion_steps=steps, generator=gen())
        t1 = time.perf_counter()
        out = pipe(editing_prompt=[spec["target"], spec["source"]], reverse_editing_direction=[False, True],
                   generator=gen()).images[0]
        t2 = time.perf_counter()
        times.append(t2 - t0)
        stages.append({"invert": t1 - t0, "__call__ (incl. decode)": t2 - t1})
    res["times"] = times
    res["stages"] = stages
    out.save(spec["image_out"])
    return res

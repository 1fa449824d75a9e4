"""The benchmark's model: random weights of Stable Diffusion 1.5's shapes, made once outside the repo.

bench/README.md ("The model") says what it is. make_model runs in a PyTorch worker process
(peer_worker.py), the only place that imports torch.
"""
import datetime
import json
import os
import shutil
import time

from procs import log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

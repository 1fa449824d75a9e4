"""Single-file checkpoints in the original CompVis/LDM key layout, for diffedit's single-file loader.

Most community Stable Diffusion models ship as one .safetensors file whose keys are those of the
original LDM code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.transformer.*`` (SD 1.x, transformers' CLIP naming) or ``cond_stage_model.model.*``
(SD 2.x, OpenCLIP naming with fused ``attn.in_proj_*``). diffusers reads them with ``from_single_file``
(``diffusers.loaders.single_file_utils``, LDM -> diffusers). This module writes the other direction
(diffusers -> LDM, our own inverse of that mapping) and checks it with diffusers itself.

Outputs, in OUT/single-file/ (small: the weights are not committed, their recipe is):

* ``<key>.recipe.json`` for each fixture pipeline (sd1, sd2): every tensor of ``<key>.safetensors`` in
  file order — its LDM key, the fixture component and diffusers weight name(s) it is made of (several
  are stacked along dim 0: OpenCLIP's fused q/k/v), its shape and dtype, and the sha256 of its bytes.
  The Swift tests assemble the file from the committed fixture folder by this recipe (byte copies; the
  hashes prove it is the file checked here) instead of committing 10 MB of duplicated weights.
* ``<key>.diffedit.json``: the sidecar diffedit reads beside ``<key>.safetensors`` for what a single
  file cannot say: the config values of the fixture that differ from what diffedit assumes for an SD
  1.x / 2.x file (``ldm_assumed``), scheduler keys included.
* ``sd15-shapes.json``, ``sd21-shapes.json``: the LDM keys and shapes of the real Stable Diffusion 1.5
  and 2.1 (768-v) checkpoints (made on torch's meta device, so no weights; ``extra_keys`` are the
  non-network keys real files carry), the diffusers configs diffusers derives for them from their
  original LDM configs, and each component's diffusers weight names and shapes — for testing
  architecture inference and key mapping at full size.

Checks (assertions): diffusers' ``StableDiffusionPipeline.from_single_file(file, config=<folder>)`` loads
every weight of the written file bit-identical to ``from_pretrained(<folder>)``; diffusers' own converters
(convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint,
convert_open_clip_checkpoint) map the full-size LDM key sets back to exactly the diffusers models' names and
shapes.
"""
import hashlib
import json
import os
import shutil
import tempfile

import safetensors.torch
import torch
from diffusers import AutoencoderKL, StableDiffusionDiffEditPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel

UNET, VAE, CLIP, OPENCLIP = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.",
                             "cond_stage_model.model.")

# ----------------------------------------------------------------------------------------------
# diffusers -> LDM names (the inverse of single_file_utils' LDM -> diffusers conversion)
# ----------------------------------------------------------------------------------------------
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                  "self_attn.out_proj": "attn.out_proj"}


def unet_ldm_key(name, config):
    """LDM key of a UNet2DConditionModel weight: input_blocks = conv_in, then per level its resnets
    (+ attention at .1) and a downsampler (.0.op); output_blocks = per level layers_per_block + 1
    resnets (+ attention at .1) and the upsampler after the last (.1.conv, or .2.conv behind an
    attention); middle_block = resnet, attention, resnet."""
    lpb = config["layers_per_block"]
    p = name.split(".")
    if p[0] == "time_embedding":
        return UNET + "time_embed.%d.%s" % ({"linear_1": 0, "linear_2": 2}[p[1]], p[2])
    simple = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if p[0] in simple:
        return UNET + simple[p[0]] + "." + p[1]

    def resnet(rest):
        return UNET_RESNET[rest[0]] + "." + ".".join(rest[1:])

    if p[0] in ("down_blocks", "up_blocks"):
        b, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if p[0] == "down_blocks":
            first = 1 + b * (lpb + 1)
            if kind == "resnets":
                return UNET + "input_blocks.%d.0.%s" % (first + j, resnet(rest))
            if kind == "attentions":
                return UNET + "input_blocks.%d.1.%s" % (first + j, ".".join(rest))
            assert kind == "downsamplers" and rest[0] == "conv", name
            return UNET + "input_blocks.%d.0.op.%s" % (first + lpb, rest[1])
        first = b * (lpb + 1)
        if kind == "resnets":
            return UNET + "output_blocks.%d.0.%s" % (first + j, resnet(rest))
        if kind == "attentions":
            return UNET + "output_blocks.%d.1.%s" % (first + j, ".".join(rest))
        assert kind == "upsamplers" and rest[0] == "conv", name
        slot = 2 if config["up_block_types"][b] == "CrossAttnUpBlock2D" else 1
        return UNET + "output_blocks.%d.%d.conv.%s" % (first + lpb, slot, rest[1])
    assert p[0] == "mid_block", name
    kind, j, rest = p[1], int(p[2]), p[3:]
    if kind == "resnets":
        return UNET + "middle_block.%d.%s" % (2 * j, resnet(rest))
    return UNET + "middle_block.1." + ".".join(rest)


def vae_ldm_key(name, config):
    """LDM key of an AutoencoderKL weight; the decoder's up blocks are numbered from the deepest
    (diffusers' up_blocks.i is LDM's up.(n-1-i))."""
    n = len(config["block_out_channels"])
    p = name.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return VAE + name
    side, q = p[0], p[1:]
    if q[0] in ("conv_in", "conv_out"):
        return VAE + name
    if q[0] == "conv_norm_out":
        return VAE + "%s.norm_out.%s" % (side, q[1])

    def resnet(rest):
        return ".".join(["nin_shortcut" if rest[0] == "conv_shortcut" else rest[0]] + rest[1:])

    if q[0] in ("down_blocks", "up_blocks"):
        i, kind = int(q[1]), q[2]
        word, level = ("down", i) if side == "encoder" else ("up", n - 1 - i)
        if kind == "resnets":
            return VAE + "%s.%s.%d.block.%s.%s" % (side, word, level, q[3], resnet(q[4:]))
        assert kind in ("downsamplers", "upsamplers") and q[4] == "conv", name
        return VAE + "%s.%s.%d.%ssample.conv.%s" % (side, word, level, word, q[5])
    assert q[0] == "mid_block", name
    if q[1] == "resnets":
        return VAE + "%s.mid.block_%d.%s" % (side, int(q[2]) + 1, resnet(q[3:]))
    rest = ".".join(q[3:])
    for d, l in VAE_ATTENTION.items():
        if rest.startswith(d + "."):
            return VAE + "%s.mid.attn_1.%s%s" % (side, l, rest[len(d):])
    raise AssertionError(name)


def clip_ldm_key(name):
    """SD 1.x: transformers' CLIPTextModel names under cond_stage_model.transformer., with the
    text_model. level that transformers 4 (and every SD 1.x file) has."""
    return CLIP + "text_model." + name.removeprefix("text_model.")


def openclip_ldm_key(name):
    """SD 2.x: OpenCLIP names under cond_stage_model.model.; returns (key, part) where part is the
    row block (0 q, 1 k, 2 v) of the fused attn.in_proj_weight / in_proj_bias, else None."""
    name = name.removeprefix("text_model.")
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding"}
    if name in fixed:
        return OPENCLIP + fixed[name], None
    if name.startswith("final_layer_norm."):
        return OPENCLIP + "ln_final." + name.split(".")[-1], None
    p = name.split(".")
    assert p[:2] == ["encoder", "layers"], name
    prefix = OPENCLIP + "transformer.resblocks.%s." % p[2]
    rest = ".".join(p[3:])
    for qkv, part in (("self_attn.q_proj.", 0), ("self_attn.k_proj.", 1), ("self_attn.v_proj.", 2)):
        if rest.startswith(qkv):
            return prefix + "attn.in_proj_" + rest[len(qkv):], part
    for d, l in OPENCLIP_LAYER.items():
        if rest.startswith(d + "."):
            return prefix + l + rest[len(d):], None
    raise AssertionError(name)


def recipe_entries(components, configs, open_clip, extra_last_layer):
    """The LDM tensors of a pipeline: [(key, component, [names], shape)], built from each
    component's {name: shape}. `extra_last_layer`: also write OpenCLIP's last resblock, which SD 2.x
    checkpoints carry but do not use (their text encoder stops one block early), as a copy of the
    last used one."""
    entries = {}
    for name, shape in components["unet"].items():
        entries[unet_ldm_key(name, configs["unet"])] = ("unet", [name], list(shape))
    for name, shape in components["vae"].items():
        key = vae_ldm_key(name, configs["vae"])
        if ".mid.attn_1." in key and key.endswith(".weight") and ".norm." not in key:
            shape = list(shape) + [1, 1]  # LDM keeps the VAE attention projections as 1x1 convs
        entries[key] = ("vae", [name], list(shape))
    fused = {}
    for name, shape in components["text_encoder"].items():
        if not open_clip:
            entries[clip_ldm_key(name)] = ("text_encoder", [name], list(shape))
            continue
        key, part = openclip_ldm_key(name)
        if part is None:
            entries[key] = ("text_encoder", [name], list(shape))
        else:
            fused.setdefault(key, [None] * 3)[part] = (name, list(shape))
    for key, parts in fused.items():
        names = [n for n, _ in parts]
        entries[key] = ("text_encoder", names, [3 * parts[0][1][0]] + parts[0][1][1:])
    if extra_last_layer:
        layers = configs["text_encoder"]["num_hidden_layers"]
        last = OPENCLIP + "transformer.resblocks.%d." % (layers - 1)
        for key in [k for k in entries if k.startswith(last)]:
            entries[key.replace(last, OPENCLIP + "transformer.resblocks.%d." % layers)] = entries[key]
    return [(k,) + entries[k] for k in sorted(entries)]


# ----------------------------------------------------------------------------------------------
# What diffedit assumes for a single file when its sidecar does not say otherwise
# ----------------------------------------------------------------------------------------------
# SD 1.5's scheduler_config.json (PNDMScheduler; every SD 1.x/2.x shares the betas) plus the two keys
# DDIM reads that it leaves to their defaults; the fixture sd1 scheduler was built from these values.
STANDARD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                      "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False,
                      "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading"}


def ldm_assumed(open_clip, configs):
    """The values an LDM file cannot hold, as diffedit assumes them (Sources/DiffEditCore/Weights/
    SingleFileArchitecture.swift): SD 1.x's UNet has 8 heads per block (v1-inference.yaml num_heads: 8),
    SD 2.x's heads of 64 channels (v2-inference*.yaml num_head_channels: 64); CLIP ViT-L/14 and
    OpenCLIP ViT-H/14 text towers have heads of 64; SD 2.x uses the text tower's penultimate block."""
    unet, text = configs["unet"], configs["text_encoder"]
    heads = [c // 64 for c in unet["block_out_channels"]] if open_clip else 8
    return {
        "unet": {"attention_head_dim": heads, "norm_num_groups": 32, "norm_eps": 1e-5,
                 "flip_sin_to_cos": True, "freq_shift": 0},
        "text_encoder": {"num_attention_heads": text["hidden_size"] // 64, "layer_norm_eps": 1e-5,
                         "hidden_act": "gelu" if open_clip else "quick_gelu"},
        "vae": {"norm_num_groups": 32, "scaling_factor": 0.18215},
        "scheduler": STANDARD_SCHEDULER,
    }


def sidecar_for(configs, open_clip):
    """The fixture's values where they differ from the assumptions (lists compared as given, an int
    head count against a list of equal ints as equal)."""
    out = {}
    for component, assumed in ldm_assumed(open_clip, configs).items():
        diff = {}
        for key, value in assumed.items():
            have = configs[component].get(key, value)
            if isinstance(have, tuple):
                have = list(have)
            if isinstance(value, list) and isinstance(have, int):
                have = [have] * len(value)
            if isinstance(have, list) and isinstance(value, int):
                value = [value] * len(have)
            if have != value:
                diff[key] = configs[component][key]
        if diff:
            out[component] = diff
    return out


def jdump(obj, depth=0, levels=3):
    """JSON with keys sorted: objects (and lists of objects) of the first `levels` levels one item per
    line, the rest compact (one tensor or key per line)."""
    pad = " " * depth
    flat = isinstance(obj, list) and not any(isinstance(v, dict) for v in obj)
    if depth >= levels or flat or not isinstance(obj, (dict, list)) or not obj:
        return json.dumps(obj, sort_keys=True, separators=(", ", ": "))
    if isinstance(obj, dict):
        items = ["%s %s: %s" % (pad, json.dumps(k), jdump(obj[k], depth + 1, levels)) for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" + ("\n" if depth == 0 else "")
    items = ["%s %s" % (pad, jdump(v, depth + 1, levels)) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def tensor_bytes(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


# ----------------------------------------------------------------------------------------------
# The fixture pipelines as single files
# ----------------------------------------------------------------------------------------------
def folder_weights(folder, spec):
    """{component: {name: tensor}} as stored in the fixture folder (dtypes kept)."""
    unet_file = "diffusion_pytorch_model.%ssafetensors" % (spec["unet_variant"] + "." if spec["unet_variant"] else "")
    files = {"unet": ("unet", unet_file), "vae": ("vae", "diffusion_pytorch_model.safetensors"),
             "text_encoder": ("text_encoder", "model.safetensors")}
    return {c: safetensors.torch.load_file(os.path.join(folder, d, f)) for c, (d, f) in files.items()}


def folder_configs(folder):
    configs = {}
    for c, f in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
                 ("scheduler", "scheduler_config.json")):
        with open(os.path.join(folder, c, f)) as fh:
            configs[c] = json.load(fh)
    return configs


def write_pipeline(key, spec, out, dest):
    folder = os.path.join(out, key)
    open_clip = key == "sd2"  # sd1 is SD 1.x-like (CLIP naming), sd2 SD 2.x-like (OpenCLIP naming)
    weights = folder_weights(folder, spec)
    configs = folder_configs(folder)
    shapes = {c: {n: list(t.shape) for n, t in w.items()} for c, w in weights.items()}
    entries = recipe_entries(shapes, configs, open_clip, extra_last_layer=open_clip)
    state, records = {}, []
    for ldm_key, component, names, shape in entries:
        t = torch.cat([weights[component][n].reshape(-1) for n in names]).reshape(shape)
        state[ldm_key] = t
        records.append({"key": ldm_key, "component": component, "names": names, "shape": shape,
                        "dtype": {torch.float32: "F32", torch.float16: "F16"}[t.dtype],
                        "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest()})
    sidecar = sidecar_for(configs, open_clip)

    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, key + ".safetensors")
        safetensors.torch.save_file(state, path, metadata={"format": "pt"})
        check_from_single_file(path, folder, spec)
    finally:
        shutil.rmtree(tmp)
    with open(os.path.join(dest, key + ".recipe.json"), "w", newline="\n") as f:
        f.write(jdump(levels=2, obj={
            "file": key + ".safetensors",
            "from": key,
            "checked": "StableDiffusionPipeline.from_single_file(file, config=%r) loads every weight "
                       "bit-identical to StableDiffusionDiffEditPipeline.from_pretrained(%r)" % (key, key),
            "tensors": records,
        }))
    with open(os.path.join(dest, key + ".diffedit.json"), "w", newline="\n") as f:
        f.write(jdump(sidecar, levels=2))
    return len(records), sum(t.numel() * t.element_size() for t in state.values()), sidecar


def check_from_single_file(path, folder, spec):
    kw = {"variant": spec["unet_variant"]} if spec["unet_variant"] else {}
    ref = StableDiffusionDiffEditPipeline.from_pretrained(folder, dtype=torch.float32, **kw)
    single = StableDiffusionPipeline.from_single_file(
        path, config=folder, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32,
        local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(ref, name).state_dict()
        assert a.keys() == b.keys(), (name, sorted(set(a) ^ set(b))[:5])
        for k in a:
            assert a[k].dtype == b[k].dtype == torch.float32 and torch.equal(a[k], b[k]), (name, k)


# ----------------------------------------------------------------------------------------------
# Full-size SD 1.5 and SD 2.1 key sets (no weights)
# ----------------------------------------------------------------------------------------------
# The parts of the original LDM configs that shape the networks (configs/stable-diffusion/
# v1-inference.yaml in CompVis/stable-diffusion, v2-inference-v.yaml in Stability-AI/stablediffusion).
LDM_FIRST_STAGE = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256,
                                                "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4],
                                                "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}
LDM_UNET_COMMON = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                   "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                   "use_spatial_transformer": True, "transformer_depth": 1, "legacy": False}
LDM_CONFIGS = {
    "sd15": {"model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
        "unet_config": {"params": dict(LDM_UNET_COMMON, num_heads=8, context_dim=768)},
        "first_stage_config": {"params": LDM_FIRST_STAGE}}}},
    "sd21": {"model": {"params": {
        "parameterization": "v", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000,
        "scale_factor": 0.18215,
        "unet_config": {"params": dict(LDM_UNET_COMMON, num_head_channels=64, use_linear_in_transformer=True,
                                       context_dim=1024)},
        "first_stage_config": {"params": LDM_FIRST_STAGE}}}},
}
# The text encoders' transformers configs (text_encoder/config.json of stable-diffusion-v1-5 = the text
# tower of openai/clip-vit-large-patch14; of stabilityai/stable-diffusion-2-1 = OpenCLIP ViT-H/14 less its
# last block).
TEXT_CONFIGS = {
    "sd15": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "sd21": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5),
}
# Keys real files carry besides the three networks' weights (diffedit ignores them): the LDM DDPM
# buffers, CLIP's position_ids, OpenCLIP's projection and logit scale.
EXTRA_KEYS = {
    "sd15": {"betas": [1000], "alphas_cumprod": [1000], "alphas_cumprod_prev": [1000],
             "sqrt_alphas_cumprod": [1000], "model_ema.decay": [], "model_ema.num_updates": [],
             CLIP + "text_model.embeddings.position_ids": [1, 77]},
    "sd21": {"betas": [1000], "alphas_cumprod": [1000], "alphas_cumprod_prev": [1000],
             "sqrt_alphas_cumprod": [1000], OPENCLIP + "text_projection": [1024, 1024], OPENCLIP + "logit_scale": []},
}


def meta_shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def write_full_size(name, dest):
    ldm = LDM_CONFIGS[name]
    open_clip = name == "sd21"
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(ldm, {})
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(ldm, {})
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIGS[name]))
    components = {"unet": meta_shapes(unet), "vae": meta_shapes(vae), "text_encoder": meta_shapes(text)}
    configs = {"unet": dict(unet.config), "vae": dict(vae.config), "text_encoder": TEXT_CONFIGS[name]}
    entries = recipe_entries(components, configs, open_clip, extra_last_layer=open_clip)
    keys = {k: shape for k, _, _, shape in entries}
    keys.update(EXTRA_KEYS[name])

    # diffusers' own converters must map these keys back onto the models' names and shapes.
    checkpoint = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    back = {
        "unet": sfu.convert_ldm_unet_checkpoint(checkpoint, unet_cfg),
        "vae": sfu.convert_ldm_vae_checkpoint(checkpoint, vae_cfg),
        "text_encoder": (sfu.convert_open_clip_checkpoint(text, checkpoint) if open_clip
                         else sfu.convert_ldm_clip_checkpoint(checkpoint)),
    }
    for c, converted in back.items():
        got = {k.removeprefix("text_model."): list(v.shape) for k, v in converted.items()
               if not k.endswith("position_ids") and k != "text_projection.weight"}
        assert got == components[c], (name, c, sorted(set(got) ^ set(components[c]))[:5])

    def public(cfg, names):
        return {k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]) for k in names if k in cfg}

    expected = {
        "unet": public(unet_cfg, ["in_channels", "out_channels", "block_out_channels", "layers_per_block",
                                  "down_block_types", "up_block_types", "cross_attention_dim",
                                  "attention_head_dim", "use_linear_projection"]),
        "vae": public(vae_cfg, ["in_channels", "out_channels", "block_out_channels", "layers_per_block",
                                "latent_channels", "scaling_factor"]),
        "text_encoder": TEXT_CONFIGS[name],
        "prediction_type": "v_prediction" if ldm["model"]["params"].get("parameterization") == "v" else "epsilon",
    }
    with open(os.path.join(dest, name + "-shapes.json"), "w", newline="\n") as f:
        f.write(jdump({"ldm_config": ldm, "expected": expected, "ldm_keys": keys, "extra_keys": sorted(EXTRA_KEYS[name]),
                       "diffusers_names": components}))
    return len(keys)


def write(out, specs):
    """Writes OUT/single-file/ (see the module docstring); the fixture folders must exist."""
    dest = os.path.join(out, "single-file")
    os.makedirs(dest, exist_ok=True)
    for key, spec in specs.items():
        n, size, sidecar = write_pipeline(key, spec, out, dest)
        print("  %s.safetensors: %d LDM tensors, %d bytes of weights; sidecar %s" % (key, n, size, json.dumps(sidecar)))
    for name in ("sd15", "sd21"):
        print("  %s: %d LDM keys (diffusers' converters map them back)" % (name, write_full_size(name, dest)))

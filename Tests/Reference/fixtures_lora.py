#!/usr/bin/env python3
"""LoRA adapters against diffusers (issue 28, part 1): `lora/`.

Usage:  python Tests/Reference/fixtures_lora.py [OUT_DIR]   (default: <repo>/Tests/Fixtures)
        or `write_all(out, mf)` from make_fixtures.py (run after sd1/ and sd2/: it reads them and only
        adds OUT_DIR/lora/).

Random LoRAs for the fixture models, made with PEFT (`LoraConfig(init_lora_weights=False)`: lora_A and
lora_B both random, so every adapted layer moves), saved in the two layouts users bring:
* `K/style-peft.safetensors`: diffusers/PEFT (`StableDiffusionLoraLoaderMixin.save_lora_weights`):
  `unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.<module>.…`, and the adapters' LoraConfig
  in the header's `lora_adapter_metadata` (`unet.r`, `unet.lora_alpha`, `unet.rank_pattern`,
  `unet.alpha_pattern`, `unet.use_rslora`, …). UNet: r 4, alpha 8, one module at r 2 and one at alpha 3
  (sd2: use_rslora, scale alpha/√r); every linear of the transformers (to_q/k/v/out.0, ff, proj_in/out: 1×1
  convs in sd1, linears in sd2) and the resnets' 3×3 convs (conv LoRA: lora_A a 3×3 conv) and time_emb_proj.
  Text encoder: r 4, alpha 4, q/k/v/out_proj, fc1, fc2.
* `K/detail-kohya.safetensors`: kohya-ss / A1111 (`lora_unet_<module with _>.lora_down.weight`,
  `.lora_up.weight`, `.alpha` scalar f16), made the same way with r 8, alpha 4 in the UNet and 2 in the
  text encoder, stored f16. UNet: attention projections, conv_shortcut, the downsampler's
  conv; text encoder: self-attention and mlp.

References, per model K (sd1, sd2), in `K/ref.tensor`, for each of three adapter settings C:
`peft` (style-peft at 1), `kohya` (detail-kohya at 0.6), `both` (style-peft at 0.7, detail-kohya at -0.4):
* `C.text.last_hidden` [P, 77, D]: pipe.encode_prompt(PROMPTS)[0] with the adapters set
  (`pipe.set_adapters(names, adapter_weights=scales)`); metadata `lora_json` (the --lora arguments).
* `C.unet.out` [2, 4, h, w]: pipe.unet(sample, 500, encoder_hidden_states) for the records `unet.sample`,
  `unet.encoder_hidden_states` (same inputs for every C).
And `K/diffedit.tensor`: make_fixtures.ref_diffedit (the whole DiffEdit pipeline: mask, inversion, edit)
with the `both` setting — the same records as `K/ref/diffedit.tensor`, with `lora_json`.

Every reference is also checked here against the LoRA formula computed by hand (W + Σ scale·(α/r)·B·A
merged into a copy of the base model, rslora: α/√r): diffusers applies what the files say.
"""
import json
import os
import sys

import safetensors.torch
import torch

GENERATED = ["lora"]
FOLDER = "lora"
PROMPTS = ["a photo of a cat", "a photo of a tiger in the jungle", ""]
SETTINGS = {"peft": [("style-peft", 1.0)], "kohya": [("detail-kohya", 0.6)],
            "both": [("style-peft", 0.7), ("detail-kohya", -0.4)]}

UNET_PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                     "conv1", "conv2", "time_emb_proj"]
TE_PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_KOHYA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv_shortcut", "downsamplers.0.conv"]
TE_KOHYA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def lora_modules(model):
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def randomise(model, seed, scale):
    """Every lora_A / lora_B weight random (PEFT's init leaves lora_B at zero otherwise)."""
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale / (p[0].numel() ** 0.5))


def make_peft(mf, key, spec, out):
    """style-peft: diffusers' own save_lora_weights, adapter metadata included."""
    from peft import LoraConfig, get_peft_model_state_dict
    pipe = mf.load_reference_pipeline(key, spec, out)
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_PEFT_TARGETS, init_lora_weights=False,
                          rank_pattern={first: 2}, alpha_pattern={"mid_block.attentions.0.proj_out": 3},
                          use_rslora=key == "sd2")
    te_cfg = LoraConfig(r=4, lora_alpha=4, target_modules=TE_PEFT_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(unet_cfg)
    pipe.text_encoder.add_adapter(te_cfg)
    randomise(pipe.unet, 2810, 0.5)
    randomise(pipe.text_encoder, 2811, 0.5)
    type(pipe).save_lora_weights(
        os.path.join(out, FOLDER, key), weight_name="style-peft.safetensors",
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=portable(unet_cfg), text_encoder_lora_adapter_metadata=portable(te_cfg))
    sorted_metadata(os.path.join(out, FOLDER, key, "style-peft.safetensors"))


def sorted_metadata(path):
    """safetensors writes `__metadata__` in its Rust HashMap's order, which changes from run to run:
    the same members in sorted order (same length), so the file is the same on every run."""
    import struct
    from collections import OrderedDict
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        text = f.read(n).decode()
        header = json.loads(text, object_pairs_hook=OrderedDict)
        header["__metadata__"] = OrderedDict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        assert len(new.encode()) == len(text.rstrip(" ").encode()), "header length changed"
        f.seek(8)
        f.write(new.encode() + b" " * (n - len(new.encode())))


def portable(cfg):
    """The LoraConfig as saved, without the path of the model it was made on (machine-dependent)."""
    d = cfg.to_dict()
    d["base_model_name_or_path"] = None
    # Sets (target_modules) would be listed in the process's string-hash order: sorted, the file
    # is the same on every run.
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in d.items()}


def kohya_name(prefix, module):
    return prefix + module.replace(".", "_")


def make_kohya(mf, key, spec, out):
    """detail-kohya: made with PEFT, written in kohya-ss's names with an `.alpha` per module, f16."""
    from peft import LoraConfig, get_peft_model_state_dict
    pipe = mf.load_reference_pipeline(key, spec, out)
    tensors = {}
    for model, targets, prefix, seed in ((pipe.unet, UNET_KOHYA_TARGETS, "lora_unet_", 2812),
                                         (pipe.text_encoder, TE_KOHYA_TARGETS, "lora_te_", 2813)):
        model.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=targets, init_lora_weights=False))
        randomise(model, seed, 0.5)
        sd = get_peft_model_state_dict(model)
        for module in sorted(lora_modules(model)):
            # kohya's text-encoder names keep CLIP's text_model wrapper, which transformers 5 dropped.
            te_wrapped = prefix == "lora_te_" and not module.startswith("text_model.")
            name = kohya_name(prefix, ("text_model." if te_wrapped else "") + module)
            tensors[name + ".lora_down.weight"] = sd[module + ".lora_A.weight"].half().contiguous()
            tensors[name + ".lora_up.weight"] = sd[module + ".lora_B.weight"].half().contiguous()
            # One alpha per part: diffusers 0.42.1 keeps only the most common alpha of a part's kohya
            # UNet modules (its alpha_pattern keys keep the old processor names and match nothing).
            tensors[name + ".alpha"] = torch.tensor(4.0 if prefix == "lora_unet_" else 2.0, dtype=torch.float16)
    safetensors.torch.save_file(tensors, os.path.join(out, FOLDER, key, "detail-kohya.safetensors"),
                                metadata={"ss_network_module": "networks.lora"})


def read_lora(path):
    """(part, module) -> (A [r, in…], B [out, r…], alpha or None); and the metadata, for the hand-made check."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    mods = {}
    for k, v in sd.items():
        if k.startswith("lora_"):
            stem, kind = k.split(".", 1)
            part = "unet" if stem.startswith("lora_unet_") else "text_encoder"
            slot = {"lora_down.weight": 0, "lora_up.weight": 1, "alpha": 2}[kind]
        else:
            part, rest = k.split(".", 1)
            stem, kind = rest.rsplit(".lora_", 1)
            slot = {"A.weight": 0, "B.weight": 1}[kind]
        mods.setdefault((part, stem), [None, None, None])[slot] = v
    return mods, json.loads(meta.get("lora_adapter_metadata", "{}"))


def merged_by_hand(mf, key, spec, out, setting):
    """A fresh pipeline with W += Σ scale·s·B·A in every adapted layer (s = α/r, α/√r with rslora)."""
    pipe = mf.load_reference_pipeline(key, spec, out)
    for stem, scale in SETTINGS[setting]:
        mods, meta = read_lora(os.path.join(out, FOLDER, key, stem + ".safetensors"))
        for (part, module), (a, b, alpha) in mods.items():
            model = pipe.unet if part == "unet" else pipe.text_encoder
            if module.startswith("lora_"):
                names = {n.replace(".", "_"): n for n, _ in model.named_modules()}
                plain = module[len("lora_unet_"):] if part == "unet" else module[len("lora_te_"):]
                if part == "text_encoder" and plain not in names and plain.startswith("text_model_"):
                    plain = plain[len("text_model_"):]
                module = names[plain]
            r = a.shape[0]
            if alpha is None:
                m = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith(part + ".")}
                alpha = m["alpha_pattern"].get(module, m["lora_alpha"])
                r = m["rank_pattern"].get(module, m["r"])
                assert r == a.shape[0], (module, r, a.shape)
                s = alpha / (r ** 0.5) if m.get("use_rslora") else alpha / r
            else:
                s = float(alpha) / r
            layer = model.get_submodule(module)
            delta = b.flatten(1) @ a.flatten(1)
            with torch.no_grad():
                layer.weight += (scale * s * delta).reshape(layer.weight.shape)
    return pipe


def unet_inputs(spec, g):
    h, w = spec["height"] // 8, spec["width"] // 8
    return torch.randn(2, 4, h, w, generator=g)


def reference(mf, out, key, spec):
    st = mf.Stream(os.path.join(out, FOLDER, key, "ref.tensor"))
    pipe = mf.load_reference_pipeline(key, spec, out)
    for stem in ("style-peft", "detail-kohya"):
        pipe.load_lora_weights(os.path.join(out, FOLDER, key), weight_name=stem + ".safetensors", adapter_name=stem)
    g = torch.Generator("cpu").manual_seed(2814)
    sample = unet_inputs(spec, g)
    with torch.no_grad():
        plain, _ = mf.load_reference_pipeline(key, spec, out).encode_prompt(PROMPTS[:2], torch.device("cpu"), 1, False)
    st.add("unet.sample", sample)
    st.add("unet.encoder_hidden_states", plain, call="encode_prompt(PROMPTS[:2]) without adapters")
    report = {}
    for setting, adapters in SETTINGS.items():
        pipe.set_adapters([s for s, _ in adapters], adapter_weights=[w for _, w in adapters])
        args = ["%s/%s.safetensors:%g" % (key, s, w) for s, w in adapters]
        with torch.no_grad():
            emb, _ = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, False)
            y = pipe.unet(sample, 500, encoder_hidden_states=plain).sample
            hand = merged_by_hand(mf, key, spec, out, setting)
            emb_hand, _ = hand.encode_prompt(PROMPTS, torch.device("cpu"), 1, False)
            y_hand = hand.unet(sample, 500, encoder_hidden_states=plain).sample
            base = mf.load_reference_pipeline(key, spec, out)
            emb_base, _ = base.encode_prompt(PROMPTS, torch.device("cpu"), 1, False)
            y_base = base.unet(sample, 500, encoder_hidden_states=plain).sample
        # diffusers applies what the files say, and the adapters move the outputs well past the tolerances.
        err_t, err_u = float((emb - emb_hand).abs().max()), float((y - y_hand).abs().max())
        assert err_t < 1e-4 and err_u < 1e-4, (key, setting, err_t, err_u)
        moved_t, moved_u = float((emb - emb_base).abs().max()), float((y - y_base).abs().max())
        assert moved_t > 0.05 and moved_u > 0.05, (key, setting, moved_t, moved_u)
        report["%s.lora.%s" % (key, setting)] = "hand-merged err text %.2g unet %.2g; moved text %.3g unet %.3g" % (
            err_t, err_u, moved_t, moved_u)
        st.add(setting + ".text.last_hidden", emb, lora_json=mf.jdump(args), prompts_json=mf.jdump(PROMPTS),
               call="pipe.set_adapters(names, adapter_weights=scales); pipe.encode_prompt(prompts, cpu, 1, False)[0]")
        st.add(setting + ".unet.out", y, lora_json=mf.jdump(args), timestep=500,
               call="pipe.unet(unet.sample, 500, encoder_hidden_states=unet.encoder_hidden_states).sample")
    st.write()
    # The whole DiffEdit pipeline with both adapters.
    pipe.set_adapters(["style-peft", "detail-kohya"], adapter_weights=[0.7, -0.4])
    cat, _ = mf.make_cat(spec)
    de = mf.Stream(os.path.join(out, FOLDER, key, "diffedit.tensor"))
    report["%s.lora.diffedit" % key] = mf.ref_diffedit(pipe, de, spec, cat)
    both = mf.jdump(["%s/%s.safetensors:%g" % (key, s, w) for s, w in SETTINGS["both"]])
    de.records = [(n, a, dict(m, lora_json=both)) for n, a, m in de.records]  # every record says its adapters
    de.write()
    return report


def write_all(out, mf):
    """Everything of this module; `mf` is the make_fixtures module (SPECS, the pipeline loader, Stream)."""
    report = {}
    for key in ("sd1", "sd2"):
        print("[%s] LoRA adapters" % key)
        os.makedirs(os.path.join(out, FOLDER, key), exist_ok=True)
        make_peft(mf, key, mf.SPECS[key], out)
        make_kohya(mf, key, mf.SPECS[key], out)
        report.update(reference(mf, out, key, mf.SPECS[key]))
    for k, v in sorted(report.items()):
        print("  %s: %s" % (k, v))
    return report


if __name__ == "__main__":
    import standalone
    standalone.run(write_all, __file__)

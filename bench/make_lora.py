#!/usr/bin/env python3
"""A random kohya-layout LoRA for a model folder, shaped like the LoRAs users bring (issue 28):

    python3 bench/make_lora.py MODEL OUT.safetensors [RANK]      (RANK default 32)

kohya-ss's default targets for SD 1.x/2.x: every linear and 1×1 conv of the UNet's transformers
(proj_in, proj_out, attn1/attn2 to_q/k/v/out.0, ff.net.0.proj, ff.net.2) and the text encoder's
self-attention and MLP; f16, alpha = RANK/2. The names and shapes come from the model's own
safetensors headers, so no weights are loaded. Values are random (small, so outputs stay sane):
for memory and time measurements, not for pictures.
"""
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import save_file

UNET_TARGETS = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def main():
    model, out = sys.argv[1], sys.argv[2]
    rank = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    rng = np.random.default_rng(2800)
    tensors = {}
    for part, file, targets, prefix in (("unet", "diffusion_pytorch_model.safetensors", UNET_TARGETS, "lora_unet_"),
                                        ("text_encoder", "model.safetensors", TE_TARGETS, "lora_te_")):
        for name, e in sorted(header(os.path.join(model, part, file)).items()):
            module = name[:-len(".weight")] if name.endswith(".weight") else None
            if module is None or not module.endswith(targets) or len(e["shape"]) < 2:
                continue
            if part == "text_encoder" and not module.startswith("text_model."):
                module = "text_model." + module
            o, i = e["shape"][0], e["shape"][1]
            trail = [1] * (len(e["shape"]) - 2)
            key = prefix + module.replace(".", "_")
            tensors[key + ".lora_down.weight"] = (rng.standard_normal([rank, i] + trail) / np.sqrt(i)).astype(np.float16)
            tensors[key + ".lora_up.weight"] = (rng.standard_normal([o, rank] + trail) * 0.01).astype(np.float16)
            tensors[key + ".alpha"] = np.array(rank / 2, dtype=np.float16)
    save_file(tensors, out)
    print("%s: %d modules, rank %d, %.1f MB" % (out, len(tensors) // 3, rank, os.path.getsize(out) / 1e6))


if __name__ == "__main__":
    main()

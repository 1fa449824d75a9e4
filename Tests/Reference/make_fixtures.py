#!/usr/bin/env python3
"""Golden reference fixtures for diffedit (Swift port of diffusers' StableDiffusionDiffEditPipeline).

Usage:  python Tests/Reference/make_fixtures.py [OUT_DIR]      (default: <repo>/Tests/Fixtures)

Deterministic: fixed seeds, one CPU thread, deterministic algorithms; running it twice produces
byte-identical files (the script prints a sha256 manifest, also written to OUT_DIR/MANIFEST.txt).
Everything is computed in float32 on the CPU with the pinned versions of Tests/Reference/requirements.txt.
OUT_DIR/README.md is documentation and is never touched by this script.

See Tests/Fixtures/README.md for the catalogue of every file and record.
"""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import gzip
import hashlib
import importlib.util
import json
import random
import shutil
import tempfile
import time
import types
import unicodedata
import warnings

import numpy as np
import safetensors.torch
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
torch.manual_seed(0)

import PIL.Image  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMInverseScheduler,
    DDIMScheduler,
    StableDiffusionDiffEditPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_base import CaptureBase  # noqa: E402  (beside this script: the Capture scaffold, shared with fixtures_ledits)
import fixtures_single_file  # noqa: E402  (beside this script: the single-file (LDM layout) fixtures)
import fixtures_schedulers  # noqa: E402  (beside this script: the DPM-Solver++ and DDIM-eta fixtures)
import fixtures_coverage  # noqa: E402  (beside this script: lower_order_final, DDIM eta steps, conv paths)
import fixtures_attention_store  # noqa: E402  (beside this script: LEDITS++'s attention store, issue 26)
import fixtures_ledits  # noqa: E402  (beside this script: LEDITS++ model folders sd1-ledits/, sd2-ledits/, issue 26)
import fixtures_textual_inversion  # noqa: E402  (beside this script: textual-inversion embeddings, issue 28)
import fixtures_vae_tiling  # noqa: E402  (beside this script: tiled VAE encode/decode, issue 28 part 3)
import fixtures_lora  # noqa: E402  (beside this script: LoRA adapters, issue 28 part 1)

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

PIPE_MODULE = sys.modules[StableDiffusionDiffEditPipeline.__module__]
VAE_MODULE = sys.modules["diffusers.models.autoencoders.vae"]

EXPECTED_VERSIONS = {
    "torch": "2.15.0", "diffusers": "0.42.1", "transformers": "5.24.0", "numpy": "2.4.6",
    "PIL": "13.0.0",
}


# ----------------------------------------------------------------------------------------------
# Tensor stream format (writer given verbatim by the spec)
# ----------------------------------------------------------------------------------------------
def _esc(s): return str(s).replace("\\", "\\\\").replace("\n", "\\n")
_DT = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int32): "i32", np.dtype(np.int64): "i64", np.dtype(np.uint8): "u8"}
def record_bytes(name, arr, meta=None):
    arr = np.ascontiguousarray(arr)
    dt = _DT[arr.dtype]
    hdr = "DIFFEDIT-TENSOR 1\nname=%s\ndtype=%s\nshape=%s\n" % (_esc(name), dt, " ".join(str(d) for d in arr.shape))
    for k in sorted(meta or {}):
        hdr += "%s=%s\n" % (k, _esc(meta[k]))
    b = (hdr + "\n").encode("utf-8")
    b += b"\n" * (-len(b) % 64)
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return b + data + b"\0" * (-len(data) % 64)


_NP_OF = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64, "u8": np.uint8}


def read_stream(path):
    """Independent reader used to self-check every file written (and to build MANIFEST.txt)."""
    buf = open(path, "rb").read()
    pos, out = 0, []
    while pos < len(buf):
        start = pos
        end = buf.index(b"\n\n", pos)
        lines = buf[pos:end].decode("utf-8").split("\n")
        assert lines[0] == "DIFFEDIT-TENSOR 1", (path, lines[0])
        kv = {}
        for ln in lines[1:]:
            k, v = ln.split("=", 1)
            kv[k] = v.replace("\\n", "\n").replace("\\\\", "\\") if "\\" in v else v
        pos = end + 2
        pos += -(pos - start) % 64
        shape = tuple(int(x) for x in kv["shape"].split()) if kv["shape"] else ()
        dt = np.dtype(_NP_OF[kv["dtype"]]).newbyteorder("<")
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        arr = np.frombuffer(buf[pos:pos + n], dtype=dt).reshape(shape)
        pos += n
        pos += -(pos - start) % 64
        meta = {k: v for k, v in kv.items() if k not in ("name", "dtype", "shape")}
        out.append((kv["name"], kv["dtype"], shape, meta, arr))
    return out


def _np(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype == np.float64:
        raise TypeError("float64 array passed to the writer; convert explicitly")
    return x


class Stream:
    """Collects named records and writes them as one .tensor file."""

    def __init__(self, path):
        self.path, self.records, self.names = path, [], set()

    def add(self, name, arr, **meta):
        assert name not in self.names, name
        assert name == name.lower() and all(c.isalnum() or c in "._-" for c in name), name
        for k in meta:
            assert all(c.isalnum() or c in "._-" for c in k), k
        self.names.add(name)
        arr = _np(arr)
        if arr.ndim == 0:
            # the (verbatim) writer's np.ascontiguousarray turns 0-d arrays into shape [1]; make that
            # explicit and flag it: the original value was a 0-dim tensor / Python scalar.
            arr = arr.reshape(1)
            meta = dict(meta, scalar="true")
        self.records.append((name, arr, {k: str(v) for k, v in meta.items()}))

    def write(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "wb") as f:
            for name, arr, meta in self.records:
                f.write(record_bytes(name, arr, meta))
        back = read_stream(self.path)  # round-trip self-check
        assert back and [r[0] for r in back] == [r[0] for r in self.records]
        for (n, _, _, m, a), (_, arr, meta) in zip(back, self.records):
            assert m == meta and a.shape == arr.shape and a.tobytes() == np.ascontiguousarray(arr).tobytes(), n
        print("  wrote %s (%d records, %d bytes)" % (self.path, len(self.records), os.path.getsize(self.path)))


def jdump(obj):
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def config_json(cfg):
    d = {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
    return jdump(d)


def f32repr(x):
    return repr(float(x))


# ----------------------------------------------------------------------------------------------
# Paths to data files shipped inside packages (found without importing the packages, whose
# __init__ need missing optional dependencies: skimage -> lazy_loader, open_clip -> torchvision)
# ----------------------------------------------------------------------------------------------
def package_dir(name):
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations)[0]


BPE_GZ = os.path.join(package_dir("open_clip"), "bpe_simple_vocab_16e6.txt.gz")
CHELSEA = os.path.join(package_dir("skimage"), "data", "chelsea.png")


def load_open_clip_tokenizer_module():
    """open_clip/tokenizer.py loaded standalone with a stub `ftfy` (fix_text = identity).

    The stub is used unconditionally (even when ftfy is installed) so the check is reproducible;
    transformers' CLIPTokenizer (what the pipeline uses) never calls ftfy in transformers 5.x.
    """
    stub = types.ModuleType("ftfy")
    stub.fix_text = lambda s: s
    saved = sys.modules.get("ftfy")
    sys.modules["ftfy"] = stub
    try:
        spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_standalone",
                                                      os.path.join(package_dir("open_clip"), "tokenizer.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            del sys.modules["ftfy"]
        else:
            sys.modules["ftfy"] = saved
    return mod


# ----------------------------------------------------------------------------------------------
# 1. Tokenizer files
# ----------------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges():
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # lines 1..48894; line 0 is a comment
    assert len(merges) == 48894 and all(len(m.split()) == 2 for m in merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False) + "\n"
    merges_txt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    return vocab_json, merges_txt


def tokenizer_config(pad_token):
    return json.dumps({
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "model_max_length": 77,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }, indent=2, sort_keys=True) + "\n"


def write_tokenizer_folder(folder, pad_token, vocab_json, merges_txt, link_to=None):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    for fname, text in (("vocab.json", vocab_json), ("merges.txt", merges_txt)):
        path = os.path.join(folder, fname)
        if link_to is None:
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
        else:
            os.symlink(os.path.relpath(os.path.join(link_to, fname), folder), path)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", newline="\n") as f:
        f.write(tokenizer_config(pad_token))


# ----------------------------------------------------------------------------------------------
# 2. Prompts
# ----------------------------------------------------------------------------------------------
def make_prompts():
    rng = random.Random(20240601)
    P = []
    add = P.append
    # empty / whitespace-only / trivial
    for s in ["", " ", "   ", "\t", "\n", "\u00a0", "a", "A", "I", ".", "!", "'", "0", "cat", "Cat", "CAT"]:
        add(s)
    # ordinary captions
    subjects = ["a cat", "a dog", "an astronaut", "a bowl of fruits", "a bowl of pears", "two horses",
                "the Eiffel Tower", "an old man", "a red car", "a tabby cat", "a golden retriever",
                "a castle", "a small boat", "a bicycle", "a cup of coffee", "a robot"]
    verbs = ["sitting on", "riding", "standing next to", "lying under", "floating above", "painted on",
             "in front of", "behind", "made of", "looking at"]
    objects = ["a wooden table", "the moon", "a snowy mountain", "a city street at night", "a sofa",
               "the beach", "a field of sunflowers", "a glass window", "an oak tree", "marble"]
    styles = ["", ", oil painting", ", photograph", ", 4k, highly detailed", ", trending on artstation",
              " by Vincent van Gogh", ", digital art", ", watercolor", ", 35mm film, bokeh", ", in the style of Studio Ghibli"]
    for _ in range(150):
        s = "%s %s %s%s" % (rng.choice(subjects), rng.choice(verbs), rng.choice(objects), rng.choice(styles))
        r = rng.random()
        if r < 0.2:
            s = s[0].upper() + s[1:]
        elif r < 0.3:
            s = s.upper()
        elif r < 0.4:
            s = s.title()
        if rng.random() < 0.3:
            s += rng.choice([".", "!", "?", "...", " ."])
        add(s)
    fixed = [
        # punctuation runs
        "!!!", "?!?!", "...", "…", "a---b", "a — b – c", "(((masterpiece)))", "[cat:dog:0.5]", "{{{x}}}",
        "##hash #tag", "@user", "C++ and C#", "e-mail", "3.14", "$100.00", "50%", "#1", "a/b\\c", "~`|^",
        "<html>", "a,b;c:d", "\"quoted\"", "“curly quotes”", "‘single’", "«guillemets»", "¿qué?", "¡hola!",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "*_*", "¯\\_(ツ)_/¯", ":-) :-( ;-)", "a...b...c",
        "*** ___ +++ ===", "a, b, c, d, e, f", "....!!!!????", "\\n is not a newline", "%20 %%",
        # digits and numbers
        "1234567890", "year 2024", "0.000001", "1e10", "1,000,000", "٣٤٥", "Ⅻ", "½ ¼ ¾", "x² + y³", "①②③",
        "007", "3d render", "4k", "8K UHD", "1girl", "24/7", "10:30 pm", "2nd 3rd 4th 21st", "-5 +5 ±5",
        "12345678901234567890123456789012345678901234567890", "𝟙𝟚𝟛", "०१२३",
        # accented Latin
        "café", "naïve résumé", "Ærøskøbing", "Łódź", "São Paulo", "façade", "über", "smörgåsbord",
        "crème brûlée", "cafe\u0301 (decomposed)", "e\u0301te\u0301", "İstanbul", "STRASSE Straße ß",
        "Tiếng Việt", "Dvořák", "Ångström", "ﬁne ﬂour (ligatures)", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "Øresund",
        "ĳsselmeer", "Þór", "œuvre", "ÉCOLE", "niño", "Schloß Neuschwanstein",
        # Cyrillic
        "кошка сидит на окне", "Москва", "ЁЛКА", "Привет, мир!", "собака и кошка",
        # Greek
        "γάτα", "ΟΔΟΣ", "Σίσυφος", "ΣΊΣΥΦΟΣ", "αβγδε ΑΒΓΔΕ", "λόγος",
        # CJK
        "猫が窓辺に座っている", "一只猫", "고양이", "東京タワー", "cat猫dog犬", "漢字かなカナ", "ｶﾀｶﾅ",
        "中文，标点。", "こんにちは世界",
        # Arabic / Hebrew / other scripts
        "قطة", "مرحبا بالعالم", "חתול", "שלום עולם", "नमस्ते", "สวัสดี", "ሰላም", "Ա Բ Գ",
        # emoji and ZWJ sequences
        "🐱", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "❤\ufe0f", "🇯🇵", "cat🐱dog", "1\ufe0f\u20e3",
        "🐶🐱🐭🐹🐰🦊🐻🐼", "a 🐱 on a 🛋", "😀😃😄😁", "🧑🏿\u200d🚀", "👩\u200d❤\ufe0f\u200d💋\u200d👨",
        # whitespace
        "  leading spaces", "trailing spaces  ", "a\tb", "a\t\tb\t", "a\u00a0b", "a\u2003b", "a\u3000b",
        "a\n\nb", "line1\r\nline2", "a\u200bb", "a\u2028b", "a \u00a0 \t b", "multiple     spaces",
        "\ttab at start", "a\u202fb", "a\u2009b\u200ac", "a\x0bb\x0cc", "\u00a0\u00a0nbsp\u00a0\u00a0",
        # HTML entities
        "&amp;", "cats &amp; dogs", "&lt;cat&gt;", "&quot;hi&quot;", "it&#39;s", "&#x1F431;", "&nbsp;",
        "&amp;amp;", "AT&T", "&copy; 2024", "&unknown;",
        # apostrophes and contractions
        "it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "cats' toys",
        "rock 'n' roll", "it’s (curly)", "''s", "'s", "o'clock", "y'all'd've", "Rock'N'Roll", "' t", "the dog's bone",
        # mixed case
        "CaT", "A PHOTO OF A DOG", "iPhone", "McDonald's", "NASA's JPL", "camelCaseWord", "SnakeCase_word",
        "ALLCAPS and lowercase", "hElLo WoRlD",
        # special-token look-alikes
        "<|startoftext|>", "<|endoftext|>", "a cat<|endoftext|>a dog", "<|startoftext|>hello<|endoftext|>",
        "<start_of_text>", "</w>", "<|ENDOFTEXT|>", "<|endoftext",
        # misc code-ish
        "https://example.com/a?b=c&d=e", "user@example.com", "snake_case_name", "kebab-case-name",
        "path/to/file.png", "SELECT * FROM cats;", "x = y + 1", "#define CAT 1", "λx. x",
    ]
    for s in fixed:
        add(s)
    # long prompts, far beyond 77 tokens
    long_base = ("a highly detailed photograph of a fluffy orange tabby cat sitting on a wooden windowsill, "
                 "soft morning light streaming through the window, dust particles floating in the air, "
                 "shallow depth of field, bokeh background with green plants, 85mm lens, f/1.8, "
                 "award winning photography, national geographic, ultra realistic, 8k resolution, "
                 "sharp focus on the eyes, whiskers glowing in the backlight, cozy atmosphere, "
                 "warm color palette, film grain, kodak portra 400, golden hour, masterpiece")
    add(long_base)
    add(" ".join(["cat"] * 100))
    add(" ".join(["cat dog"] * 60))
    add(", ".join(subjects * 4))
    add("🐱" * 80)
    add("猫" * 120)
    add("a" * 500)
    add(" ".join(str(i) for i in range(120)))
    add("!" * 300)
    add((long_base + " ") * 3)
    add("&amp; " * 90)
    add("it's " * 90)
    add(" ".join(["supercalifragilisticexpialidocious"] * 30))
    # random combinations of fragments
    frags = [s for s in fixed if s] + subjects + objects
    seps = [" ", ", ", "\t", "  ", "", "\u00a0", " - ", "\n"]
    while len(P) < 640:
        k = rng.randint(2, 5)
        parts = [rng.choice(frags) for _ in range(k)]
        s = parts[0]
        for p_ in parts[1:]:
            s += rng.choice(seps) + p_
        if rng.random() < 0.2:
            s = s.upper()
        add(s)
    return P


# ----------------------------------------------------------------------------------------------
# 3. Models
# ----------------------------------------------------------------------------------------------
SD1_SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                 timestep_spacing="leading")
# SD 2.1 (stabilityai/stable-diffusion-2-1) scheduler_config: same betas, v_prediction; it does not set
# timestep_spacing, so diffusers' default "leading" applies.
SD2_SCHED = dict(SD1_SCHED, prediction_type="v_prediction")

SPECS = {
    "sd1": dict(
        width=64, height=64,  # image W x H; latent 8 x 8
        text=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                  projection_dim=32),
        pad_token="<|endoftext|>",
        unet=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=2,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  mid_block_type="UNetMidBlock2DCrossAttn",
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=4, use_linear_projection=False,
                  norm_num_groups=8, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
                  upcast_attention=False),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 layers_per_block=1, norm_num_groups=4, act_fn="silu", sample_size=64, scaling_factor=0.18215),
        sched=SD1_SCHED,
        steps=50,
        prompts=("a photo of a cat", "a photo of a tiger in the jungle"),  # (source, target)
        text_dtype=torch.float32, unet_variant=None, text_prefix="text_model.",
    ),
    "sd2": dict(
        width=48, height=64,  # image 48 wide x 64 high; latent 6 wide x 8 high
        text=dict(vocab_size=49408, hidden_size=40, intermediate_size=80, num_hidden_layers=4,
                  num_attention_heads=5, max_position_embeddings=77, hidden_act="gelu",
                  layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
                  projection_dim=40),
        pad_token="!",
        unet=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 48), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  mid_block_type="UNetMidBlock2DCrossAttn",
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=40, attention_head_dim=[2, 4], use_linear_projection=True,
                  norm_num_groups=16, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
                  upcast_attention=True),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 layers_per_block=2, norm_num_groups=2, act_fn="silu", sample_size=64, scaling_factor=0.18215),
        sched=SD2_SCHED,
        steps=20,
        prompts=("a photo of a cat", "a photo of a dog"),  # (source, target)
        text_dtype=torch.float16, unet_variant="fp16", text_prefix="",
    ),
}


def perturb(module, seed):
    """Make every parameter matter: 1-D weights (norm scales) = 1 + 0.1 randn; biases = 0.05 randn;
    other weights += 0.2 * max(std(w), fan_in**-0.5) * randn. Draws from one CPU generator in
    named_parameters() order."""
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("bias"):
                p.copy_(0.05 * noise)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                fan_in = p[0].numel()
                s = max(float(p.float().std()), fan_in ** -0.5)
                p.add_(0.2 * s * noise)


def calibrate_vae(vae):
    """Make the random VAE's latents SD-like: quant_conv output channels 0..3 (posterior mean) x30 so that
    mean*scaling_factor has std ~0.9 on the cat image (SD: ~1), and the bias of channels 4..7 (logvar)
    -4 so the posterior std is ~0.14 (small against the mean, as in SD)."""
    with torch.no_grad():
        w, b = vae.quant_conv.weight, vae.quant_conv.bias
        w[:4] *= 30.0
        b[:4] *= 30.0
        b[4:] -= 4.0


def build_and_save(key, spec, out, vocab_json, merges_txt):
    folder = os.path.join(out, key)
    base_seed = {"sd1": 1000, "sd2": 2000}[key]
    torch.manual_seed(base_seed + 1)
    te = CLIPTextModel(CLIPTextConfig(**spec["text"]))
    perturb(te, base_seed + 11)
    torch.manual_seed(base_seed + 2)
    unet = UNet2DConditionModel(**spec["unet"])
    perturb(unet, base_seed + 12)
    torch.manual_seed(base_seed + 3)
    vae = AutoencoderKL(**spec["vae"])
    perturb(vae, base_seed + 13)
    calibrate_vae(vae)
    sched = DDIMScheduler(**spec["sched"])
    tmp_tok = tempfile.mkdtemp()
    write_tokenizer_folder(tmp_tok, spec["pad_token"], vocab_json, merges_txt)
    tok = CLIPTokenizer.from_pretrained(tmp_tok)
    shutil.rmtree(tmp_tok)
    pipe = StableDiffusionDiffEditPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, inverse_scheduler=DDIMInverseScheduler.from_config(sched.config),
        requires_safety_checker=False)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    if spec["text_prefix"]:
        # transformers 5.x writes CLIPTextModel keys without the "text_model." prefix that every
        # Stable Diffusion checkpoint on the hub (written by transformers 4.x) has. sd1 gets the hub
        # layout (prefix added back); sd2 keeps what transformers 5.24 writes. Both load in 5.24.
        path = os.path.join(folder, "text_encoder", "model.safetensors")
        sd = safetensors.torch.load_file(path)
        safetensors.torch.save_file({spec["text_prefix"] + k: v.contiguous() for k, v in sd.items()}, path,
                                    metadata={"format": "pt"})
    if spec["text_dtype"] == torch.float16:
        os.remove(os.path.join(folder, "text_encoder", "model.safetensors"))
        te.to(torch.float16).save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    if spec["unet_variant"]:
        os.remove(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
        unet.to(torch.float16).save_pretrained(os.path.join(folder, "unet"), variant=spec["unet_variant"],
                                               safe_serialization=True)
    # tokenizer: transformers 5 save_pretrained writes tokenizer.json + tokenizer_config.json only;
    # replace by vocab.json + merges.txt + a clean tokenizer_config.json (sd2 links to sd1's files).
    write_tokenizer_folder(os.path.join(folder, "tokenizer"), spec["pad_token"], vocab_json, merges_txt,
                           link_to=None if key == "sd1" else os.path.join(out, "sd1", "tokenizer"))
    scrub_json_configs(folder)
    # the files must load back to exactly the in-memory weights (rounded to f16 where saved as f16)
    te2 = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), dtype=torch.float32)
    u2 = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), variant=spec["unet_variant"],
                                              dtype=torch.float32)
    for a, b, dt in ((te2, te, spec["text_dtype"]), (u2, unet, torch.float16 if spec["unet_variant"] else torch.float32)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k].to(dt).float()), k


def scrub_json_configs(folder):
    """Drop machine-specific keys (none expected) so outputs do not depend on paths."""
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".json") and f not in ("vocab.json",):
                p = os.path.join(root, f)
                if os.path.islink(p):
                    continue
                d = json.load(open(p))
                bad = [k for k in d if k in ("_name_or_path", "is_local", "local_files_only", "_commit_hash")]
                if bad:
                    for k in bad:
                        del d[k]
                    with open(p, "w") as fh:
                        fh.write(json.dumps(d, indent=2, sort_keys=True) + "\n")


def load_reference_pipeline(key, spec, out):
    """Reload every component from disk in float32 (so sd2 uses the f16-rounded weights) and build the
    pipeline exactly as the spec says."""
    folder = os.path.join(out, key)
    te = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), variant=spec["unet_variant"],
                                                dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    sched = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
    pipe = StableDiffusionDiffEditPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, inverse_scheduler=DDIMInverseScheduler.from_config(sched.config),
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for m in (te, unet, vae):
        m.eval()
        assert all(p.dtype == torch.float32 for p in m.parameters())
    # The whole folder must also load with the one-call API (sd2 needs variant="fp16").
    kw = {"variant": spec["unet_variant"]} if spec["unet_variant"] else {}
    p2 = StableDiffusionDiffEditPipeline.from_pretrained(folder, dtype=torch.float32, **kw)
    assert type(p2.tokenizer) is CLIPTokenizer and isinstance(p2.inverse_scheduler, DDIMInverseScheduler)
    for a, b in ((p2.unet, unet), (p2.text_encoder, te), (p2.vae, vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert p2.tokenizer.pad_token == spec["pad_token"] and p2.tokenizer.model_max_length == 77
    del p2
    return pipe


# ----------------------------------------------------------------------------------------------
# 4. Reference computations per pipeline
# ----------------------------------------------------------------------------------------------
TEXT_PROMPTS = [
    "a cat",
    "a dog",
    "",
    "A photograph of an astronaut riding a horse",
    "Café crème, naïve résumé — 東京 🐱!! it's &amp; done",
    ("a highly detailed photograph of a fluffy orange tabby cat sitting on a wooden windowsill, soft morning "
     "light streaming through the window, dust particles floating in the air, shallow depth of field, bokeh "
     "background with green plants, 85mm lens, award winning photography, ultra realistic, 8k resolution, "
     "sharp focus on the eyes, whiskers glowing in the backlight, cozy atmosphere, warm color palette"),
]


def make_cat(spec):
    img = PIL.Image.open(CHELSEA).convert("RGB")  # 451 x 300
    W, H = spec["width"], spec["height"]
    iw, ih = img.size
    cw = min(iw, ih * W // H)
    ch = cw * H // W
    x0, y0 = (iw - cw) // 2, (ih - ch) // 2
    box = (x0, y0, x0 + cw, y0 + ch)
    small = img.crop(box).resize((W, H), resample=PIL.Image.LANCZOS)
    arr = np.asarray(small, dtype=np.uint8).copy()
    return arr, box


def write_ppm(path, arr):
    h, w, _ = arr.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(arr.astype(np.uint8).tobytes())


class Hooks:
    def __init__(self):
        self.handles, self.acts = [], {}

    def out(self, module, name, index=None):
        def fn(m, inp, outp):
            o = outp[index] if index is not None else outp
            if isinstance(o, tuple):
                for j, t in enumerate(o):
                    self.acts["%s.%d" % (name, j)] = t.detach().clone()
            else:
                self.acts[name] = o.detach().clone()
        self.handles.append(module.register_forward_hook(fn))

    def remove(self):
        for h in self.handles:
            h.remove()


def ref_text(pipe, st, spec):
    tok = pipe.tokenizer
    ids = tok(TEXT_PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(TEXT_PROMPTS, torch.device("cpu"), 1, False)
        # diffusers 0.42.1 reads text_encoder.text_model.final_layer_norm, but transformers 5.x's
        # CLIPTextModel has no .text_model wrapper (AttributeError). Alias it (outside the module tree)
        # just for this call so that diffusers' own clip_skip code path runs unchanged.
        te = pipe.text_encoder
        object.__setattr__(te, "text_model", te)
        try:
            emb_skip, _ = pipe.encode_prompt(TEXT_PROMPTS, torch.device("cpu"), 1, False, clip_skip=1)
        finally:
            del te.__dict__["text_model"]
        direct = te(ids)[0]
        manual_skip = te.final_layer_norm(te(ids, output_hidden_states=True).hidden_states[-2])
        hs = te(ids[3:4], output_hidden_states=True).hidden_states
    assert torch.equal(direct, emb) and torch.equal(manual_skip, emb_skip)
    untrunc = [len(tok(p).input_ids) for p in TEXT_PROMPTS]
    st.add("text.ids", ids.to(torch.int32), prompts_json=jdump(TEXT_PROMPTS),
           untruncated_lengths_json=jdump(untrunc),
           call='tokenizer(prompts, padding="max_length", max_length=77, truncation=True)')
    st.add("text.last_hidden", emb, call="pipe.encode_prompt(prompts, cpu, 1, False)[0] == text_encoder(ids)[0]")
    st.add("text.clip_skip1", emb_skip,
           call="pipe.encode_prompt(prompts, cpu, 1, False, clip_skip=1)[0] = "
                "final_layer_norm(hidden_states[-2]) (run with a text_model alias, see script)")
    st.add("text.hidden_states", torch.stack(hs)[:, 0],
           prompt_index=3, call="text_encoder(ids[3:4], output_hidden_states=True).hidden_states; "
                                "[0]=embeddings (token+position), [k]=output of layer k (before final_layer_norm)")
    return emb


def ref_vae(pipe, st, spec, cat, box):
    vae = pipe.vae
    sf = vae.config.scaling_factor
    pil = PIL.Image.fromarray(cat)
    image = pipe.image_processor.preprocess(pil)
    manual = torch.from_numpy(cat.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    assert torch.equal(image, manual), "preprocess differs from 2*(u8/255)-1"
    st.add("vae.image", image, call="pipe.image_processor.preprocess(PIL image of cat.ppm) = 2*(u8/255)-1 (f32)",
           source="skimage/data/chelsea.png (451x300) crop box %s, PIL LANCZOS resize to %dx%d = cat.ppm" % (
               list(box), spec["width"], spec["height"]))
    hk = Hooks()
    enc, dec = vae.encoder, vae.decoder
    for i, b in enumerate(enc.down_blocks):
        hk.out(b, "vae.encoder.down.%d" % i)
    hk.out(enc.mid_block, "vae.encoder.mid")
    hk.out(enc.conv_out, "vae.encoder.conv_out")
    hk.out(vae.quant_conv, "vae.quant_conv")
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        g = torch.Generator("cpu").manual_seed(0)
        sample = dist.sample(g) * sf
    hk.remove()
    for k in ["vae.encoder.down.%d" % i for i in range(len(enc.down_blocks))] + \
             ["vae.encoder.mid", "vae.encoder.conv_out", "vae.quant_conv"]:
        st.add(k, hk.acts[k], call="forward hook output during vae.encode(vae.image)")
    st.add("vae.posterior.mean", dist.mean, call="vae.encode(vae.image).latent_dist.mean (unscaled)")
    st.add("vae.posterior.std", dist.std, call="latent_dist.std = exp(0.5*logvar)")
    st.add("vae.posterior.logvar", dist.logvar, call="latent_dist.logvar (after clamp to [-30,20])")
    st.add("vae.sample.seed0", sample, seed=0, scaling_factor=f32repr(sf),
           call="latent_dist.sample(torch.Generator('cpu').manual_seed(0)) * scaling_factor "
                "= (mean + std*randn([1,4,h,w])) * scaling_factor")
    hk = Hooks()
    hk.out(vae.post_quant_conv, "vae.post_quant_conv")
    hk.out(dec.conv_in, "vae.decoder.conv_in")
    hk.out(dec.mid_block, "vae.decoder.mid")
    for i, b in enumerate(dec.up_blocks):
        hk.out(b, "vae.decoder.up.%d" % i)
    with torch.no_grad():
        out = vae.decode(sample / sf).sample
    hk.remove()
    st.add("vae.decode.in", sample, call="= vae.sample.seed0 (scaled latent)")
    for k in ["vae.post_quant_conv", "vae.decoder.conv_in", "vae.decoder.mid"] + \
             ["vae.decoder.up.%d" % i for i in range(len(dec.up_blocks) - 1)]:
        st.add(k, hk.acts[k], call="forward hook output during vae.decode(vae.decode.in / scaling_factor)")
    st.add("vae.decode.out", out, scaling_factor=f32repr(sf),
           call="vae.decode(vae.decode.in / scaling_factor).sample")
    npimg = pipe.image_processor.postprocess(out, output_type="np")
    u8 = (npimg[0] * 255).round().astype(np.uint8)
    st.add("vae.postprocess.u8", u8,
           call='(image_processor.postprocess(vae.decode.out, output_type="np")[0] * 255).round().astype(uint8) '
                "= round(clamp(x/2+0.5,0,1)*255), HWC")
    return dict(decode_min=float(out.min()), decode_max=float(out.max()),
                decode_sat=float(((out / 2 + 0.5) <= 0).float().mean() + ((out / 2 + 0.5) >= 1).float().mean()),
                u8_unique=int(len(np.unique(u8))))


def ref_unet(pipe, st, spec, emb):
    unet = pipe.unet
    h, w = spec["height"] // 8, spec["width"] // 8
    g = torch.Generator("cpu").manual_seed(7)
    cases = [
        (torch.randn(1, 4, h, w, generator=g), torch.tensor(981, dtype=torch.int64), emb[0:1],
         "batch 1, timestep 0-dim i64 981, prompt 'a cat'"),
        (torch.randn(2, 4, h, w, generator=g), torch.tensor(1, dtype=torch.int64), emb[[2, 1]],
         "batch 2, timestep 0-dim i64 1, prompts ['', 'a dog']"),
        (torch.randn(2, 4, h, w, generator=g) * 3.0, torch.tensor([500.0, 37.5], dtype=torch.float32),
         emb[[3, 5]], "batch 2, per-sample f32 timesteps [500.0, 37.5], prompts [3] and [5] of text.ids"),
    ]
    stats = {}
    for k, (x, t, e, desc) in enumerate(cases):
        hk = Hooks()
        if k == 0:
            hk.out(unet.time_proj, "unet.case0.time_proj")
            hk.out(unet.time_embedding, "unet.case0.time_emb")
            hk.out(unet.conv_in, "unet.case0.conv_in")
            for i, b in enumerate(unet.down_blocks):
                hk.out(b, "unet.case0.down.%d" % i, index=0)
                hk.out(b, "unet.case0.down.%d.res" % i, index=1)
            hk.out(unet.mid_block, "unet.case0.mid")
            for i, b in enumerate(unet.up_blocks):
                hk.out(b, "unet.case0.up.%d" % i)
            hk.out(unet.conv_norm_out, "unet.case0.conv_norm_out")
        with torch.no_grad():
            y = unet(x, t, encoder_hidden_states=e).sample
        hk.remove()
        p = "unet.case%d." % k
        st.add(p + "sample", x, desc=desc)
        st.add(p + "timestep", t, desc="passed as-is to unet(sample, timestep, encoder_hidden_states)")
        st.add(p + "encoder_hidden_states", e)
        st.add(p + "out", y, call="unet(sample, timestep, encoder_hidden_states=...).sample")
        stats["case%d_out_std" % k] = float(y.std())
        if k == 0:
            names = ["unet.case0.time_proj", "unet.case0.time_emb", "unet.case0.conv_in"]
            for i in range(len(unet.down_blocks)):
                names.append("unet.case0.down.%d" % i)
                names += sorted([n for n in hk.acts if n.startswith("unet.case0.down.%d.res." % i)],
                                key=lambda s: int(s.rsplit(".", 1)[1]))
            names.append("unet.case0.mid")
            names += ["unet.case0.up.%d" % i for i in range(len(unet.up_blocks))]
            names.append("unet.case0.conv_norm_out")
            for n in names:
                st.add(n, hk.acts[n], call="forward hook output during unet.case0")
    return stats


class Capture(CaptureBase):
    """Temporarily wraps randn_tensor (vae + pipeline modules), torch.randint, unet.forward, scheduler
    methods and prepare_image_latents of a pipeline, recording inputs/outputs in call order."""

    def __enter__(self):
        pipe, log = self.pipe, self.log
        for mod, tag in ((VAE_MODULE, "randn.posterior"), (PIPE_MODULE, "randn.pipeline")):
            orig = mod.randn_tensor

            def wrapped(*a, _orig=orig, _tag=tag, **k):
                r = _orig(*a, **k)
                log.append((_tag, r.detach().clone()))
                return r
            mod.randn_tensor = wrapped
            self.undo.append(lambda mod=mod, orig=orig: setattr(mod, "randn_tensor", orig))
        orig_randint = torch.randint

        def randint(*a, **k):
            r = orig_randint(*a, **k)
            if k.get("generator") is not None:
                log.append(("randint", (a, r.detach().clone())))
            return r
        torch.randint = randint
        self.undo.append(lambda: setattr(torch, "randint", orig_randint))

        wrap_attr = self.wrap

        wrap_attr(pipe.unet, "forward", "unet",
                  lambda a, k, r: dict(sample=a[0].clone(), t=a[1], ehs=k["encoder_hidden_states"].clone(),
                                       out=r.sample.clone()))
        wrap_attr(pipe.scheduler, "add_noise", "add_noise",
                  lambda a, k, r: dict(orig=a[0].clone(), noise=a[1].clone(), t=a[2], out=r.clone()))
        wrap_attr(pipe.scheduler, "step", "step",
                  lambda a, k, r: dict(model_output=a[0].clone(), t=a[1], sample=a[2].clone(),
                                       prev=r.prev_sample.clone(), x0=_clone_x0(r)))
        wrap_attr(pipe.inverse_scheduler, "step", "istep",
                  lambda a, k, r: dict(model_output=a[0].clone(), t=a[1], sample=a[2].clone(),
                                       prev=r.prev_sample.clone(), x0=_clone_x0(r)))
        wrap_attr(pipe, "prepare_image_latents", "image_latents", lambda a, k, r: r.clone())
        return self



def _clone_x0(r):
    # DPM-Solver's SchedulerOutput has no pred_original_sample (fixtures_schedulers.py)
    x0 = getattr(r, "pred_original_sample", None)
    return None if x0 is None else x0.clone()


def cfg(out, gs):
    u, c = out.chunk(2)
    return u + gs * (c - u)


def ref_mask(pipe, spec, pil, src, tgt, steps, gs, ratio):
    """Run generate_mask (defaults except steps/ratio) under capture and re-derive every intermediate."""
    with Capture(pipe) as cap:
        mask = pipe.generate_mask(image=pil, source_prompt=src, target_prompt=tgt, num_inference_steps=steps,
                                  mask_thresholding_ratio=ratio, generator=torch.Generator("cpu").manual_seed(0))
    mask_t = torch.from_numpy(np.asarray(mask))
    (lat,) = cap.get("image_latents")
    post, noise = cap.get("randn.posterior"), cap.get("randn.pipeline")
    assert len(post) == 1 and len(noise) == 1 and not cap.get("randint")
    (an,) = cap.get("add_noise")
    (u,) = cap.get("unet")
    maps = 10
    e = u["ehs"]
    assert all(torch.equal(e[i * maps], e[i * maps + j]) for i in range(4) for j in range(maps))
    assert all(torch.equal(u["sample"][i * maps:(i + 1) * maps], an["out"]) for i in range(4))
    # generate_mask unpacks encode_prompt's (prompt_embeds, negative_prompt_embeds) into variables named
    # (negative, positive): the UNet batch is [src-pos, src-uncond, tgt-pos, tgt-uncond] and the "CFG"
    # below (pipeline's own variable names and formula) is pos + 7.5 * (uncond - pos).
    c0, c1, c2, c3 = u["out"].chunk(4)
    eps_src = c0 + gs * (c1 - c0)
    eps_tgt = c2 + gs * (c3 - c2)
    gmap = torch.abs(eps_tgt - eps_src).reshape(1, maps, *eps_tgt.shape[-3:]).mean([1, 2])
    clamp = gmap.mean() * ratio
    soft = gmap.clamp(0, clamp) / clamp
    hard = torch.where(soft <= 0.5, 0, 1)
    assert torch.equal(hard, mask_t), "re-derived mask differs"
    return dict(mask=mask, mask_t=mask_t, lat=lat, post=post[0], noise=noise[0], an=an, u=u, embeds=e[::maps],
                eps_src=eps_src, eps_tgt=eps_tgt, gmap=gmap, clamp=clamp, soft=soft,
                margin=float((soft - 0.5).abs().min()))


DENSE_RATIO = 2.1  # gives ~44% ones on both pipelines with a comfortable threshold margin


def ref_diffedit(pipe, st, spec, cat):
    steps = spec["steps"]
    src, tgt = spec["prompts"]
    gs = 7.5
    pil = PIL.Image.fromarray(cat)
    gen_desc = "torch.Generator('cpu').manual_seed(0), fresh for this call"
    stats = {}

    # ---------------- generate_mask ----------------
    margs = dict(image="cat.ppm (PIL RGB)", source_prompt=src, target_prompt=tgt, num_inference_steps=steps,
                 num_maps_per_mask=10, mask_encode_strength=0.5, mask_thresholding_ratio=3.0, guidance_scale=gs,
                 output_type="np", generator=gen_desc)
    r = ref_mask(pipe, spec, pil, src, tgt, steps, gs, 3.0)
    mask, mask_t, an, u = r["mask"], r["mask_t"], r["an"], r["u"]
    st.add("diffedit.mask.embeds", r["embeds"],
           call="encoder_hidden_states of the mask UNet call, one row per batch group (each group repeated "
                "num_maps=10 times): [source prompt, '' , target prompt, ''] -- see README (swapped names)")
    st.add("diffedit.mask.posterior_noise", r["post"],
           call="1st draw of the generator: randn([maps,4,h,w]) inside latent_dist.sample")
    st.add("diffedit.mask.image_latents", r["lat"],
           call="prepare_image_latents: vae.encode(image repeated 10x).latent_dist.sample(generator) * scaling_factor")
    st.add("diffedit.mask.noise", r["noise"], call="2nd draw of the generator: randn([maps,4,h,w])")
    st.add("diffedit.mask.timestep", torch.as_tensor(an["t"]).to(torch.int64),
           call="scheduler.set_timesteps(steps); get_timesteps(steps, 0.5)[0][0]")
    st.add("diffedit.mask.noised_latents", an["out"],
           call="scheduler.add_noise(image_latents, noise, timestep); the UNet input is cat([this]*4)")
    st.add("diffedit.mask.unet.out", u["out"],
           call="raw UNet output, batch order [src x10, '' x10, tgt x10, '' x10] (chunks c0..c3)")
    st.add("diffedit.mask.eps.source", r["eps_src"], guidance_scale=gs, call="c0 + 7.5*(c1 - c0)")
    st.add("diffedit.mask.eps.target", r["eps_tgt"], guidance_scale=gs, call="c2 + 7.5*(c3 - c2)")
    st.add("diffedit.mask.map", r["gmap"],
           call="|eps.target - eps.source| reshaped [1,maps,4,h,w], mean over dims [1,2]")
    st.add("diffedit.mask.clamp", r["clamp"], call="map.mean() * mask_thresholding_ratio (3.0)")
    st.add("diffedit.mask.soft", r["soft"], min_abs_soft_minus_half="%.6g" % r["margin"],
           call="map.clamp(0, clamp) / clamp")
    st.add("diffedit.mask", mask_t.to(torch.float32), original_dtype=str(np.asarray(mask).dtype),
           fraction_ones="%.6g" % float(mask_t.float().mean()), args_json=jdump(margs),
           call="pipe.generate_mask(...) (numpy int64 0/1, stored as f32) = where(soft <= 0.5, 0, 1)")
    stats["mask_fraction_ones"] = float(mask_t.float().mean())
    stats["mask_margin"] = r["margin"]
    stats["mask_timestep"] = int(an["t"])

    # supplementary: a denser mask from the same call with mask_thresholding_ratio=DENSE_RATIO
    r2 = ref_mask(pipe, spec, pil, src, tgt, steps, gs, DENSE_RATIO)
    assert torch.equal(r2["gmap"], r["gmap"])
    mask2 = r2["mask"]
    st.add("diffedit.mask.dense.clamp", r2["clamp"], call="map.mean() * %s" % DENSE_RATIO)
    st.add("diffedit.mask.dense.soft", r2["soft"], min_abs_soft_minus_half="%.6g" % r2["margin"],
           call="as diffedit.mask.soft but mask_thresholding_ratio=%s (same map)" % DENSE_RATIO)
    st.add("diffedit.mask.dense", r2["mask_t"].to(torch.float32),
           fraction_ones="%.6g" % float(r2["mask_t"].float().mean()),
           args_json=jdump(dict(margs, mask_thresholding_ratio=DENSE_RATIO)),
           call="pipe.generate_mask(..., mask_thresholding_ratio=%s)" % DENSE_RATIO)
    stats["mask_dense_fraction_ones"] = float(r2["mask_t"].float().mean())
    stats["mask_dense_margin"] = r2["margin"]

    # ---------------- invert ----------------
    iargs = dict(prompt=src, image="cat.ppm (PIL RGB)", num_inference_steps=steps, inpaint_strength=0.8,
                 guidance_scale=gs, negative_prompt=None, num_reg_steps=0, generator=gen_desc)
    with Capture(pipe) as cap:
        inv = pipe.invert(prompt=src, image=pil, num_inference_steps=steps,
                          generator=torch.Generator("cpu").manual_seed(0)).latents
    (lat,) = cap.get("image_latents")
    post = cap.get("randn.posterior")
    assert len(post) == 1 and not cap.get("randn.pipeline") and not cap.get("randint")
    us, ss = cap.get("unet"), cap.get("istep")
    ts = torch.stack([torch.as_tensor(s["t"]) for s in ss]).to(torch.int64)
    T = len(ss)
    assert T > 0 and len(us) == T
    for uu, s in zip(us, ss):
        assert torch.equal(cfg(uu["out"], gs), s["model_output"])
    st.add("diffedit.invert.posterior_noise", post[0], call="the only draw of the generator: randn([1,4,h,w])")
    st.add("diffedit.invert.image_latents", lat,
           call="vae.encode(image).latent_dist.sample(generator) * scaling_factor (input of the first step)")
    st.add("diffedit.invert.embeds", us[0]["ehs"], call="[negative '', prompt 'a cat'] (UNet batch order)")
    st.add("diffedit.invert.timesteps", ts,
           call="inverse_scheduler.set_timesteps(steps); get_inverse_timesteps(steps, 0.8)[0] (ascending)")
    st.add("diffedit.invert.eps", torch.stack([s["model_output"] for s in ss]),
           guidance_scale=gs, call="per step i: CFG noise prediction passed to inverse_scheduler.step, [T,1,4,h,w]")
    st.add("diffedit.inverted", inv, args_json=jdump(iargs), num_timesteps=T,
           call="pipe.invert(...).latents = stack(reversed(steps), dim=1): [1,T,4,h,w], noisiest first")
    assert torch.equal(inv[0], torch.stack([s["prev"] for s in ss])[:, 0].flip(0))
    stats["inverted_absmax"] = float(inv.abs().max())

    # ---------------- invert with regularisation ----------------
    rargs = dict(iargs, num_reg_steps=2, lambda_auto_corr=20.0, lambda_kl=20.0, num_auto_corr_rolls=5)
    with Capture(pipe) as cap:
        inv_reg = pipe.invert(prompt=src, image=pil, num_inference_steps=steps, num_reg_steps=2,
                              generator=torch.Generator("cpu").manual_seed(0)).latents
    us, ss = cap.get("unet"), cap.get("istep")
    ri = cap.get("randint")
    rolls = torch.cat([r for (a, r) in ri]).to(torch.int64)
    highs = sorted(set(int(a[0]) for (a, r) in ri))
    assert torch.equal(cap.get("randn.posterior")[0], post[0])
    st.add("diffedit.invert.reg.eps_raw", torch.stack([cfg(uu["out"], gs) for uu in us]),
           call="per step: CFG noise prediction before regularisation")
    st.add("diffedit.invert.reg.eps", torch.stack([s["model_output"] for s in ss]),
           call="per step: noise prediction after regularisation (what inverse_scheduler.step received)")
    st.add("diffedit.invert.reg.rolls", rolls, randint_high_json=jdump(highs),
           call="every torch.randint(high, (1,), generator=g) drawn by auto_corr_loss, in order (the same "
                "generator that drew the posterior noise)")
    st.add("diffedit.inverted.reg", inv_reg, args_json=jdump(rargs),
           call="pipe.invert(..., num_reg_steps=2).latents (autograd-based regulariser), noisiest first")
    stats["reg_rolls"] = int(rolls.numel())

    # ---------------- __call__ ----------------
    cargs = dict(prompt=tgt, mask_image="diffedit.mask", image_latents="diffedit.inverted", negative_prompt=src,
                 num_inference_steps=steps, inpaint_strength=0.8, guidance_scale=gs, eta=0.0, generator=gen_desc)
    with Capture(pipe) as cap:
        edited = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src,
                      num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
                      output_type="latent").images
    us, ss = cap.get("unet"), cap.get("step")
    assert not cap.get("randn.pipeline") and not cap.get("randn.posterior")
    ts = torch.stack([torch.as_tensor(s["t"]) for s in ss]).to(torch.int64)
    blended = [s["sample"] for s in ss[1:]] + [edited]
    assert torch.equal(ss[0]["sample"], inv[:, 0])
    st.add("diffedit.call.embeds", us[0]["ehs"],
           call="[negative_prompt (= source prompt), prompt (= target prompt)] (UNet batch order)")
    st.add("diffedit.call.timesteps", ts, call="scheduler.set_timesteps(steps); get_timesteps(steps, 0.8)[0] (descending)")
    st.add("diffedit.call.eps", torch.stack([s["model_output"] for s in ss]), guidance_scale=gs,
           call="per step: CFG noise prediction passed to scheduler.step")
    st.add("diffedit.call.step_out", torch.stack([s["prev"] for s in ss]),
           call="per step i: scheduler.step(eps, t, latents, eta=0).prev_sample (before blending)")
    st.add("diffedit.call.latents", torch.stack(blended),
           call="per step i: step_out[i]*mask + inverted[:, i]*(1-mask) (latents after blending)")
    st.add("diffedit.edited.latents", edited, args_json=jdump(dict(cargs, output_type="latent")),
           call='pipe(..., output_type="latent").images')
    with Capture(pipe) as cap:
        img = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src,
                   num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
                   output_type="np").images
    assert torch.equal(cap.get("step")[-1]["prev"] * torch.from_numpy(np.asarray(mask)).float()
                       + inv[:, -1] * (1 - torch.from_numpy(np.asarray(mask)).float()), edited)
    with torch.no_grad():
        dec = pipe.vae.decode(edited / pipe.vae.config.scaling_factor).sample
    st.add("diffedit.edited.decoded", dec, call="vae.decode(edited.latents / scaling_factor).sample")
    u8 = (img[0] * 255).round().astype(np.uint8)
    st.add("diffedit.edited.u8", u8, args_json=jdump(dict(cargs, output_type="np")),
           call='(pipe(..., output_type="np").images[0] * 255).round().astype(uint8), HWC')
    stats["edited_u8_unique"] = int(len(np.unique(u8)))

    # supplementary: the same __call__ with the dense mask
    with Capture(pipe) as cap:
        edited2 = pipe(prompt=tgt, mask_image=mask2, image_latents=inv, negative_prompt=src,
                       num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
                       output_type="latent").images
    ss = cap.get("step")
    st.add("diffedit.call.dense.latents", torch.stack([s["sample"] for s in ss[1:]] + [edited2]),
           call="as diffedit.call.latents, with mask_image=diffedit.mask.dense")
    st.add("diffedit.edited.dense.latents", edited2,
           args_json=jdump(dict(cargs, mask_image="diffedit.mask.dense", output_type="latent")),
           call='pipe(..., mask_image=diffedit.mask.dense, output_type="latent").images')
    img2 = pipe(prompt=tgt, mask_image=mask2, image_latents=inv, negative_prompt=src,
                num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    st.add("diffedit.edited.dense.u8", (img2[0] * 255).round().astype(np.uint8),
           args_json=jdump(dict(cargs, mask_image="diffedit.mask.dense", output_type="np")),
           call='(pipe(..., mask_image=diffedit.mask.dense, output_type="np").images[0] * 255).round().astype(uint8)')
    return stats


# ----------------------------------------------------------------------------------------------
# 5. Shared: scheduler and rng
# ----------------------------------------------------------------------------------------------
def ref_scheduler(out):
    st = Stream(os.path.join(out, "scheduler.tensor"))
    g = torch.Generator("cpu").manual_seed(1234)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    model_output = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    st.add("sched.input.sample", sample, call="randn(2,4,8,8) #1 of torch.Generator('cpu').manual_seed(1234)")
    st.add("sched.input.model_output", model_output, call="randn #2 of the same generator")
    st.add("sched.input.noise", noise, call="randn #3 of the same generator")
    variants = [
        ("sd1", SD1_SCHED),
        ("sd2", SD2_SCHED),
        ("trailing", dict(SD1_SCHED, timestep_spacing="trailing")),
        ("linspace", dict(SD1_SCHED, timestep_spacing="linspace")),
        ("offset0", dict(SD1_SCHED, steps_offset=0)),
        ("linear", dict(SD1_SCHED, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)),
        ("cosine", dict(SD1_SCHED, beta_schedule="squaredcos_cap_v2")),
        ("sample", dict(SD1_SCHED, prediction_type="sample")),
        ("alpha1", dict(SD1_SCHED, set_alpha_to_one=True)),
        ("clip", dict(SD1_SCHED, clip_sample=True, clip_sample_range=1.0)),
        ("vpred_trailing_clip", dict(SD2_SCHED, timestep_spacing="trailing", clip_sample=True, set_alpha_to_one=True)),
    ]
    add_t = torch.tensor([981, 1], dtype=torch.int64)
    for name, cfgd in variants:
        s = DDIMScheduler(**cfgd)
        p = "sched.%s." % name
        st.add(p + "alphas_cumprod", s.alphas_cumprod, config_json=config_json(s.config),
               final_alpha_cumprod=f32repr(s.final_alpha_cumprod), call="DDIMScheduler(**config).alphas_cumprod")
        for n in (50, 20, 10, 7):
            s.set_timesteps(n)
            st.add(p + "timesteps.%d" % n, s.timesteps, call="set_timesteps(%d); timesteps" % n)
        for n, idx in ((50, 10), (50, -1), (7, 1)):
            s.set_timesteps(n)
            t = s.timesteps[idx]
            r = s.step(model_output, t, sample, eta=0.0)
            q = p + "step.n%d.t%d." % (n, int(t))
            kw = dict(num_inference_steps=n, timestep=int(t), eta="0.0",
                      call="set_timesteps(%d); step(sched.input.model_output, %d, sched.input.sample, eta=0)" % (n, int(t)))
            st.add(q + "prev_sample", r.prev_sample, **kw)
            st.add(q + "pred_original_sample", r.pred_original_sample, **kw)
        st.add(p + "add_noise", s.add_noise(sample, noise, add_t), timesteps_json=jdump(add_t.tolist()),
               call="add_noise(sched.input.sample, sched.input.noise, tensor([981, 1]))  (per-batch-item timesteps)")
        if cfgd["timestep_spacing"] == "linspace":
            continue  # DDIMInverseScheduler raises for linspace spacing
        inv = DDIMInverseScheduler.from_config(s.config)
        p = "isched.%s." % name
        for n in (50, 20, 10, 7):
            inv.set_timesteps(n)
            kw = dict(call="DDIMInverseScheduler.from_config(DDIMScheduler(**config).config); set_timesteps(%d)" % n)
            if n == 50:
                kw.update(config_json=config_json(inv.config), initial_alpha_cumprod=f32repr(inv.initial_alpha_cumprod))
            st.add(p + "timesteps.%d" % n, inv.timesteps, **kw)
        for n, idx in ((50, 0), (50, 10), (7, 1)):
            inv.set_timesteps(n)
            t = inv.timesteps[idx]
            r = inv.step(model_output, t, sample)
            q = p + "step.n%d.t%d." % (n, int(t))
            kw = dict(num_inference_steps=n, timestep=int(t),
                      call="set_timesteps(%d); step(sched.input.model_output, %d, sched.input.sample)" % (n, int(t)))
            st.add(q + "prev_sample", r.prev_sample, **kw)
            st.add(q + "pred_original_sample", r.pred_original_sample, **kw)
    st.write()


def ref_rng(out):
    st = Stream(os.path.join(out, "rng.tensor"))
    seeds = [0, 1, 42, 2 ** 32 + 5]
    shapes = [(1,), (2,), (3,), (15,), (16,), (17,), (31,), (32,), (33,), (100,), (256,), (1, 4, 8, 8), (10, 4, 8, 6)]
    sname = lambda shp: "x".join(str(d) for d in shp)  # noqa: E731
    for s in seeds:
        for shp in shapes:
            g = torch.Generator("cpu").manual_seed(s)
            st.add("rng.randn.s%d.%s" % (s, sname(shp)), torch.randn(shp, generator=g), seed=s,
                   call="torch.randn(%s, generator=torch.Generator('cpu').manual_seed(%d))" % (list(shp), s))
    for s in (0, 42):
        for shp in [(1, 4, 8, 8), (10, 4, 8, 8), (10, 4, 8, 6), (17,)]:
            g = torch.Generator("cpu").manual_seed(s)
            a = torch.randn(shp, generator=g)
            b = torch.randn(shp, generator=g)
            for tag, x in (("first", a), ("second", b)):
                st.add("rng.randn2.s%d.%s.%s" % (s, sname(shp), tag), x, seed=s,
                       call="g=torch.Generator('cpu').manual_seed(%d); a=torch.randn(%s, generator=g); "
                            "b=torch.randn(%s, generator=g); this is %s" % (s, list(shp), list(shp), "a" if tag == "first" else "b"))
    # mixed sizes from one generator (small path then large path then small)
    g = torch.Generator("cpu").manual_seed(0)
    seq = [(5,), (16,), (3,), (40,), (1,)]
    for i, shp in enumerate(seq):
        st.add("rng.mixed.s0.%d" % i, torch.randn(shp, generator=g), seed=0,
               call="g=manual_seed(0); successive torch.randn(shape, generator=g) for shapes %s; this is #%d" % (
                   [list(x) for x in seq], i))
    # float64 path, stored as raw IEEE-754 bits in i64 records (the format has no f64 dtype)
    for s in (0, 42):
        for shp in [(1,), (15,), (16,), (17,), (33,), (100,)]:
            g = torch.Generator("cpu").manual_seed(s)
            x = torch.randn(shp, generator=g, dtype=torch.float64).numpy()
            st.add("rng.randn.f64bits.s%d.%s" % (s, sname(shp)), x.view(np.int64), seed=s, encoding="float64-bits",
                   call="torch.randn(%s, generator=manual_seed(%d), dtype=torch.float64), bit pattern as i64" % (list(shp), s))
    # randint, as drawn by the inversion regulariser (auto_corr_loss)
    for s in (0, 42):
        g = torch.Generator("cpu").manual_seed(s)
        st.add("rng.randint.s%d.high4" % s, torch.cat([torch.randint(4, (1,), generator=g) for _ in range(64)]),
               seed=s, call="64 successive torch.randint(4, (1,), generator=g), g=manual_seed(%d)" % s)
        g = torch.Generator("cpu").manual_seed(s)
        pre = torch.randn(1, 4, 8, 8, generator=g)
        st.add("rng.randint.s%d.after_randn_1x4x8x8.randn" % s, pre, seed=s,
               call="g=manual_seed(%d); first torch.randn([1,4,8,8], generator=g)" % s)
        st.add("rng.randint.s%d.after_randn_1x4x8x8" % s,
               torch.cat([torch.randint(4, (1,), generator=g) for _ in range(64)]), seed=s,
               call="then 64 successive torch.randint(4, (1,), generator=g)")
        g = torch.Generator("cpu").manual_seed(s)
        st.add("rng.randint.s%d.high3" % s, torch.cat([torch.randint(3, (1,), generator=g) for _ in range(64)]),
               seed=s, call="64 successive torch.randint(3, (1,), generator=g), g=manual_seed(%d)" % s)
    st.write()


# ----------------------------------------------------------------------------------------------
# 6. Tokens
# ----------------------------------------------------------------------------------------------
def ref_tokens(out, prompts, tokenizers, oc_mod, report):
    with open(os.path.join(out, "prompts.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(prompts, ensure_ascii=False, indent=1) + "\n")
    nopad_ref = None
    for key, tok in tokenizers.items():
        st = Stream(os.path.join(out, "tokens-%s.tensor" % key))
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True).input_ids
        nopad = tok(prompts, truncation=True, max_length=77).input_ids
        ids = np.array(ids, dtype=np.int32)
        lengths = np.array([len(x) for x in nopad], dtype=np.int32)
        flat = np.array([i for x in nopad for i in x], dtype=np.int32)
        assert len(prompts) > 0 and len(ids) == len(nopad) == len(prompts)
        for r, x in zip(ids, nopad):
            assert list(r[:len(x)]) == x and all(v == tok.pad_token_id for v in r[len(x):])
        st.add("ids", ids, pad_token=tok.pad_token, pad_token_id=tok.pad_token_id,
               call='CLIPTokenizer(%s/tokenizer)(prompts.json, padding="max_length", max_length=77, truncation=True)' % key)
        st.add("ids.nopad", flat, call="concatenation of tokenizer(p, truncation=True, max_length=77).input_ids")
        st.add("lengths", lengths, call="length of each prompt's ids.nopad slice (includes BOS and EOS)")
        st.write()
        if nopad_ref is None:
            nopad_ref = nopad
        else:
            diff = [p_ for p_, a, b in zip(prompts, nopad_ref, nopad) if a != b]
            assert all("!" in p_ for p_ in diff)
            report["prompts_where_sd2_ids_differ_from_sd1 (all contain '!')"] = len(diff)

    # ---- checks against independent implementations ----
    tok = tokenizers["sd1"]
    # (a) same folder loaded through tokenizer.json (what transformers' save_pretrained would write)
    tmp = tempfile.mkdtemp()
    tok.save_pretrained(tmp)
    tj = CLIPTokenizer.from_pretrained(tmp)
    shutil.rmtree(tmp)
    report["tokenizer_json_roundtrip_mismatches"] = sum(
        a != b for a, b in zip(tj(prompts).input_ids, tok(prompts).input_ids))
    # (b) open_clip's SimpleTokenizer (= openai CLIP's), with stub ftfy
    st_oc = oc_mod.SimpleTokenizer()

    def oc_ids(text, clean):
        body = []
        for t in oc_mod.re.findall(st_oc.pat, clean(text)):
            t = "".join(st_oc.byte_encoder[b] for b in t.encode("utf-8"))
            body.extend(st_oc.encoder[b] for b in st_oc.bpe(t).split(" "))
        return ([49406] + body)[:76] + [49407]

    no_html = lambda s: oc_mod.whitespace_clean(s.strip()).lower()  # noqa: E731
    nfc_no_html = lambda s: no_html(unicodedata.normalize("NFC", s))  # noqa: E731
    mism = {}
    assert len(prompts) > 0 and len(nopad_ref) == len(prompts)
    for p_, hf in zip(prompts, nopad_ref):
        oc = ([49406] + st_oc.encode(p_))[:76] + [49407]
        if oc == hf:
            continue
        if oc_ids(p_, no_html) == hf:
            why = "html.unescape"
        elif oc_ids(p_, nfc_no_html) == hf:
            why = "nfc"
        elif "<|startoftext|>" in p_ or "<|endoftext|>" in p_ or "<start_of_text>" in p_:
            why = "special-token-literal"
        elif "\u03a3" in p_:
            why = "final-sigma"
        else:
            why = "other"
        mism.setdefault(why, []).append(p_)
    report["open_clip_mismatches"] = mism
    report["open_clip_checked"] = len(prompts)
    if "other" in mism:
        print("WARNING: unexplained open_clip/HF tokenizer differences:", mism["other"])


# ----------------------------------------------------------------------------------------------
# 7. Main
# ----------------------------------------------------------------------------------------------
GENERATED = ["sd1", "sd2", "scheduler.tensor", "rng.tensor", "prompts.json", "tokens-sd1.tensor",
             "tokens-sd2.tensor", "single-file", "MANIFEST.txt"] + fixtures_schedulers.GENERATED + \
    fixtures_coverage.GENERATED + fixtures_attention_store.GENERATED + fixtures_ledits.GENERATED + \
    fixtures_textual_inversion.GENERATED + fixtures_vae_tiling.GENERATED + fixtures_lora.GENERATED


def manifest(out):
    lines = []
    for root, dirs, files in os.walk(out):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out)
            if rel in ("README.md", "MANIFEST.txt"):
                continue
            if os.path.islink(p):
                lines.append("%s -> %s" % (rel, os.readlink(p)))
                continue
            data = open(p, "rb").read()
            lines.append("%s  %d  sha256=%s" % (rel, len(data), hashlib.sha256(data).hexdigest()))
            if f.endswith(".tensor"):
                for name, dt, shape, meta, _ in read_stream(p):
                    lines.append("    %-48s %-4s [%s]" % (name, dt, ",".join(str(d) for d in shape)))
    return "\n".join(lines) + "\n"


def main():
    t0 = time.time()
    for mod, v in (("torch", torch.__version__), ("diffusers", diffusers.__version__),
                   ("transformers", transformers.__version__), ("numpy", np.__version__),
                   ("PIL", PIL.__version__)):
        if not v.startswith(EXPECTED_VERSIONS[mod]):
            print("WARNING: %s %s != pinned %s; fixtures may differ" % (mod, v, EXPECTED_VERSIONS[mod]))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "Tests", "Fixtures"))
    os.makedirs(out, exist_ok=True)
    for g in GENERATED:
        p = os.path.join(out, g)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)
    print("output:", out)
    report = {}

    vocab_json, merges_txt = build_vocab_and_merges()
    oc_mod = load_open_clip_tokenizer_module()
    tokenizers = {}
    for key, spec in SPECS.items():
        print("[%s] building and saving models" % key)
        build_and_save(key, spec, out, vocab_json, merges_txt)
        tokenizers[key] = CLIPTokenizer.from_pretrained(os.path.join(out, key, "tokenizer"))

    # quick tokenizer sanity on ordinary prompts: HF == open_clip exactly
    st_oc = oc_mod.SimpleTokenizer()
    for p_ in ["a photo of a cat", "A Photograph of an astronaut riding a horse, 4k!", "it's a dog's life",
               "two  cats\tand a dog", "Ærøskøbing café 東京 🐱"]:
        hf = tokenizers["sd1"](p_).input_ids
        assert hf == [49406] + st_oc.encode(p_) + [49407], p_
        if "!" not in p_:  # sd2's pad token "!" is a special (added) token: every "!" becomes id 0
            assert tokenizers["sd2"](p_).input_ids == hf

    for key, spec in SPECS.items():
        print("[%s] reference tensors" % key)
        pipe = load_reference_pipeline(key, spec, out)
        report[key + ".tokenizer_class"] = type(pipe.tokenizer).__module__ + "." + type(pipe.tokenizer).__name__
        cat, box = make_cat(spec)
        ref = os.path.join(out, key, "ref")
        os.makedirs(ref, exist_ok=True)
        write_ppm(os.path.join(out, key, "cat.ppm"), cat)
        st = Stream(os.path.join(ref, "text.tensor"))
        emb = ref_text(pipe, st, spec)
        st.write()
        st = Stream(os.path.join(ref, "vae.tensor"))
        report[key + ".vae"] = ref_vae(pipe, st, spec, cat, box)
        st.write()
        st = Stream(os.path.join(ref, "unet.tensor"))
        report[key + ".unet"] = ref_unet(pipe, st, spec, emb)
        st.write()
        st = Stream(os.path.join(ref, "diffedit.tensor"))
        report[key + ".diffedit"] = ref_diffedit(pipe, st, spec, cat)
        st.write()
        report[key + ".cat_crop_box"] = list(box)

    print("[shared] scheduler, rng, tokens")
    ref_scheduler(out)
    ref_rng(out)
    prompts = make_prompts()
    ref_tokens(out, prompts, tokenizers, oc_mod, report)
    print("[single-file] the pipelines as LDM-layout single files; full-size SD 1.5 / 2.1 key sets")
    fixtures_single_file.write(out, SPECS)
    # DPM-Solver++ and DDIM eta (Tests/Reference/fixtures_schedulers.py); last, so nothing above changes
    report.update(fixtures_schedulers.write_all(out, sys.modules[__name__]))
    # Issue 24's additions (Tests/Reference/fixtures_coverage.py): new files only, after everything else
    report.update(fixtures_coverage.write_all(out, sys.modules[__name__]))
    # Issue 26 (Tests/Reference/fixtures_attention_store.py): one new file, reading sd1/unet written above
    report.update(fixtures_attention_store.write_all(out, sys.modules[__name__]))
    # Issue 26 (Tests/Reference/fixtures_ledits.py): the LEDITS++ model folders and their references, last
    # (reads sd1/, sd2/ written above; adds only sd1-ledits/ and sd2-ledits/)
    report.update(fixtures_ledits.write_all(out, sys.modules[__name__]))
    # Issue 28 (Tests/Reference/fixtures_textual_inversion.py): embeddings and their references, last
    # (reads sd1/, sd2/ written above; adds only textual-inversion/)
    report.update(fixtures_textual_inversion.write_all(out, sys.modules[__name__]))
    # Issue 28 part 3 (Tests/Reference/fixtures_vae_tiling.py): tiled VAE references, last
    # (reads sd1/vae written above; adds only vae-tiling.tensor)
    report.update(fixtures_vae_tiling.write_all(out, sys.modules[__name__]))
    # Issue 28 part 1 (Tests/Reference/fixtures_lora.py): LoRA files and their references, last
    # (it reads sd1/ and sd2/ and only adds lora/).
    report.update(fixtures_lora.write_all(out, sys.modules[__name__]))

    man = manifest(out)
    with open(os.path.join(out, "MANIFEST.txt"), "w", newline="\n") as f:
        f.write(man)
    mism = report.pop("open_clip_mismatches")
    print("report:")
    for k in sorted(report):
        print("  %s: %s" % (k, report[k]))
    print("  open_clip (stub ftfy) vs CLIPTokenizer mismatches: %d of %d prompts: %s" % (
        sum(len(v) for v in mism.values()), report["open_clip_checked"],
        {k: len(v) for k, v in sorted(mism.items())}))
    for k, v in sorted(mism.items()):
        for p_ in v[:3]:
            print("    %s: %r" % (k, p_[:80]))
    print("done in %.1f s" % (time.time() - t0))


if __name__ == "__main__":
    main()

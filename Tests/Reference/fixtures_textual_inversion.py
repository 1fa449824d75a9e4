#!/usr/bin/env python3
"""Textual-inversion embeddings against diffusers (issue 28, part 2): `textual-inversion/`.

Usage:  python Tests/Reference/fixtures_textual_inversion.py [OUT_DIR]   (default: <repo>/Tests/Fixtures)
        or `write_all(out, mf)` from make_fixtures.py (run last: it reads sd1/ and sd2/ and only adds
        OUT_DIR/textual-inversion/).

Small random embeddings for the fixture models, in the two safetensors layouts users bring:
* diffusers' `learned_embeds.safetensors`: one tensor named by its token, [D] or [n, D];
* A1111's safetensors: one tensor `emb_params` [n, D], the token being the file's stem (A1111 names an
  embedding after its file; diffusers would call it "emb_params", so the stem is passed as `token=`).

Files (D = the text encoder's hidden size: sd1 32, sd2 40):
* `sd1/cat-toy.safetensors`    diffusers, `<cat-toy>` f32 [32]         (one vector, 1-D)
* `sd1/wood-style.safetensors` diffusers, `<wood-style>` f32 [2, 32]   (two vectors)
* `sd1/inkwash.safetensors`    A1111, `emb_params` f32 [2, 32]         (token `inkwash`)
* `sd2/cat-toy.safetensors`    diffusers, `<cat-toy>` f16 [1, 40]      (one vector, 2-D, f16)
* `sd2/wood-style.safetensors` diffusers, `<wood-style>` f32 [2, 40], loaded as `:<Wood-Style>`
* `sd2/inkwash.safetensors`    A1111, `emb_params` f32 [3, 40]         (token `inkwash`)
* `ref.tensor`: per model K (sd1, sd2), after `pipe.load_textual_inversion` of that model's three files
  in the order above (each call as `--embedding FILE[:TOKEN]` would make it):
  - `K.ids` i32 [P, 77]: `tokenizer(maybe_convert_prompt(prompts), padding="max_length", max_length=77,
    truncation=True)`; metadata `prompts_json`, `converted_json` (the prompts after maybe_convert_prompt),
    `embeddings_json` (the `--embedding` arguments, paths relative to textual-inversion/), `tokens_json`
    (the added tokens in id order), `first_id` (the first added id = the tokenizer's size before).
  - `K.last_hidden` f32 [P, 77, D]: `pipe.encode_prompt(prompts, cpu, 1, False)[0]` (which converts the
    prompts itself) == `text_encoder(ids)[0]`.

diffusers quirks kept on purpose (the Swift port reproduces them): added tokens are matched in the
normalised (lower-cased) text, so `INKWASH` finds `inkwash`; maybe_convert_prompt looks the *normalised*
piece up among the added tokens' contents, so a multi-vector token whose name has capitals
(`<Wood-Style>`) is never expanded and contributes its first vector only; and it expands with Python's
`str.replace` on the raw prompt, so `inkwash_2` becomes `inkwash inkwash_1 inkwash_2_2`.
"""
import os
import sys

import safetensors.torch
import torch

GENERATED = ["textual-inversion"]
FOLDER = "textual-inversion"

# (file stem, layout, vectors or None for a 1-D diffusers tensor, dtype, token override)
FILES = {
    "sd1": [("cat-toy", "diffusers", None, torch.float32, None),
            ("wood-style", "diffusers", 2, torch.float32, None),
            ("inkwash", "a1111", 2, torch.float32, None)],
    "sd2": [("cat-toy", "diffusers", 1, torch.float16, None),
            ("wood-style", "diffusers", 2, torch.float32, "<Wood-Style>"),
            ("inkwash", "a1111", 3, torch.float32, None)],
}

PROMPTS = {
    "sd1": [
        "a photo of <cat-toy>",
        "a <wood-style> painting of a cat, inkwash",
        "<cat-toy> and <cat-toy> in inkwash, <wood-style>",
        "INKWASH style <Wood-Style>",
        "a cat",
        "inkwashes<wood-style>s x <cat-toy>_1",
        "photo " * 74 + "<wood-style>",  # the expansion's second vector falls past 75 tokens
    ],
    "sd2": [
        "a photo of <cat-toy>!",
        "<Wood-Style> painting, inkwash",
        "<wood-style> in inkwash_2 inkwash",
        "",
    ],
}


def key_of(stem):
    return "<%s>" % stem


def make_files(out, key, hidden):
    """Writes the embedding files of `key`; returns the --embedding arguments and diffusers' tokens."""
    folder = os.path.join(out, FOLDER, key)
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator("cpu").manual_seed(2800 + (0 if key == "sd1" else 1))
    specs = []
    for stem, layout, n, dtype, override in FILES[key]:
        shape = (hidden,) if n is None else (n, hidden)
        # The scale of real CLIP token embeddings (std about 0.015 in SD 1.5), times a few: the
        # embeddings move the encoder's output well beyond the tolerance.
        v = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        name = "emb_params" if layout == "a1111" else key_of(stem)
        safetensors.torch.save_file({name: v.contiguous()}, os.path.join(folder, stem + ".safetensors"))
        token = override or (stem if layout == "a1111" else key_of(stem))
        specs.append(("%s/%s.safetensors" % (key, stem) + (":" + override if override else ""), token))
    return specs


def refusals(mf, pipe, out, key):
    """What diffusers refuses and the tools must refuse too: a token already in the vocabulary, and an
    embedding of another width (checked on a fresh pipeline: a refused call may leave it changed)."""
    path = os.path.join(out, FOLDER, key, "cat-toy.safetensors")
    for token in ("cat", "<|endoftext|>"):
        try:
            pipe.load_textual_inversion(path, token=token)
        except ValueError as e:
            assert "already in tokenizer vocabulary" in str(e), e
        else:
            raise AssertionError("diffusers accepted token %r" % token)
    other = os.path.join(out, FOLDER, "sd2" if key == "sd1" else "sd1", "wood-style.safetensors")
    try:
        pipe.load_textual_inversion(other, token="<other-size>")
    except ValueError as e:
        assert "incorrect shape" in str(e), e
    else:
        raise AssertionError("diffusers accepted an embedding of another width")


def reference(mf, st, out, key, spec, specs):
    hidden = spec["text"]["hidden_size"]
    probe = mf.load_reference_pipeline(key, spec, out)
    refusals(mf, probe, out, key)
    del probe
    pipe = mf.load_reference_pipeline(key, spec, out)
    tok = pipe.tokenizer
    first_id = len(tok)
    assert first_id == spec["text"]["vocab_size"], (first_id, spec["text"]["vocab_size"])
    for arg, token in specs:
        path = os.path.join(out, FOLDER, arg.split(":")[0])
        pipe.load_textual_inversion(path, token=token)
    added = [t for t, i in sorted(tok.added_tokens_encoder.items(), key=lambda x: x[1]) if i >= first_id]
    assert [tok.convert_tokens_to_ids(t) for t in added] == list(range(first_id, first_id + len(added)))
    prompts = PROMPTS[key]
    converted = pipe.maybe_convert_prompt(prompts, tok)
    ids = tok(converted, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
        direct = pipe.text_encoder(ids)[0]
    assert torch.equal(direct, emb)
    # The embeddings reach the encoder: every prompt that names a token differs from its plain tokens.
    rows = pipe.text_encoder.get_input_embeddings().weight
    for arg, token in specs:
        v = safetensors.torch.load_file(os.path.join(out, FOLDER, arg.split(":")[0]))
        v = next(iter(v.values())).float().reshape(-1, hidden)
        i = tok.convert_tokens_to_ids(token)
        assert torch.equal(rows[i:i + v.shape[0]].detach(), v), token
    st.add(key + ".ids", ids.to(torch.int32), prompts_json=mf.jdump(prompts), converted_json=mf.jdump(converted),
           embeddings_json=mf.jdump([a for a, _ in specs]), tokens_json=mf.jdump(added), first_id=first_id,
           call="pipe.load_textual_inversion(FILE, token=TOKEN) per embedding; tokenizer(maybe_convert_prompt("
                "prompts), padding='max_length', max_length=77, truncation=True)")
    st.add(key + ".last_hidden", emb, call="pipe.encode_prompt(prompts, cpu, 1, False)[0] == text_encoder(ids)[0]")
    return {key + ".textual_inversion.tokens": added, key + ".textual_inversion.converted": converted}


def write_all(out, mf):
    """Everything of this module; `mf` is the make_fixtures module (SPECS, the pipeline loader, Stream)."""
    report = {}
    st = mf.Stream(os.path.join(out, FOLDER, "ref.tensor"))
    # Every file first: each model's refusals load the other model's files.
    specs = {key: make_files(out, key, mf.SPECS[key]["text"]["hidden_size"]) for key in ("sd1", "sd2")}
    for key in ("sd1", "sd2"):
        print("[%s] textual-inversion embeddings" % key)
        report.update(reference(mf, st, out, key, mf.SPECS[key], specs[key]))
    st.write()
    return report


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import make_fixtures  # noqa: E402  (its environment: offline hub, one thread, deterministic algorithms)
    target = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "Fixtures"))
    import shutil
    shutil.rmtree(os.path.join(target, FOLDER), ignore_errors=True)
    for k, v in sorted(write_all(target, make_fixtures).items()):
        print("  %s: %s" % (k, v))

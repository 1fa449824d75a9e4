"""The DiffEdit edit as the tools' command lines, written once for the Python scripts.

examples.sh spells the same pipeline out in shell for a reader; bench/compare.py,
demo/benchmark.py and demo/diffedit_check.py build theirs here:

    e = Edit("a red circle", "a blue circle", "in.ppm", steps=50, seed=0, guidance=3.0)
    c = Commands(e, bin=".build/release", dir="out")    # where the tools and the files are
    for stage in c.stages():                            # vae-encode, captions, mask, invert, denoise, decode
        stage.argvs, stage.stdin, stage.stdout          # a pipeline of argv lists and its files
    subprocess.run(["bash", "-o", "pipefail", "-c", shell_line(Commands(e).stages())], cwd=d, env=tool_env(model))

A setting left at None leaves its option off, so the tool's default (or the model's
diffedit_defaults.json) applies. Options come in one order: inputs, then settings, then --quiet.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

# The files of one edit, named as examples.sh names them.
FILES = {"posterior": "posterior.tensor", "source": "source.tensor", "target": "target.tensor",
         "empty": "empty.tensor", "mask": "mask.tensor", "inverted": "inverted.tensor",
         "edited": "edited.tensor", "decoded": "edited.ppm",
         "ledits": "ledits.tensor", "ledits_masks": "ledits-masks.tensor",
         "add": "add.tensor", "remove": "remove.tensor"}


@dataclass(frozen=True)
class Edit:
    source: str                     # caption of what the image shows
    target: str                     # caption of what it should show
    image: str                      # the input picture (netpbm)
    model: str | None = None        # --model on every tool (None: $DIFFEDIT_MODEL, else the demo model)
    steps: int | None = None        # noise-diff-mask's and invert's; denoise takes the stack's
    seed: int | None = None         # noise-diff-mask's and invert's
    scheduler: str | None = None    # ddim | dpm, noise-diff-mask's and invert's; denoise takes the stack's
    guidance: object = None         # every stage's guidance scale
    invert_guidance: object = None  # invert's, where it differs from the others' (None: guidance)
    mask_guidance: object = None    # noise-diff-mask's, where it differs (None: guidance)
    denoise_guidance: object = None # denoise's, where it differs (None: guidance)
    mask_steps: int | None = None   # noise-diff-mask's steps, where they differ (None: steps)
    strength: object = None         # invert's; denoise takes the stack's
    maps: int | None = None         # noise-diff-mask's --maps, --encode-strength, --threshold-ratio
    encode_strength: object = None
    threshold_ratio: object = None
    dilate: int | None = None       # noise-diff-mask's --dilate (latent cells)
    blend: str | None = None        # denoise's: diffusers | paper
    deep_cache: int | None = None   # invert's and denoise's --deep-cache N (DeepCache; None: off)
    negative: str | None = None     # denoise's negative prompt: "source", "empty" or None (the model's)
    empty_negatives: bool = False   # the empty prompt as noise-diff-mask's and invert's negatives too,
                                    # so that no diffedit_defaults.json changes them
    quiet: bool = False             # --quiet on noise-diff-mask, invert and denoise
    # LEDITS++ (invert --method ledits, denoise --method ledits): the edit adds the target caption;
    # with ledits_remove_source it also removes the source caption (two concepts, the paper's
    # replacement recipe — which, with whole captions, also removes what they say of the background).
    ledits_steps: int | None = None         # invert --method ledits --steps (inversion steps)
    skip: object = None                     # its --skip
    source_guidance: object = None          # its --guidance (used only with a source prompt)
    ledits_source_prompt: bool = False      # invert under the source caption (else the empty prompt)
    edit_guidance: object = None            # denoise --method ledits --edit-guidance (one or "a,b")
    edit_threshold: object = None           # --edit-threshold
    edit_warmup: object = None              # --edit-warmup
    edit_cooldown: object = None            # --edit-cooldown
    attention_grid: str | None = None       # --attention-grid HxW (the cross-attention maps read)
    ledits_mask: str | None = None          # --ledits-mask intersect | attention | noise
    ledits_remove_source: bool = False      # a second concept: the source caption, removed
    ledits_add: str | None = None           # the concept added instead of the whole target caption
    ledits_remove: str | None = None        # a concept removed (instead of the whole source caption)


@dataclass(frozen=True)
class Stage:
    label: str          # "noise-diff-mask", "tokenize | encode-text (source)", ...
    argvs: list         # [argv, ...]: one process, or a pipeline argv | argv
    stdin: str | None   # file fed to the first process
    stdout: str         # file the last one writes

    def shell(self, quote=shlex.quote) -> str:
        """The stage as one shell command line: first < stdin | ... | last > stdout."""
        words = [" ".join(quote(w) for w in argv) for argv in self.argvs]
        if self.stdin:
            words[0] += f" < {quote(self.stdin)}"
        return " | ".join(words) + f" > {quote(self.stdout)}"


def shell_line(stages, quote=shlex.quote) -> str:
    """Stages as one line that stops at the first failure (run it with bash -o pipefail)."""
    return " && ".join(s.shell(quote) for s in stages)


def quote_shown(word: str) -> str:
    """shlex.quote for lines shown to a reader: a leading ~/ stays outside the quotes, so that a
    shell still expands it (the lines write the home folder as ~)."""
    if word.startswith("~/") and len(word) > 2:
        return "~/" + shlex.quote(word[2:])
    return shlex.quote(word)


def tool_env(model=None, bin=None, base=None) -> dict:
    """The tools' environment: $DIFFEDIT_MODEL exported (as examples.sh does), bin first on $PATH."""
    env = dict(os.environ if base is None else base)
    if bin:
        env["PATH"] = bin + os.pathsep + env.get("PATH", "")
    if model:
        env["DIFFEDIT_MODEL"] = os.path.abspath(model)
    return env


def _first(*values):
    """The first value that is not None (a stage's own setting, else the shared one)."""
    return next((v for v in values if v is not None), None)


def _opts(*pairs):
    """--option value for every value that is not None."""
    return [w for opt, v in pairs if v is not None for w in (opt, str(v))]


class Commands:
    """The stages of one edit, with the tools in `bin` (None: on $PATH) and the files in `dir`
    (None: the working directory), named by `files` (default FILES)."""

    def __init__(self, edit: Edit, bin=None, dir=None, files=None):
        self.e, self.bin, self.dir = edit, bin, dir
        self.files = dict(FILES, **(files or {}))

    def tool(self, name, *args):
        exe = os.path.join(self.bin, name) if self.bin else name
        return [exe] + _opts(("--model", self.e.model)) + [str(a) for a in args]

    def path(self, name):
        """A file of the edit, by key of FILES or by its own name."""
        name = self.files.get(name, name)
        return os.path.join(self.dir, name) if self.dir else name

    def _quiet(self):
        return ["--quiet"] if self.e.quiet else []

    def encode(self):
        return Stage("vae-encode", [self.tool("vae-encode", self.e.image)], None, self.path("posterior"))

    def caption(self, which):
        """tokenize | encode-text of "source", "target" or "empty" (the empty prompt)."""
        text = {"source": self.e.source, "target": self.e.target, "empty": "",
                "add": self.e.ledits_add, "remove": self.e.ledits_remove}[which]
        return Stage(f"tokenize | encode-text ({which})", [self.tool("tokenize", text), self.tool("encode-text")],
                     None, self.path(which))

    def captions(self):
        empty = self.e.empty_negatives or self.e.negative == "empty"
        return [self.caption(w) for w in ("source", "target") + (("empty",) if empty else ())]

    def mask(self):
        e, p = self.e, self.path
        negatives = (("--source-negative", p("empty")), ("--target-negative", p("empty"))) if e.empty_negatives else ()
        argv = self.tool("noise-diff-mask", "--source", p("source"), "--target", p("target")) + _opts(
            *negatives, ("--steps", _first(e.mask_steps, e.steps)), ("--seed", e.seed), ("--scheduler", e.scheduler),
            ("--guidance", _first(e.mask_guidance, e.guidance)), ("--maps", e.maps),
            ("--encode-strength", e.encode_strength), ("--threshold-ratio", e.threshold_ratio),
            ("--dilate", e.dilate)) + self._quiet()
        if "soft" in self.files:  # the soft map from the same run, for composite's pixel mask
            argv += ["--soft-output", p("soft")]
        return Stage("noise-diff-mask", [argv], p("posterior"), p("mask"))

    def invert(self):
        e, p = self.e, self.path
        guidance = _first(e.invert_guidance, e.guidance)
        argv = self.tool("invert", "--prompt", p("source")) + _opts(
            ("--negative", p("empty") if e.empty_negatives else None), ("--steps", e.steps), ("--seed", e.seed),
            ("--scheduler", e.scheduler), ("--guidance", guidance), ("--strength", e.strength),
            ("--deep-cache", e.deep_cache)) + self._quiet()
        return Stage("invert", [argv], p("posterior"), p("inverted"))

    def denoise(self, mask="mask", blend=None, out=None, decode=False, keep=None):
        """denoise with a mask file (default the inferred one) and a blend (default the edit's);
        decode: piped into vae-decode, writing a picture (keep: the latents to this file too)."""
        e, p = self.e, self.path
        negative = {"source": p("source"), "empty": p("empty"), None: None}[e.negative]
        argv = self.tool("denoise", "--mask", p(mask), "--prompt", p("target")) + _opts(
            ("--negative", negative), ("--guidance", _first(e.denoise_guidance, e.guidance)),
            ("--blend", blend or e.blend), ("--deep-cache", e.deep_cache)) + self._quiet()
        if decode:
            # keep: also write the edited latents to this file (their metadata records the settings).
            middle = [["tee", p(keep)]] if keep else []
            return Stage("denoise | vae-decode", [argv, *middle, self.tool("vae-decode")], p("inverted"), p(out or "decoded"))
        return Stage("denoise", [argv], p("inverted"), p(out or "edited"))

    def decode(self):
        return Stage("vae-decode", [self.tool("vae-decode")], self.path("edited"), self.path("decoded"))

    def ledits_invert(self):
        """LEDITS++'s edit-friendly DDPM inversion: the noise maps that give the input back."""
        e, p = self.e, self.path
        argv = self.tool("invert", "--method", "ledits") + _opts(
            ("--prompt", p("source") if e.ledits_source_prompt else None), ("--steps", e.ledits_steps),
            ("--skip", e.skip), ("--guidance", e.source_guidance), ("--seed", e.seed),
            ("--scheduler", e.scheduler)) + self._quiet()
        return Stage("invert --method ledits", [argv], p("posterior"), p("ledits"))

    def ledits_denoise(self, mask=None, out=None, decode=False, keep=None, masks_output="ledits_masks",
                       ledits_mask=None, threshold=None):
        """LEDITS++'s semantic guidance on the noise maps: the target caption added (and the source
        caption removed, with ledits_remove_source); mask: a user mask file (None: the implicit masks alone); masks_output:
        where its implicit masks go (None: not written)."""
        e, p = self.e, self.path
        removed = p("remove") if e.ledits_remove else p("source") if e.ledits_remove_source else None
        remove = ("--edit", removed, "--edit-direction", "add,remove") if removed else ()
        added = p("add") if e.ledits_add else p("target")
        argv = self.tool("denoise", "--method", "ledits", "--edit", added, *remove) + _opts(
            ("--mask", p(mask) if mask else None), ("--edit-guidance", e.edit_guidance),
            ("--edit-threshold", _first(threshold, e.edit_threshold)), ("--edit-warmup", e.edit_warmup),
            ("--edit-cooldown", e.edit_cooldown), ("--ledits-mask", _first(ledits_mask, e.ledits_mask)),
            ("--attention-grid", None if _first(ledits_mask, e.ledits_mask) == "noise" else e.attention_grid),
            ("--masks-output", p(masks_output) if masks_output else None)) + self._quiet()
        if decode:
            middle = [["tee", p(keep)]] if keep else []
            return Stage("denoise --method ledits | vae-decode", [argv, *middle, self.tool("vae-decode")],
                         p("ledits"), p(out or "decoded"))
        return Stage("denoise --method ledits", [argv], p("ledits"), p(out or "edited"))

    def prepare(self):
        """Everything a denoising needs: the posterior, the captions, the mask, the inverted stack."""
        return [self.encode(), *self.captions(), self.mask(), self.invert()]

    def stages(self, pipe_decode=False):
        """The whole edit; pipe_decode: denoise | vae-decode in one stage, no edited latents file."""
        if pipe_decode:
            return self.prepare() + [self.denoise(decode=True)]
        return self.prepare() + [self.denoise(), self.decode()]

    def ledits_concepts(self):
        """The concept prompts' embeddings, when the edit names concepts instead of whole captions."""
        return [self.caption(w) for w, text in (("add", self.e.ledits_add), ("remove", self.e.ledits_remove)) if text]

    def ledits_stages(self):
        """The whole LEDITS++ edit (examples.sh METHOD=ledits): no mask stage, no DDIM inversion."""
        return [self.encode(), self.caption("source"), self.caption("target"), *self.ledits_concepts(), self.ledits_invert(),
                self.ledits_denoise(masks_output=None), self.decode()]

"""The rows of bench/compare.py, each kind declared once.

A kind says what its row times on our side (ours), which function measures it on each peer's
side (peers: {"torch": ..., "openvino": ...}, run in the peer's own worker processes; PyTorch, the
reference, measures every kind, another engine the kinds it registers a function for), what those
workers need (spec), and how the table line sums up ours and PyTorch's (summary), with the report's
extra section (section) and command line (command) where it has one.
"""
import os
from dataclasses import dataclass, field

import openvino_side
import torch_side
from report import fmt_mb, fmt_s, median

SOURCE = "a bowl of fruits"
TARGET = "a bowl of pears"

# Peer name -> its module: REQUIRES (modules; OPTIONAL: the peer is left out without them), NAME,
# measure(spec, run) in the parent (the worker processes a row takes), worker(spec, task, params) in
# each of them, brief(result) for the log and, beside the reference "torch", summary(result) for the
# report. PyTorch comes first: the other engines' ratios are against it.
PEERS = {"torch": torch_side, "openvino": openvino_side}


class Kind:
    peers = {}

    def ours(self, ctx, row):
        """Our measurement (a dict stored as raw[row]["ours"])."""
        raise NotImplementedError

    def spec(self, ctx, row):
        """What a peer's worker needs beyond row, cache, runs and threads."""
        return {}

    def after(self, ctx, row, o, spec):
        """Fields of raw[row] once both sides ran (the whole edit compares their results)."""
        return {}

    def summary(self, o, p, line):
        """Our seconds and the row's GFLOP (None: not counted); adds the kind's notes and fields to line."""
        raise NotImplementedError

    def section(self, row, raw_row):
        """Markdown lines after the notes (the whole edit's stage table)."""
        return []

    def command(self, o):
        """Our command for the report's list (None: the kind shows its commands in its section)."""
        return o["cmd"]


class UNetStep(Kind):
    peers = {"torch": torch_side.unet_step, "openvino": openvino_side.unet_step}

    def ours(self, ctx, row):
        return ctx.ours.unet(row.params["size"], ctx.runs, precision=row.params.get("precision"))

    def summary(self, o, p, line):
        gflop = o["gflop"]
        if p and p.get("gflop") and abs(p["gflop"] - gflop) > 0.01 * gflop:
            line["notes"].append(f"FLOP count differs: unet-bench {gflop:.1f}, hook count {p['gflop']:.1f} GFLOP")
        line["notes"].append(f"unet-bench, first of {len(o['times']) + 1} runs dropped; weights load {fmt_s(o['load_s'])} s")
        return median(o["times"]), gflop


class ToolRun(Kind):
    """One tool on a real and a tiny input: process time minus start and load time."""

    def summary(self, o, p, line):
        proc, load = median(o["process_times"]), median(o["load_times"])
        line["ours_process_s"], line["ours_load_s"] = proc, load
        line["notes"].append(f"ours = process {fmt_s(proc)} s − load {fmt_s(load)} s (same tool on a tiny input)")
        return max(proc - load, 1e-9), (p.get("gflop") if p else None)


class VAEEncode(ToolRun):
    peers = {"torch": torch_side.vae_encode}

    def ours(self, ctx, row):
        s = row.params["size"]
        return ctx.ours.tool_and_load("vae-encode", ctx.ours.image(s), ctx.ours.image(8), ctx.runs,
                                      ("enc.tensor", "enc-tiny.tensor"))

    def spec(self, ctx, row):
        return {"image": ctx.ours.image(row.params["size"])}


class VAEDecode(ToolRun):
    peers = {"torch": torch_side.vae_decode, "openvino": openvino_side.vae_decode}

    def ours(self, ctx, row):
        s = row.params["size"]
        return ctx.ours.tool_and_load("vae-decode", ctx.ours.posterior(s), ctx.ours.posterior(8), ctx.runs,
                                      ("dec.ppm", "dec-tiny.ppm"))


class TextEncoder(ToolRun):
    peers = {"torch": torch_side.text_encoder}

    def ours(self, ctx, row):
        tokens, tiny = ctx.ours.tokens([SOURCE, TARGET])
        return ctx.ours.tool_and_load("encode-text", tokens, tiny, ctx.runs, ("text.tensor", "text-tiny.tensor"))

    def spec(self, ctx, row):
        return {"prompts": [SOURCE, TARGET]}


class WholeEdit(Kind):
    peers = {"torch": torch_side.whole_edit}

    def ours(self, ctx, row):
        p = row.params
        o = ctx.ours.edit(SOURCE, TARGET, ctx.ours.image(p["size"]), p["steps"], ctx.edit_runs, name=row.id,
                          levers=p.get("levers"), precision=p.get("precision"))
        o["edit_cmds"] = o["cmd"]
        return o

    def spec(self, ctx, row):
        peer = row.peer_row or row.id   # a shared peer measurement wrote its files under its own row
        return {"runs": ctx.edit_runs, "image": ctx.ours.image(row.params["size"]), "source": SOURCE,
                "target": TARGET, "mask_out": os.path.join(ctx.work, f"torch-mask-{peer}.npy"),
                "image_out": os.path.join(ctx.work, f"torch-edited-{peer}.png")}

    def after(self, ctx, row, o, spec):
        return {"agreement": edit_agreement(o["dir"], spec)}

    def summary(self, o, p, line):
        line["notes"].append(f"ours: {len(o['stages'][0])} tool stages, sum of wall times; peak RSS is "
                             f"the largest single process ({o['maxrss_tool']})")
        return median(o["times"]), None

    def command(self, o):
        return None

    def section(self, row, raw_row):
        title, steps = row.title, row.params["steps"]
        o, p = raw_row["ours"], raw_row["torch"]
        md = [f"## The {title[len('whole '):]}, stage by stage (median seconds)\n",
              "| ours: tool stage | s | peak RSS |", "|---|--:|--:|"]
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
        if raw_row.get("agreement"):
            md.append(f"Same result? {raw_row['agreement']}\n")
        levers = row.params.get("levers") or {}
        said = []
        if levers.get("deep_cache"):
            dc = levers["deep_cache"]
            said.append(f"invert and denoise with `--deep-cache {dc}`: the whole UNet every {dc} steps and its "
                        "shallow branch between them (DeepCache)")
        if levers.get("maps"):
            said.append(f"noise-diff-mask with `--maps {levers['maps']}`: {levers['maps']} noise draws averaged "
                        "for the mask instead of diffusers' 10")
        if row.params.get("precision"):
            said.append(f"`DIFFEDIT_PRECISION={row.params['precision']}` exported: every stage's products in "
                        f"{row.params['precision']} (AVX512-BF16)")
        md.append(f"Our commands (examples.sh's edit with MODEL=the cache folder, STEPS={steps}, SEED=0, GUIDANCE=7.5, "
                  "NEGATIVE=source; `DIFFEDIT_MODEL` exported" +
                  ("; opt-in: " + "; ".join(said) if said else "") + "):\n")
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
        return md


class LEditsEdit(WholeEdit):
    peers = {"torch": torch_side.ledits_edit}

    def ours(self, ctx, row):
        p = row.params
        o = ctx.ours.edit(SOURCE, TARGET, ctx.ours.image(p["size"]), p["steps"], ctx.edit_runs, name=row.id,
                          method="ledits")
        o["edit_cmds"] = o["cmd"]
        return o

    def after(self, ctx, row, o, spec):
        return {"agreement": image_agreement(o["dir"], spec)}

    def section(self, row, raw_row):
        md = super().section(row, raw_row)
        # The stage table is the whole edit's; the commands' and PyTorch's calls are LEDITS++'s.
        cut = next(i for i, line in enumerate(md) if line.startswith("Our commands"))
        o = raw_row["ours"]
        md = md[:cut] + [f"Our commands (examples.sh's edit with METHOD=ledits, MODEL=the cache folder, "
                         f"STEPS={row.params['steps']}, SEED=0; `DIFFEDIT_MODEL` exported):\n", "```", *o["cmd"], "```\n",
                         "PyTorch: `LEditsPPPipelineStableDiffusion.from_pretrained(cache, dtype=float32)`, scheduler "
                         "`DDIMScheduler.from_config` (its `add_noise` given a long timestep, diffusers 0.42.1's invert "
                         f"passes a float one), `invert(image, num_inversion_steps={row.params['steps']}, generator=seed 0)`, "
                         "`__call__(editing_prompt=[target, source], reverse_editing_direction=[False, True])` → PIL image; "
                         "defaults otherwise (skip 0.15, edit guidance 5, threshold 0.9, intersect masks).\n"]
        return md


def image_agreement(d, spec):
    """Compare our edited image with diffusers' (same settings and seed)."""
    import numpy as np
    from PIL import Image
    try:
        a = np.asarray(Image.open(os.path.join(d, "edited.ppm")).convert("RGB"), dtype=np.int32)
        b = np.asarray(Image.open(spec["image_out"]).convert("RGB"), dtype=np.int32)
        diff = np.abs(a - b)
        return f"edited 8-bit image: max |Δ| {diff.max()}, mean |Δ| {diff.mean():.3f}"
    except Exception as e:  # noqa: BLE001
        return f"could not compare ({e})"


def edit_agreement(d, spec):
    """Compare our mask and edited image with diffusers' (same settings and seed)."""
    import numpy as np
    from diffedit_tools import stream
    from PIL import Image
    try:
        ours_mask = stream.read_record(os.path.join(d, "mask.tensor"), "mask").array.reshape(-1)
        torch_mask = np.load(spec["mask_out"]).reshape(-1)
        a = np.asarray(Image.open(os.path.join(d, "edited.ppm")).convert("RGB"), dtype=np.int32)
        b = np.asarray(Image.open(spec["image_out"]).convert("RGB"), dtype=np.int32)
        diff = np.abs(a - b)
        return (f"mask: {int((ours_mask != torch_mask).sum())} of {ours_mask.size} latent pixels differ "
                f"({ours_mask.mean() * 100:.1f} % ones in ours); edited 8-bit image: max |Δ| {diff.max()}, "
                f"mean |Δ| {diff.mean():.3f}")
    except Exception as e:  # noqa: BLE001
        return f"could not compare ({e})"


@dataclass(frozen=True)
class Row:
    id: str          # the --only name
    title: str
    kind: Kind
    params: dict = field(default_factory=dict)
    peer_row: str | None = None  # a row whose peers time the same work: their results are shared
                                 # when both rows run in one sitting (no second diffusers edit)


ROWS = [
    Row("unet32", "UNet CFG step (batch 2), 32×32 latents (256² image)", UNetStep(), {"size": 32}),
    Row("unet64", "UNet CFG step (batch 2), 64×64 latents (512² image)", UNetStep(), {"size": 64}),
    # Ours with the opt-in bf16 products (--precision bf16) against the same peers as the f32 rows.
    Row("unet32-bf16", "UNet CFG step (batch 2), 32×32 latents; ours with --precision bf16", UNetStep(),
        {"size": 32, "precision": "bf16"}, peer_row="unet32"),
    Row("unet64-bf16", "UNet CFG step (batch 2), 64×64 latents; ours with --precision bf16", UNetStep(),
        {"size": 64, "precision": "bf16"}, peer_row="unet64"),
    Row("vae-enc256", "VAE encode, 256² image", VAEEncode(), {"size": 256}),
    Row("vae-enc512", "VAE encode, 512² image", VAEEncode(), {"size": 512}),
    Row("vae-dec256", "VAE decode, 256² image", VAEDecode(), {"size": 256}),
    Row("vae-dec512", "VAE decode, 512² image", VAEDecode(), {"size": 512}),
    Row("text", "CLIP ViT-L/14 text encoder, batch 2 × 77 tokens", TextEncoder()),
    Row("edit", "whole DiffEdit edit, 256², 20 steps, guidance 7.5", WholeEdit(), {"size": 256, "steps": 20}),
    Row("edit512", "whole DiffEdit edit, 512², 10 steps, guidance 7.5", WholeEdit(), {"size": 512, "steps": 10}),
    # Ours with the opt-in speed paths against the same exact diffusers edit as the `edit` row.
    Row("edit-deepcache", "whole DiffEdit edit, 256², 20 steps, guidance 7.5; ours with --deep-cache 3",
        WholeEdit(), {"size": 256, "steps": 20, "levers": {"deep_cache": 3}}, peer_row="edit"),
    # Measured once (2026-12-07, named edit-fast then): DeepCache every third step with 5 mask draws.
    Row("edit-fast-dc3", "whole DiffEdit edit, 256², 20 steps, guidance 7.5; ours with --deep-cache 3 and --maps 5",
        WholeEdit(), {"size": 256, "steps": 20, "levers": {"deep_cache": 3, "maps": 5}}, peer_row="edit"),
    Row("edit-fast", "whole DiffEdit edit, 256², 20 steps, guidance 7.5; ours with --deep-cache 4 and --maps 5",
        WholeEdit(), {"size": 256, "steps": 20, "levers": {"deep_cache": 4, "maps": 5}}, peer_row="edit"),
    Row("edit-fast-bf16", "whole DiffEdit edit, 256², 20 steps, guidance 7.5; ours with --deep-cache 4, --maps 5 "
        "and DIFFEDIT_PRECISION=bf16", WholeEdit(),
        {"size": 256, "steps": 20, "levers": {"deep_cache": 4, "maps": 5}, "precision": "bf16"}, peer_row="edit"),
    Row("ledits", "whole LEDITS++ edit, 256², 30 inversion steps (DDIM)", LEditsEdit(), {"size": 256, "steps": 30}),
]
BY_ID = {r.id: r for r in ROWS}

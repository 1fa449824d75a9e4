"""diffedit_tools.edit builds the command lines each script ran before it existed.

The expected lines below are copied from the scripts as they were (bench/compare.py's
edit_commands, demo/benchmark.py's edit_case, demo/diffedit_check.py's ours_edit). The builder
writes every tool's options in one order (inputs, settings, --quiet), so the two scripts that
wrote them in another are compared option by option; compare.py's lines, which its report shows,
are compared word for word.
"""
import os
import shlex
import sys
import unittest
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "python"), os.path.join(ROOT, "demo"), os.path.join(ROOT, "bench")]
from diffedit_tools import edit  # noqa: E402

FLAGS = {"--quiet"}


def normal(line):
    """A shell line as a list of pipelines, each a tuple of commands (tool, positional words,
    sorted option pairs, redirections): the same command whatever the order of its options."""
    out = []
    for part in line.split(" && "):
        words = shlex.split(part)
        if words[:1] == ["cd"]:
            continue
        cmds, argv, redirect = [], [], []
        it = iter(words + ["|"])
        for w in it:
            if w in ("<", ">"):
                redirect.append((w, next(it)))    # belongs to the command it follows
            elif w == "|":
                pos, opts, rest = [], [], iter(argv[1:])
                for x in rest:
                    if x in FLAGS:
                        opts.append((x, None))
                    elif x.startswith("--"):
                        opts.append((x, next(rest)))
                    else:
                        pos.append(x)
                cmds.append((argv[0], tuple(pos), tuple(sorted(opts)), tuple(redirect)))
                argv, redirect = [], []
            else:
                argv.append(w)
        out.append(tuple(cmds))
    return out


def as_tuples(stages):
    return [(s.label, s.argvs, s.stdin, s.stdout) for s in stages]


class CompareEdit(unittest.TestCase):
    """bench/compare.py: examples.sh's edit, word for word (the report shows these lines)."""

    def test_argv(self):
        from ours import Ours
        got = Ours("/b", "/cache", "/w", {}).edit_commands("a bowl of fruits", "a bowl of pears",
                                                            "/w/image256.ppm", 20, "/w/edit", "/b")
        j = lambda n: "/w/edit/" + n  # noqa: E731
        self.assertEqual(as_tuples(got), [
            ("vae-encode", [["/b/vae-encode", "/w/image256.ppm"]], None, j("posterior.tensor")),
            ("tokenize | encode-text (source)", [["/b/tokenize", "a bowl of fruits"], ["/b/encode-text"]], None,
             j("source.tensor")),
            ("tokenize | encode-text (target)", [["/b/tokenize", "a bowl of pears"], ["/b/encode-text"]], None,
             j("target.tensor")),
            ("noise-diff-mask", [["/b/noise-diff-mask", "--source", j("source.tensor"), "--target", j("target.tensor"),
                                  "--steps", "20", "--seed", "0", "--guidance", "7.5"]],
             j("posterior.tensor"), j("mask.tensor")),
            ("invert", [["/b/invert", "--prompt", j("source.tensor"), "--steps", "20", "--seed", "0",
                         "--guidance", "7.5"]], j("posterior.tensor"), j("inverted.tensor")),
            ("denoise", [["/b/denoise", "--mask", j("mask.tensor"), "--prompt", j("target.tensor"),
                          "--negative", j("source.tensor"), "--guidance", "7.5"]],
             j("inverted.tensor"), j("edited.tensor")),
            ("vae-decode", [["/b/vae-decode"]], j("edited.tensor"), j("edited.ppm")),
        ])

    def test_shown_lines(self):
        """As bench/results/2026-11-30-amd-epyc.json records them."""
        from ours import Ours
        got = [s.shell(edit.quote_shown) for s in Ours("/b", "/c", "/w", {}).edit_commands(
            "a bowl of fruits", "a bowl of pears", "out/image256.ppm", 20, "out", None)]
        self.assertEqual(got, [
            "vae-encode out/image256.ppm > out/posterior.tensor",
            "tokenize 'a bowl of fruits' | encode-text > out/source.tensor",
            "tokenize 'a bowl of pears' | encode-text > out/target.tensor",
            "noise-diff-mask --source out/source.tensor --target out/target.tensor --steps 20 --seed 0 --guidance 7.5 < out/posterior.tensor > out/mask.tensor",
            "invert --prompt out/source.tensor --steps 20 --seed 0 --guidance 7.5 < out/posterior.tensor > out/inverted.tensor",
            "denoise --mask out/mask.tensor --prompt out/target.tensor --negative out/source.tensor --guidance 7.5 < out/inverted.tensor > out/edited.tensor",
            "vae-decode < out/edited.tensor > out/edited.ppm",
        ])


class DemoBenchmark(unittest.TestCase):
    """demo/benchmark.py: with --negative empty or source every negative given, --quiet, the
    captions in src.tensor and tgt.tensor; the edited latents kept beside each picture (tee)."""
    pair = SimpleNamespace(source_caption="a red circle on a plain white background",
                           target_caption="a blue circle on a plain white background")
    UNSET = dict(steps=None, mask_steps=None, scheduler=None, guidance=None, mask_guidance=None, invert_guidance=None,
                 denoise_guidance=None, strength=None, maps=None, encode_strength=None, threshold_ratio=None,
                 dilate=None, negative="model", first_seed=2_000_000)

    def args(self, **given):
        return SimpleNamespace(**{**self.UNSET, **given})

    def lines(self, a, k, methods=None):
        import benchmark
        return benchmark.case_lines(k, a, self.pair, methods)

    def old_lines(self, k, steps, scheduler, g, ig, strength, negative):
        q = shlex.quote
        s = f"--steps {steps} --seed {k} --scheduler {scheduler} --quiet"
        first = (f"cd /w/case && vae-encode src.ppm > posterior.tensor"
                 f" && tokenize {q(self.pair.source_caption)} | encode-text > src.tensor"
                 f" && tokenize {q(self.pair.target_caption)} | encode-text > tgt.tensor"
                 f" && tokenize '' | encode-text > empty.tensor"
                 f" && noise-diff-mask --source src.tensor --target tgt.tensor --source-negative empty.tensor"
                 f" --target-negative empty.tensor {s} --guidance {g} --soft-output mask-soft.tensor"
                 f" < posterior.tensor > mask.tensor"
                 f" && invert --prompt src.tensor --negative empty.tensor {s} --guidance {ig} --strength {strength}"
                 f" < posterior.tensor > inverted.tensor"
                 f" && vae-decode --record posterior.mean < posterior.tensor > vae.ppm"
                 f" && vae-encode tgt.ppm | vae-decode --record posterior.mean > oracle.ppm")
        neg = "--negative src.tensor" if negative == "source" else "--negative empty.tensor"
        methods = [("diffedit", "mask.tensor", "diffusers"), ("diffedit+paste", "mask-soft.tensor", None),
                   ("diffedit-paper", "mask.tensor", "paper"),
                   ("sdedit", "ones.tensor", "diffusers"), ("gt-mask", "gt.tensor", "diffusers"),
                   ("gt-mask+paste", "gt-pixels.pgm", None), ("gt-mask-paper", "gt.tensor", "paper")]
        lines = [first]
        for n, f, b in methods:
            if b is None:  # pasted back into the input: the picture of the row before it
                lines.append(f"cd /w/case && composite --original src.ppm --mask {f} --mask-output {q(n)}.mask.pgm"
                             f" {lines[-1].rsplit(' > ', 1)[1]} > {q(n)}.ppm")
            else:
                lines.append(f"cd /w/case && denoise --quiet --guidance {g} --mask {f} --blend {b}"
                             f" --prompt tgt.tensor {neg} < inverted.tensor | tee {n}.latents.tensor | vae-decode > {n}.ppm")
        return lines

    def test_demo_settings_given(self):
        a = self.args(steps=50, scheduler="ddim", guidance=3.0, strength=0.8, negative="empty")
        self.assertEqual([normal(x) for x in self.lines(a, 7)],
                         [normal(x) for x in self.old_lines(7, 50, "ddim", 3.0, 3.0, 0.8, "empty")])

    def test_dpm_invert_guidance_source_negative(self):
        a = self.args(steps=20, scheduler="dpm", guidance=7.5, invert_guidance=1.0, strength=0.6, negative="source")
        self.assertEqual([normal(x) for x in self.lines(a, 0)],
                         [normal(x) for x in self.old_lines(0, 20, "dpm", 7.5, 1.0, 0.6, "source")])

    def test_settings_not_given_are_left_to_the_model(self):
        first, *methods = self.lines(self.args(), 3)
        self.assertEqual(first.count("--seed 3"), 2)
        for word in ("--guidance", "--steps", "--strength", "--negative", "--maps", "--threshold-ratio", "--dilate",
                     "empty.tensor"):
            self.assertNotIn(word, first + " ".join(methods))

    def test_every_stage_set_separately(self):
        first, *methods = self.lines(self.args(steps=25, mask_steps=10, guidance=3.0, mask_guidance=2.0,
                                               invert_guidance=1.0, denoise_guidance=4.0, maps=5,
                                               encode_strength=0.4, threshold_ratio=2.5, dilate=1), 0)
        cmds = {c[0]: dict(c[2]) for part in normal(first) for c in part}
        self.assertEqual({k: cmds["noise-diff-mask"][k] for k in ("--steps", "--guidance", "--maps", "--encode-strength",
                                                                   "--threshold-ratio", "--dilate")},
                         {"--steps": "10", "--guidance": "2.0", "--maps": "5", "--encode-strength": "0.4",
                          "--threshold-ratio": "2.5", "--dilate": "1"})
        self.assertEqual((cmds["invert"]["--steps"], cmds["invert"]["--guidance"]), ("25", "1.0"))
        for line in methods:
            if normal(line)[0][0][0] == "denoise":
                self.assertEqual(dict(normal(line)[0][0][2])["--guidance"], "4.0")

    def test_post_processing_method(self):
        """A method that post-processes another's picture runs after it, with the case's files."""
        import benchmark
        seen = []

        def post(src, out, case):
            seen.append((src, out, case.source, case.masks["inferred"]))
            return f"cp {src} {out}"
        methods = benchmark.METHODS + [benchmark.Method("diffedit-copy", "inferred", "a copy", after="diffedit", post=post)]
        benchmark.check_methods(methods)
        lines = self.lines(self.args(), 0, methods)
        self.assertEqual(lines[-1], "cp diffedit.ppm diffedit-copy.ppm")
        self.assertEqual(seen, [("diffedit.ppm", "diffedit-copy.ppm", "src.ppm", "mask.tensor")])
        with self.assertRaises(ValueError):
            benchmark.check_methods([methods[-1]] + benchmark.METHODS)

    def test_background_metrics(self):
        """An exact background counts as the cap, not infinity; the pooled PSNR is that of the
        summed squared errors (not the mean of the PSNRs)."""
        import benchmark
        import numpy as np
        self.assertEqual(benchmark.psnr(0.0), benchmark.PSNR_CAP)
        self.assertAlmostEqual(benchmark.psnr(255.0 ** 2 / 100), 20.0)
        names = [m.name for m in benchmark.METHODS] + [r[0] for r in benchmark.REFERENCES]
        rows = [{"kind": "colour", "methods": {n: {"bg_sse": sse, "bg_values": 10, "bg_exact": sse == 0, "success": True,
                                                   "bg_psnr": benchmark.psnr(sse / 10), "bg_mae": 0.0,
                                                   "untouched_sse": sse / 2, "untouched_values": 5,
                                                   "untouched_exact": sse == 0, "untouched_psnr": benchmark.psnr(sse / 10)}
                                               for n in names}}
                for sse in (0.0, 10 * 255.0 ** 2 / 100)]
        s = benchmark.summarise(rows)["diffedit"]["all"]
        self.assertEqual(s["bg_exact"], 0.5)
        self.assertAlmostEqual(s["bg_psnr"], (100 + 20) / 2)
        self.assertAlmostEqual(s["bg_psnr_pooled"], 10 * np.log10(255.0 ** 2 / (255.0 ** 2 / 200)))
        self.assertAlmostEqual(s["untouched_psnr_pooled"], s["bg_psnr_pooled"])  # half the error on half the values
        self.assertEqual(s["untouched_exact"], 0.5)

    def test_untouched_is_where_a_perfect_edit_is_exact(self):
        """world.EditPair.touched holds G and every pixel the object covers at all: outside it the
        true target equals the source (so the `ideal` row's untouched background is exact), while
        just outside G the antialiased rim changes."""
        import benchmark
        import numpy as np
        import world
        rim = 0
        for k, size in ((0, 64), (1, 64), (2, 128)):
            pair = world.make_edit_pair(benchmark.FIRST_SEED + k, kind="colour" if k % 2 == 0 else "shape", size=size)
            t = pair.touched
            self.assertTrue((t | pair.mask == t).all())
            src, tgt = pair.source.image.astype(int), pair.target.image.astype(int)
            self.assertEqual(np.abs(tgt - src)[~t].max(), 0)
            rim += int(np.abs(tgt - src)[~pair.mask].max() > 0)
        self.assertGreater(rim, 0)


class DemoDiffusersCheck(unittest.TestCase):
    """demo/diffedit_check.py --ours: diffusers' settings, every negative given."""

    def old_stages(self, a, seed, src, tgt):
        q = shlex.quote
        negative = "--negative src.tensor" if a.negative_source else "--negative empty.tensor"
        return f"""tokenize {q(src)} | encode-text > src.tensor
            tokenize {q(tgt)} | encode-text > tgt.tensor
            tokenize '' | encode-text > empty.tensor
            vae-encode in.ppm > posterior.tensor
            noise-diff-mask --source src.tensor --target tgt.tensor --source-negative empty.tensor \
                --target-negative empty.tensor --maps {a.maps} --encode-strength {a.mask_strength} \
                --threshold-ratio {a.ratio} --steps {a.steps} --guidance {a.guidance} --seed {seed} \
                < posterior.tensor > mask.tensor
            invert --prompt src.tensor --negative empty.tensor --steps {a.steps} --strength {a.strength} \
                --guidance {a.invert_guidance} --seed {seed} < posterior.tensor > inverted.tensor
            denoise --mask mask.tensor --prompt tgt.tensor {negative} --strength {a.strength} \
                --guidance {a.guidance} --blend diffusers < inverted.tensor | vae-decode > edited.ppm
            tensor to-npy mask.tensor > mask.npy""".replace("\\\n", " ").split("\n")

    def check(self, a, seed):
        import diffedit_check
        src, tgt = "a red circle on a striped white background", "a blue circle on a striped white background"
        got = normal(edit.shell_line(diffedit_check.ours_commands(src, tgt, a, seed).stages(pipe_decode=True)))
        old = [normal(" ".join(x.split()))[0] for x in self.old_stages(a, seed, src, tgt)]
        # What changed on purpose: the embeddings are named as examples.sh names them (a temporary
        # folder), denoise takes the strength from the inverted stack (as it takes the steps), the
        # mask is read with diffedit_tools.stream instead of through `tensor to-npy`, and the
        # posterior is made first, as in the other scripts.
        rename = {"src.tensor": "source.tensor", "tgt.tensor": "target.tensor"}
        expected = []
        for cmds in old:
            if cmds[0][0] == "tensor":
                continue
            expected.append(tuple(
                (tool, pos, tuple(sorted((o, rename.get(v, v)) for o, v in opts
                                         if not (tool == "denoise" and o == "--strength"))),
                 tuple((r, rename.get(f, f)) for r, f in redirect))
                for tool, pos, opts, redirect in cmds))
        self.assertEqual(got, [expected[3]] + expected[:3] + expected[4:])

    def test_defaults(self):
        self.check(SimpleNamespace(steps=50, guidance=7.5, strength=0.8, invert_guidance=7.5, mask_strength=0.5,
                                   ratio=3.0, maps=10, negative_source=False), seed=0)

    def test_demo_settings(self):
        self.check(SimpleNamespace(steps=25, guidance=3.0, strength=0.7, invert_guidance=1.0, mask_strength=0.4,
                                   ratio=2.5, maps=5, negative_source=True), seed=11)


class Builder(unittest.TestCase):
    def test_model_and_bin(self):
        c = edit.Commands(edit.Edit("a", "b", "x.ppm", model="/m/sd 15"), bin="/t", dir="w")
        self.assertEqual(c.encode().argvs, [["/t/vae-encode", "--model", "/m/sd 15", "x.ppm"]])
        self.assertEqual(c.encode().shell(), "/t/vae-encode --model '/m/sd 15' x.ppm > w/posterior.tensor")

    def test_left_off_settings_leave_options_off(self):
        c = edit.Commands(edit.Edit("a", "b", "x.ppm"))
        self.assertEqual(c.invert().argvs, [["invert", "--prompt", "source.tensor"]])
        self.assertEqual(c.denoise().argvs, [["denoise", "--mask", "mask.tensor", "--prompt", "target.tensor"]])
        self.assertEqual([s.label for s in c.stages()], [
            "vae-encode", "tokenize | encode-text (source)", "tokenize | encode-text (target)", "noise-diff-mask",
            "invert", "denoise", "vae-decode"])

    def test_pipeline_redirections(self):
        """stdin goes to the first process of a pipeline, stdout comes from the last."""
        c = edit.Commands(edit.Edit("a", "b", "x.ppm", guidance=3.0))
        self.assertEqual(c.denoise(decode=True).shell(),
                         "denoise --mask mask.tensor --prompt target.tensor --guidance 3.0 < inverted.tensor"
                         " | vae-decode > edited.ppm")

    def test_quoting(self):
        c = edit.Commands(edit.Edit("it's a \"cat\"", "", "my pic.ppm"))
        self.assertEqual(shlex.split(c.caption("source").shell())[1], "it's a \"cat\"")
        self.assertEqual(shlex.split(c.caption("target").shell())[1], "")
        self.assertEqual(shlex.split(c.encode().shell())[1], "my pic.ppm")
        self.assertEqual(edit.quote_shown("~/.cache/x y"), "~/'.cache/x y'")
        self.assertEqual(edit.quote_shown("/tmp/~x"), "'/tmp/~x'")

    def test_ledits_commands(self):
        """LEDITS++'s two stages: settings left off leave their options off; the edit adds the target
        (and removes the source when asked); a row with a user mask writes no implicit masks."""
        c = edit.Commands(edit.Edit("a", "b", "x.ppm"))
        self.assertEqual(c.ledits_invert().shell(), "invert --method ledits < posterior.tensor > ledits.tensor")
        self.assertEqual(c.ledits_denoise().argvs, [[
            "denoise", "--method", "ledits", "--edit", "target.tensor", "--masks-output", "ledits-masks.tensor"]])
        c = edit.Commands(edit.Edit("a", "b", "x.ppm", seed=4, ledits_steps=30, skip=0.2, source_guidance=2.0,
                                    ledits_source_prompt=True, edit_guidance="5,7", ledits_mask="intersect",
                                    ledits_remove_source=True))
        self.assertEqual(c.ledits_invert().argvs, [[
            "invert", "--method", "ledits", "--prompt", "source.tensor", "--steps", "30", "--skip", "0.2",
            "--guidance", "2.0", "--seed", "4"]])
        self.assertEqual(c.ledits_denoise(mask="mask", masks_output=None, ledits_mask="noise", threshold=0,
                                          decode=True, out="r.ppm").shell(),
                         "denoise --method ledits --edit target.tensor --edit source.tensor --edit-direction add,remove"
                         " --mask mask.tensor --edit-guidance 5,7 --edit-threshold 0 --ledits-mask noise"
                         " < ledits.tensor | vae-decode > r.ppm")

    def test_ledits_concepts(self):
        """Concept prompts instead of the whole captions: encoded into add.tensor / remove.tensor."""
        c = edit.Commands(edit.Edit("a red circle", "a blue circle", "x.ppm", ledits_add="a blue circle",
                                    ledits_remove="a red circle"))
        self.assertEqual([s.shell() for s in c.ledits_concepts()],
                         ["tokenize 'a blue circle' | encode-text > add.tensor",
                          "tokenize 'a red circle' | encode-text > remove.tensor"])
        self.assertEqual(c.ledits_denoise(masks_output=None).argvs, [[
            "denoise", "--method", "ledits", "--edit", "add.tensor", "--edit", "remove.tensor",
            "--edit-direction", "add,remove"]])

    def test_tool_env(self):
        env = edit.tool_env("demo/model", bin="/t", base={"PATH": "/usr/bin", "DIFFEDIT_MODEL": "old"})
        self.assertEqual(env, {"PATH": "/t" + os.pathsep + "/usr/bin", "DIFFEDIT_MODEL": os.path.abspath("demo/model")})


if __name__ == "__main__":
    unittest.main()

"""Our side of bench/compare.py: the release tools, each timed as a whole process.

Ours holds where the tools, the model and the work folder are, makes the inputs (test pictures,
posteriors, token ids) and times unet-bench, one tool at a time, or the whole edit as the
diffedit_tools edit module writes it (examples.sh's pipeline).
"""
import functools
import os
import re

from diffedit_tools import edit as tools   # on the path: compare.py puts python/ there
from procs import check, run_procs

def write_ppm(path, size):
    """A deterministic smooth RGB test picture (a disc on a gradient, light noise)."""
    import numpy as np
    rng = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.55) ** 2 + (y - 0.45) ** 2 < 0.08).astype(np.float64)
    r = 0.2 + 0.6 * x + 0.3 * disc
    g = 0.3 + 0.4 * y - 0.2 * disc
    b = 0.5 + 0.2 * np.sin(12 * x) * (1 - disc)
    img = np.stack([r, g, b], -1) + rng.normal(0, 0.02, (size, size, 3))
    img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (size, size))
        f.write(img.tobytes())


class Ours:
    def __init__(self, bin_dir, cache, work, env):
        self.bin, self.cache, self.work, self.env = bin_dir, cache, work, env

    def image(self, size):
        """The test picture of that size (write_images made it)."""
        return os.path.join(self.work, f"image{size}.ppm")

    def write_images(self, sizes):
        for s in sizes:
            write_ppm(self.image(s), s)

    def posterior(self, size):
        """vae-encode's output for the test picture, the decoder's input (made once)."""
        p = os.path.join(self.work, f"posterior{size}.tensor")
        if not os.path.exists(p):
            _, out = run_procs([[self.tool("vae-encode"), "--model", self.cache, self.image(size)]], stdout_path=p,
                               env=self.env)
            check(out, "vae-encode (decoder input)")
        return p

    def tool(self, name):
        return os.path.join(self.bin, name)

    def unet(self, size, runs, precision=None):
        argv = [self.tool("unet-bench"), "--model", self.cache, "--height", str(size), "--width", str(size),
                "--batch", "2", "--runs", str(runs + 1)] + (["--precision", precision] if precision else [])
        out_path = os.path.join(self.work, f"unet-bench-{size}{'-' + precision if precision else ''}.txt")
        wall, out = run_procs([argv], stdout_path=out_path, env=self.env)
        check(out, "unet-bench")
        text = open(out_path).read()
        runs_ = [(float(a), float(b)) for a, b in re.findall(r"run \d+: ([\d.]+) s, ([\d.]+) GFLOP,", text)]
        load = re.search(r"loaded in ([\d.]+) s", out[0][3])
        if any("non-finite" in ln for ln in text.splitlines()):
            raise RuntimeError(f"unet-bench on {self.cache}: output has non-finite values:\n{text}")
        return {
            "cmd": argv, "times": [t for t, _ in runs_[1:]], "warmup_s": runs_[0][0], "gflop": runs_[0][1],
            "load_s": float(load.group(1)) if load else None, "maxrss_kb": out[0][1], "process_wall_s": wall,
            "stdout": text.strip(), "stderr": out[0][3].strip(),
        }

    def _tool_runs(self, argv, inp, runs, outname):
        """A warm-up invocation (weights into the page cache), then `runs` timed ones."""
        times, rss = [], []
        for i in range(runs + 1):
            wall, out = run_procs([argv + [inp]], stdout_path=os.path.join(self.work, outname), env=self.env)
            check(out, argv[0])
            if i > 0:
                times.append(wall)
            rss.append(out[0][1])
        return times, max(rss)

    def tool_and_load(self, name, inp, tiny, runs, outs):
        """The tool on the real input and on a tiny one (process start and weight loading); the
        table's time is the difference. outs: the two output files' names."""
        argv = [self.tool(name), "--model", self.cache]
        times, rss = self._tool_runs(argv, inp, runs, outs[0])
        tiny_times, _ = self._tool_runs(argv, tiny, runs, outs[1])
        return {"cmd": argv + [os.path.basename(inp)], "process_times": times, "load_times": tiny_times,
                "maxrss_kb": rss}

    def tokens(self, prompts):
        """tokenize's ids of the prompts, and of one 3-token prompt (the text row's tiny input)."""
        paths = os.path.join(self.work, "tokens.tensor"), os.path.join(self.work, "tokens-tiny.tensor")
        for args, path in ((list(prompts), paths[0]), (["--no-pad", "a"], paths[1])):
            _, out = run_procs([[self.tool("tokenize"), "--model", self.cache, *args]], stdout_path=path, env=self.env)
            check(out, "tokenize")
        return paths

    def edit_commands(self, source, target, image, steps, d, bin_dir, levers=None):
        """examples.sh's edit (MODEL=cache, SEED=0, GUIDANCE=7.5, NEGATIVE=source), stage by stage; `levers`
        are the opt-in speed settings, as tools.Edit fields (e.g. {"deep_cache": 3, "maps": 5})."""
        e = tools.Edit(source, target, image, steps=steps, seed=0, guidance="7.5", negative="source",
                       **(levers or {}))
        return tools.Commands(e, bin=bin_dir, dir=d).stages()

    def ledits_commands(self, source, target, image, steps, d, bin_dir):
        """The LEDITS++ edit (MODEL=cache, SEED=0, the target added and the source removed as diffusers is
        called; its defaults but the steps)."""
        e = tools.Edit(source, target, image, seed=0, ledits_steps=steps, ledits_remove_source=True)
        return tools.Commands(e, bin=bin_dir, dir=d).ledits_stages()

    def edit(self, source, target, image, steps, runs, name="edit", method="diffedit", levers=None, precision=None):
        env = tools.tool_env(self.cache, base=self.env)   # as examples.sh: export DIFFEDIT_MODEL
        if precision:
            env["DIFFEDIT_PRECISION"] = precision         # every stage's products (the opt-in bf16 path)
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        times, stages, rss = [], [], []
        for _ in range(runs):
            total, st = 0.0, {}
            commands = (self.ledits_commands if method == "ledits"
                        else functools.partial(self.edit_commands, levers=levers))
            for stage in commands(source, target, image, steps, d, self.bin):
                wall, out = run_procs(stage.argvs, stdin_path=stage.stdin, stdout_path=stage.stdout, env=env)
                check(out, stage.label)
                total += wall
                st[stage.label] = wall
                for argv, r, _, _ in out:
                    rss.append((r, os.path.basename(argv[0])))
            times.append(total)
            stages.append(st)
        # As a reader would type them in the work folder's parent: files in out/, tools on $PATH.
        shown = [s.shell(tools.quote_shown)
                 for s in commands(source, target, "out/" + os.path.basename(image), steps, "out", None)]
        if precision:
            shown.insert(0, f"export DIFFEDIT_PRECISION={precision}")
        top = max(rss)
        return {"cmd": shown, "times": times, "stages": stages, "maxrss_kb": top[0], "maxrss_tool": top[1], "steps": steps,
                "maxrss_by_tool": {n: max(r for r, m in rss if m == n) for _, n in rss}, "dir": d}

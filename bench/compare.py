#!/usr/bin/env python3
"""Side-by-side CPU speed benchmark: diffedit's Swift tools against PyTorch/diffusers (and OpenVINO).

One run measures, on the same machine and in the same hour, each row below with our release
binaries and with PyTorch (float32, torch.set_num_threads(2), inference_mode), on random weights of
the real Stable Diffusion 1.5 shapes, and writes a Markdown and a JSON table. When openvino is
installed, the UNet and VAE decoder rows are also measured with OpenVINO (the same diffusers modules
converted with openvino.convert_model, CPU, 2 threads, latency hint, at f32 and at the CPU's default
precision), in the same run:

  unet32, unet64   one classifier-free-guidance UNet step (batch 2) at 32x32 / 64x64 latents
  unet32-bf16, unet64-bf16   the same step with our opt-in --precision bf16 (AVX512-BF16), against
                   the same peers (timed once when both rows run)
  vae-enc256/512   VAE encoder on a 256x256 / 512x512 image
  vae-dec256/512   VAE decoder to a 256x256 / 512x512 image
  text             CLIP ViT-L/14 text tower, batch 2 x 77 tokens
  edit             one whole DiffEdit edit at 256x256, 20 steps: our tools as examples.sh runs them
                   against StableDiffusionDiffEditPipeline (generate_mask + invert + __call__)
  edit-deepcache   the same edit with our opt-in --deep-cache 3 on invert and denoise, against the
                   same diffusers edit (timed once when both rows run)
  edit-fast        the opt-in levers together: --deep-cache 4, and --maps 5 on noise-diff-mask (5 noise
                   draws for the mask instead of 10), against the same diffusers edit
  edit-fast-dc3    the same with --deep-cache 3 (measured once as edit-fast)
  edit-fast-bf16   edit-fast with DIFFEDIT_PRECISION=bf16 (every stage's products in bf16; AVX512-BF16)
  edit512, ledits  the edit at 512x512, 10 steps; a LEDITS++ edit at 256x256, 30 inversion steps

Run it under the machine's CPU lock, e.g.

    flock /tmp/diffedit-cpu.lock /opt/venv-bench/bin/python bench/compare.py

See bench/README.md for the method, the environment and the options.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(REPO, "python")]
# The parts, one concern each: rows.py (the row registry: each kind's our side, peers and summary),
# procs.py (process timing, peak RSS, worker processes), ours.py (our tools), torch_side.py (PyTorch,
# in worker processes only), openvino_side.py (OpenVINO, likewise), sd15_random.py (the model),
# machine.py, report.py.
import rows  # noqa: E402
from machine import cpu_short, machine_info  # noqa: E402
from ours import Ours  # noqa: E402
from procs import TIME, log, run_worker  # noqa: E402
from report import summarize, write_report  # noqa: E402

VENV_HELP = """\
This benchmark needs PyTorch, diffusers and transformers in a Python venv outside the repo:

    python3 -m venv /opt/venv-bench
    /opt/venv-bench/bin/pip install -r bench/requirements.txt

(CPU-only torch: on Linux, plain `pip install torch` also pulls CUDA libraries of several GB;
a `+cpu` wheel, if you have one, is enough.) Then run, under the CPU lock:

    flock /tmp/diffedit-cpu.lock /opt/venv-bench/bin/python bench/compare.py
"""


def choose_peers(arg, find_spec=None):
    """The peers to run ({name: module}, in rows.PEERS's order) and what to say about the others.

    arg: --peers (None: every installed one). A missing module of a required peer (torch) raises
    LookupError, of an optional one (openvino) leaves that peer out with one line to print, or, when
    --peers names it, raises LookupError too; an unknown or torch-less --peers raises ValueError."""
    if find_spec is None:
        import importlib.util
        find_spec = importlib.util.find_spec
    wanted = [x for x in (arg or ",".join(rows.PEERS)).split(",") if x]
    for x in wanted:
        if x not in rows.PEERS:
            raise ValueError(f"--peers {x}: not a peer (peers: {', '.join(rows.PEERS)})")
    if "torch" not in wanted:
        raise ValueError("--peers: torch is needed (it makes the model and is the reference)")
    peers, notes = {}, []
    for name, peer in rows.PEERS.items():
        if name not in wanted:
            continue
        absent = [m for m in peer.REQUIRES if find_spec(m) is None]
        if absent and (not peer.OPTIONAL or arg):
            raise LookupError(", ".join(absent))
        if absent:
            notes.append(f"compare.py: {', '.join(absent)} not installed for {sys.executable}: no {peer.NAME} "
                         f"measurements, the other rows run (pip install -r bench/requirements.txt)")
        else:
            peers[name] = peer
    return peers, notes


def rerender(path, args):
    """Write the Markdown again from a results .json, next to it."""
    with open(path) as f:
        d = json.load(f)
    args.threads = d["meta"].get("threads", args.threads)
    args.unset_openblas_env = d["meta"].get("unset_openblas_env", False)
    base = path[:-len(".json")] if path.endswith(".json") else path
    lines = [summarize(rows.BY_ID[ln["id"]], d["raw"][ln["id"]], rows.PEERS) for ln in d["rows"]]
    for ln in lines:
        if "edit_cmds" in d["raw"][ln["id"]]["ours"]:
            d["raw"][ln["id"]]["ours"]["cmd"] = d["raw"][ln["id"]]["ours"]["edit_cmds"]
    print(write_report(base, d["meta"], lines, d["raw"], d["elapsed_s"], args, rows.ROWS))


def main():
    row_ids = [r.id for r in rows.ROWS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=VENV_HELP)
    ap.add_argument("--only", action="append", default=[],
                    help="rows to run, comma-separated or repeated: " + ", ".join(row_ids) + " (default: all)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row, after one warm-up (default 3)")
    ap.add_argument("--edit-runs", type=int, default=2, help="timed whole edits per side (default 2)")
    ap.add_argument("--cache", default=os.environ.get("DIFFEDIT_BENCH_CACHE",
                                                     os.path.expanduser("~/.cache/diffedit-bench/sd15-random")),
                    help="the random SD 1.5-shaped model folder, made on first use "
                         "(default ~/.cache/diffedit-bench/sd15-random or $DIFFEDIT_BENCH_CACHE)")
    ap.add_argument("--bin", default=os.path.join(REPO, ".build", "release"),
                    help="our release binaries (default .build/release; build with swift build -c release)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads and OpenVINO's INFERENCE_NUM_THREADS (default 2)")
    ap.add_argument("--peers", help="engines to measure besides ours, comma-separated: " + ", ".join(rows.PEERS)
                                    + " (default: every one installed; torch is needed)")
    ap.add_argument("--out", help="results path without extension (default bench/results/DATE-CPU, "
                                  "with -only-ROWS for partial runs)")
    ap.add_argument("--work", help="folder for inputs and outputs (default: a temporary one, removed)")
    ap.add_argument("--unset-openblas-env", action="store_true",
                    help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for our tools (default: leave the environment alone)")
    ap.add_argument("--rerender", metavar="JSON",
                    help="only write the Markdown again from a results .json (next to it)")
    args = ap.parse_args()
    if args.rerender:
        rerender(args.rerender, args)
        return

    # The parent stays small (no torch import): the peers run in worker processes only.
    try:
        peers, notes = choose_peers(args.peers)
    except ValueError as e:
        ap.error(str(e))
    except LookupError as e:
        print(f"compare.py: {e} not installed for {sys.executable}.\n\n{VENV_HELP}", file=sys.stderr)
        sys.exit(2)
    for n in notes:
        log(n)
    if not os.access(TIME, os.X_OK):
        sys.exit(f"compare.py: {TIME} (GNU time, Debian package 'time') is needed for peak RSS: apt-get install time")

    only = [x for a in args.only for x in a.split(",") if x]
    for x in only:
        if x not in row_ids:
            ap.error(f"--only {x}: not a row (rows: {', '.join(row_ids)})")
    chosen = [r for r in rows.ROWS if not only or r.id in only]
    if args.runs < 1 or args.edit_runs < 1:
        ap.error("--runs and --edit-runs must be at least 1")
    needed = ["unet-bench", "vae-encode", "vae-decode", "tokenize", "encode-text", "noise-diff-mask", "invert",
              "denoise", "tensor"]
    missing = [n for n in needed if not os.access(os.path.join(args.bin, n), os.X_OK)]
    if missing:
        sys.exit(f"compare.py: {', '.join(missing)} not in {args.bin} — build first: "
                 f"flock /tmp/diffedit-cpu.lock swift build -c release")

    start = time.perf_counter()
    cache = os.path.abspath(os.path.expanduser(args.cache))
    made = run_worker({"row": "make-model", "cache": cache, "runs": 0, "threads": args.threads})["made"]
    env = dict(os.environ)
    env.pop("DIFFEDIT_MODEL", None)
    if args.unset_openblas_env:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    penv = dict(os.environ)
    for k in ("OPENBLAS_VERBOSE",):
        penv.pop(k, None)

    work = args.work or tempfile.mkdtemp(prefix="diffedit-speed-")
    os.makedirs(work, exist_ok=True)
    machine = machine_info(args.bin, env)
    log(f"{machine['cpu']}, {machine['host_cores']} cores; OpenBLAS core {machine.get('openblas_core')}; "
        f"environment: {machine['env'] or 'no OpenBLAS/OMP/MKL variables'}")
    infos = {name: run_worker({"row": "info", "cache": cache, "runs": 0, "threads": args.threads}, env=penv, peer=name)
             for name in peers}
    tinfo = infos["torch"]
    log(f"torch {tinfo['torch']} ({tinfo['cpu_capability']}), diffusers {tinfo['diffusers']}, "
        f"transformers {tinfo['transformers']}")
    for name in peers:
        if name != "torch":
            log(infos[name]["software"])

    ctx = SimpleNamespace(ours=Ours(args.bin, cache, work, env), runs=args.runs, edit_runs=args.edit_runs, work=work)
    ctx.ours.write_images((8, 256, 512))
    raw, lines = {}, []
    for row in chosen:
        log(f"== {row.id}: {row.title}")
        t0 = time.perf_counter()
        o = row.kind.ours(ctx, row)
        log(f"   ours: {[round(x, 3) for x in (o.get('times') or o.get('process_times'))]} s "
            f"({time.perf_counter() - t0:.0f} s)")
        spec = {"row": row.id, "cache": cache, "runs": args.runs, "threads": args.threads, "work": work,
                **row.kind.spec(ctx, row)}
        raw[row.id] = {"ours": o}
        shared = raw.get(row.peer_row, {}) if row.peer_row else {}
        for name in row.kind.peers:   # PyTorch first, then the other engines that measure this kind
            if name in peers and name in shared:   # the same work, timed for another row of this sitting
                raw[row.id][name] = shared[name]
                log(f"   {peers[name].NAME}: {row.peer_row}'s ({peers[name].brief(shared[name])})")
            elif name in peers:
                t0 = time.perf_counter()
                try:
                    raw[row.id][name] = peers[name].measure(spec, lambda s, name=name: run_worker(s, env=penv, peer=name))
                except RuntimeError as e:   # an optional engine's failure leaves the sitting's other rows alone
                    if not peers[name].OPTIONAL:
                        raise
                    raw[row.id][name] = {"error": str(e)}
                log(f"   {peers[name].NAME}: {peers[name].brief(raw[row.id][name])} ({time.perf_counter() - t0:.0f} s)")
        raw[row.id].update(row.kind.after(ctx, row, o, spec))
        lines.append(summarize(row, raw[row.id], rows.PEERS))
        log(f"   ours/PyTorch {lines[-1]['ratio']:.2f}"
            + "".join(f"; {x['engine']}/PyTorch {x['ratio']:.2f}" for x in lines[-1].get("others", []) if x["ratio"]))

    elapsed = time.perf_counter() - start
    date = datetime.date.today().isoformat()
    base = args.out or os.path.join(HERE, "results", f"{date}-{cpu_short(machine['cpu'])}"
                                    + (("-only-" + "-".join(only)) if only else ""))
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    home = os.path.expanduser("~")
    meta = {"machine": machine, "torch": tinfo, "cache": cache,
            "others": {name: infos[name] for name in peers if name != "torch"},
            "cache_shown": cache.replace(home, "~", 1) if cache.startswith(home) else cache,
            "model_made_this_run": made, "runs": args.runs, "edit_runs": args.edit_runs,
            "threads": args.threads, "unset_openblas_env": args.unset_openblas_env,
            "argv": ["bench/compare.py"] + sys.argv[1:]}
    text = write_report(base, meta, lines, raw, elapsed, args, rows.ROWS)
    print(text)
    log(f"wrote {base}.md and {base}.json ({elapsed / 60:.1f} min)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

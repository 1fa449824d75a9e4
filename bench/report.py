"""The report of bench/compare.py: one table line per row, the Markdown and the JSON results."""
import json
import os
import platform
import statistics

from diffedit_tools.edit import quote_shown
from machine import ENV_KEYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def show_path(x, meta):
    """A path as a reader would type it: the repo as ., the home folder as ~."""
    if x.startswith(REPO + "/"):
        return "./" + x[len(REPO) + 1:]
    if x == meta["cache"]:
        return meta["cache_shown"]
    return x


def fmt_s(x):
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_mb(kb):
    return "—" if kb is None else f"{kb / 1024:,.0f} MB"


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(row, raw_row, peers=None):
    """One table line: ours and PyTorch's median seconds, ratio, GFLOP/s, RSS, notes; with "others",
    the lines of the other engines measured on the row (peers: rows.PEERS), their ratios against PyTorch.

    raw_row: {"ours": ..., "torch": ..., other peers' results by name, ...} as compare.py stores it."""
    o, p = raw_row["ours"], raw_row.get("torch")
    line = {"id": row.id, "row": row.title, "notes": []}
    pt = median(p["times"]) if p else None
    ot, gflop = row.kind.summary(o, p, line)
    line.update({
        "ours_s": ot, "torch_s": pt, "ratio": (ot / pt) if pt else None, "gflop": gflop,
        "ours_gflops": (gflop / ot) if gflop else None, "torch_gflops": (gflop / pt) if gflop and pt else None,
        "ours_rss_kb": o["maxrss_kb"], "torch_rss_kb": p["maxrss_kb"] if p else None,
        "ours_runs": len(o.get("times") or o.get("process_times")), "torch_runs": len(p["times"]) if p else 0,
        "torch_load_s": p.get("load_s") if p else None,
    })
    others = []
    for name, peer in (peers or {}).items():
        if name == "torch" or not raw_row.get(name):
            continue
        for x in peer.summary(raw_row[name]):
            s = median(x["times"])   # None: the engine failed on this row (its notes say how)
            others.append({"peer": name, **x, "s": s, "ratio": (s / pt) if s and pt else None,
                           "ours_ratio": (ot / s) if s else None, "gflops": (gflop / s) if s and gflop else None,
                           "runs": len(x["times"])})
    if others:
        line["others"] = others
    return line


def others_section(meta, lines):
    """The other engines' table (OpenVINO): their times on the rows they measure, against PyTorch's."""
    rows_ = [(ln, x) for ln in lines for x in ln.get("others", [])]
    if not rows_:
        return []
    names = ", ".join(o["software"].split(" (")[0] for o in meta.get("others", {}).values()) or "other engines"
    md = [f"## Other engines on the same rows: {names}\n"]
    for o in meta.get("others", {}).values():
        md.append(o["method"] + ".\n")
    md.append("| row | engine | s | engine/PyTorch | ours/engine | GFLOP/s | peak RSS | runs |")
    md.append("|---|---|--:|--:|--:|--:|--:|--:|")
    for ln, x in rows_:
        md.append(f"| {ln['row']} | {x['engine']} | {fmt_s(x['s'])} | "
                  + ("—" if x["ratio"] is None else f"**{x['ratio']:.2f}**")
                  + " | " + ("—" if x["ours_ratio"] is None else f"{x['ours_ratio']:.2f}")
                  + " | " + ("—" if x["gflops"] is None else f"{x['gflops']:.1f}")
                  + f" | {fmt_mb(x['rss_kb'])} | {x['runs']} |")
    md.append("")
    md.append("Notes per row and engine:\n")
    for ln, x in rows_:
        md.append(f"- **{ln['row']}, {x['engine']}**: " + "; ".join(x["notes"]) + ".")
    md.append("")
    return md


def write_report(path_base, meta, lines, raw, elapsed, args, rows):
    """The Markdown and JSON results; rows: the registry (rows.ROWS), for the kinds' sections and commands."""
    by_id = {r.id: r for r in rows}
    md = []
    t = meta["torch"]
    m = meta["machine"]
    md.append(f"# diffedit vs PyTorch/diffusers — {m['date']}, {m['cpu']}\n")
    md.append(f"Random weights of Stable Diffusion 1.5's shapes (f16 safetensors, computed in f32), "
              f"made by `bench/compare.py` in `{meta['cache_shown']}`. Times are medians; ratio = ours / PyTorch "
              f"(below 1: ours is faster). GFLOP counts 2 per multiply–accumulate of convolutions, linear layers "
              f"and attention products (unet-bench's count for the UNet; the same count by hooks on the PyTorch "
              f"modules for the VAE and the text encoder).\n")
    md.append("| row | ours (s) | PyTorch (s) | ours/PyTorch | GFLOP | ours GFLOP/s | PyTorch GFLOP/s | "
              "ours peak RSS | PyTorch peak RSS | runs (ours, PyTorch) |")
    md.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for ln in lines:
        md.append("| {row} | {o} | {p} | {r} | {g} | {og} | {pg} | {orss} | {prss} | {n} |".format(
            row=ln["row"], o=fmt_s(ln["ours_s"]), p=fmt_s(ln["torch_s"]),
            r="—" if ln["ratio"] is None else f"**{ln['ratio']:.2f}**",
            g="—" if ln["gflop"] is None else f"{ln['gflop']:.1f}",
            og="—" if ln["ours_gflops"] is None else f"{ln['ours_gflops']:.1f}",
            pg="—" if ln["torch_gflops"] is None else f"{ln['torch_gflops']:.1f}",
            orss=fmt_mb(ln["ours_rss_kb"]), prss=fmt_mb(ln["torch_rss_kb"]),
            n=f"{ln['ours_runs']}, {ln['torch_runs']}"))
    md.append("")
    md.append("Notes per row:\n")
    for ln in lines:
        extra = list(ln["notes"])
        if ln.get("torch_load_s") is not None:
            extra.append(f"PyTorch from_pretrained {fmt_s(ln['torch_load_s'])} s (not in its time)")
        md.append(f"- **{ln['row']}**: " + "; ".join(extra) + ".")
    md.append("")
    md.extend(others_section(meta, lines))
    for row in rows:   # sections of the kinds that have one, in the registry's order
        if row.id in raw:
            md.extend(row.kind.section(row, raw[row.id]))
    md.append("## Machine and software\n")
    md.append(f"- CPU: {m['cpu']} (family {m['cpu_family_model'].get('cpu family')}, model "
              f"{m['cpu_family_model'].get('model')}), {m['host_cores']} cores; "
              f"{' '.join(m['cpu_flags'])}")
    md.append(f"- Environment variables: " + (", ".join(f"`{k}={v}`" for k, v in m["env"].items())
                                               if m["env"] else "none of " + ", ".join(f"`{k}`" for k in ENV_KEYS) + " set")
              + (" (the benchmark sets none of them)" if not args.unset_openblas_env else
                 " (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed for our tools by --unset-openblas-env)"))
    src = f" (Sources/ and Package.swift as at {m['sources']})" if m.get("sources") else ""
    md.append(f"- Ours: diffedit {m['git']}{src}, {m['swift']}, `swift build -c release`; OpenBLAS "
              f"{m.get('openblas_package', '?')} (`{m.get('openblas_lib')}`): core **{m.get('openblas_core')}** "
              f"(`openblas_get_corename()`), `{m.get('openblas_config')}`, {m.get('openblas_threads')} threads; "
              f"OPENBLAS_VERBOSE=2 in a tool: `{m.get('openblas_verbose')}`")
    md.append(f"- PyTorch {t['torch']} (CPU capability {t['cpu_capability']}, MKL {t['mkl']}, oneDNN {t['mkldnn']}), "
              f"diffusers {t['diffusers']}, transformers {t['transformers']}, Python {platform.python_version()}; "
              f"float32, torch.set_num_threads({args.threads}), inference_mode; each row in its own Python process, "
              f"one warm-up call not counted")
    for c in t["config"]:
        md.append(f"  - `{c}`")
    for o in meta.get("others", {}).values():
        md.append(f"- {o['software']}")
    md.append("- Peak RSS: each process's maximum resident set size as GNU `/usr/bin/time -f %M` reports it "
              "(the tool process alone; for PyTorch the whole Python process, imports and model loading included); "
              "the largest over the row's runs.")
    md.append(f"- Whole benchmark run: {elapsed / 60:.1f} min (`{' '.join(meta['argv'])}`)\n")
    md.append("## Our commands\n")
    for ln in lines:
        cmd = by_id[ln["id"]].kind.command(raw[ln["id"]]["ours"])
        if cmd is not None:
            md.append(f"- {ln['row']}: `{' '.join(quote_shown(show_path(x, meta)) for x in cmd)}`")
    md.append("")
    text = "\n".join(md) + "\n"
    with open(path_base + ".md", "w") as f:
        f.write(text)
    with open(path_base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": lines, "raw": raw, "elapsed_s": elapsed}, f, indent=1, default=str)
    return text

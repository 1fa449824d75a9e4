"""The OpenVINO side of bench/compare.py: the torch side's diffusers modules converted with
openvino.convert_model, compiled for the CPU, on the same inputs.

A row's OpenVINO measurement takes three worker processes (peer_worker.py), started by measure():

- "convert": loads the module as torch_side does (from_pretrained, float32), runs it once in
  PyTorch on the row's input (the reference output), converts it with openvino.convert_model
  (example input: that input; shapes made static) and saves the IR (f32 weights) and both arrays;
- "run", once per precision in PRECISIONS: reads the IR, compiles it for "CPU" with
  INFERENCE_NUM_THREADS=threads, PERFORMANCE_HINT=LATENCY and INFERENCE_PRECISION_HINT=f32 or no
  precision hint (the CPU's default, which the result records), one warm-up inference (its output
  compared with PyTorch's), then `runs` timed ones.

So the run's peak RSS is OpenVINO's alone (no torch in that process), and conversion and compile
times are apart from the run time. rows.py names, per kind of row, the function here that builds
the module and its input on the torch side (used by the "convert" stage only).
"""
import os
import time

import torch_side

# What the parent checks before it starts: without these, compare.py leaves OpenVINO out and says so.
REQUIRES = ("openvino", "torch", "diffusers", "numpy")
OPTIONAL = True
NAME = "OpenVINO"

# (result key, INFERENCE_PRECISION_HINT or None for the CPU plugin's default)
PRECISIONS = (("f32", "f32"), ("default", None))


def method(threads):
    """The report's description of this engine's measurement."""
    return (f"`openvino.convert_model` of the same diffusers module as the PyTorch row (`from_pretrained`, "
            f"float32; the VAE decoder with its uint8 conversion), the row's input as example input, shapes made "
            f"static; saved as IR with f32 weights and, in another process, read and compiled for `CPU` with "
            f"`INFERENCE_NUM_THREADS={threads}`, `PERFORMANCE_HINT=LATENCY`, once with "
            f"`INFERENCE_PRECISION_HINT=f32` and once without a precision hint (the CPU's default; the precision it "
            f"chose is in the notes); one warm-up inference not counted, its output compared with PyTorch's on the "
            f"same input, then the timed ones. Conversion and compile times are not in the time; peak RSS is the "
            f"process that reads, compiles and runs the IR (the conversion process's is in the notes)")


# ---------------------------------------------------------------------------------------------
# The parent's side: which processes a row takes, and how its result reads.

def measure(spec, run):
    """A row's measurement: run(spec) starts one worker process and returns its result."""
    d = os.path.join(spec["work"], f"openvino-{spec['row']}")
    os.makedirs(d, exist_ok=True)
    base = {**spec, "dir": d}
    res = {"convert": run({**base, "stage": "convert"})}
    for key, hint in PRECISIONS:
        res[key] = run({**base, "stage": "run", "precision": hint})
    return res


def label(key, r):
    return f"{NAME} {r['precision']}" + (" (default)" if key == "default" else "")


def failed(res):
    """The first lines of a failed measurement's error (compare.py stores {"error": ...})."""
    return " / ".join(res["error"].strip().splitlines()[:1] + res["error"].strip().splitlines()[-1:])


def brief(res):
    """One log line."""
    if "error" in res:
        return "failed: " + res["error"].strip()
    parts = [f"{label(k, res[k])} {[round(x, 3) for x in res[k]['times']]} s, |Δ| {res[k]['check']['max_abs']:.2g}"
             for k, _ in PRECISIONS if k in res]
    return "; ".join(parts) + f"; convert_model {res['convert']['convert_s']:.1f} s"


def summary(res):
    """The report's lines of this engine for one row (times, RSS, notes); report.py adds the ratios."""
    if "error" in res:
        return [{"engine": NAME, "precision": None, "times": [], "rss_kb": None, "notes": ["failed: " + failed(res)]}]
    c = res["convert"]
    lines = []
    for key, hint in PRECISIONS:
        r = res.get(key)
        if not r:
            continue
        ck = r["check"]
        notes = [f"precision {r['precision']} ({'INFERENCE_PRECISION_HINT=f32' if hint else 'no hint: the CPU default'})",
                 f"compile_model {r['compile_s']:.2f} s (read_model {r['read_s']:.2f} s), warm-up {r['warmup_s']:.2f} s",
                 f"convert_model {c['convert_s']:.1f} s (IR saved in {c['save_s']:.1f} s; conversion process "
                 f"peak RSS {c['maxrss_kb'] / 1024:,.0f} MB)",
                 f"vs PyTorch on the same input: max |Δ| {ck['max_abs']:.3g}{ck['unit']} (PyTorch's max |y| "
                 f"{ck['ref_max']:.3g}{ck['unit']}" + (f", {ck['differ']} of {ck['size']} values differ" if "differ" in ck
                                                     else f", mean |Δ| {ck['mean_abs']:.3g}") + ")"]
        lines.append({"engine": label(key, r), "precision": r["precision"], "times": r["times"],
                      "rss_kb": r["maxrss_kb"], "notes": notes})
    return lines


# ---------------------------------------------------------------------------------------------
# The worker's side (peer_worker.py): one stage in this process.

def worker(spec, task, params):
    # openvino-telemetry sends conversion events unless opted out; its switches are a consent file in
    # the home folder (`opt_in_out --opt_out`) and, for tools that honour it (convert_model does), CI=true.
    # The benchmark sends nothing: set the latter, for this process only.
    os.environ["CI"] = "true"
    res = {"row": spec["row"], "threads": spec["threads"]}
    if spec["row"] == "info":
        res.update(info(spec))
    elif spec["stage"] == "convert":
        res.update(convert(spec, task, params))
    else:
        res.update(run(spec))
    return res


def info(spec):
    import openvino as ov
    core = ov.Core()
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    version = ov.get_version()
    return {"openvino": version.split("-")[0], "build": version, "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "capabilities": list(caps), "default_precision": _type_name(default),
            "software": f"OpenVINO {version.split('-')[0]} (build {version}; CPU plugin on {core.get_property('CPU', 'FULL_DEVICE_NAME')}, "
                        f"capabilities {' '.join(caps)}, default inference precision {_type_name(default)})",
            "method": method(spec["threads"])}


def _type_name(t):
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


def _paths(spec):
    d = spec["dir"]
    return os.path.join(d, "model.xml"), os.path.join(d, "inputs.npz"), os.path.join(d, "reference.npy")


def convert(spec, task, params):
    import numpy as np
    import openvino as ov
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    module, inputs, res = task(spec, params)
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = module(*inputs)
        res["torch_reference_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = ov.convert_model(module, example_input=tuple(inputs))
        res["convert_s"] = time.perf_counter() - t0
    model.reshape({model.input(i): ov.PartialShape(list(x.shape)) for i, x in enumerate(inputs)})
    xml, npz, ref_path = _paths(spec)
    t0 = time.perf_counter()
    ov.save_model(model, xml, compress_to_fp16=False)
    res["save_s"] = time.perf_counter() - t0
    np.savez(npz, *[x.numpy() for x in inputs])
    np.save(ref_path, ref.numpy())
    res["ir_mb"] = os.path.getsize(xml[:-len(".xml")] + ".bin") / 2**20
    res["inputs"] = [[model.input(i).get_any_name(), str(model.input(i).get_partial_shape())] for i in range(len(inputs))]
    return res


def run(spec):
    import numpy as np
    import openvino as ov
    xml, npz, ref_path = _paths(spec)
    with np.load(npz) as f:
        inputs = [f[f"arr_{i}"] for i in range(len(f.files))]
    ref = np.load(ref_path)
    res = {}
    core = ov.Core()
    t0 = time.perf_counter()
    model = core.read_model(xml)
    res["read_s"] = time.perf_counter() - t0
    config = {"INFERENCE_NUM_THREADS": spec["threads"], "PERFORMANCE_HINT": "LATENCY"}
    if spec["precision"]:
        config["INFERENCE_PRECISION_HINT"] = spec["precision"]
    t0 = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    res["compile_s"] = time.perf_counter() - t0
    res["config"] = {k: str(v) for k, v in config.items()}
    res["precision"] = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    res["compiled"] = {k: str(compiled.get_property(k)) for k in
                       ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS", "EXECUTION_MODE_HINT")}
    req = compiled.create_infer_request()
    infer = lambda: req.infer(inputs)[0]  # noqa: E731  (the output, copied out of the request)
    t0 = time.perf_counter()
    out = infer()
    res["warmup_s"] = time.perf_counter() - t0
    res["check"] = compare(out, ref)
    res["times"] = torch_side._timed(infer, spec["runs"])
    return res


def compare(out, ref):
    """OpenVINO's output against PyTorch's: max and mean |Δ| (8-bit levels for an image)."""
    import numpy as np
    a, b = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"OpenVINO's output has shape {a.shape}, PyTorch's {b.shape}")
    d = np.abs(a - b)
    res = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "ref_max": float(np.abs(b).max()),
           "unit": "", "size": int(d.size)}
    if np.asarray(ref).dtype == np.uint8:
        res.update(unit=" levels", differ=int((d > 0).sum()))
    return res


# ---------------------------------------------------------------------------------------------
# Per kind of row (rows.py): the module to convert and its inputs, as torch_side builds them.

def unet_step(spec, params):
    import torch
    unet, res = torch_side.load_unet(spec)
    x, enc = torch_side.unet_inputs(params["size"])

    class Eps(torch.nn.Module):   # positional inputs, the noise prediction out
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    return Eps().eval(), [x, torch.tensor(torch_side.UNET_TIMESTEP), enc], res


def vae_decode(spec, params):
    dec, res = torch_side.load_decoder(spec)
    return dec, [torch_side.decode_input(params["size"])], res

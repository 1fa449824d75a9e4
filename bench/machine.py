"""The machine and the software our side runs on, as bench/compare.py's results record them."""
import datetime
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Recorded when set, never set by the benchmark.
ENV_KEYS = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_VERBOSE",
            "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS",
            "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DIFFEDIT_MODEL", "DIFFEDIT_MEMORY_LIMIT"]


def machine_info(bin_dir, env):
    info = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "host_cores": os.cpu_count()}
    model, flags, fam = "unknown", [], {}
    try:
        for ln in open("/proc/cpuinfo"):
            k, _, v = ln.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name" and model == "unknown":
                model = v
            elif k in ("cpu family", "model", "stepping") and k not in fam:
                fam[k] = v
            elif k == "flags" and not flags:
                flags = [f for f in v.split() if re.match(r"avx|fma|amx", f)]
    except OSError:
        pass
    info["cpu"] = model
    info["cpu_family_model"] = fam
    info["cpu_flags"] = flags
    info["env"] = {k: os.environ.get(k) for k in ENV_KEYS if os.environ.get(k) is not None}
    try:
        info["swift"] = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[0]
    except OSError:
        info["swift"] = "?"
    try:
        git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
        info["git"] = git("describe", "--always", "--dirty")
        # What the binaries are built from: the last commit that touched the sources, and whether
        # they have uncommitted changes (other files, like this benchmark, do not matter).
        info["sources"] = git("log", "-1", "--format=%h", "--", "Sources", "Package.swift") + (
            " + uncommitted changes" if git("status", "--porcelain", "--", "Sources", "Package.swift") else "")
    except OSError:
        info["git"] = "?"
    # OpenBLAS as the tools load it: the library they link, its core as it decides with the
    # environment as it is (a tiny ctypes call), and OPENBLAS_VERBOSE=2 of a real tool process.
    lib = None
    try:
        ldd = subprocess.run(["ldd", os.path.join(bin_dir, "unet-bench")], capture_output=True, text=True).stdout
        m = re.search(r"libopenblas\S*\s*=>\s*(\S+)", ldd)
        lib = m.group(1) if m else None
    except OSError:
        pass
    info["openblas_lib"] = lib
    try:
        code = ("import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); l.openblas_get_corename.restype=ctypes.c_char_p;"
                "l.openblas_get_config.restype=ctypes.c_char_p;"
                "print(l.openblas_get_corename().decode()); print(l.openblas_get_config().decode());"
                "print(l.openblas_get_num_threads())")
        r = subprocess.run([sys.executable, "-c", code, lib or "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"],
                           capture_output=True, text=True, env=env).stdout.splitlines()
        info["openblas_core"], info["openblas_config"], info["openblas_threads"] = r[0], r[1], int(r[2])
    except Exception as e:  # noqa: BLE001
        info["openblas_core"] = f"? ({e})"
    try:
        r = subprocess.run([os.path.join(bin_dir, "unet-bench"), "--gemm", "64", "64", "64", "--runs", "1"],
                           capture_output=True, text=True, env=dict(env, OPENBLAS_VERBOSE="2"))
        info["openblas_verbose"] = " ".join(ln.strip() for ln in r.stderr.splitlines() + r.stdout.splitlines()
                                            if "Core" in ln or "core" in ln) or "(nothing printed)"
    except OSError:
        pass
    try:
        info["openblas_package"] = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n", "libopenblas0-pthread",
             "libopenblas0-openmp", "libopenblas0-serial"], capture_output=True, text=True).stdout
        info["openblas_package"] = "; ".join(ln.rsplit(" ", 1)[0] for ln in info["openblas_package"].splitlines()
                                             if ln.endswith(" installed"))
    except OSError:
        pass
    return info


def cpu_short(cpu):
    s = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", cpu)
    s = re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()
    return s or "cpu"

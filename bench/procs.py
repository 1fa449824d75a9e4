"""Processes of the benchmark: wall time and peak RSS of each child, and the peers' worker processes."""
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_WORKER = os.path.join(HERE, "peer_worker.py")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


TIME = "/usr/bin/time"   # GNU time: the peak RSS of exactly the process it starts


def run_procs(cmds, stdin_path=None, stdout_path=None, env=None, cwd=None):
    """Run argv lists as one shell-style pipeline cmds[0] | cmds[1] | ... Returns (wall seconds,
    [(argv, maxrss_kB, returncode, stderr text)]).

    Each process is started under GNU time (-f %M), which reports that process's own peak RSS.
    (os.wait4's ru_maxrss of a child started straight from this Python process is not usable:
    Linux carries the parent's high-water RSS into a vfork()ed child across exec.)"""
    procs, errs, rss_files = [], [], []
    fin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    fout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    prev = fin
    try:
        for i, argv in enumerate(cmds):
            last = i == len(cmds) - 1
            err = tempfile.TemporaryFile()
            fd, rss_path = tempfile.mkstemp(suffix=".rss")
            os.close(fd)
            p = subprocess.Popen([TIME, "-f", "%M", "-o", rss_path] + list(argv), stdin=prev,
                                 stdout=fout if last else subprocess.PIPE, stderr=err, env=env, cwd=cwd)
            if i > 0:
                prev.close()   # the parent's copy of the previous pipe's read end
            prev = p.stdout if not last else None
            procs.append(p)
            errs.append(err)
            rss_files.append(rss_path)
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
    finally:
        if stdin_path:
            fin.close()
        if stdout_path:
            fout.close()
    out = []
    for p, argv, err, rss_path in zip(procs, cmds, errs, rss_files):
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        err.close()
        lines = open(rss_path).read().split()
        os.unlink(rss_path)
        rss = int(lines[-1]) if lines and lines[-1].isdigit() else None
        out.append((argv, rss, p.returncode, text))
    return wall, out


def check(out, what):
    for argv, rss, rc, text in out:
        if rc != 0:
            raise RuntimeError(f"{what}: `{' '.join(argv)}` exited {rc}:\n{text.strip()}")


def run_worker(spec, env=None, peer="torch"):
    """Run one measurement of a peer (PyTorch, OpenVINO) in its own Python process (peer_worker.py);
    returns its result dict with the process's peak RSS (kB) and wall time added."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        res_path = f.name
    argv = [sys.executable, PEER_WORKER, peer, json.dumps(spec), res_path]
    wall, out = run_procs([argv], env=env)
    check(out, f"{peer} worker {spec['row']}" + (f" ({spec['stage']})" if spec.get("stage") else ""))
    if spec["row"] == "make-model" and out[0][3].strip():
        log(out[0][3].strip())
    with open(res_path) as f:
        res = json.load(f)
    os.unlink(res_path)
    res["maxrss_kb"] = out[0][1]
    res["process_wall_s"] = wall
    return res

"""One measurement of a peer (PyTorch, OpenVINO) in its own process, started by procs.run_worker:

    python bench/peer_worker.py PEER SPEC_JSON RESULT_PATH

PEER is a name in rows.PEERS; SPEC's row is a row id of rows.py, or "info" (versions) or
"make-model" (the cached model, torch only). The row's kind names the peer's function (the one
dispatch); the peer's worker runs it.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "python")]
import rows  # noqa: E402


def main(peer, spec_json, out_path):
    spec = json.loads(spec_json)
    row = rows.BY_ID.get(spec["row"])
    task = row.kind.peers[peer] if row else None
    res = rows.PEERS[peer].worker(spec, task, row.params if row else {})
    with open(out_path, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""bench/compare.py's parts: the row registry and the report, on the committed results.

Needs neither torch, openvino nor the tools: the rows' peer functions are only looked up, and the
report is rendered from bench/results/*.json (with an OpenVINO result added by hand to one row).
"""
import glob
import json
import os
import sys
import tempfile
import unittest
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "bench"), os.path.join(ROOT, "python")]
import compare  # noqa: E402
import openvino_side  # noqa: E402
import report  # noqa: E402
import rows  # noqa: E402
import torch_side  # noqa: E402

RESULTS = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json")))


def load(path):
    with open(path) as f:
        return json.load(f)


class Registry(unittest.TestCase):
    def test_every_row_once_with_its_peers(self):
        """Every kind has PyTorch (the reference) first; each peer function is its peer module's."""
        self.assertEqual(len(rows.BY_ID), len(rows.ROWS))
        self.assertEqual(list(rows.PEERS)[0], "torch")
        for row in rows.ROWS:
            with self.subTest(row=row.id):
                self.assertEqual(list(row.kind.peers)[0], "torch")
                for name, fn in row.kind.peers.items():
                    self.assertIs(getattr(rows.PEERS[name], fn.__name__), fn)
        for name, peer in rows.PEERS.items():
            with self.subTest(peer=name):
                for attr in ("worker", "measure", "brief") + (("summary",) if name != "torch" else ()):
                    self.assertTrue(callable(getattr(peer, attr)), attr)
                self.assertTrue(peer.REQUIRES and peer.NAME)
        self.assertFalse(torch_side.OPTIONAL)
        self.assertTrue(openvino_side.OPTIONAL)

    def test_openvino_rows(self):
        """OpenVINO measures the UNet step and the VAE decoder, at f32 and at the CPU's default."""
        self.assertEqual([r.id for r in rows.ROWS if "openvino" in r.kind.peers],
                         ["unet32", "unet64", "unet32-bf16", "unet64-bf16", "vae-dec256", "vae-dec512"])
        self.assertEqual(openvino_side.PRECISIONS, (("f32", "f32"), ("default", None)))
        self.assertIn("INFERENCE_NUM_THREADS=2", openvino_side.method(2))
        self.assertIn("PERFORMANCE_HINT=LATENCY", openvino_side.method(2))

    def test_openvino_measure_takes_a_conversion_then_a_run_per_precision(self):
        calls = []

        def run(spec):
            calls.append(spec)
            return {"stage": spec["stage"]}
        with tempfile.TemporaryDirectory() as t:
            res = openvino_side.measure({"row": "unet32", "work": t, "runs": 1, "threads": 2}, run)
        self.assertEqual([(c["stage"], c.get("precision")) for c in calls],
                         [("convert", None), ("run", "f32"), ("run", None)])
        self.assertEqual(len({c["dir"] for c in calls}), 1)
        self.assertEqual(set(res), {"convert", "f32", "default"})

    def test_peers_chosen_by_what_is_installed(self):
        def without(*gone):
            return lambda m: None if m in gone else object()
        peers, notes = compare.choose_peers(None, without())
        self.assertEqual(list(peers), ["torch", "openvino"])
        self.assertEqual(notes, [])
        peers, notes = compare.choose_peers(None, without("openvino"))
        self.assertEqual(list(peers), ["torch"])
        self.assertEqual(len(notes), 1)
        self.assertIn("openvino not installed", notes[0])
        self.assertEqual(list(compare.choose_peers("torch", without())[0]), ["torch"])
        with self.assertRaises(LookupError):   # named, but absent
            compare.choose_peers("torch,openvino", without("openvino"))
        with self.assertRaises(LookupError):   # torch is required
            compare.choose_peers(None, without("diffusers"))
        for bad in ("openvino", "torch,tvm"):
            with self.assertRaises(ValueError):
                compare.choose_peers(bad, without())

    def test_openvino_check(self):
        import numpy as np
        c = openvino_side.compare(np.array([1.0, 2.5], np.float32), np.array([1.0, 2.0], np.float32))
        self.assertEqual((c["max_abs"], c["ref_max"], c["unit"]), (0.5, 2.0, ""))
        c = openvino_side.compare(np.array([3, 200], np.uint8), np.array([4, 200], np.uint8))
        self.assertEqual((c["max_abs"], c["differ"], c["unit"]), (1.0, 1, " levels"))
        with self.assertRaises(RuntimeError):
            openvino_side.compare(np.zeros(2), np.zeros(3))

    def test_ids_are_the_documented_ones(self):
        """bench/README.md's table names every --only id."""
        with open(os.path.join(ROOT, "bench", "README.md")) as f:
            text = f.read()
        for row in rows.ROWS:
            self.assertTrue(f"`{row.id}`" in text, f"bench/README.md does not name the row `{row.id}`")


@unittest.skipUnless(RESULTS, "no committed results in bench/results")
class CommittedResults(unittest.TestCase):
    def test_summaries_equal_the_recorded_lines(self):
        """summarize() gives back, from each run's raw measurements, the table lines it recorded."""
        for path in RESULTS:
            d = load(path)
            for ln in d["rows"]:
                with self.subTest(results=os.path.basename(path), row=ln["id"]):
                    raw = d["raw"][ln["id"]]
                    self.assertEqual(report.summarize(rows.BY_ID[ln["id"]], raw, rows.PEERS), ln)

    def test_report_renders(self):
        for path in RESULTS:
            d = load(path)
            lines = [report.summarize(rows.BY_ID[ln["id"]], d["raw"][ln["id"]], rows.PEERS) for ln in d["rows"]]
            args = SimpleNamespace(threads=d["meta"].get("threads", 2),
                                   unset_openblas_env=d["meta"].get("unset_openblas_env", False))
            with tempfile.TemporaryDirectory() as t:
                md = report.write_report(os.path.join(t, "r"), d["meta"], lines, d["raw"], d["elapsed_s"], args,
                                         rows.ROWS)
            with self.subTest(results=os.path.basename(path)):
                self.assertIn("| row | ours (s) | PyTorch (s) | ours/PyTorch |", md)
                for row in rows.ROWS:
                    if row.id in d["raw"] and row.kind.command(d["raw"][row.id]["ours"]) is None:
                        self.assertIn(f"## The {row.title[len('whole '):]}, stage by stage", md)

    def test_openvino_lines(self):
        """An OpenVINO result on a committed row: its lines, ratios against PyTorch and the report's section."""
        d = next(load(p) for p in reversed(RESULTS) if "unet32" in load(p)["raw"])  # the newest with that row
        raw = d["raw"]["unet32"]
        pt = report.median(raw["torch"]["times"])
        run = lambda prec, t: {  # noqa: E731
            "precision": prec, "times": [t, t * 1.1], "maxrss_kb": 4 * 2**20, "read_s": 0.5, "compile_s": 3.0,
            "warmup_s": 2.0, "check": {"max_abs": 2e-5, "mean_abs": 1e-6, "ref_max": 3.0, "unit": "", "size": 32768}}
        raw = {**raw, "openvino": {"convert": {"convert_s": 40.0, "save_s": 5.0, "maxrss_kb": 8 * 2**20},
                                   "f32": run("f32", pt / 2), "default": run("bf16", pt / 4)}}
        ln = report.summarize(rows.BY_ID["unet32"], raw, rows.PEERS)
        self.assertEqual([x["engine"] for x in ln["others"]], ["OpenVINO f32", "OpenVINO bf16 (default)"])
        self.assertAlmostEqual(ln["others"][0]["ratio"], 1.05 / 2)
        self.assertAlmostEqual(ln["others"][1]["ours_ratio"], ln["ours_s"] / (pt / 4 * 1.05))
        self.assertEqual(ln["others"][0]["gflops"], ln["gflop"] / ln["others"][0]["s"])
        self.assertIn("max |Δ| 2e-05", "; ".join(ln["others"][0]["notes"]))
        meta = {**d["meta"], "others": {"openvino": {"software": "OpenVINO 2026.4.1 (CPU plugin)",
                                                     "method": openvino_side.method(2)}}}
        args = SimpleNamespace(threads=2, unset_openblas_env=False)
        with tempfile.TemporaryDirectory() as t:
            md = report.write_report(os.path.join(t, "r"), meta, [ln], {"unet32": raw}, 1.0, args, rows.ROWS)
        self.assertIn("## Other engines on the same rows: OpenVINO 2026.4.1", md)
        self.assertIn(f"| {ln['row']} | OpenVINO bf16 (default) | ", md)
        self.assertIn("- OpenVINO 2026.4.1 (CPU plugin)", md)

        failed = {**raw, "openvino": {"error": "openvino worker unet32 (convert) exited 1:\nTraceback\nOOM"}}
        ln = report.summarize(rows.BY_ID["unet32"], failed, rows.PEERS)
        self.assertEqual([(x["engine"], x["s"], x["ratio"]) for x in ln["others"]], [("OpenVINO", None, None)])
        self.assertIn("exited 1", ln["others"][0]["notes"][0])
        self.assertIn("OOM", ln["others"][0]["notes"][0])
        with tempfile.TemporaryDirectory() as t:
            md = report.write_report(os.path.join(t, "r"), meta, [ln], {"unet32": failed}, 1.0, args, rows.ROWS)
        self.assertIn(f"| {ln['row']} | OpenVINO | — | — | — | — | — | 0 |", md)


if __name__ == "__main__":
    unittest.main()

"""bench/compare.py's parts: the row registry and the report, on the committed results.

Needs neither torch nor the tools: the rows' PyTorch functions are only looked up, and the
report is rendered from bench/results/*.json.
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
import report  # noqa: E402
import rows  # noqa: E402
import torch_side  # noqa: E402

RESULTS = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json")))


def load(path):
    with open(path) as f:
        return json.load(f)


class Registry(unittest.TestCase):
    def test_every_row_once_with_its_peer(self):
        self.assertEqual(len(rows.BY_ID), len(rows.ROWS))
        for row in rows.ROWS:
            with self.subTest(row=row.id):
                self.assertEqual(set(row.kind.peers), set(rows.PEERS))
                fn = row.kind.peers["torch"]
                self.assertIs(getattr(torch_side, fn.__name__), fn)
        self.assertTrue(callable(rows.PEERS["torch"].worker))

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
                    self.assertEqual(report.summarize(rows.BY_ID[ln["id"]], raw["ours"], raw["torch"]), ln)

    def test_report_renders(self):
        for path in RESULTS:
            d = load(path)
            lines = [report.summarize(rows.BY_ID[ln["id"]], d["raw"][ln["id"]]["ours"], d["raw"][ln["id"]]["torch"])
                     for ln in d["rows"]]
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


if __name__ == "__main__":
    unittest.main()

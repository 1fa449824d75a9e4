"""diffedit_tools.stream against `man 5 diffedit-tensor` and against the tools' own writer.

    python3 -m unittest discover -s python/tests          (from the repository root)

The tests that run the Swift `tensor` tool use $DIFFEDIT_BIN, else .build/release, else
.build/debug, and are skipped (saying so) when none holds it.
"""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
from diffedit_tools import stream  # noqa: E402
from diffedit_tools.stream import Record, StreamError  # noqa: E402

AWKWARD = "a b=c\nd\\e\r é ✓ = #"   # spaces, newline, =, backslash, CR, non-ASCII


def sample(dtype, shape=(2, 3)):
    n = int(np.prod(shape))
    if dtype in ("f32", "f16", "bf16"):
        # values bf16 and f16 hold exactly, with the specials the formats have
        v = np.array([1.5, -2.0, 0.0, -0.0, np.inf, -np.inf, 0.25, 3.0, 65504.0 if dtype != "bf16" else 2.0 ** 100])
        return np.resize(v, n).reshape(shape).astype(np.float16 if dtype == "f16" else np.float32)
    info = {"i32": np.int32, "i64": np.int64, "u8": np.uint8}[dtype]
    lo, hi = np.iinfo(info).min, np.iinfo(info).max
    return np.resize(np.array([lo, hi, 0, 1, 7], info), n).reshape(shape)


def tools_bin():
    for d in (os.environ.get("DIFFEDIT_BIN"), os.path.join(ROOT, ".build", "release"),
              os.path.join(ROOT, ".build", "debug")):
        if d and os.access(os.path.join(d, "tensor"), os.X_OK):
            return d
    return None


class Format(unittest.TestCase):
    def test_man_page_example(self):
        """The EXAMPLES record: header, newline padding to byte 64, 24 bytes of data, 40 zero bytes."""
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = stream.encode(Record("x", "f32", a, {"seed": 7}))
        head = b"DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=2 3\nseed=7\n\n"
        self.assertEqual(b[:len(head)], head)
        self.assertEqual(b[len(head):64], b"\n" * (64 - len(head)))
        self.assertEqual(b[64:88], a.astype("<f4").tobytes())
        self.assertEqual(b[88:], b"\0" * 40)

    def test_reads_the_man_pages_python_writer(self):
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        hdr = "DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=2 3\n\n"
        b = hdr.encode() + b"\n" * (-len(hdr) % 64)
        d = a.astype("<f4").tobytes()
        [r] = stream.decode(b + d + b"\0" * (-len(d) % 64))
        self.assertEqual((r.name, r.dtype, r.meta), ("x", "f32", {}))
        np.testing.assert_array_equal(r.array, a)

    def test_round_trip_every_dtype(self):
        for dtype in stream.DTYPES:
            for shape in ((2, 3), (), (0, 4), (1,) * 8, (3, 1, 5)):
                with self.subTest(dtype=dtype, shape=shape):
                    a = sample(dtype, shape)
                    [r] = stream.decode(stream.encode(Record("t", dtype, a, {"k": "v"})))
                    self.assertEqual((r.name, r.dtype, r.array.shape, r.meta), ("t", dtype, shape, {"k": "v"}))
                    np.testing.assert_array_equal(r.array, a)

    def test_dtype_follows_the_array(self):
        for np_type, dtype in ((np.float32, "f32"), (np.float16, "f16"), (np.int32, "i32"), (np.int64, "i64"),
                               (np.uint8, "u8")):
            [r] = stream.decode(stream.encode(Record("t", None, np.zeros(3, np_type))))
            self.assertEqual(r.dtype, dtype)
        with self.assertRaisesRegex(StreamError, "float64.*astype"):
            stream.encode(Record("t", None, np.zeros(3)))

    def test_bf16_bits(self):
        """The upper half of a binary32, rounded to nearest even; NaN stays NaN."""
        a = np.array([1.0, 1.00390625, 1.01171875, np.nan, -3.0], np.float32)   # 1+2^-8: a tie, to even
        b = stream.encode(Record("h", "bf16", a))
        bits = np.frombuffer(b, "<u2", count=5, offset=64)
        self.assertEqual(list(bits[[0, 1, 2, 4]]), [0x3F80, 0x3F80, 0x3F82, 0xC040])
        self.assertTrue(np.isnan(stream.decode(b)[0].array[3]))

    def test_several_records_and_empty_stream(self):
        recs = [Record("a", "u8", np.arange(70, dtype=np.uint8)), Record("b", "f32", np.ones((2, 2), np.float32))]
        b = b"".join(map(stream.encode, recs))
        self.assertEqual(len(b) % 64, 0)
        self.assertEqual([r.name for r in stream.decode(b)], ["a", "b"])
        self.assertEqual(stream.decode(b""), [])

    def test_files_and_read_record(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.tensor")
            stream.write(p, [Record("mask", "f32", np.ones((1, 1, 2, 2), np.float32), {"a": "1"}),
                             Record("other", "u8", np.zeros(1, np.uint8))])
            self.assertEqual(stream.read_record(p, "mask").meta, {"a": "1"})
            with self.assertRaisesRegex(StreamError, "no records named 'nope'"):
                stream.read_record(p, "nope")
            with open(p, "rb") as f:
                self.assertEqual(len(stream.read(f)), 2)


class Escaping(unittest.TestCase):
    def test_names_and_values_round_trip(self):
        for s in (AWKWARD, "", "\\", "\\n", "\n\n", "trailing\\", "=", " lead and trail "):
            with self.subTest(s=s):
                [r] = stream.decode(stream.encode(Record(s, "u8", np.zeros(1, np.uint8), {"prompt": s})))
                self.assertEqual((r.name, r.meta["prompt"]), (s, s))

    def test_header_text(self):
        """Backslash as \\\\ and newline as \\n, everything else (=, spaces, UTF-8) as it is."""
        b = stream.encode(Record("a\nb", "u8", np.zeros(1, np.uint8), {"p": "x=1 \\ é\r"}))
        head = b[:b.index(b"\n\n")].decode("utf-8").split("\n")
        self.assertEqual(head, ["DIFFEDIT-TENSOR 1", "name=a\\nb", "dtype=u8", "shape=1", "p=x=1 \\\\ é\\r"])

    def test_metadata_sorted_bytewise(self):
        b = stream.encode(Record("x", "u8", np.zeros(1, np.uint8), {"b": 1, "B": 2, "a.z": 3, "_": 4, "-": 5}))
        keys = [ln.split("=")[0] for ln in b[:b.index(b"\n\n")].decode().split("\n")[4:]]
        self.assertEqual(keys, ["-", "B", "_", "a.z", "b"])

    def test_writer_refuses_keys_the_format_cannot_hold(self):
        for key in ("a b", "a=b", "é", "", "name", "shape", "x\n"):
            with self.subTest(key=key), self.assertRaises(StreamError):
                stream.encode(Record("x", "u8", np.zeros(1, np.uint8), {key: "v"}))

    def test_unescape(self):
        self.assertEqual(stream.unescape("a\\\\n\\nb"), "a\\n\nb")
        with self.assertRaisesRegex(StreamError, "bad escape"):
            stream.unescape("a\\tb")


def record_bytes(header, data=b""):
    h = header.encode()
    return h + b"\n" * (-len(h) % 64) + data + b"\0" * (-len(data) % 64)


class Refusals(unittest.TestCase):
    """What a reader refuses (man 5: DESCRIPTION, End of stream, Limits), with the record named."""

    def refuses(self, buf, pattern):
        with self.assertRaisesRegex(StreamError, pattern):
            stream.decode(buf, "in")

    def test_refusals(self):
        ok = record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=2\n\n", b"ab")
        self.refuses(b"P6\n1 1\n255\n", "^in: not a tensor stream")
        self.refuses(ok.replace(b"TENSOR 1", b"TENSOR 2"), "record 0: unsupported format version")
        self.refuses(ok + b"junk", "record 1: trailing bytes")
        self.refuses(ok[:-1], "record 0: truncated in the data of 'x'")
        self.refuses(ok[:20], "record 0: truncated in the header")
        self.refuses(ok.replace(b"name=x\n", b"name=x\nname=y\n", 1)[:-64], "key 'name' appears twice")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=1\nk=1\nk=2\n\n", b"a"), "'k' appears twice")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\ndtype=u8\nshape=1\n\n", b"a"), "no name= line")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=f64\nshape=1\n\n", b"a"), "unknown dtype")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=" + "1 " * 9 + "\n\n", b"a"), "rank 9")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=-1\n\n"), "bad shape")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=1\nbad key=1\n\n", b"a"), "bad header key")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=1\nnoequals\n\n", b"a"), "not key=value")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=a\\tb\ndtype=u8\nshape=1\n\n", b"a"), "bad escape")
        self.refuses(record_bytes("DIFFEDIT-TENSOR 1\nname=x\ndtype=u8\nshape=1099511627776 2\n\n"), "past the format's limit")
        pad = bytearray(ok)
        pad[60] = ord("x")
        self.refuses(bytes(pad), "padding holds bytes other than newlines")

    def test_comments_ignored(self):
        [r] = stream.decode(record_bytes("DIFFEDIT-TENSOR 1\n# hi = there\nname=x\n#\ndtype=u8\nshape=1\n\n", b"a"))
        self.assertEqual((r.name, r.meta), ("x", {}))


@unittest.skipIf(tools_bin() is None, "no `tensor` tool: build first (swift build) or set DIFFEDIT_BIN")
class AgainstTheTools(unittest.TestCase):
    """Byte for byte against the Swift writer, and the Swift reader on our streams."""

    def tensor(self, *args, stdin=b""):
        r = subprocess.run([os.path.join(tools_bin(), "tensor"), *args], input=stdin, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        return r.stdout

    def test_tools_write_what_we_write(self):
        meta = {"prompt": AWKWARD, "model": "/m/sd 15", "z": "", "a": "\\n"}
        for dtype in ("f32", "f16", "i32", "i64", "u8"):    # the dtypes .npy has
            with self.subTest(dtype=dtype), tempfile.TemporaryDirectory() as d:
                a = sample(dtype, (3, 1, 2))
                np.save(os.path.join(d, "a.npy"), a)
                got = self.tensor("from-npy", "--name", AWKWARD, *[f"--meta={k}={v}" for k, v in meta.items()],
                                  "--force", os.path.join(d, "a.npy"))
                self.assertEqual(got, stream.encode(Record(AWKWARD, dtype, a, meta)))
                [r] = stream.decode(got)
                self.assertEqual((r.name, r.meta), (AWKWARD, meta))

    def test_tools_read_what_we_write(self):
        recs = [Record(f"{AWKWARD} {dtype}", dtype, sample(dtype, (2, 5)), {"prompt": AWKWARD, "dtype.x": dtype})
                for dtype in stream.DTYPES]
        data = b"".join(map(stream.encode, recs))
        for r in recs:   # pick decodes a record and writes it again: the same bytes
            with self.subTest(dtype=r.dtype):
                self.assertEqual(self.tensor("pick", "--name", r.name, "--force", stdin=data), stream.encode(r))
        head = self.tensor("head", stdin=data).decode()
        self.assertIn("bf16", head)


if __name__ == "__main__":
    unittest.main()

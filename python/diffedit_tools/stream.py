"""The tensor stream format of the diffedit tools, `man 5 diffedit-tensor`, in NumPy.

    records = read("mask.tensor")                  # [Record(name, dtype, array, meta), ...]
    mask = read_record("mask.tensor", "mask")      # the one record of that name
    write("gt.tensor", [Record("mask", "f32", a, {"source": "ground truth"})])

Arrays come back as read-only views of the bytes read (copy to change them); bf16 data come back
as float32 (exactly: bf16 is the upper half of a binary32) and are written from float32 with
round-to-nearest-even, as the tools and torch round.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

MAGIC = "DIFFEDIT-TENSOR 1"
ALIGN = 64
MAX_HEADER = 1 << 20
MAX_RANK = 8
MAX_DATA = 1 << 40
RESERVED = ("name", "dtype", "shape")

# dtype -> (little-endian NumPy storage type, bytes per element); bf16 is stored as 16 raw bits.
DTYPES = {"f32": ("<f4", 4), "f16": ("<f2", 2), "bf16": ("<u2", 2), "i32": ("<i4", 4),
          "i64": ("<i8", 8), "u8": ("u1", 1)}
_OF_NUMPY = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int32): "i32",
             np.dtype(np.int64): "i64", np.dtype(np.uint8): "u8"}
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
# The tools escape \r too (TensorStream.escape), so that a value never holds a bare carriage return.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


class StreamError(ValueError):
    """A stream this module cannot read or a record it cannot write; the message says which."""


@dataclass
class Record:
    name: str
    dtype: str | None   # one of DTYPES; None: the array's own (float32 f32, float16 f16, ...)
    array: np.ndarray   # its shape is the record's; bf16 as float32
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------ escaping

def escape(s: str) -> str:
    """A name or value as a header writes it: backslash, newline (and carriage return) escaped."""
    return "".join(_ESCAPES.get(c, c) for c in s)


def unescape(s: str) -> str:
    """The inverse of escape; any other backslash sequence is an error, as in the tools."""
    if "\\" not in s:
        return s
    out, chars = [], iter(s)
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        nxt = next(chars, None)
        if nxt not in _UNESCAPES:
            raise StreamError(f"bad escape in header value {s[:40]!r}: only \\\\, \\n and \\r are escapes")
        out.append(_UNESCAPES[nxt])
    return "".join(out)


# ------------------------------------------------------------------ writing

def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even, NaN kept quiet (HalfFloat.floatToBF16)."""
    u = np.ascontiguousarray(a, "<f4").view("<u4")
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return np.where(np.isnan(a), ((u >> 16) | 0x40).astype("<u2"), rounded)


def encode(record: Record) -> bytes:
    """The bytes of one record: header, newline padding, data, zero padding."""
    dtype = record.dtype or _OF_NUMPY.get(np.asarray(record.array).dtype)
    if dtype not in DTYPES:
        raise StreamError(f"record {record.name!r}: dtype {record.dtype or np.asarray(record.array).dtype} "
                          f"is not one of {', '.join(DTYPES)} — convert the array first (e.g. .astype(np.float32))")
    a = np.asarray(record.array)
    if a.ndim > MAX_RANK:
        raise StreamError(f"record {record.name!r}: rank {a.ndim} is past the format's limit of {MAX_RANK}")
    lines = [MAGIC, "name=" + escape(str(record.name)), "dtype=" + dtype, "shape=" + " ".join(map(str, a.shape))]
    for k in sorted(record.meta, key=lambda k: str(k).encode()):   # bytewise, as the tools sort
        if not _KEY.fullmatch(str(k)) or k in RESERVED:
            raise StreamError(f"record {record.name!r}: metadata key {k!r} is not allowed "
                              f"(letters, digits, _ . - only; not name, dtype or shape)")
        lines.append(f"{k}={escape(str(record.meta[k]))}")
    head = ("\n".join(lines) + "\n\n").encode("utf-8")
    data = (_bf16_bits(a) if dtype == "bf16" else np.ascontiguousarray(a, DTYPES[dtype][0])).tobytes()
    return head + b"\n" * (-len(head) % ALIGN) + data + b"\0" * (-len(data) % ALIGN)


def write(dest, records) -> None:
    """Writes records (one Record or a list) to a path or a binary file object."""
    if isinstance(records, Record):
        records = [records]
    data = b"".join(encode(r) for r in records)
    if isinstance(dest, (str, os.PathLike)):
        with open(dest, "wb") as f:
            f.write(data)
    else:
        dest.write(data)


# ------------------------------------------------------------------ reading

def decode(buf: bytes, label: str = "stream") -> list[Record]:
    """Every record of a whole stream held in memory; StreamError names the record and the problem."""
    out, pos = [], 0
    while pos < len(buf):
        rec, pos = _record(buf, pos, len(out), label)
        out.append(rec)
    return out


def read(src, label: str | None = None) -> list[Record]:
    """Every record of a stream: a path or a binary file object (read to its end)."""
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            return decode(f.read(), label or os.fspath(src))
    return decode(src.read() if hasattr(src, "read") else bytes(src), label or getattr(src, "name", "stream"))


def read_record(src, name: str) -> Record:
    """The one record named `name` in a stream (an error if there is none or more than one)."""
    label = os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "stream")
    found = [r for r in read(src, label) if r.name == name]
    if len(found) != 1:
        raise StreamError(f"{label}: {len(found) or 'no'} records named {name!r}, expected one")
    return found[0]


def _record(buf, start, index, label):
    where = f"{label}: record {index}"

    def corrupt(problem):
        return StreamError(f"{where}: {problem} — the stream is corrupt or not written by a diffedit tool")

    nl = buf.find(b"\n", start, start + ALIGN + 1)
    first = buf[start:nl if nl >= 0 else start + ALIGN]
    if not first.startswith(MAGIC.split()[0].encode()):
        raise StreamError(f"{label}: not a tensor stream (no DIFFEDIT-TENSOR magic)" if index == 0 else
                          f"{where}: trailing bytes after the last record (no DIFFEDIT-TENSOR magic)")
    if nl < 0:
        raise StreamError(f"{where}: truncated inside the magic line")
    if first != MAGIC.encode():
        raise StreamError(f"{where}: unsupported format version {first.decode('utf-8', 'replace')!r} "
                          f"— this reader reads {MAGIC!r}")
    end = buf.find(b"\n\n", nl, start + MAX_HEADER + 1)
    if end < 0:
        if len(buf) - start > MAX_HEADER:
            raise corrupt(f"header longer than {MAX_HEADER} bytes")
        raise StreamError(f"{where}: truncated in the header (no empty line ends it)")
    kv = {}
    for raw in buf[nl + 1:end].split(b"\n"):
        if raw.startswith(b"#"):
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise corrupt("header line is not valid UTF-8") from None
        key, eq, value = line.partition("=")
        if not eq:
            raise corrupt(f"header line {line[:40]!r} is not key=value")
        if not _KEY.fullmatch(key):
            raise corrupt(f"bad header key {key[:40]!r}")
        if key in kv:
            raise corrupt(f"header key {key!r} appears twice")
        kv[key] = value
    for key in RESERVED:
        if key not in kv:
            raise corrupt(f"header has no {key}= line")
    dtype = kv["dtype"]
    if dtype not in DTYPES:
        raise corrupt(f"unknown dtype {dtype[:20]!r} (known: {', '.join(DTYPES)})")
    dims = [d for d in kv["shape"].split(" ") if d]
    if len(dims) > MAX_RANK:
        raise corrupt(f"rank {len(dims)} is past the limit of {MAX_RANK}")
    if not all(d.isascii() and d.isdigit() and len(d) <= 19 for d in dims):
        raise corrupt(f"bad shape {kv['shape'][:40]!r} (need non-negative integers)")
    shape = tuple(int(d) for d in dims)
    try:
        name = unescape(kv["name"])
        meta = {k: unescape(v) for k, v in kv.items() if k not in RESERVED}
    except StreamError as e:
        raise corrupt(str(e)) from None
    storage, size = DTYPES[dtype]
    count = 1
    for d in shape:
        count *= d
    nbytes = count * size
    if nbytes > MAX_DATA:
        raise corrupt(f"shape {'x'.join(dims)} declares {nbytes} bytes, past the format's limit of 2^40")
    head_end = end + 2
    data = head_end + (-(head_end - start) % ALIGN)
    if data > len(buf):
        raise StreamError(f"{where}: truncated in the header padding")
    if buf[head_end:data].strip(b"\n"):
        raise corrupt("header padding holds bytes other than newlines")
    stop = data + nbytes + (-nbytes % ALIGN)
    if stop > len(buf):
        raise StreamError(f"{where}: truncated in the data of {name!r} "
                          f"({nbytes} bytes declared, {max(0, len(buf) - data)} left)")
    arr = np.frombuffer(buf, storage, count=count, offset=data).reshape(shape)
    if dtype == "bf16":
        arr = np.asarray(arr.astype("<u4") << 16).view("<f4")
        arr.flags.writeable = False
    return Record(name, dtype, arr, meta), stop

"""Measuring images of the demo world without torch: object colours, shapes, masks, netpbm I/O.

Used by benchmark.py (which drives the Swift tools) and by the torch-based eval_t2i.py and
diffedit_check.py. Needs only numpy.

    lab = object_pixels(img)                 # per pixel: object colour index or -1
    clf = ShapeClassifier.train()            # trained on the generator's own scenes
    clf.predict(lab == OBJ.index("red"))     # "circle" | "square" | "triangle" | None
"""
from __future__ import annotations

import numpy as np

import world

OBJ = list(world.COLOURS)
PAL = np.array(list(world.COLOURS.values()) + list(world.BACKGROUNDS.values()), np.float32)


# ------------------------------------------------------------------ colours

def object_pixels(img):
    """Per pixel: object colour index or -1 (background / unclear). int [H,W].

    A pixel belongs to an object colour when its nearest colour among the object palette and the
    background palette is an object colour, within distance 80 (RGB 0..255)."""
    px = img.reshape(-1, 3).astype(np.float32)
    d = ((px[:, None] - PAL[None]) ** 2).sum(-1)
    k = d.argmin(1)
    ok = (k < len(OBJ)) & (np.sqrt(d.min(1)) < 80)
    return np.where(ok, k, -1).reshape(img.shape[:2])


def dominant_colour(img, region=None):
    """The most frequent object colour (name or None) and the counts per colour, within region."""
    lab = object_pixels(img)
    if region is not None:
        lab = lab[region]
    counts = np.bincount(lab[lab >= 0], minlength=len(OBJ))
    return (OBJ[counts.argmax()] if counts.sum() else None), counts


# ------------------------------------------------------------------ masks

def dilate(mask, k=1):
    """Binary dilation by a (2k+1)² square (no wrap-around at the borders)."""
    h, w = mask.shape
    p = np.pad(mask, k)
    out = np.zeros_like(mask)
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def to_latent(mask, factor, rule="any"):
    """Pixel mask [H,W] -> latent-cell mask [H/f, W/f]: a cell is in when any of its pixels is
    ("any", so an edit region covers the whole object) or at least half of them are ("half")."""
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    cells = mask[:h * factor, :w * factor].reshape(h, factor, w, factor)
    return cells.any((1, 3)) if rule == "any" else cells.mean((1, 3)) >= 0.5


def upsample(mask, factor):
    """Nearest-neighbour upsampling of a latent mask to pixels, as noise-diff-mask --image-size."""
    return np.repeat(np.repeat(mask, factor, 0), factor, 1)


def iou(a, b):
    return float((a & b).sum() / max(1, (a | b).sum()))


def largest_component(mask):
    """The largest 4-connected component of a bool mask (flood fill; masks here are tiny)."""
    seen = np.zeros_like(mask)
    best = np.zeros_like(mask)
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, stack = [], [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        if len(comp) > best.sum():
            best = np.zeros_like(mask)
            best[tuple(np.array(comp).T)] = True
    return best


# ------------------------------------------------------------------ shapes

def shape_features(mask, bins=48):
    """Rotation- and scale-invariant features of a silhouette: the boundary's distance from the
    centroid as a function of angle (max over the mask's pixels in each of `bins` sectors),
    normalised by its mean; the magnitudes of its Fourier harmonics 1..8 (a square rings at 4,
    a triangle at 3, a circle at neither), its spread, and the fill ratio area / (π·r_max²)."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    dy, dx = ys - cy, xs - cx
    r = np.hypot(dy, dx) + 0.5
    sector = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    prof = np.zeros(bins)
    np.maximum.at(prof, sector, r)
    if (prof == 0).any():  # sectors with no pixel (tiny masks): take the neighbours' values
        idx = np.nonzero(prof)[0]
        prof = np.interp(np.arange(bins), idx, prof[idx], period=bins)
    prof = prof / prof.mean()
    harm = np.abs(np.fft.rfft(prof))[1:9] / bins
    fill = len(ys) / (np.pi * r.max() ** 2)
    return np.concatenate([harm, [prof.std(), prof.min() / prof.max(), fill]])


class ShapeClassifier:
    """Softmax regression on shape_features, trained on the generator's own scenes (seeds that
    the benchmark never uses), segmented exactly as the benchmark segments edited images."""

    def __init__(self, w, b, mu, sd):
        self.w, self.b, self.mu, self.sd = w, b, mu, sd

    @staticmethod
    def segment(img, colour, region):
        """Pixels of the named object colour inside region, largest component (None if < 20 px)."""
        m = (object_pixels(img) == OBJ.index(colour)) & region
        if m.sum() < 20:
            return None
        m = largest_component(m)
        return m if m.sum() >= 20 else None

    @classmethod
    def train(cls, n_scenes=1500, first_seed=5_000_000, iters=600, lr=0.5):
        xs, ys = [], []
        for k in range(n_scenes):
            s = world.make_scene(first_seed + k)
            for j, o in enumerate(s.objects):
                for img in (s.image, box_blur(s.image)):  # sharp and VAE-soft edges
                    m = cls.segment(img, o.colour, dilate(s.masks[j], 3))
                    if m is not None:
                        xs.append(shape_features(m))
                        ys.append(world.SHAPES.index(o.shape))
        x, y = np.array(xs), np.array(ys)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        z = (x - mu) / sd
        w = np.zeros((z.shape[1], len(world.SHAPES)))
        b = np.zeros(len(world.SHAPES))
        onehot = np.eye(len(world.SHAPES))[y]
        for _ in range(iters):  # full-batch gradient descent on the cross-entropy
            logits = z @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = (p - onehot) / len(z)
            w -= lr * (z.T @ g + 1e-3 * w)
            b -= lr * g.sum(0)
        return cls(w, b, mu, sd)

    def predict(self, mask):
        if mask is None or mask.sum() < 20:
            return None
        z = (shape_features(mask) - self.mu) / self.sd
        return world.SHAPES[int(np.argmax(z @ self.w + self.b))]

    def accuracy(self, n_scenes=300, first_seed=6_000_000, blur=False):
        ok = n = 0
        for k in range(n_scenes):
            s = world.make_scene(first_seed + k)
            img = box_blur(s.image) if blur else s.image
            for j, o in enumerate(s.objects):
                got = self.predict(self.segment(img, o.colour, dilate(s.masks[j], 3)))
                ok += got == o.shape
                n += 1
        return ok / n


def box_blur(img):
    """3×3 box blur with edge replication (roughly the softness the VAE gives edges)."""
    p = np.pad(img.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    out = sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ netpbm

def write_pnm(path, img):
    """uint8 [H,W,3] -> PPM (P6), [H,W] -> PGM (P5)."""
    img = np.ascontiguousarray(img, np.uint8)
    magic = b"P6" if img.ndim == 3 else b"P5"
    with open(path, "wb") as f:
        f.write(magic + b"\n%d %d\n255\n" % (img.shape[1], img.shape[0]) + img.tobytes())


def read_pnm(path):
    """A raw 8-bit PPM/PGM (as vae-decode writes) -> uint8 [H,W,3] or [H,W]."""
    data = open(path, "rb").read()
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    magic, w, h, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if maxval != 255 or magic not in (b"P6", b"P5"):
        raise ValueError(f"{path}: expected a raw 8-bit PPM or PGM, got {magic!r} maxval {maxval}")
    ch = 3 if magic == b"P6" else 1
    px = np.frombuffer(data, np.uint8, count=w * h * ch, offset=pos + 1)
    return px.reshape(h, w, 3) if ch == 3 else px.reshape(h, w)


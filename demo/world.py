"""A tiny procedural world for the diffedit demo model.

Every scene is a 64x64 RGB image with one or two flat-coloured shapes on a background, a plain
English caption derived from the scene, and one ground-truth mask per object. Everything is a pure
function of an integer seed (numpy PCG64), so datasets and benchmarks are reproducible.

    scene = make_scene(seed)            # Scene(image uint8 [64,64,3], masks, objects, captions)
    pair = make_edit_pair(seed)         # same background, one object's colour or shape changed
    big = make_edit_pair(seed, size=1024)   # the same scene rendered at 1024x1024, masks too

A scene's geometry is in units of the 64-px picture; `size` renders it at any other resolution
(the model's 64 px times 4 or 16 for the large-photo benchmark): objects and gradients are drawn
at that resolution, stripes follow the same lines, and the noisy background's 64x64 noise is
enlarged (nearest neighbour), so a bigger render is the same picture, sharper. At size 64 the
output is bit-identical to the renderer before sizes existed.

Objects never overlap (rejection sampling with a margin), so each mask is the object's full
silhouette. Edges are anti-aliased by 4x supersampling; a mask is the pixels >= 50 % covered.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

SIZE = 64
SUPER = 4  # supersampling factor for anti-aliased edges

# Saturated object colours (RGB 0..255).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 225),
    "yellow": (245, 215, 20),
    "purple": (140, 40, 190),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle")

# Muted background colours, chosen to stay far from every object colour.
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "brown": (110, 80, 50),
    "beige": (215, 200, 165),
    "teal": (40, 110, 110),
}
PATTERNS = ("plain", "gradient", "striped", "noisy")


@dataclass
class SceneObject:
    shape: str
    colour: str
    cx: float  # centre x in pixels
    cy: float  # centre y in pixels
    r: float  # half extent in pixels
    angle: float = 0.0  # rotation in radians (squares, triangles)

    def phrase(self) -> str:
        return f"{article(self.colour)} {self.colour} {self.shape}"


@dataclass
class Background:
    colour: str
    pattern: str
    params: dict = field(default_factory=dict)

    def phrase(self) -> str:
        if self.pattern == "plain":
            return f"a plain {self.colour} background"
        if self.pattern == "gradient":
            return f"a {self.colour} gradient background"
        if self.pattern == "striped":
            return f"a striped {self.colour} background"
        return f"a noisy {self.colour} background"


@dataclass
class Scene:
    image: np.ndarray  # uint8 [64, 64, 3]
    masks: list  # bool [64, 64] per object
    objects: list
    background: Background

    @property
    def caption(self) -> str:
        """Full caption: objects and background."""
        return caption_for(self.objects, self.background)

    @property
    def short_caption(self) -> str:
        """Objects only."""
        return caption_for(self.objects, None)

    def captions(self) -> list:
        """All captions that describe this scene (used for training)."""
        out = [self.caption, self.short_caption]
        if len(self.objects) == 2:  # either order of the objects
            rev = list(reversed(self.objects))
            out += [caption_for(rev, self.background), caption_for(rev, None)]
        return out


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(objects, background) -> str:
    text = " and ".join(o.phrase() for o in objects)
    if background is not None:
        text += " on " + background.phrase()
    return text


# ---------------------------------------------------------------- rendering

@functools.lru_cache(maxsize=4)
def _grid(size: int = SIZE):
    """Supersampled pixel centres of a size x size render, in units of the 64-px picture."""
    n = size * SUPER
    c = (np.arange(n, dtype=np.float32) + 0.5) / (SUPER * size / SIZE)
    return np.meshgrid(c, c)  # xs, ys in (64-px) pixel units


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, not {size!r}")
    return int(size)


def coverage(obj: SceneObject, size: int = SIZE) -> np.ndarray:
    """Fraction of each pixel covered by the object, float32 [size, size]."""
    xs, ys = _grid(_check_size(size))
    x = xs - obj.cx
    y = ys - obj.cy
    if obj.shape == "circle":
        inside = x * x + y * y <= obj.r * obj.r
    else:
        ca, sa = np.cos(obj.angle), np.sin(obj.angle)
        u = ca * x + sa * y
        v = -sa * x + ca * y
        if obj.shape == "square":
            h = obj.r * 0.85  # squares look as big as circles of radius r
            inside = (np.abs(u) <= h) & (np.abs(v) <= h)
        elif obj.shape == "triangle":
            # Equilateral triangle with circumradius 1.15 r, apex up (before rotation).
            R = obj.r * 1.15
            inside = np.ones_like(u, dtype=bool)
            for k in range(3):
                a = np.pi / 2 + k * 2 * np.pi / 3 + np.pi  # outward normals of the 3 edges
                nx, ny = np.cos(a), -np.sin(a)
                inside &= (u * nx + v * ny) <= R / 2
        else:
            raise ValueError(f"unknown shape {obj.shape}")
    cov = inside.astype(np.float32).reshape(size, SUPER, size, SUPER).mean(axis=(1, 3))
    return cov


def render_background(bg: Background, size: int = SIZE) -> np.ndarray:
    """float32 [size, size, 3] in 0..255."""
    size = _check_size(size)
    base = np.array(BACKGROUNDS[bg.colour], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    p = bg.params
    if bg.pattern == "gradient":
        # The ramp runs from -1 at the first pixel's centre to 1 at the last one's, at any size.
        t = np.linspace(-1, 1, size, dtype=np.float32)
        ramp = np.cos(p["angle"]) * t[None, :] + np.sin(p["angle"]) * t[:, None]
        img = img + (ramp[..., None] * p["amount"])
    elif bg.pattern == "striped":
        # Pixel centres in 64-px units, less the half pixel: 0, 1, ... 63 exactly at size 64.
        c = (np.arange(size) + 0.5) / (size / SIZE) - 0.5
        pos = np.cos(p["angle"]) * c[None, :] + np.sin(p["angle"]) * c[:, None]
        stripe = (np.floor((pos + p["phase"]) / p["width"]) % 2).astype(np.float32)
        img = img + (stripe[..., None] * 2 - 1) * p["amount"]
    elif bg.pattern == "noisy":
        noise = np.asarray(p["noise"], dtype=np.float32)
        if size != SIZE:  # the 64x64 noise, enlarged: the pixel of the 64-px picture each pixel lies in
            idx = np.minimum((np.arange(size) * SIZE) // size, SIZE - 1)
            noise = noise[idx][:, idx]
        img = img + noise
    return img


def render(objects, bg: Background, size: int = SIZE):
    """The picture (uint8 [size, size, 3]) and each object's mask (bool [size, size], the pixels
    at least half covered)."""
    img = render_background(bg, size)
    masks = []
    for o in objects:
        cov = coverage(o, size)
        col = np.array(COLOURS[o.colour], dtype=np.float32)
        img = img * (1 - cov[..., None]) + col * cov[..., None]
        masks.append(cov >= 0.5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


# ---------------------------------------------------------------- sampling

def _sample_background(rng) -> Background:
    colour = str(rng.choice(list(BACKGROUNDS)))
    pattern = str(rng.choice(PATTERNS))
    params = {}
    sign = 1 if BACKGROUNDS[colour][0] < 128 else -1  # lighten dark colours, darken light ones
    if pattern == "gradient":
        params = {"angle": float(rng.uniform(0, 2 * np.pi)), "amount": float(rng.uniform(20, 35))}
    elif pattern == "striped":
        params = {
            "angle": float(rng.choice([0, np.pi / 2, np.pi / 4, 3 * np.pi / 4])),
            "width": float(rng.integers(3, 7)),
            "phase": float(rng.uniform(0, 8)),
            "amount": float(sign * rng.uniform(15, 25)),
        }
    elif pattern == "noisy":
        params = {"noise": rng.normal(0, 10, size=(SIZE, SIZE, 1)).astype(np.float32)}
    return Background(colour, pattern, params)


def _sample_objects(rng, n: int, shapes=SHAPES, colours=tuple(COLOURS)):
    for _ in range(1000):
        objs = []
        for i in range(n):
            r = float(rng.uniform(9, 14) if n == 1 else rng.uniform(7.5, 11.5))
            m = r * 1.2 + 1
            objs.append(SceneObject(
                shape=str(rng.choice(shapes)),
                colour=str(rng.choice(colours)),
                cx=float(rng.uniform(m, SIZE - m)),
                cy=float(rng.uniform(m, SIZE - m)),
                r=r,
                angle=float(rng.uniform(-0.35, 0.35)),
            ))
        if n == 2:
            a, b = objs
            if (a.shape, a.colour) == (b.shape, b.colour):
                continue
            if np.hypot(a.cx - b.cx, a.cy - b.cy) < 1.25 * (a.r + b.r) + 2:
                continue
        return objs
    raise RuntimeError("could not place objects")


def make_scene(seed: int, n_objects: int | None = None, size: int = SIZE) -> Scene:
    """A random scene. n_objects: 1 or 2 (default: 1 with probability 0.5); size: the render's
    width and height in pixels (the scene drawn does not depend on it)."""
    rng = np.random.default_rng(seed)
    bg = _sample_background(rng)
    n = n_objects if n_objects is not None else int(rng.integers(1, 3))
    objs = _sample_objects(rng, n)
    img, masks = render(objs, bg, size)
    return Scene(img, masks, objs, bg)


def scene_from(objects, background: Background, size: int = SIZE) -> Scene:
    img, masks = render(objects, background, size)
    return Scene(img, masks, list(objects), background)


@dataclass
class EditPair:
    source: Scene
    target: Scene
    index: int  # which object changed
    kind: str  # "colour" or "shape"
    source_caption: str
    target_caption: str
    mask: np.ndarray  # bool [size, size]: union of the changed object's source and target masks

    @property
    def touched(self) -> np.ndarray:
        """bool [size, size]: every pixel the changed object covers at all (coverage > 0), before or
        after the edit. `mask` takes only the pixels at least half covered, so the antialiased rim
        outside it differs between the two renders: a perfect edit changes it. Outside `touched` the
        target render equals the source exactly."""
        size = self.mask.shape[0]
        old, new = self.source.objects[self.index], self.target.objects[self.index]
        return self.mask | (coverage(old, size) > 0) | (coverage(new, size) > 0)


def make_edit_pair(seed: int, kind: str | None = None, n_objects: int | None = None,
                   full_caption: bool = True, size: int = SIZE) -> EditPair:
    """Same scene twice; one object's colour (or shape) changed. Captions follow the scenes.
    size: both renders' (and the masks') width and height; the edit does not depend on it."""
    rng = np.random.default_rng([seed, 7])
    src = make_scene(seed, n_objects, size)
    kind = kind or str(rng.choice(["colour", "shape"]))
    i = int(rng.integers(len(src.objects)))
    old = src.objects[i]
    objs = [SceneObject(**vars(o)) for o in src.objects]
    others = {(o.shape, o.colour) for j, o in enumerate(src.objects) if j != i}
    if kind == "colour":
        choices = [c for c in COLOURS if c != old.colour and (old.shape, c) not in others]
        objs[i].colour = str(rng.choice(choices))
    else:
        choices = [s for s in SHAPES if s != old.shape and (s, old.colour) not in others]
        objs[i].shape = str(rng.choice(choices))
    tgt = scene_from(objs, src.background, size)
    bg = src.background if full_caption else None
    return EditPair(src, tgt, i, kind, caption_for(src.objects, bg), caption_for(tgt.objects, bg),
                    src.masks[i] | tgt.masks[i])


def classify_colour(pixels: np.ndarray) -> np.ndarray:
    """Nearest object colour index for each RGB pixel ([N,3] uint8/float) -> int [N]."""
    pal = np.array(list(COLOURS.values()), dtype=np.float32)
    d = ((pixels[:, None, :].astype(np.float32) - pal[None]) ** 2).sum(-1)
    return d.argmin(1), np.sqrt(d.min(1))


if __name__ == "__main__":  # write a contact sheet of a few scenes
    import sys
    from PIL import Image

    n = 32
    sheet = np.zeros((4 * SIZE, 8 * SIZE, 3), np.uint8)
    for k in range(n):
        s = make_scene(k)
        print(k, s.caption)
        sheet[(k // 8) * SIZE:(k // 8 + 1) * SIZE, (k % 8) * SIZE:(k % 8 + 1) * SIZE] = s.image
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(
        sys.argv[1] if len(sys.argv) > 1 else "/tmp/world.png")

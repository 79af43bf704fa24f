"""Deterministic synthetic captioned scenes: the embedded pretraining and evaluation data.

Each scene holds 1-4 objects (shape x colour x size x texture x position) on a muted,
varied background, with exact instance masks, boxes, a scene label and K captions.

Design choices, from the feasibility notes (REPRO_NOTES.md):
- objects are 0.32-0.6 of the image wide, so each spans 3+ patches at 8 px / 64 px
  and 16 px / 224 px;
- the scene label is (shape of the one large object) x (1-2 vs 3-4 objects): it needs
  shape and count, never colour, which random features already solve;
- every caption describes a different subset or view of the objects (one object with its
  position, a pair and their relation, the count of shapes, the background...), and every
  object is named by some caption when K >= the number of objects, so a caption can tell
  the predictor what a masked block holds. Captions always name shapes.

A scene is a pure function of (seed, split, index): workers can render any subset in any
order and the written files stay byte-identical.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

# The captions' words and sentences live in scene_captions.py; PLURAL is re-exported here.
from .scene_captions import PLURAL, write_captions  # noqa: F401

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (230, 205, 35),
    "purple": (145, 60, 195),
    "orange": (240, 125, 25),
}
TEXTURES = ("solid", "striped", "checkered")
# Radius as a fraction of the image side. The large object is the scene's "main" object.
SIZE_RADIUS = {"small": (0.16, 0.2), "large": (0.25, 0.3)}
COUNT_GROUPS = {"few": (1, 2), "many": (3, 4)}
SCENE_CLASSES = tuple(f"{shape}_{group}" for shape in SHAPES for group in COUNT_GROUPS)
BACKGROUNDS = ("plain", "gradient", "patchy")
SPLITS = {"train": 0, "val": 1}

_MIN_VISIBLE = 0.6  # an occluded object keeps at least this share of its own pixels
_MIN_GAP = 0.75  # centres at least this fraction of (r1 + r2) apart: small overlaps only


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str  # small | large
    texture: str
    center: tuple[float, float]  # (x, y) in pixels
    radius: float
    position: str  # absolute position phrase, e.g. "in the top left"
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # visible pixels, COCO (x, y, w, h)
    area: int = 0  # visible pixels

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size,
                "texture": self.texture, "position": self.position,
                "center": [round(self.center[0], 2), round(self.center[1], 2)],
                "radius": round(self.radius, 2), "bbox": list(self.bbox), "area": self.area}


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    instances: np.ndarray  # (S, S) uint8: 0 background, i + 1 = objects[i] (after occlusion)
    objects: list[SceneObject]
    label: int  # index into SCENE_CLASSES
    background: str  # e.g. "dark patchy"
    captions: list[str] = field(default_factory=list)
    mentions: list[list[int]] = field(default_factory=list)  # object indices per caption

    def instance_mask(self, i: int) -> np.ndarray:
        return self.instances == i + 1

    def semantic_map(self) -> np.ndarray:
        """uint8 labels: 0 = background (ignore), 1..len(SHAPES) = shape of the visible object."""
        lut = np.zeros(len(self.objects) + 1, dtype=np.uint8)
        for i, obj in enumerate(self.objects):
            lut[i + 1] = SHAPES.index(obj.shape) + 1
        return lut[self.instances]

    def to_record(self) -> dict:
        return {"label": self.label, "class": SCENE_CLASSES[self.label],
                "background": self.background,
                "objects": [o.to_dict() for o in self.objects], "mentions": self.mentions}


# ----------------------------------------------------------------------------- rendering
#
# Speed notes (the whole scene set is rendered on a 2-core CPU by `make demo`): the random
# stream is part of the output format, so every optimisation below draws exactly the numbers
# the straightforward code drew, in the same order. ``rng.uniform(lo, hi)`` is computed as
# ``lo + (hi - lo) * rng.random()`` (numpy's own formula, bit-identical, a quarter of the
# call overhead); a rejected background is drawn but never rendered; failing placements
# draw their candidate centres in one call.


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Same double as ``rng.uniform(lo, hi)`` (numpy computes lo + (hi - lo) * next_double)."""
    return lo + (hi - lo) * rng.random()


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-test on pixel-centre offsets from the object centre; extents stay within r."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up at -r, flat base at +0.75 r, half base width r
        return (dy <= 0.75 * r) & (np.abs(dx) <= (dy + r) / 1.75)
    if shape == "cross":
        arm = 0.33 * r
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _texture_pattern(texture: str, xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    if texture == "solid":
        return np.zeros(np.broadcast_shapes(xs.shape, ys.shape), dtype=bool)
    if texture == "striped":
        return ((xs + ys) // period) % 2 == 1
    if texture == "checkered":
        return ((xs // period) + (ys // period)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; known: {TEXTURES}")


@dataclass
class _BackgroundDraw:
    """The random numbers of one background; rendering them is deferred (see _draw_background)."""
    base: np.ndarray
    kind: str
    light: float
    noise: np.ndarray  # (S, S, 1) float32, luminance-only noise
    other: np.ndarray | None = None  # gradient: second colour
    angle: float = 0.0  # gradient: direction
    offsets: np.ndarray | None = None  # patchy: (cells, cells) lightness offsets


def _draw_background(rng: np.random.Generator, size: int) -> _BackgroundDraw:
    """Draw a background's random numbers without rendering it.

    A background whose objects cannot be placed is thrown away: drawing costs a few
    microseconds, rendering ten times more.
    """
    hue, sat, light = rng.random(), _uniform(rng, 0.0, 0.2), _uniform(rng, 0.15, 0.85)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, light), dtype=np.float32)
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    draw = _BackgroundDraw(base=base, kind=kind, light=light, noise=None)  # type: ignore[arg-type]
    if kind == "gradient":
        step = (-0.3, 0.3)[rng.integers(2)]  # == rng.choice([-0.3, 0.3]), without the array
        draw.other = np.array(colorsys.hsv_to_rgb(hue, sat, float(np.clip(light + step, 0.05, 0.95))),
                              dtype=np.float32)
        draw.angle = _uniform(rng, 0, 2 * np.pi)
    elif kind == "patchy":  # a coarse random grid of lightness offsets
        cells = int(rng.integers(3, 9))
        draw.offsets = rng.normal(0.0, 0.08, (cells, cells)).astype(np.float32)
    # Luminance-only noise: a third of the random numbers of per-channel noise, same look.
    draw.noise = rng.standard_normal((size, size, 1), dtype=np.float32)
    return draw


def _render_background(draw: _BackgroundDraw, size: int) -> tuple[np.ndarray, str]:
    """Muted (low-saturation) backgrounds so the saturated objects always stand out."""
    base, kind = draw.base, draw.kind
    noise = 0.02 * draw.noise
    if kind == "plain":
        img = base + noise  # == broadcast_to(base).copy() + noise, without the copy
    elif kind == "gradient":
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        t = np.cos(draw.angle) * coords[None, :] + np.sin(draw.angle) * coords[:, None]
        t = (t - t.min()) / (t.max() - t.min())
        img = base * (1 - t[..., None]) + draw.other * t[..., None]
        img = img + noise
    else:
        idx = np.arange(size) * len(draw.offsets) // size
        img = base + draw.offsets[idx][:, idx][..., None]
        img = img + noise
    tone = "dark" if draw.light < 0.4 else "light" if draw.light > 0.6 else "grey"
    return img, f"{tone} {kind}"


def _position_phrase(cx: float, cy: float, size: int) -> str:
    col = 0 if cx < size / 3 else 2 if cx > 2 * size / 3 else 1
    row = 0 if cy < size / 3 else 2 if cy > 2 * size / 3 else 1
    return (("in the top left", "at the top", "in the top right"),
            ("on the left", "in the center", "on the right"),
            ("in the bottom left", "at the bottom", "in the bottom right"))[row][col]


_PLACEMENT_TRIES = 50
_SCALAR_TRIES = 3  # tries drawn one by one; the rest (rarely needed) in one call


def _place(rng: np.random.Generator, size: int, radius: float,
           placed: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """Up to 50 centres ``rng.uniform(radius, size - radius, 2)``; the first far enough from
    every placed (x, y, r), or None. Consumes exactly the random numbers of those calls."""
    lo, span = radius, (size - radius) - radius  # numpy: low + (high - low) * next_double

    def fits(cx: float, cy: float) -> bool:
        return all((cx - ox) ** 2 + (cy - oy) ** 2 >= (_MIN_GAP * (radius + orad)) ** 2 for ox, oy, orad in placed)

    random = rng.random
    for _ in range(_SCALAR_TRIES):
        cx, cy = lo + span * random(), lo + span * random()
        if fits(cx, cy):
            return cx, cy
    # Many tries ahead (a crowded scene): draw them all at once, then rewind the generator to
    # just after the accepted try, so the stream is the one try-by-try drawing gives.
    bitgen = rng.bit_generator
    state = bitgen.state
    rest = _PLACEMENT_TRIES - _SCALAR_TRIES
    u = random(2 * rest).tolist()
    for t in range(rest):
        cx, cy = lo + span * u[2 * t], lo + span * u[2 * t + 1]
        if fits(cx, cy):
            if t + 1 < rest:
                bitgen.state = state
                random(2 * (t + 1))
            return cx, cy
    return None


def _sample_objects(rng: np.random.Generator, size: int, label: int) -> list[SceneObject] | None:
    main_shape = SHAPES[label // len(COUNT_GROUPS)]
    lo, hi = list(COUNT_GROUPS.values())[label % len(COUNT_GROUPS)]
    count = int(rng.integers(lo, hi + 1))
    colours = list(COLOURS)
    taken: set[tuple[str, str]] = set()
    objects: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []
    for i in range(count):
        # The main (large) object is drawn last, i.e. on top: the label's shape is never hidden.
        is_main = i == count - 1
        shape = main_shape if is_main else SHAPES[rng.integers(len(SHAPES))]
        colour = colours[rng.integers(len(colours))]
        while (shape, colour) in taken:  # unique (shape, colour): captions can refer unambiguously
            colour = colours[rng.integers(len(colours))]
        taken.add((shape, colour))
        size_word = "large" if is_main else "small"
        radius = _uniform(rng, *SIZE_RADIUS[size_word]) * size
        centre = _place(rng, size, radius, placed)
        if centre is None:
            return None
        cx, cy = centre
        placed.append((cx, cy, radius))
        objects.append(SceneObject(shape=shape, colour=colour, size=size_word,
                                   texture=TEXTURES[rng.integers(len(TEXTURES))],
                                   center=(float(cx), float(cy)), radius=float(radius),
                                   position=_position_phrase(cx, cy, size)))
    return objects


_COLOUR_ARRAYS = {name: np.array(rgb) for name, rgb in COLOURS.items()}


def _paint(rng: np.random.Generator, img: np.ndarray, objects: list[SceneObject]) -> np.ndarray | None:
    size = img.shape[0]
    period = max(3, size // 16)
    instances = np.zeros((size, size), dtype=np.uint8)
    grid = np.arange(size)
    centres = grid + 0.5  # pixel centres; centres[x0:x1] == np.arange(x0, x1) + 0.5
    windows, full_area = [], []
    for i, obj in enumerate(objects):
        cx, cy = obj.center
        x0, x1 = max(0, int(cx - obj.radius) - 1), min(size, int(cx + obj.radius) + 2)
        y0, y1 = max(0, int(cy - obj.radius) - 1), min(size, int(cy + obj.radius) + 2)
        xs, ys = grid[x0:x1], grid[y0:y1]
        inside = _shape_mask(obj.shape, (centres[x0:x1] - cx)[None, :], (centres[y0:y1] - cy)[:, None], obj.radius)
        colour = (_COLOUR_ARRAYS[obj.colour] + rng.integers(-15, 16, 3)).astype(np.float32) / 255
        if obj.texture == "solid":  # shade 1.0 everywhere: 1.0 * colour == colour
            paint = colour
        else:
            # float64 shade * float32 colour is float64, then stored in img's dtype (float64
            # for gradient backgrounds): round exactly there.
            dark = (0.55 * colour.astype(np.float64)).astype(img.dtype)
            colour = colour.astype(img.dtype)
            pattern = _texture_pattern(obj.texture, xs[None, :], ys[:, None], period)
            paint = np.where(pattern[..., None], dark, colour)
        np.copyto(img[y0:y1, x0:x1], paint, where=inside[..., None])
        np.copyto(instances[y0:y1, x0:x1], i + 1, where=inside)
        windows.append((x0, x1, y0, y1))
        full_area.append(int(np.count_nonzero(inside)))
    for i, (obj, (x0, x1, y0, y1)) in enumerate(zip(objects, windows)):
        visible = instances[y0:y1, x0:x1] == i + 1  # an object never leaves its own window
        obj.area = int(np.count_nonzero(visible))
        if obj.area < _MIN_VISIBLE * full_area[i]:
            return None
        cols, rows = np.flatnonzero(visible.any(0)), np.flatnonzero(visible.any(1))
        obj.bbox = (x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return instances


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return np.random.default_rng([seed, SPLITS[split], index])


def generate_scene(seed: int, split: str, index: int, image_size: int = 64, num_captions: int = 8) -> Scene:
    """The scene ``index`` of ``split``; a pure function of its arguments."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px for objects to stay recognisable, got {image_size}")
    if num_captions < 1:
        raise ValueError(f"num_captions must be >= 1, got {num_captions}")
    rng = scene_rng(seed, split, index)
    label = int(rng.integers(len(SCENE_CLASSES)))
    while True:  # rejection: placements with too much overlap are redrawn
        drawn = _draw_background(rng, image_size)
        objects = _sample_objects(rng, image_size, label)
        if objects is None:
            continue  # the background is never rendered
        img, background = _render_background(drawn, image_size)
        instances = _paint(rng, img, objects)
        if instances is not None:
            break
    image = img * 255
    image += 0.5
    np.maximum(image, 0, out=image)  # == np.clip(img * 255 + 0.5, 0, 255), without its wrapper
    np.minimum(image, 255, out=image)
    image = image.astype(np.uint8)
    scene = Scene(image=image, instances=instances, objects=objects, label=label, background=background)
    write_captions(rng, scene, num_captions)
    return scene

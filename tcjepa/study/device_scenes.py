"""Captioned scenes rendered from seeds by batched torch ops, straight into device tensors.

A batch of scenes is a pure function of (data seed, stream, block): its random numbers are
drawn on the CPU by one numpy generator (a few kB per batch, so CPU and GPU see the
same scenes), then painted on the device in a few vectorised ops. The training stream has
no end (block = run seed and step), and the held-out set is a fixed list of blocks of
another stream, so it can never meet a training scene.

The family follows the embedded scenes (``tcjepa.data.scenes``): 1-4 objects of 6 shapes x
6 colours x 3 textures x 2 sizes on a muted plain / gradient / patchy background with
luminance noise; scene label = (shape of the one large object) x (1-2 vs 3-4 objects).
Differences, chosen so that a batch needs no rejection loop: objects sit in distinct cells
of a 3x3 grid (centre jittered, kept inside the image), so overlaps are small and there is
no visibility check; the large object is painted last (on top); (shape, colour) pairs may
repeat; patchy backgrounds use a 4x4 grid of cells; captions come from the closed
vocabulary of ``scene_family.py`` (one object per caption, every object captioned).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tcjepa.data.scenes import COLOURS, SHAPES
from tcjepa.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tcjepa.study.scene_family import caption_ids

MAX_OBJECTS = 4
STREAMS = {"train": 0, "heldout": 1}
SMALL_RADIUS = (0.13, 0.17)  # fractions of the image side
LARGE_RADIUS = (0.2, 0.25)
RADII = (SMALL_RADIUS, LARGE_RADIUS)  # the protocol's; a diagnostic grid may ask for others
Radii = tuple[tuple[float, float], tuple[float, float]]
JITTER = 0.35  # centre offset within its cell, as a fraction of half a cell
_COLOUR_TABLE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (6, 3) 0-255
_PATCHY_CELLS = 4


@dataclass
class SceneBatch:
    """Scenes on one device. images uint8 (B, 3, S, S); labels int64 (B,); segmentation uint8
    (B, S, S), 0 = background, 1..6 = shape; caption_ids int64 (B, N); caption_objects int64
    (B, N) slot each caption describes; instances uint8 (B, S, S), 0 = background, k + 1 =
    slot k; object_shape / object_present (B, MAX_OBJECTS)."""
    images: torch.Tensor
    labels: torch.Tensor
    segmentation: torch.Tensor
    caption_ids: torch.Tensor
    caption_objects: torch.Tensor
    caption_templates: torch.Tensor
    instances: torch.Tensor
    object_shape: torch.Tensor
    object_present: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalized_images(self) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=self.images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.images.device).view(1, 3, 1, 1)
        return (self.images.float() / 255 - mean) / std

    def select(self, idx: torch.Tensor | slice) -> "SceneBatch":
        return SceneBatch(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @staticmethod
    def cat(parts: list["SceneBatch"]) -> "SceneBatch":
        return SceneBatch(**{k: torch.cat([getattr(p, k) for p in parts]) for k in SceneBatch.__dataclass_fields__})


def scene_generator(data_seed: int, stream: str, *block: int) -> np.random.Generator:
    # numpy's SeedSequence takes the whole key (torch's CPU generator keeps 32 bits of a seed,
    # which would repeat scenes within a long study).
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {list(STREAMS)}, got {stream!r}")
    return np.random.default_rng([data_seed, STREAMS[stream], *block])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _uniform(g: np.random.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return _t(lo + (hi - lo) * g.random(shape, dtype=np.float32))


def _randint(g: np.random.Generator, lo: int, hi: int, shape) -> torch.Tensor:
    return _t(g.integers(lo, hi, shape, dtype=np.int64))


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """colorsys.hsv_to_rgb for tensors of shape (B,); returns (B, 3)."""
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = torch.stack([torch.stack(c, -1) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1)  # (B, 6, 3)
    return table[torch.arange(len(h)), i]


def draw_parameters(g: np.random.Generator, count: int, size: int, num_captions: int,
                    radii: Radii = RADII) -> dict[str, torch.Tensor]:
    """Every random number of ``count`` scenes (CPU tensors), in a fixed order; ``radii`` =
    ((small lo, hi), (large lo, hi)) as fractions of the image side."""
    B, K = count, MAX_OBJECTS
    label = _randint(g, 0, 12, (B,))
    few = label % 2 == 0
    num_objects = torch.where(few, _randint(g, 1, 3, (B,)), _randint(g, 3, 5, (B,)))
    cells = _t(np.argsort(g.random((B, 9)), axis=1)[:, :K])
    shape = _randint(g, 0, len(SHAPES), (B, K))
    shape[:, K - 1] = label // 2  # the main (large) object sits in the last slot, painted on top
    colour = _randint(g, 0, len(COLOURS), (B, K))
    colour_jitter = _randint(g, -15, 16, (B, K, 3))
    texture = _randint(g, 0, 3, (B, K))
    small, large = _uniform(g, (B, K), *radii[0]), _uniform(g, (B, K), *radii[1])
    is_large = torch.zeros(B, K, dtype=torch.bool)
    is_large[:, K - 1] = True
    radius = torch.where(is_large, large, small) * size
    cell = size / 3
    jitter = _uniform(g, (B, K, 2), -1.0, 1.0) * JITTER * cell / 2
    centre = torch.stack([cells % 3, cells // 3], -1).float() * cell + cell / 2 + jitter  # (x, y)
    centre = torch.maximum(torch.minimum(centre, size - radius[..., None]), radius[..., None])
    background = {
        "hue": _uniform(g, (B,), 0.0, 1.0), "sat": _uniform(g, (B,), 0.0, 0.2), "light": _uniform(g, (B,), 0.15, 0.85),
        "kind": _randint(g, 0, 3, (B,)),
        "step": torch.where(_uniform(g, (B,), 0.0, 1.0) < 0.5, -0.3, 0.3),
        "angle": _uniform(g, (B,), 0.0, 2 * math.pi),
        "offsets": 0.08 * _t(g.standard_normal((B, _PATCHY_CELLS, _PATCHY_CELLS), dtype=np.float32)),
        "noise": 0.02 * _t(g.standard_normal((B, 1, size, size), dtype=np.float32)),
    }
    caption_start = (_uniform(g, (B,), 0.0, 1.0) * num_objects).long().clamp_max(num_objects - 1)
    templates = _randint(g, 0, 3, (B, num_captions))
    return {"label": label, "num_objects": num_objects, "shape": shape, "colour": colour,
            "colour_jitter": colour_jitter, "texture": texture, "radius": radius, "centre": centre,
            "is_large": is_large, "caption_start": caption_start, "templates": templates, **background}


def _background(p: dict, size: int, device) -> torch.Tensor:
    light = p["light"]
    base = _hsv_to_rgb(p["hue"], p["sat"], light)[..., None, None]  # (B, 3, 1, 1)
    other = _hsv_to_rgb(p["hue"], p["sat"], (light + p["step"]).clamp(0.05, 0.95))[..., None, None]
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    angle = p["angle"][:, None, None]
    t = torch.cos(angle) * coords[None, None, :] + torch.sin(angle) * coords[None, :, None]  # (B, S, S)
    lo, hi = t.amin((1, 2), keepdim=True), t.amax((1, 2), keepdim=True)
    t = ((t - lo) / (hi - lo))[:, None]
    gradient = base * (1 - t) + other * t
    cells = (torch.arange(size, device=device) * _PATCHY_CELLS) // size
    patchy = base + p["offsets"][:, cells][:, :, cells][:, None]
    kind = p["kind"].view(-1, 1, 1, 1)
    img = torch.where(kind == 0, base.expand(-1, -1, size, size), torch.where(kind == 1, gradient, patchy))
    return img + p["noise"]


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> list[torch.Tensor]:
    """Inside-tests of every shape, as in tcjepa.data.scenes._shape_mask, order of SHAPES."""
    ax, ay, d2 = dx.abs(), dy.abs(), dx * dx + dy * dy
    arm = 0.33 * r
    masks = {
        "circle": d2 <= r * r,
        "square": (ax <= 0.85 * r) & (ay <= 0.85 * r),
        "triangle": (dy <= 0.75 * r) & (ax <= (dy + r) / 1.75),
        "diamond": ax + ay <= r,
        "cross": ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r)),
        "ring": (d2 <= r * r) & (d2 >= (0.55 * r) ** 2),
    }
    return [masks[s] for s in SHAPES]


def render(p: dict, size: int, device: torch.device | str) -> SceneBatch:
    """Paint the scenes of ``draw_parameters`` on ``device``."""
    device = torch.device(device)
    p = {k: v.to(device) for k, v in p.items()}
    B, K = p["shape"].shape
    img = _background(p, size, device)
    grid = torch.arange(size, device=device)
    centres = grid.float() + 0.5
    dx = centres.view(1, 1, 1, size) - p["centre"][..., 0, None, None]  # (B, K, 1, S)
    dy = centres.view(1, 1, size, 1) - p["centre"][..., 1, None, None]  # (B, K, S, 1)
    r = p["radius"][..., None, None]
    inside = torch.zeros(B, K, size, size, dtype=torch.bool, device=device)
    for s, mask in enumerate(_shape_masks(dx, dy, r)):
        inside |= mask & (p["shape"] == s)[..., None, None]
    present = torch.arange(K, device=device)[None] >= K - p["num_objects"][:, None]
    inside &= present[..., None, None]
    period = max(3, size // 16)
    striped = ((grid[None, :] + grid[:, None]) // period) % 2 == 1
    checkered = ((grid[None, :] // period) + (grid[:, None] // period)) % 2 == 1
    pattern = torch.stack([torch.zeros_like(striped), striped, checkered])[p["texture"]]  # (B, K, S, S)
    colour = (_COLOUR_TABLE.to(device)[p["colour"]] + p["colour_jitter"]) / 255  # (B, K, 3)
    instances = torch.zeros(B, size, size, dtype=torch.uint8, device=device)
    for k in range(K):
        paint = torch.where(pattern[:, k, None], 0.55 * colour[:, k, :, None, None], colour[:, k, :, None, None])
        img = torch.where(inside[:, k, None], paint, img)
        instances = torch.where(inside[:, k], torch.tensor(k + 1, dtype=torch.uint8, device=device), instances)
    images = (img * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    shape_lut = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=device), p["shape"] + 1], 1)
    segmentation = torch.gather(shape_lut, 1, instances.view(B, -1).long()).view(B, size, size).to(torch.uint8)
    return SceneBatch(images=images, labels=p["label"], segmentation=segmentation, instances=instances,
                      object_shape=p["shape"], object_present=present, **_captions(p, size))


def _captions(p: dict, size: int) -> dict[str, torch.Tensor]:
    """Caption j of a scene describes object slot K - n + (start + j) mod n: every object once
    before any twice."""
    K = MAX_OBJECTS
    n = p["num_objects"][:, None]
    N = p["templates"].shape[1]
    j = torch.arange(N, device=n.device)[None]
    slot = K - n + (p["caption_start"][:, None] + j) % n  # (B, N)
    pick = lambda t: torch.gather(t, 1, slot)  # noqa: E731 - one gather per field
    col, row = (pick(p["centre"][..., 0]) * 3 / size).long().clamp(0, 2), (pick(p["centre"][..., 1]) * 3 / size).long().clamp(0, 2)
    ids = caption_ids(p["templates"], pick(p["is_large"].long()), pick(p["texture"]), pick(p["colour"]),
                      pick(p["shape"]), row * 3 + col)
    return {"caption_ids": ids, "caption_objects": slot, "caption_templates": p["templates"]}


def render_block(data_seed: int, stream: str, block: int, count: int, size: int = 64, num_captions: int = 4,
                 device: torch.device | str = "cpu", radii: Radii = RADII) -> SceneBatch:
    """``count`` scenes of one block of a stream; the same arguments give the same scenes."""
    g = scene_generator(data_seed, stream, block)
    return render(draw_parameters(g, count, size, num_captions, check_radii(radii)), size,
                  _check(size, num_captions, device))


def _check(size: int, num_captions: int, device):
    if size < 32:
        raise ValueError(f"image size must be >= 32 px for objects to stay recognisable, got {size}")
    if num_captions < 1:
        raise ValueError(f"num_captions must be >= 1, got {num_captions}")
    return device


def check_radii(radii) -> Radii:
    """((small lo, hi), (large lo, hi)) with 0 < lo <= hi <= 0.5 (an object must fit the image)."""
    try:
        (a, b), (c, d) = radii
        pairs = ((float(a), float(b)), (float(c), float(d)))
    except (TypeError, ValueError):
        raise ValueError(f"object radii must be ((small lo, hi), (large lo, hi)), got {radii!r}") from None
    for name, (lo, hi) in zip(("small", "large"), pairs):
        if not 0 < lo <= hi <= 0.5:
            raise ValueError(f"{name} object radii must satisfy 0 < lo <= hi <= 0.5 (fractions of the image "
                             f"side), got {lo}, {hi}")
    return pairs


def training_batch(data_seed: int, run_seed: int, step: int, batch_size: int, size: int = 64,
                   num_captions: int = 4, device: torch.device | str = "cpu", radii: Radii = RADII) -> SceneBatch:
    """The fresh scenes of one training step: block = (run seed, step), never repeated."""
    return training_batches(data_seed, [run_seed], step, batch_size, size, num_captions, device, radii)[0]


def training_batches(data_seed: int, run_seeds: list[int], step: int, batch_size: int, size: int = 64,
                     num_captions: int = 4, device: torch.device | str = "cpu", radii: Radii = RADII
                     ) -> list[SceneBatch]:
    """``training_batch`` of several runs at one step, painted in one call (stacked runs): each
    scene is painted on its own, so every run's scenes are those it gets alone."""
    radii = check_radii(radii)
    drawn = [draw_parameters(scene_generator(data_seed, "train", s, step), batch_size, size, num_captions, radii)
             for s in run_seeds]
    scenes = render({k: torch.cat([p[k] for p in drawn]) for k in drawn[0]}, size, _check(size, num_captions, device))
    return [scenes.select(slice(i * batch_size, (i + 1) * batch_size)) for i in range(len(run_seeds))]


def heldout_set(data_seed: int, count: int, size: int = 64, num_captions: int = 4, block_size: int = 500,
                device: torch.device | str = "cpu", radii: Radii = RADII) -> SceneBatch:
    """The fixed held-out scenes: the first ``count`` of the held-out stream, in blocks."""
    parts = [render_block(data_seed, "heldout", b, min(block_size, count - b * block_size), size, num_captions,
                          device, radii) for b in range(math.ceil(count / block_size))]
    return SceneBatch.cat(parts)

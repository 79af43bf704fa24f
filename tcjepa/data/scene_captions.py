"""The captions of a synthetic scene: K sentences, each on one object or a pair in turn.

Views name an object's size, texture, colour, shape and absolute position ("a large striped red
circle in the top left"), a relation between two objects, or the shape counts, so that a
caption can tell the predictor what a masked block hides. ``write_captions`` draws them with
the scene's own generator.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .scenes import Scene, SceneObject

PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
          "diamond": "diamonds", "cross": "crosses", "ring": "rings"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: SceneObject, size: bool = False, texture: bool = False, colour: bool = True) -> str:
    words = [obj.size] if size else []
    if texture and obj.texture != "solid":
        words.append(obj.texture)
    if colour:
        words.append(obj.colour)
    words.append(obj.shape)
    return f"{_article(words[0])} {' '.join(words)}"


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _count_phrase(objects: list[SceneObject]) -> str:
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.shape] = counts.get(o.shape, 0) + 1
    parts = [f"{_article(s)} {s}" if c == 1 else f"{NUMBER_WORDS[c]} {PLURAL[s]}" for s, c in counts.items()]
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    n = len(objects)
    return f"{NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}: {listing}"


def _single_views(obj: SceneObject, background: str) -> list[str]:
    full, plain, pos = _phrase(obj, size=True, texture=True), _phrase(obj), obj.position
    return [
        f"{full} {pos}.",
        f"{pos}, there is {plain}.",
        f"{plain} {pos}.",
        f"{pos}: {full}.",
        f"an image of {full}.",
        f"{_phrase(obj, size=True)} on {_article(background)} {background} background.",
        f"{_phrase(obj, texture=True, colour=False)} {pos}.",
        f"{_phrase(obj, size=True, colour=False)} {pos}.",
    ]


def _pair_views(a: SceneObject, b: SceneObject, plain: dict | None = None, full: dict | None = None) -> list[str]:
    """``plain`` / ``full``: optional id(obj) -> _phrase(obj) / _phrase(obj, size, texture) caches."""
    pa, pb = (plain[id(a)], plain[id(b)]) if plain else (_phrase(a), _phrase(b))
    fa, fb = (full[id(a)], full[id(b)]) if full else (_phrase(a, size=True, texture=True),
                                                       _phrase(b, size=True, texture=True))
    views = [
        f"{pa} {_relation(a, b)} {pb}.",
        f"{fa} and {fb}.",
        # Same shape twice: name the colours, or the caption says nothing.
        f"the {a.shape} {_relation(a, b)} the {b.shape}." if a.shape != b.shape
        else f"the {a.colour} {a.shape} {_relation(a, b)} the {b.colour} {b.shape}.",
    ]
    if a.size != b.size:
        big, small = (a, b) if a.size == "large" else (b, a)
        views.append(f"the {big.colour} {big.shape} is larger than the {small.colour} {small.shape}.")
    return views


def write_captions(rng: np.random.Generator, scene: Scene, num_captions: int) -> None:
    """K captions, each on a different object (or pair) in turn, no two alike when possible."""
    objs, n = scene.objects, len(scene.objects)
    count_view = (f"{_count_phrase(objs)}.", list(range(n)))
    singles = [[(t, [i]) for t in _single_views(o, scene.background)] for i, o in enumerate(objs)]
    plain = {id(o): _phrase(o) for o in objs}
    full = {id(o): _phrase(o, size=True, texture=True) for o in objs}
    order = rng.permutation(n).tolist()
    used: set[str] = set()
    cached: dict[tuple[int, int], list] = {}  # k cycles through the objects: (focus, partner) repeats
    for k in range(num_captions):
        focus = order[k % n]
        partner = order[(k + 1) % n] if n > 1 else -1
        options = cached.get((focus, partner))
        if options is None:
            options = list(singles[focus])
            if n > 1:
                options += [(t, [focus, partner]) for t in _pair_views(objs[focus], objs[partner], plain, full)]
            options.append(count_view)
            cached[focus, partner] = options
        # == options permuted, then the first one not used yet (else the first one)
        perm = rng.permutation(len(options)).tolist()
        text, mentioned = next((options[j] for j in perm if options[j][0] not in used), options[perm[0]])
        used.add(text)
        scene.captions.append(text[0].upper() + text[1:])
        scene.mentions.append(sorted(mentioned))


# ----------------------------------------------------------------------------- entry point

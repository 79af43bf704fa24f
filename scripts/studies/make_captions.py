"""The pilot's captions: the embedded scenes' captions without absolute position words.

    python scripts/studies/make_captions.py data/scenes

writes <data>/captions_nopos.jsonl, its shuffled control captions_nopos_shuffled.jsonl (the
demo's derangement), and their word-feature caches under <data>/text_cache/. The images are
the demo's; only the captions change. Each caption is drawn by the generator's own
``write_captions`` with the views that name an absolute position ("in the top left", ...)
left out; relations between objects ("the square to the right of the cross") stay, so a
caption can still place an object, but only relative to another one that the predictor has
to find in the context.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from evals.demo import caption_derangement, ensure_text_cache
from tcjepa.config import load_config
from tcjepa.data import scene_captions, scenes

POSITIONS = ("in the top left", "at the top", "in the top right", "on the left", "in the center",
             "on the right", "in the bottom left", "at the bottom", "in the bottom right")


def views_without_position(obj: scenes.SceneObject, background: str) -> list[str]:
    return [v for v in _single_views(obj, background) if obj.position not in v]


def captions_without_positions(record: dict, index: int, count: int) -> list[str]:
    objects = [scenes.SceneObject(shape=o["shape"], colour=o["colour"], size=o["size"], texture=o["texture"],
                                  center=tuple(o["center"]), radius=o["radius"], position=o["position"])
               for o in record["objects"]]
    scene = scenes.Scene(image=None, instances=None, objects=objects, label=record["label"],
                         background=record["background"])
    scenes.write_captions(np.random.default_rng([7, index]), scene, count)
    for caption in scene.captions:
        if any(p in caption.lower() for p in POSITIONS):
            raise AssertionError(f"scene {index}: caption names a position: {caption!r}")
    return scene.captions


def deranged(lines: list[dict]) -> list[dict]:
    """The demo's control: image i gets the captions of image perm[i] != i."""
    perm = caption_derangement(len(lines))
    return [{"image": a["image"], "captions": lines[j]["captions"]} for a, j in zip(lines, perm)]


_single_views = scene_captions._single_views

if __name__ == "__main__":
    data = Path(sys.argv[1])
    count = json.loads((data / "scenes.json").read_text())["captions_per_image"]
    scene_captions._single_views = views_without_position
    with open(data / "scenes_train.jsonl") as f:
        lines = [{"image": r["image"], "captions": captions_without_positions(r, i, count)}
                 for i, r in enumerate(map(json.loads, f))]
    scene_captions._single_views = _single_views
    cfg = load_config("configs/cpu/scenes_tcjepa.yaml")
    for name, rows in (("captions_nopos.jsonl", lines), ("captions_nopos_shuffled.jsonl", deranged(lines))):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(name, "->", ensure_text_cache(data, name, cfg))

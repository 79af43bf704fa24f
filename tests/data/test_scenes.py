from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from tcjepa.data.layouts import CLASS_WNIDS, write_scene_dataset
from tcjepa.data.scenes import PLURAL, SCENE_CLASSES, SHAPES, generate_scene



def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_worker_count(scenes_root, scenes_params, tmp_path):
    write_scene_dataset(tmp_path / "b", **scenes_params, seed=0, workers=2, progress=False)
    assert _tree_bytes(scenes_root) == _tree_bytes(tmp_path / "b")
    write_scene_dataset(tmp_path / "c", train=4, val=0, seed=1, workers=1, progress=False)
    other = (tmp_path / "c" / "images/train/0000000.jpg").read_bytes()
    assert other != (scenes_root / "images/train/0000000.jpg").read_bytes()


def test_tree_structure(scenes_root, scenes_params):
    TRAIN, VAL, CAPTIONS = scenes_params["train"], scenes_params["val"], scenes_params["captions_per_image"]
    assert len(list((scenes_root / "images/train").glob("*.jpg"))) == TRAIN
    assert len(list((scenes_root / "images/val").glob("*.jpg"))) == VAL
    assert sum(1 for _ in (scenes_root / "imagenet/train").rglob("*.JPEG")) == TRAIN
    assert sum(1 for _ in (scenes_root / "imagenet/val").rglob("*.JPEG")) == VAL
    assert sorted(p.name for p in (scenes_root / "imagenet/train").iterdir()) == sorted(CLASS_WNIDS)
    classes = json.loads((scenes_root / "imagenet/classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == list(SCENE_CLASSES)
    ade = scenes_root / "ADEChallengeData2016"
    for split, n in (("training", TRAIN), ("validation", VAL)):
        images = sorted((ade / "images" / split).glob("*.jpg"))
        labels = sorted((ade / "annotations" / split).glob("*.png"))
        assert len(images) == len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels]
    assert json.loads((ade / "classes.json").read_text())["classes"] == list(SHAPES)
    assert len(list((scenes_root / "coco/train2017").glob("*.jpg"))) == TRAIN
    lines = (scenes_root / "captions.jsonl").read_text().splitlines()
    assert len(lines) == TRAIN and len((scenes_root / "captions_val.jsonl").read_text().splitlines()) == VAL
    first = json.loads(lines[0])
    assert (scenes_root / first["image"]).is_file() and len(first["captions"]) == CAPTIONS


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
def test_coco_masks_match_ade_labels(scenes_root, scenes_params):
    SIZE = scenes_params["image_size"]
    for split, ade_split in (("train", "training"), ("val", "validation")):
        coco = COCO(str(scenes_root / f"coco/annotations/instances_{split}2017.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
        for img in coco.loadImgs(coco.getImgIds()):
            label = np.array(Image.open(scenes_root / "ADEChallengeData2016/annotations" / ade_split /
                                        f"ADE_{split}_{img['id']:08d}.png"))
            assert label.dtype == np.uint8 and label.shape == (SIZE, SIZE)
            assert label.max() <= len(SHAPES)
            union = np.zeros_like(label, dtype=bool)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                m = coco.annToMask(ann).astype(bool)
                assert ann["iscrowd"] == 0 and ann["area"] == m.sum() > 0
                assert (label[m] == ann["category_id"]).all()
                x, y, w, h = ann["bbox"]
                ys, xs = np.nonzero(m)
                assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
                assert not (union & m).any()  # instances do not overlap after occlusion
                union |= m
            assert ((label > 0) == union).all()


def test_scene_design():
    shape_words = re.compile("|".join(list(SHAPES) + list(PLURAL.values())))
    for i in range(40):
        scene = generate_scene(3, "train", i, image_size=64, num_captions=8)
        n = len(scene.objects)
        assert 1 <= n <= 4
        label_shape, group = SCENE_CLASSES[scene.label].split("_")
        large = [o for o in scene.objects if o.size == "large"]
        assert len(large) == 1 and large[0].shape == label_shape
        assert (n <= 2) == (group == "few")
        for j, o in enumerate(scene.objects):  # each object fills a quarter or more of 3+ patches of 8 px
            assert max(o.bbox[2], o.bbox[3]) >= 16
            assert (scene.instance_mask(j).reshape(8, 8, 8, 8).mean((1, 3)) >= 0.25).sum() >= 3
        assert len(scene.captions) == 8 and len(set(scene.captions)) == 8
        assert all(shape_words.search(c.lower()) for c in scene.captions)
        assert set().union(*map(set, scene.mentions)) == set(range(n))  # every object described


def test_png_labels_are_the_bytes_pillow_writes():
    from tcjepa.data.layouts import _encode_png_pil, encode_png

    rng = np.random.default_rng(0)
    arrays = [generate_scene(4, "val", i, image_size=size).semantic_map() for i, size in ((0, 64), (1, 96), (2, 224))]
    arrays += [rng.integers(0, 256, (int(h), int(w))).astype(np.uint8) for h, w in rng.integers(1, 80, (20, 2))]
    arrays.append(np.zeros((64, 64), np.uint8))
    for a in arrays:
        data = encode_png(a)
        assert data == _encode_png_pil(a)
        assert np.array_equal(np.array(Image.open(__import__("io").BytesIO(data))), a)


def test_fast_random_draws_consume_the_stream_like_the_plain_calls():
    """The renderer replaces rng.uniform / per-try placement draws by cheaper calls that must
    give the same numbers and leave the generator in the same state (the format depends on it)."""
    from tcjepa.data.scenes import _MIN_GAP, _place, _uniform

    for seed in range(200):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        a.integers(5), b.integers(5)  # leave a buffered 32-bit half, as in the renderer
        assert _uniform(a, 0.15, 0.85) == b.uniform(0.15, 0.85)
        size, radius = 64, float(b.uniform(8, 20))
        a.random()
        placed = [(float(x), float(y), float(r)) for x, y, r in b.uniform(10, 54, (seed % 5, 3))]
        a.uniform(10, 54, (seed % 5, 3))
        got = _place(a, size, radius, placed)
        for _ in range(50):  # the original loop
            cx, cy = b.uniform(radius, size - radius, 2)
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (_MIN_GAP * (radius + r)) ** 2 for x, y, r in placed):
                want = (float(cx), float(cy))
                break
        else:
            want = None
        assert got == want
        assert a.integers(1 << 30, size=4).tolist() == b.integers(1 << 30, size=4).tolist()

"""Write synthetic scenes in the official layouts of the pretraining and downstream sets.

One call of ``write_scene_dataset`` produces, under ``out``::

    captions.jsonl, captions_val.jsonl       {"image": "images/train/0000000.jpg", "captions": [...]}
    scenes_train.jsonl, scenes_val.jsonl      per-image objects, boxes, label, caption mentions
    images/{train,val}/*.jpg
    imagenet/{train,val}/<wnid>/*.JPEG        + imagenet/classes.json, LOC_synset_mapping.txt
    ADEChallengeData2016/{images,annotations}/{training,validation}
                                              JPEG images, PNG uint8 labels: 0 = ignore,
                                              1..6 = shapes (reduce_zero_label semantics)
                                              + ADEChallengeData2016/classes.json
    coco/{train2017,val2017}/*.jpg, coco/annotations/instances_{train,val}2017.json
    scenes.json                               the generation parameters

so the dataset readers of the evaluations read this data and the real sets unchanged. The
same JPEG file is hard-linked into every tree (copied where links are not supported). Scenes are rendered in worker processes; every file is a
pure function of (seed, split, index), so the output is byte-identical for any worker count.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from tcjepa.data.errors import DataError
from tcjepa.data.scenes import SCENE_CLASSES, SHAPES, Scene, generate_scene

FORMAT_VERSION = 1
CLASS_WNIDS = tuple(f"n9{i:07d}" for i in range(len(SCENE_CLASSES)))  # ImageNet-style folder ids
JPEG_QUALITY = 95
# Generated top-level entries; --overwrite deletes exactly these and nothing else.
GENERATED = ("images", "imagenet", "ADEChallengeData2016", "coco", "captions.jsonl", "captions_val.jsonl",
             "scenes_train.jsonl", "scenes_val.jsonl", "scenes.json")
_ADE_SPLIT = {"train": "training", "val": "validation"}
_COCO_SPLIT = {"train": "train2017", "val": "val2017"}


def scene_paths(split: str, index: int, label: int) -> dict[str, str]:
    """Paths (relative to the output folder) of one scene in every layout, named as the real sets do."""
    n = index + 1  # the official sets number from 1
    ade = _ADE_SPLIT[split]
    in_name = f"{CLASS_WNIDS[label]}_{index}.JPEG" if split == "train" else f"ILSVRC2012_val_{n:08d}.JPEG"
    ade_stem = f"ADE_{split}_{n:08d}"
    return {
        "image": f"images/{split}/{index:07d}.jpg",
        "imagenet": f"imagenet/{split}/{CLASS_WNIDS[label]}/{in_name}",
        "ade_image": f"ADEChallengeData2016/images/{ade}/{ade_stem}.jpg",
        "ade_label": f"ADEChallengeData2016/annotations/{ade}/{ade_stem}.png",
        "coco": f"coco/{_COCO_SPLIT[split]}/{n:012d}.jpg",
    }


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 chroma: with 4:2:0 the saturated object colours bleed a pixel past their masks.
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


PNG_COMPRESS_LEVEL = 1


def _encode_png_pil(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels, mode="L").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IDAT_MAX = 65536  # Pillow's PNG writer starts a new IDAT chunk past this many bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


_PNG_IEND = _png_chunk(b"IEND", b"")


def _encode_png_direct(labels: np.ndarray) -> bytes | None:
    """The bytes ``Image.save(format="PNG")`` writes for a uint8 label map, without its
    per-call Python overhead (~60% of the time at 64 px): Pillow's own zip encoder (same row
    filters, same zlib settings) plus the three chunks it writes for mode L. None if the data
    would span several IDAT chunks (never at label-map sizes)."""
    h, w = labels.shape
    data = Image.fromarray(labels, mode="L").tobytes("zip", "L", False, PNG_COMPRESS_LEVEL, -1, b"")
    if len(data) > _PNG_IDAT_MAX:
        return None
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grey, deflate, no interlace
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _PNG_IEND


_png_direct_ok: bool | None = None


def _png_direct_works() -> bool:
    """Use the direct path only where it reproduces Image.save byte for byte (checked once)."""
    global _png_direct_ok
    if _png_direct_ok is None:
        probe = (np.arange(37 * 29, dtype=np.uint32).reshape(29, 37) * 2654435761 % 7).astype(np.uint8)
        try:
            _png_direct_ok = _encode_png_direct(probe) == _encode_png_pil(probe)
        except Exception:  # another Pillow's encoder arguments: fall back to Image.save
            _png_direct_ok = False
    return _png_direct_ok


def encode_png(labels: np.ndarray) -> bytes:
    """PNG of a uint8 label map, exactly as ``Image.save(format="PNG", compress_level=1)``."""
    if labels.ndim == 2 and labels.dtype == np.uint8 and _png_direct_works():
        data = _encode_png_direct(labels)
        if data is not None:
            return data
    return _encode_png_pil(labels)


def coco_annotations(scene: Scene, image_id: int) -> list[dict]:
    """One instance per visible object; ids are filled in by the caller (global per file)."""
    anns = []
    for i, obj in enumerate(scene.objects):
        rle = mask_utils.encode(np.asfortranarray(scene.instance_mask(i).astype(np.uint8)))
        anns.append({"image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                     "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                     "area": float(obj.area), "bbox": [float(v) for v in obj.bbox], "iscrowd": 0})
    return anns


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    # Creating a file costs far more than its 3 kB of data on common file systems; the four
    # trees hold the same JPEG bytes, so hard links make the command ~2x faster.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    image_size: int
    num_captions: int


_O_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _write_file(path: str, data: bytes) -> None:
    # os-level: a third of the cost of Path.write_bytes for a 3 kB file (no buffered file object).
    fd = os.open(path, _O_WRITE, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_scene(job: _Job, split: str, index: int) -> dict:
    scene = generate_scene(job.seed, split, index, job.image_size, job.num_captions)
    paths = scene_paths(split, index, scene.label)
    out = job.out
    first = os.path.join(out, paths["image"])
    _write_file(first, encode_jpeg(scene.image))
    for key in ("imagenet", "ade_image", "coco"):
        _link_or_copy(first, os.path.join(out, paths[key]))
    _write_file(os.path.join(out, paths["ade_label"]), encode_png(scene.semantic_map()))
    # The JSON lines are serialised here, in the worker, not in the main process.
    return {"captions_line": json.dumps({"image": paths["image"], "captions": scene.captions}) + "\n",
            "scenes_line": json.dumps({"image": paths["image"], **scene.to_record()}) + "\n",
            "coco_file": paths["coco"].rsplit("/", 1)[-1], "coco_anns": coco_annotations(scene, index + 1)}


def _worker(args: tuple[_Job, str, int]) -> dict:
    return _write_scene(*args)


def _make_dirs(out: Path) -> None:
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for wnid in CLASS_WNIDS:
            (out / "imagenet" / split / wnid).mkdir(parents=True, exist_ok=True)
        for kind in ("images", "annotations"):
            (out / "ADEChallengeData2016" / kind / _ADE_SPLIT[split]).mkdir(parents=True, exist_ok=True)
        (out / "coco" / _COCO_SPLIT[split]).mkdir(parents=True, exist_ok=True)
    (out / "coco" / "annotations").mkdir(parents=True, exist_ok=True)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder is not empty; choose a new --out, or pass --overwrite "
                            f"to replace the scenes generated there before")
        for name in GENERATED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    _make_dirs(out)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _write_split_files(out: Path, split: str, image_size: int, results: list[dict]) -> None:
    suffix = "" if split == "train" else "_val"
    with open(out / f"captions{suffix}.jsonl", "w") as f:
        f.write("".join(r["captions_line"] for r in results))
    with open(out / f"scenes_{split}.jsonl", "w") as f:
        f.write("".join(r["scenes_line"] for r in results))
    images, annotations = [], []
    for index, r in enumerate(results):
        images.append({"id": index + 1, "file_name": r["coco_file"], "height": image_size, "width": image_size})
        for ann in r["coco_anns"]:
            annotations.append({"id": len(annotations) + 1, **ann})
    coco = {"info": {"description": "tcjepa synthetic scenes", "version": str(FORMAT_VERSION)},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]}
    (out / "coco" / "annotations" / f"instances_{_COCO_SPLIT[split]}.json").write_text(json.dumps(coco))


def _write_class_files(out: Path) -> None:
    classes = [{"index": i, "wnid": w, "name": n} for i, (w, n) in enumerate(zip(CLASS_WNIDS, SCENE_CLASSES))]
    _write_json(out / "imagenet" / "classes.json", {"classes": classes})
    (out / "imagenet" / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(CLASS_WNIDS, SCENE_CLASSES)))
    _write_json(out / "ADEChallengeData2016" / "classes.json",
                {"classes": list(SHAPES), "ignore_label": 0, "reduce_zero_label": True,
                 "note": "label k in 1..len(classes) is classes[k-1]; 0 is background, ignored"})


def write_scene_dataset(out: str | Path, train: int = 10000, val: int = 1000, captions_per_image: int = 8,
                        image_size: int = 64, seed: int = 0, workers: int | None = None,
                        overwrite: bool = False, progress: bool = True) -> dict:
    """Render ``train`` + ``val`` scenes into every layout under ``out``; returns the summary."""
    if train < 1 or val < 0:
        raise DataError(f"--train must be >= 1 and --val >= 0, got train={train} val={val}")
    if captions_per_image < 1:
        raise DataError(f"--captions-per-image must be >= 1, got {captions_per_image}")
    if image_size < 32:
        raise DataError(f"--image-size must be >= 32 px, got {image_size}")
    out = Path(out)
    _prepare_out(out, overwrite)
    job = _Job(str(out), seed, image_size, captions_per_image)
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    tasks = [(job, split, i) for split, n in (("train", train), ("val", val)) for i in range(n)]
    bar = tqdm(total=len(tasks), desc="scenes", unit="img", disable=not progress)
    results: list[dict] = []
    if workers == 1:
        for task in tasks:
            results.append(_worker(task))
            bar.update()
    else:
        # fork: workers inherit the imports; order-preserving imap keeps the JSON files deterministic.
        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_worker, tasks, chunksize=64):
                results.append(r)
                bar.update()
    bar.close()
    _write_split_files(out, "train", image_size, results[:train])
    _write_split_files(out, "val", image_size, results[train:])
    _write_class_files(out)
    summary = {"format_version": FORMAT_VERSION, "seed": seed, "train": train, "val": val,
               "captions_per_image": captions_per_image, "image_size": image_size,
               "classes": len(SCENE_CLASSES), "shapes": list(SHAPES)}
    _write_json(out / "scenes.json", summary)
    return summary

"""Captioned image datasets: an image folder + ``captions.jsonl``, or WebDataset tar shards.

Both are map-style, so a sampler can resume exactly, and both number captions the same way:
caption id = offset of the record + position of the caption in it, in file order. The ids
key the text-feature cache; ``caption_texts()`` lists the strings in id order.

A sample is keyed by ``index`` or ``(index, epoch)``: every random choice (which N captions,
which crop, which substitute for a bad sample) is a pure function of (seed, epoch, index),
independent of worker count and of how far the run got before it was resumed.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from tcjepa.data.errors import SKIP_HINT, DataError

log = logging.getLogger("tcjepa.data")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_SUBSTITUTES = 32  # bad samples in a row before a skip-mode run gives up
_MAX_WORKER_SLOTS = 256  # bad-sample counter slots: one per DataLoader worker (+ main process)
_STREAM_CAPTIONS, _STREAM_CROP, _STREAM_SUBSTITUTE = 0, 1, 2


@dataclass(frozen=True)
class CaptionRecord:
    image: str  # path relative to the dataset root (folder) or member key (shards)
    captions: tuple[str, ...]
    where: str  # "file:line" (or "shard:member") for error messages


def validate_caption_record(obj: Any, where: str, need_image: bool = True) -> tuple[str, tuple[str, ...]]:
    """Check one decoded record; errors name ``where`` and the key at fault."""
    if not isinstance(obj, dict):
        raise DataError(f'{where}: expected an object like {{"image": "images/x.jpg", "captions": ["..."]}}, '
                        f"got {type(obj).__name__}")
    image = obj.get("image", "")
    if need_image and (not isinstance(image, str) or not image):
        raise DataError(f"{where}: missing or empty \"image\" key (a path relative to the dataset root)")
    if "captions" not in obj:
        raise DataError(f"{where}: missing \"captions\" key (a list of caption strings)")
    captions = obj["captions"]
    if not isinstance(captions, list):
        raise DataError(f"{where}: \"captions\" must be a list of strings, got {type(captions).__name__}")
    if not captions:
        raise DataError(f"{where}: empty caption list; give the image at least one caption or drop the line")
    for j, c in enumerate(captions):
        if not isinstance(c, str):
            raise DataError(f"{where}: caption {j} is {type(c).__name__}, not a string")
        if not c.strip():
            raise DataError(f"{where}: caption {j} is an empty string; remove it (empty captions are never "
                            f"fed to the text encoder)")
    return image, tuple(captions)


def read_captions_jsonl(path: str | Path, skip_bad: bool = False,
                        bad_lines: list[str] | None = None) -> list[CaptionRecord]:
    """Records of a captions.jsonl file in file order; blank lines are ignored. With ``skip_bad``
    a bad line is logged, its ``file:line`` appended to ``bad_lines``, and left out."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: captions file not found")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be "
                                    f'one object like {{"image": "images/x.jpg", "captions": ["..."]}}') from None
                image, captions = validate_caption_record(obj, where)
            except DataError as e:
                if not skip_bad:
                    raise
                log.warning("skipping bad caption line: %s", e)
                if bad_lines is not None:
                    bad_lines.append(where)
                continue
            records.append(CaptionRecord(image, captions, where))
    if not records:
        raise DataError(f"{path}: no records; the file is empty")
    return records


def choose_captions(count: int, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` caption positions out of ``count``: without replacement when there are enough;
    otherwise every caption once, then the rest drawn with replacement (under max-pooling a
    repeat changes nothing, so this never wastes a caption)."""
    if count >= num:
        return rng.permutation(count)[:num]
    return np.concatenate([rng.permutation(count), rng.integers(0, count, num - count)])


def decode_image(data: bytes | Path, where: str) -> Image.Image:
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode image ({type(e).__name__}: {e}); {SKIP_HINT}") from None


class CaptionedDataset(Dataset):
    """Caption ids and sampling, transforms, and skip-and-count of bad samples.

    Subclasses provide ``records`` and ``load_image(index) -> PIL.Image`` (raising DataError).
    """

    def __init__(self, records: Sequence[CaptionRecord], transform: Callable | None = None,
                 num_captions: int = 8, seed: int = 0, skip_bad_samples: bool = False):
        if num_captions < 1:
            raise ValueError(f"num_captions must be >= 1, got {num_captions}")
        self.records = list(records)
        self.transform = transform
        self.num_captions = num_captions
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        counts = np.array([len(r.captions) for r in self.records], dtype=np.int64)
        self.caption_offsets = np.concatenate([[0], np.cumsum(counts)])
        # Shared memory: DataLoader workers increment their own slot, the trainer reads the sum.
        self._bad_counter = torch.zeros(_MAX_WORKER_SLOTS, dtype=torch.int64).share_memory_()
        self._logged_bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_caption_ids(self) -> int:
        return int(self.caption_offsets[-1])

    def caption_texts(self) -> list[str]:
        """Every caption string, position = global caption id."""
        return [c for r in self.records for c in r.captions]

    @property
    def bad_samples(self) -> int:
        """Bad samples met so far in skip mode, over all workers (a file counts each time it is drawn)."""
        return int(self._bad_counter.sum())

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def _sample_rng(self, epoch: int, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index, stream])

    def _note_bad(self, index: int, error: DataError) -> None:
        info = get_worker_info()
        self._bad_counter[0 if info is None else 1 + info.id % (_MAX_WORKER_SLOTS - 1)] += 1
        if index not in self._logged_bad:
            self._logged_bad.add(index)
            log.warning("skipping bad sample %d: %s", index, error)

    def _load_or_substitute(self, index: int, epoch: int) -> tuple[int, Image.Image]:
        original = index
        for attempt in range(MAX_SUBSTITUTES + 1):
            try:
                return index, self.load_image(index)
            except DataError as e:
                if not self.skip_bad_samples:
                    raise
                self._note_bad(index, e)
                last = e
                rng = self._sample_rng(epoch, original, _STREAM_SUBSTITUTE + attempt)
                index = int(rng.integers(len(self)))
        raise DataError(f"{MAX_SUBSTITUTES + 1} bad samples in a row (starting at sample {original}); "
                        f"the dataset looks broken, last error: {last}")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        index, epoch = int(index), int(epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for a dataset of {len(self)}")
        index, img = self._load_or_substitute(index, epoch)
        record = self.records[index]
        positions = choose_captions(len(record.captions), self.num_captions,
                                    self._sample_rng(epoch, index, _STREAM_CAPTIONS))
        if self.transform is None:
            image = img
        elif getattr(self.transform, "takes_generator", False):
            seed = int(np.random.SeedSequence([self.seed, epoch, index, _STREAM_CROP]).generate_state(1)[0])
            image = self.transform(img, generator=torch.Generator().manual_seed(seed))
        else:
            image = self.transform(img)
        return {"image": image,
                "caption_ids": [int(self.caption_offsets[index] + p) for p in positions],
                "captions": [record.captions[p] for p in positions],
                "sample_idx": index, "epoch": epoch}


def _layout_hint(root: Path, captions_file: str) -> str:
    if (root.parent / captions_file).is_file():
        return f"; {root.parent / captions_file} exists: did you mean data.root={root.parent}?"
    if any((root / s).is_dir() for s in ("train", "val")) and not (root / "images").is_dir():
        return ("; this looks like an ImageNet-style class tree, which has no captions: pretraining reads "
                "a folder made by `tcjepa-data scenes` or `tcjepa-data from-wds`")
    return ""


class CaptionedImageFolder(CaptionedDataset):
    """``root/captions.jsonl`` lines ``{"image": rel_path, "captions": [...]}``, images under ``root``."""

    def __init__(self, root: str | Path, captions_file: str = "captions.jsonl", transform: Callable | None = None,
                 num_captions: int = 8, seed: int = 0, skip_bad_samples: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data folder not found; make the synthetic scenes with "
                            f"`tcjepa-data scenes --out {self.root}` or point data.root at your data")
        self.captions_path = self.root / captions_file
        if not self.captions_path.is_file():
            raise DataError(f"{self.captions_path}: captions file not found; expected {self.root}/{captions_file} "
                            f'with one {{"image": rel_path, "captions": [...]}} per line and the images at '
                            f"paths relative to {self.root}{_layout_hint(self.root, captions_file)}")
        bad_lines: list[str] = []
        records = read_captions_jsonl(self.captions_path, skip_bad=skip_bad_samples, bad_lines=bad_lines)
        super().__init__(records, transform, num_captions, seed, skip_bad_samples)
        self._bad_counter[0] += len(bad_lines)  # skipped lines count as bad samples
        self._check_layout()

    def _check_layout(self) -> None:
        # A wrong root makes every path miss; one missing file is a bad sample, not a layout error.
        probe = self.records[:: max(1, len(self.records) // 16)][:16]
        if not any((self.root / r.image).is_file() for r in probe):
            first = probe[0]
            raise DataError(f"{first.where}: image {first.image!r} not found under {self.root} (nor any of "
                            f"{len(probe)} images checked); 'image' paths must be relative to the folder "
                            f"that holds {self.captions_path.name}{_layout_hint(self.root, self.captions_path.name)}")

    def image_path(self, index: int) -> Path:
        return self.root / self.records[index].image

    def load_image(self, index: int) -> Image.Image:
        path, record = self.image_path(index), self.records[index]
        if not path.is_file():
            raise DataError(f"{path}: image not found (listed at {record.where}); {SKIP_HINT}")
        return decode_image(path, f"{path} (listed at {record.where})")

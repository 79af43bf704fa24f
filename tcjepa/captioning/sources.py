"""The images to caption, in a fixed input order: a folder tree, an ImageNet-style class tree,
or WebDataset shards. Images are decoded in DataLoader workers; a bad image comes back as
an error message for the main process to count or stop on, never as an exception in a worker."""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tcjepa.data.captions import IMAGE_EXTENSIONS, SKIP_HINT, decode_image
from tcjepa.data.wds import _scan_shard
from tcjepa.data.errors import DataError

# Pictures caption-stats writes beside the captions: not input when --out is the image folder.
OUR_IMAGES = {"caption_stats.png"}
SKIP_BAD_HINT = "fix or remove it, or pass --skip-bad to skip and count bad images"


@dataclass(frozen=True)
class ShardSample:
    shard: int
    key: str
    members: tuple[tuple[str, int, int, str], ...]  # (ext, offset, size, member name), in tar order
    image_ext: str

    def member(self, ext: str) -> tuple[str, int, int, str]:
        return next(m for m in self.members if m[0] == ext)


@dataclass
class Source:
    """``names[i]`` names input image i in messages; ``root`` (folders) or ``shards`` (WebDataset)."""

    kind: str  # "images" | "imagenet" | "wds"
    names: list[str]
    root: Path | None = None
    shards: list[Path] = field(default_factory=list)
    samples: list[ShardSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """Identity of the input list (names and order), so a resume is refused on other inputs."""
        h = hashlib.sha256(self.kind.encode())
        for name in self.names:
            h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()


def _is_image(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def _image_files(base: Path, root: Path) -> list[str]:
    names, seen = [], {os.path.realpath(base)}
    for folder, dirs, files in os.walk(base, followlinks=True):
        # Hidden folders (our own .captions-work) are skipped, and so is a link back to a folder
        # already listed (an --out inside the image folder holds such a link, images/).
        keep = [d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in seen]
        seen.update(os.path.realpath(os.path.join(folder, d)) for d in keep)
        dirs[:] = sorted(keep)
        names += [(Path(folder) / f).relative_to(root).as_posix() for f in files
                  if not f.startswith(".") and _is_image(Path(f)) and f not in OUR_IMAGES]
    return sorted(names)


def folder_source(root: str | Path) -> Source:
    """Every .jpg/.jpeg/.png/.webp under ``root`` (any depth), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    names = _image_files(root, root)
    if not names:
        raise DataError(f"{root}: no images (.{', .'.join(IMAGE_EXTENSIONS)}) in this folder or below it")
    return Source("images", names, root=root)


def imagenet_source(root: str | Path, split: str = "train") -> Source:
    """``root/split/<class>/*.JPEG`` (or ``root/<class>/*`` when there is no ``split`` folder)."""
    root = Path(root)
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise DataError(f"{root}: ImageNet folder not found")
    classes = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = [n for d in classes for n in _image_files(d, root)]
    if not names:
        raise DataError(f"{base}: no class folders with images; expected {root}/{split}/<class>/<image>.JPEG")
    return Source("imagenet", names, root=root)


def wds_source(shards: str | Sequence[str]) -> Source:
    """Every sample of the shards that has an image member, in shard and member order."""
    from tcjepa.data.wds import expand_shards

    paths = expand_shards(shards)
    samples, names = [], []
    for shard_id, path in enumerate(paths):
        for key, files in _scan_shard(path):
            members = tuple(sorted(((ext, f[0], f[1], f[2]) for ext, f in files.items()), key=lambda m: m[1]))
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), "")
            samples.append(ShardSample(shard_id, key, members, image_ext))
            names.append(f"{path}:{key}")
    if not samples:
        raise DataError(f"{paths[0]}: no samples in {len(paths)} shard(s)")
    return Source("wds", names, shards=paths, samples=samples)


def _decode(data: bytes | Path, where: str, min_side: int | None):
    """RGB image; a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides
    >= ``min_side`` (a 12-megapixel photo decodes several times faster for a 384 px model)."""
    if min_side:
        try:
            with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
                img.draft("RGB", (min_side, min_side))
                return img.convert("RGB")
        except Exception:  # noqa: BLE001 - decoded again below, which names the file and the error
            pass
    return decode_image(data, where)


class DecodedImages(Dataset):
    """Item i -> {"index": i, "image": RGB PIL image or None, "error": None or one line}."""

    def __init__(self, source: Source, min_side: int | None = None):
        self.source = source
        self.min_side = min_side
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # open files do not cross process boundaries

    def _shard_bytes(self, sample: ShardSample, name: str) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if sample.shard not in self._handles:
            self._handles[sample.shard] = open(self.source.shards[sample.shard], "rb")
        f = self._handles[sample.shard]
        _, offset, size, _ = sample.member(sample.image_ext)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise DataError(f"{name}: shard is truncated; {SKIP_HINT}")
        return data

    def _load(self, index: int):
        name = self.source.names[index]
        if self.source.kind == "wds":
            sample = self.source.samples[index]
            if not sample.image_ext:
                raise DataError(f"{name}: sample has no image member (.{', .'.join(IMAGE_EXTENSIONS)}); {SKIP_HINT}")
            return _decode(self._shard_bytes(sample, name), name, self.min_side)
        path = self.source.root / name
        if not path.is_file():
            raise DataError(f"{path}: image not found; {SKIP_HINT}")
        return _decode(path, str(path), self.min_side)

    def __getitem__(self, index: int) -> dict:
        try:
            return {"index": index, "image": self._load(index), "error": None}
        except DataError as e:
            return {"index": index, "image": None, "error": str(e).replace(SKIP_HINT, SKIP_BAD_HINT)}


def default_workers() -> int:
    """Decode workers per process: half the cores, shared between the ranks on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cpus // 2 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))


def image_batches(source: Source, batches: list[list[int]], workers: int, min_side: int | None = None) -> DataLoader:
    """Decoded batches of ``batches`` (lists of input indices), in that order."""
    return DataLoader(DecodedImages(source, min_side), batch_sampler=batches, num_workers=workers,
                      collate_fn=list, prefetch_factor=4 if workers else None, persistent_workers=False)

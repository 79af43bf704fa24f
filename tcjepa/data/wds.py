"""WebDataset tar shards: the map-style dataset over them, and conversion to and from folders.

``CaptionedWebDataset`` indexes the members of uncompressed tar shards once and reads images
by seek; ``write_wds_shards`` / ``extract_wds`` convert an image folder + captions.jsonl to
shards and back. Every WebDataset read in the project goes through this module.

A sample is ``KEY.<ext>`` (the original image bytes, never re-encoded) + ``KEY.json`` with
``{"captions": [...], "image": original relative path}``; keys are the zero-padded sample
number, so shard order = captions.jsonl order and caption ids agree between the two formats.
Tar headers carry no time or owner: the same input gives the same shard bytes.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from PIL import Image
from tqdm import tqdm

from tcjepa.data.captions import (
    IMAGE_EXTENSIONS,
    CaptionedDataset,
    CaptionRecord,
    decode_image,
    read_captions_jsonl,
    validate_caption_record,
)
from tcjepa.data.errors import SKIP_HINT, DataError

log = logging.getLogger(__name__)

_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(pattern: str) -> list[str]:
    """``shard-{000..009}.tar`` and ``{a,b}`` alternatives, as the webdataset library expands them."""
    m = _BRACE_RANGE.search(pattern)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        return [p for i in range(int(lo), int(hi) + 1)
                for p in _expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]
    m = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if m:
        return [p for alt in m.group(1).split(",")
                for p in _expand_braces(pattern[:m.start()] + alt + pattern[m.end():])]
    return [pattern]


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a brace pattern, a glob, a folder of ``*.tar``, or a list of those."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs or specs == [""]:
        raise DataError("no WebDataset shards given; set data.shards to e.g. 'data/shards/shard-{000000..000009}.tar'")
    paths: list[Path] = []
    for s in map(str, specs):
        for p in _expand_braces(s):
            if Path(p).is_dir():
                found = sorted(Path(p).glob("*.tar"))
                if not found:
                    raise DataError(f"{p}: folder holds no *.tar shards")
                paths += found
            elif any(c in p for c in "*?["):
                found = sorted(Path(x) for x in glob.glob(p))
                if not found:
                    raise DataError(f"{p}: no shard matches this pattern")
                paths += found
            elif not Path(p).is_file():
                raise DataError(f"{p}: shard not found (from {s!r})")
            else:
                paths.append(Path(p))
    return paths


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tf.addfile(info, io.BytesIO(data))


def write_wds_shards(root: str | Path, out: str | Path, captions_file: str = "captions.jsonl",
                     shard_size: int = 1000, prefix: str = "shard", progress: bool = True) -> list[Path]:
    """Folder + captions.jsonl -> ``out/{prefix}-000000.tar``, ...; returns the shard paths."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    root, out = Path(root), Path(out)
    records = read_captions_jsonl(root / captions_file)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    tf = None
    for i, rec in enumerate(tqdm(records, desc="to-wds", unit="img", disable=not progress)):
        if i % shard_size == 0:
            if tf is not None:
                tf.close()
            shards.append(out / f"{prefix}-{len(shards):06d}.tar")
            tf = tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT)
        path = root / rec.image
        if not path.is_file():
            raise DataError(f"{path}: image not found (listed at {rec.where}); fix the path or drop the line")
        ext = path.suffix.lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if ext not in IMAGE_EXTENSIONS:
            raise DataError(f"{path}: unsupported image type .{ext} (listed at {rec.where}); "
                            f"use one of .{', .'.join(IMAGE_EXTENSIONS)}")
        key = f"{i:09d}"
        _add_member(tf, f"{key}.{ext}", path.read_bytes())
        _add_member(tf, f"{key}.json", json.dumps({"captions": list(rec.captions), "image": rec.image}).encode())
    if tf is not None:
        tf.close()
    return shards


def _safe_relative(image: str) -> bool:
    p = PurePosixPath(image)
    return bool(image) and not p.is_absolute() and ".." not in p.parts


def extract_wds(shards: str | Sequence[str | Path], out: str | Path, captions_file: str = "captions.jsonl",
                progress: bool = True) -> int:
    """Shards -> ``out/captions.jsonl`` + images; restores the original paths when the JSON has them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out / captions_file, "w") as cap:
        for shard in tqdm(expand_shards(shards), desc="from-wds", unit="shard", disable=not progress):
            with open(shard, "rb") as f:
                for key, files in _scan_shard(shard):
                    where = f"{shard}:{key}"
                    if "json" not in files:
                        raise DataError(f"{where}: sample has no .json member with its captions")
                    meta = _parse_member_json(files["json"][3], where)
                    _, captions = validate_caption_record(meta, where, need_image=False)
                    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
                    if ext is None:
                        raise DataError(f"{where}: sample has no image member (.{', .'.join(IMAGE_EXTENSIONS)})")
                    image = meta.get("image", "")
                    if not (isinstance(image, str) and _safe_relative(image)):
                        image = f"images/{key}.{ext}"
                    offset, size = files[ext][:2]
                    f.seek(offset)
                    target = out / image
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(f.read(size))
                    cap.write(json.dumps({"image": image, "captions": list(captions)}) + "\n")
                    count += 1
    return count


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _ShardMember:
    shard: int
    offset: int
    size: int
    name: str


class CaptionedWebDataset(CaptionedDataset):
    """WebDataset tar shards (``KEY.jpg`` + ``KEY.json`` with ``{"captions": [...]}``), map-style.

    The index of members (offsets into the uncompressed tars) is built once by scanning the
    headers; images are then read by seek, so any sample can be fetched in any order.
    """

    def __init__(self, shards: str | Sequence[str | Path], transform: Callable | None = None,
                 num_captions: int = 8, seed: int = 0, skip_bad_samples: bool = False, progress: bool = False):
        self.shards = expand_shards(shards)
        records, members, dropped = [], [], 0
        for shard_id, shard in enumerate(tqdm(self.shards, desc="index shards", unit="shard", disable=not progress)):
            for key, files in _scan_shard(shard):
                where = f"{shard}:{key}"
                if "json" not in files:
                    raise DataError(f"{where}: sample has no .json member with its captions")
                _, captions = validate_caption_record(_parse_member_json(files["json"][3], where), where,
                                                      need_image=False)
                image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
                if image is None:
                    msg = f"{where}: sample has no image member (.{', .'.join(IMAGE_EXTENSIONS)}); {SKIP_HINT}"
                    if not skip_bad_samples:
                        raise DataError(msg)
                    log.warning("dropping sample: %s", msg)
                    dropped += 1
                    continue
                records.append(CaptionRecord(key, captions, where))
                members.append(_ShardMember(shard_id, image[0], image[1], image[2]))
        if not records:
            raise DataError(f"{self.shards[0]}: no samples found in {len(self.shards)} shard(s)")
        super().__init__(records, transform, num_captions, seed, skip_bad_samples)
        self.members = members
        self._bad_counter[0] += dropped
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files do not cross process boundaries
        return state

    def _handle(self, shard_id: int):
        if self._pid != os.getpid():  # forked worker: the parent's file offsets are not ours
            self._handles, self._pid = {}, os.getpid()
        if shard_id not in self._handles:
            self._handles[shard_id] = open(self.shards[shard_id], "rb")
        return self._handles[shard_id]

    def load_image(self, index: int) -> Image.Image:
        m = self.members[index]
        f = self._handle(m.shard)
        f.seek(m.offset)
        data = f.read(m.size)
        where = f"{self.shards[m.shard]}:{m.name}"
        if len(data) != m.size:
            raise DataError(f"{where}: shard is truncated (member needs {m.size} bytes); {SKIP_HINT}")
        return decode_image(data, where)


def _split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename, ext = the rest."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _scan_shard(path: Path):
    """Yield (key, {ext: (offset, size, name, json bytes or None)}) for consecutive members sharing a key."""
    try:
        tf = tarfile.open(path, mode="r:")  # uncompressed only: members are read later by seek
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable uncompressed tar shard ({e}); "
                        f"write shards with `tcjepa-data to-wds`") from None
    with tf:
        key, files = None, {}
        try:
            for info in tf:
                if not info.isfile():
                    continue
                k, ext = _split_member_name(info.name)
                if k != key:
                    if key is not None:
                        yield key, files
                    key, files = k, {}
                # Caption JSON is small and needed for the index: read it now (tarfile seeks back).
                data = tf.extractfile(info).read() if ext == "json" else None
                files[ext] = (info.offset_data, info.size, info.name, data)
        except tarfile.TarError as e:
            raise DataError(f"{path}: corrupt tar shard after member {key!r} ({e}); re-create it") from None
        if key is not None:
            yield key, files


def _parse_member_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}.json: invalid JSON ({e}); expected {{\"captions\": [...]}}") from None

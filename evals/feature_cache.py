"""The on-disk feature cache: one ``.npy`` file per array, filled chunk by chunk, resumable.

Layout of one cache folder (one split, one backbone, one transform)::

    index.json          key, number of items, chunk size, dtype and shape of every array
    <array>.npy         e.g. last1.npy, last4.npy (float16), labels.npy (int64); plain .npy
                        files, readable with ``np.load(mmap_mode="r")`` without this code
    chunks/000012.json  written once chunk 12's rows are on disk, with their CRC-32s
    meta.json           written last, once every chunk is there: the cache is complete

Chunk ``c`` holds rows ``[c * chunk_size, (c + 1) * chunk_size)``. Writers (one per rank)
fill disjoint chunks of the same files with ``pwrite`` and mark each chunk after its bytes
are synced, so a process killed at any point leaves only complete, marked chunks and
unmarked ones that the next run redoes. Nothing here unpickles anything.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evals.backbones.base import UserError

FORMAT = "tcjepa-feature-cache/2"
INDEX, META, CHUNKS = "index.json", "meta.json", "chunks"


class FeatureCacheError(UserError):
    """A cache folder that is incomplete, damaged or not the one asked for."""


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class ArraySpec:
    dtype: str
    row_shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "row_shape": list(self.row_shape)}


class FeatureCache:
    """One cache folder; ``arrays`` maps each array name to its :class:`ArraySpec`."""

    def __init__(self, folder: Path, key: str, num_items: int, chunk_size: int, arrays: dict[str, ArraySpec]):
        if chunk_size < 1:
            raise UserError(f"feature-cache chunk size must be >= 1, got {chunk_size}")
        self.folder, self.key, self.num_items, self.chunk_size = Path(folder), key, num_items, chunk_size
        self.arrays = arrays

    @property
    def num_chunks(self) -> int:
        return -(-self.num_items // self.chunk_size)

    def chunk_rows(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_items))

    def index(self) -> dict:
        return {"format": FORMAT, "key": self.key, "num_items": self.num_items, "chunk_size": self.chunk_size,
                "arrays": {name: spec.to_json() for name, spec in self.arrays.items()}}

    # ------------------------------------------------------------------ creating / resuming

    def create_or_resume(self) -> str:
        """Make the folder ready to be filled; 'resumed' if a matching partial cache was
        there (its marked chunks are kept), else 'created'. Call from one process only."""
        index_path = self.folder / INDEX
        if index_path.exists():
            if json.loads(index_path.read_text()) == self.index() and self._files_match():
                return "resumed"
            # Same key (same backbone, data, transform) but another chunking or width: the
            # partial rows are not reusable as they stand, so start again rather than guess.
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / CHUNKS).mkdir(exist_ok=True)
        for name, spec in self.arrays.items():
            tmp = self.folder / f".{name}.npy.tmp"
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(spec.dtype),
                                              shape=(self.num_items, *spec.row_shape))
            del array  # the file is allocated (sparse); rows arrive by pwrite
            os.replace(tmp, self.folder / f"{name}.npy")
        write_json_atomic(index_path, self.index())  # last: an index means the files exist
        return "created"

    def _files_match(self) -> bool:
        try:
            self.check_files()
            return True
        except FeatureCacheError:
            return False

    def missing_chunks(self) -> list[int]:
        done = {p.stem for p in (self.folder / CHUNKS).glob("*.json")}
        return [c for c in range(self.num_chunks) if f"{c:06d}" not in done]

    # ------------------------------------------------------------------ writing

    def _data_offset(self, name: str) -> int:
        with open(self.folder / f"{name}.npy", "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            read_header(f)
            return f.tell()

    def write_chunk(self, chunk: int, rows: dict[str, np.ndarray], rank: int = 0) -> None:
        """Write one chunk's rows of every array, sync them, then mark the chunk done (the
        marker names the writing rank and process, so a run can be audited afterwards)."""
        span = self.chunk_rows(chunk)
        crcs = {}
        for name, spec in self.arrays.items():
            data = np.ascontiguousarray(rows[name], dtype=np.dtype(spec.dtype))
            if data.shape != (len(span), *spec.row_shape):
                raise ValueError(f"chunk {chunk} of {name}: shape {data.shape}, expected {(len(span), *spec.row_shape)}")
            row_bytes = data.itemsize * int(np.prod(spec.row_shape, dtype=np.int64))
            fd = os.open(self.folder / f"{name}.npy", os.O_RDWR)
            try:
                view, offset = memoryview(data).cast("B"), self._data_offset(name) + span.start * row_bytes
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
                os.fsync(fd)
            finally:
                os.close(fd)
            crcs[name] = zlib.crc32(memoryview(data).cast("B"))
        write_json_atomic(self.folder / CHUNKS / f"{chunk:06d}.json",
                          {"chunk": chunk, "start": span.start, "stop": span.stop, "crc32": crcs,
                           "rank": rank, "pid": os.getpid()})

    def finish(self, meta: dict) -> None:
        """Write meta.json once every chunk is marked; the cache is then complete."""
        missing = self.missing_chunks()
        if missing:
            raise FeatureCacheError(f"{self.folder}: chunks {missing[:5]} are missing; rerun to complete them")
        write_json_atomic(self.folder / META, {**meta, "key": self.key, "num_images": self.num_items,
                                               "chunk_size": self.chunk_size})

    # ------------------------------------------------------------------ reading

    def check_files(self) -> None:
        """Every array file is a .npy of the dtype and shape the index says."""
        for name, spec in self.arrays.items():
            path = self.folder / f"{name}.npy"
            if not path.exists():
                raise FeatureCacheError(f"{path}: missing; delete {self.folder} and extract again")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise FeatureCacheError(f"{path}: not a readable .npy file ({e}); delete it and extract again") from None
            expected = (self.num_items, *spec.row_shape)
            if array.shape != expected or array.dtype != np.dtype(spec.dtype):
                raise FeatureCacheError(f"{path}: holds {array.dtype}{list(array.shape)}, the index says "
                                        f"{spec.dtype}{list(expected)}; delete {self.folder} and extract again")

    def open_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in self.arrays}

    def verify(self) -> None:
        """Recompute every chunk's CRC-32 against its marker (reads the whole cache once)."""
        arrays = self.open_arrays()
        for chunk in range(self.num_chunks):
            marker = self.folder / CHUNKS / f"{chunk:06d}.json"
            if not marker.exists():
                raise FeatureCacheError(f"{marker}: missing; the cache is incomplete, rerun the extraction")
            span, crcs = self.chunk_rows(chunk), json.loads(marker.read_text())["crc32"]
            for name, array in arrays.items():
                got = zlib.crc32(memoryview(np.ascontiguousarray(array[span.start:span.stop])).cast("B"))
                if got != crcs.get(name):
                    raise FeatureCacheError(f"{self.folder / name}.npy: rows {span.start}-{span.stop - 1} do not "
                                            "match their checksum; delete the folder and extract again")


def open_complete(folder: Path, key: str | None = None, num_items: int | None = None,
                  verify: bool = False) -> tuple[FeatureCache, dict]:
    """A complete cache folder, checked against its index (and optionally its checksums)."""
    folder = Path(folder)
    for name in (INDEX, META):
        if not (folder / name).exists():
            raise FeatureCacheError(f"{folder}: no {name}; not a complete feature cache (rerun the extraction)")
    index, meta = json.loads((folder / INDEX).read_text()), json.loads((folder / META).read_text())
    if index.get("format") != FORMAT:
        raise FeatureCacheError(f"{folder / INDEX}: format {index.get('format')!r}, expected {FORMAT!r}; "
                                "delete the folder and extract again")
    for field, want in (("key", key), ("num_items", num_items)):
        if want is not None and index.get(field) != want:
            raise FeatureCacheError(f"{folder / INDEX}: {field} is {index.get(field)!r}, expected {want!r}")
    cache = FeatureCache(folder, index["key"], index["num_items"], index["chunk_size"],
                         {n: ArraySpec(s["dtype"], tuple(s["row_shape"])) for n, s in index["arrays"].items()})
    cache.check_files()
    missing = cache.missing_chunks()
    if missing:
        raise FeatureCacheError(f"{folder}: meta.json present but chunks {missing[:5]} unmarked; delete and extract again")
    if verify:
        cache.verify()
    return cache, meta

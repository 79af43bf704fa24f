"""Resumable output: the input is cut into chunks, each written atomically as it finishes
(``OUT/.captions-work/chunk-NNNNNN.jsonl``), so a run killed at any moment loses at most the
chunks it was working on and never leaves half a chunk behind. Chunks are cut from the input
order alone, so a restart, with any number of ranks, finds the same chunks. When all exist,
``finish`` merges them in input order into the training reader's format and writes
``captions_meta.json`` (settings and counts), which also marks the output as complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

from tcjepa.data.errors import DataError
from tcjepa.data.wds import _add_member
from tcjepa.train.checkpoint import atomic_write

from .sources import Source

WORK_DIR = ".captions-work"
META_FILE = "captions_meta.json"
CAPTIONS_FILE = "captions.jsonl"


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _settings_difference(old: dict, new: dict) -> str:
    if old.get("inputs") == new.get("inputs") and old.get("input_fingerprint") != new.get("input_fingerprint"):
        return "input_fingerprint: other image names or order"
    for key in ["inputs", *sorted(set(old) | set(new))]:
        if old.get(key) != new.get(key):
            a, b = (str(x)[:60] for x in (old.get(key), new.get(key)))
            return f"{key}: {a} -> {b}"
    return ""


class CaptionOutput:
    """The output folder ``out`` of one captioning job over ``source`` with ``settings``."""

    def __init__(self, out: str | Path, source: Source, settings: dict, chunk_size: int):
        if chunk_size < 1:
            raise DataError(f"--chunk-size must be >= 1, got {chunk_size}")
        self.out, self.source, self.settings = Path(out), source, settings
        self.work = self.out / WORK_DIR
        self.chunk_size = chunk_size
        self.num_chunks = -(-len(source) // chunk_size)

    # ------------------------------------------------------------------ state
    def _targets(self) -> list[Path]:
        if self.source.kind == "wds":
            return [self.out / p.name for p in self.source.shards]
        return [self.out / CAPTIONS_FILE]

    def _check_settings(self, path: Path) -> None:
        old = json.loads(path.read_text())
        old = old.get("settings", old)
        diff = _settings_difference(old, self.settings)
        if diff:
            raise DataError(f"{self.out}: holds captions made with other settings ({diff}); rerun with the same "
                            "options, choose another --out, or pass --overwrite to start over")

    def prepare(self, overwrite: bool, is_main: bool) -> bool:
        """Check (or, with ``overwrite``, clear) what ``out`` holds; True if already complete."""
        if self.source.kind == "wds" and any(self.out.resolve() == p.parent.resolve() for p in self.source.shards):
            raise DataError(f"{self.out}: --out is the folder of the input shards; captioned shards are written "
                            "under their own names, so give another folder")
        if overwrite and is_main:
            shutil.rmtree(self.work, ignore_errors=True)
            for p in [self.out / META_FILE, *self._targets()]:
                p.unlink(missing_ok=True)
        if (self.out / META_FILE).is_file():
            self._check_settings(self.out / META_FILE)
            return True
        clash = next((p for p in self._targets() if p.exists()), None)
        if clash is not None and not (self.work / "settings.json").is_file():
            raise DataError(f"{clash}: exists and was not written by this captioning run; choose another --out "
                            "or pass --overwrite to replace it")
        if (self.work / "settings.json").is_file():
            self._check_settings(self.work / "settings.json")
        elif is_main:
            self.work.mkdir(parents=True, exist_ok=True)
            _write_bytes(self.work / "settings.json", json.dumps(self.settings, indent=2).encode())
        return False

    def lock(self, rank: int) -> None:
        """Refuse a second run writing as the same rank into ``out`` (the OS drops the lock when
        this process ends, however it ends)."""
        import fcntl

        self.work.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.work / f"rank-{rank}.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{self.out}: another captioning run is writing here (as rank {rank}); wait for it "
                            "to finish or stop it first") from None

    def chunk_path(self, chunk: int) -> Path:
        return self.work / f"chunk-{chunk:06d}.jsonl"

    def chunk_range(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, len(self.source)))

    def done_chunks(self) -> set[int]:
        return {c for c in range(self.num_chunks) if self.chunk_path(c).is_file()}

    def write_chunk(self, chunk: int, records: list[dict], counts: Counter) -> None:
        """records: per input image in order, {"captions": [...]} or {"skipped": error}."""
        lines = [json.dumps({"chunk": chunk, "counts": dict(counts)})]
        lines += [json.dumps({"index": i, **r}, ensure_ascii=False) for i, r in zip(self.chunk_range(chunk), records)]
        _write_bytes(self.chunk_path(chunk), ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))

    def read_chunk(self, chunk: int) -> tuple[Counter, list[dict]]:
        lines = self.chunk_path(chunk).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        header, records = json.loads(lines[0]), [json.loads(ln) for ln in lines[1:]]
        if header.get("chunk") != chunk or [r["index"] for r in records] != list(self.chunk_range(chunk)):
            raise DataError(f"{self.chunk_path(chunk)}: does not hold chunk {chunk}; delete it and rerun")
        return Counter(header["counts"]), records

    # ------------------------------------------------------------------ merge
    def _image_prefix(self) -> str:
        """Path from ``out`` to the source root: in place when the root is inside ``out``,
        else through an ``out/images`` link, so paths stay relative to the captions file."""
        root, out = self.source.root.resolve(), self.out.resolve()
        if root == out or out in root.parents:
            rel = root.relative_to(out).as_posix()
            return "" if rel == "." else rel + "/"
        link = self.out / "images"
        target = os.path.relpath(root, out)
        if link.is_symlink() and os.readlink(link) == target:
            return "images/"
        if link.exists() or link.is_symlink():
            raise DataError(f"{link}: exists; the captions would reach {root} through a link of this name; "
                            "remove it or choose another --out")
        link.symlink_to(target, target_is_directory=True)
        return "images/"

    def _write_jsonl(self, records: list[tuple[int, list[str]]]) -> None:
        prefix = self._image_prefix()
        lines = [json.dumps({"image": prefix + self.source.names[i], "captions": caps}, ensure_ascii=False)
                 for i, caps in records]
        _write_bytes(self.out / CAPTIONS_FILE, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))

    def _write_shards(self, records: list[tuple[int, list[str]]]) -> None:
        by_shard: dict[int, list[tuple[int, list[str]]]] = {}
        for i, caps in records:
            by_shard.setdefault(self.source.samples[i].shard, []).append((i, caps))
        for shard_id, shard in enumerate(self.source.shards):
            def write(dst, shard_id=shard_id, shard=shard):
                with open(shard, "rb") as src, tarfile.open(fileobj=dst, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                    for i, caps in by_shard.get(shard_id, []):
                        _copy_sample(src, tf, self.source.samples[i], caps, self.source.names[i])
            atomic_write(self.out / shard.name, write)

    def finish(self, extra_meta: dict) -> dict:
        """Merge every chunk in input order, write the meta file, drop the work folder."""
        counts, kept, skipped, without = Counter(), [], [], []
        for chunk in range(self.num_chunks):
            chunk_counts, records = self.read_chunk(chunk)
            counts.update(chunk_counts)
            for r in records:
                if "skipped" in r:
                    skipped.append(r["skipped"])
                elif r["captions"]:
                    kept.append((r["index"], r["captions"]))
                else:
                    without.append(self.source.names[r["index"]])
        if not kept:
            raise DataError(f"{self.out}: no image got a caption ({len(skipped)} skipped as unreadable, "
                            f"{len(without)} with no usable caption); nothing to write")
        self.out.mkdir(parents=True, exist_ok=True)
        (self._write_shards if self.source.kind == "wds" else self._write_jsonl)(kept)
        per_image = Counter(len(c) for _, c in kept)
        meta = {"settings": self.settings, **extra_meta, "images": len(self.source), "captioned": len(kept),
                "captions": sum(len(c) for _, c in kept), "captions_per_image": dict(sorted(per_image.items())),
                "skipped_bad": len(skipped), "without_captions": len(without), "counts": dict(counts),
                "skipped_examples": skipped[:100], "without_captions_examples": without[:100]}
        _write_bytes(self.out / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False).encode())
        shutil.rmtree(self.work, ignore_errors=True)
        return meta


def _copy_sample(src, tf: tarfile.TarFile, sample, captions: list[str], where: str) -> None:
    """Every member of the sample as it was, its .json with the ``captions`` field set."""
    meta: dict = {}
    for ext, offset, size, name in sample.members:
        src.seek(offset)
        data = src.read(size)
        if ext != "json":
            _add_member(tf, name, data)
            continue
        try:
            meta = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{where}.json: invalid JSON ({e}); fix the shard or drop the member") from None
        if not isinstance(meta, dict):
            raise DataError(f"{where}.json: expected a JSON object, got {type(meta).__name__}")
    _add_member(tf, f"{sample.key}.json", json.dumps({**meta, "captions": captions}, ensure_ascii=False).encode())

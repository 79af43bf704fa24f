"""The chunked feature cache: 2 gloo ranks write the same bytes as one process, a SIGKILL
mid-extraction resumes with nothing missing or written twice, damage is caught on load,
and probes read it in blocks."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from extraction_driver import RandomImages, TwoBlockViT
from launch_helpers import driver_command, run_driver, subprocess_env

from evals.feature_cache import FeatureCacheError
from evals.features import FeatureRows, FeatureSet, extract_features, load_cached

DRIVER = Path(__file__).with_name("extraction_driver.py")
ARRAYS = ("last1", "last4", "global", "labels")


def _run(cache: Path, *extra: str, ranks: int = 1) -> None:
    run_driver(driver_command(DRIVER, cache, *extra, ranks=ranks), timeout=300)


def _extract_here(cache: Path, images: int = 20) -> Path:
    """What the driver does, in this process (one thread, as the driver)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract_features(TwoBlockViT(), RandomImages(images), cache, batch_size=2, chunk_size=4, desc="random")
    finally:
        torch.set_num_threads(threads)
    return _folder(cache)


def _folder(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return folder


def _markers(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "chunks").glob("*.json"))]


def _same_bytes(a: Path, b: Path) -> None:
    for name in ARRAYS:
        assert (a / f"{name}.npy").read_bytes() == (b / f"{name}.npy").read_bytes(), name


@pytest.mark.slow
def test_two_gloo_ranks_write_the_bytes_of_one_process(tmp_path):
    one = _extract_here(tmp_path / "one")
    _run(tmp_path / "two", ranks=2)
    two = _folder(tmp_path / "two")
    _same_bytes(one, two)
    markers = _markers(two)
    assert [m["chunk"] for m in markers] == list(range(5))  # 20 images / chunks of 4: each chunk once
    assert {m["rank"] for m in markers} == {0, 1}  # the work was shared
    assert load_cached(two, verify=True).meta["extracted_by"] == "2 process(es)"


@pytest.mark.slow
def test_sigkill_mid_extraction_resumes_with_nothing_missing_or_duplicated(tmp_path):
    cache = tmp_path / "killed"
    proc = subprocess.Popen(driver_command(DRIVER, cache, "--images", "24", "--delay", "0.2"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*/chunks/*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = _folder(cache)
    first = _markers(folder)
    assert 2 <= len(first) < 6 and not (folder / "meta.json").exists()
    with pytest.raises(FeatureCacheError, match="no meta.json"):
        load_cached(folder)

    _extract_here(cache, images=24)
    markers = _markers(folder)
    assert [m["chunk"] for m in markers] == list(range(6))
    assert markers[:len(first)] == first  # finished chunks were kept, not redone
    assert len({m["pid"] for m in markers}) == 2
    _same_bytes(_extract_here(tmp_path / "reference", images=24), folder)
    load_cached(folder, verify=True)


def test_cache_reads_back_and_damage_is_caught(tmp_path):
    data = RandomImages(10)
    feats = extract_features(TwoBlockViT(), data, tmp_path, batch_size=3, chunk_size=4, desc="random")
    folder = _folder(tmp_path)
    assert feats.last1.dtype == np.float16 and feats.last4.shape == (10, 64) and list(feats.labels) == [0, 1, 2] * 3 + [0]
    assert isinstance(feats.last1, np.memmap) and len(_markers(folder)) == 3

    last1 = folder / "last1.npy"
    raw = bytearray(last1.read_bytes())
    raw[-1] ^= 0xFF
    last1.write_bytes(bytes(raw))
    load_cached(folder)  # the index still matches; only the checksums see the damage
    with pytest.raises(FeatureCacheError, match="do not match their checksum"):
        load_cached(folder, verify=True)

    np.save(last1, np.zeros((10, 8), np.float16))
    with pytest.raises(FeatureCacheError, match="the index says"):
        load_cached(folder)
    with pytest.raises(FeatureCacheError, match="num_items"):
        load_cached(folder, num_items=11)


def test_feature_rows_stream_every_row_once_and_standardise():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (50, 6)).astype(np.float16)
    feats = FeatureSet(x, np.concatenate([x, x], 1), x, np.arange(50), {})
    rows = FeatureRows(feats, ("last1", "last4"), np.arange(5, 45), block_bytes=4 * 18 * 7)  # 7-row blocks
    seen = [y for _, y in rows.batches(3, generator=torch.Generator().manual_seed(0))]
    assert sorted(torch.cat(seen).tolist()) == list(range(5, 45))
    mean, std = rows.moments()["last1"]
    np.testing.assert_allclose(mean[0], x[5:45].astype(np.float64).mean(0), rtol=1e-5)
    np.testing.assert_allclose(std[0], x[5:45].astype(np.float64).std(0, ddof=1), rtol=1e-5)
    rows.standardize_with(rows.moments())
    standardised = torch.cat([b["last1"] for b, _ in rows.batches(8)])
    assert standardised.mean(0).abs().max() < 1e-5 and (standardised.std(0) - 1).abs().max() < 1e-4

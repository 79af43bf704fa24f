"""Bad samples met by a training run: stop naming the file (and line), or skip and count them."""
from __future__ import annotations

import json
import logging
import re

import pytest
from reliability_helpers import the_error_line, tiny_overrides, train_in_process

from tcjepa.cli.train import main as train_main
from tcjepa.data.errors import DataError
from tcjepa.data.loader import ResumableSampler

BATCH = 8


def records(root):
    return [json.loads(ln) for ln in (root / "captions.jsonl").read_text().splitlines()]


def drawn_first(n_records: int, count: int) -> list[int]:
    """Record indices the sampler hands out in the first batches of epoch 0 (seed 0)."""
    return [int(i) for i in ResumableSampler(n_records, seed=0).epoch_indices(0)[:count]]


def break_images(root, corrupt: list[int], missing: list[int]) -> dict[str, str]:
    recs = records(root)
    for i in corrupt:
        (root / recs[i]["image"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 3)
    for i in missing:
        (root / recs[i]["image"]).unlink()
    return {"corrupt": [str(root / recs[i]["image"]) for i in corrupt],
            "missing": [str(root / recs[i]["image"]) for i in missing]}


def break_lines(root, truncated: int | None = None, empty: int | None = None) -> None:
    """Line ``truncated + 1`` cut mid-object (as a crashed writer leaves it), line ``empty + 1``
    with an empty caption list."""
    lines = (root / "captions.jsonl").read_text().splitlines()
    if truncated is not None:
        lines[truncated] = lines[truncated][: len(lines[truncated]) // 2]
    if empty is not None:
        obj = json.loads(lines[empty])
        obj["captions"] = []
        lines[empty] = json.dumps(obj)
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_mid_epoch_stops_naming_the_file(scenes_copy, tmp_path, capsys, workers):
    # the third batch holds it: the run gets going before it meets the bad file
    victim = drawn_first(48, 3 * BATCH)[2 * BATCH + 3]
    paths = break_images(scenes_copy, corrupt=[victim], missing=[])
    overrides = tiny_overrides(scenes_copy, tmp_path / "run", data__num_workers=workers)
    with pytest.raises(DataError) as e:
        train_in_process(overrides)
    assert str(e.value).startswith(f"{paths['corrupt'][0]} (listed at {scenes_copy / 'captions.jsonl'}:{victim + 1})")
    assert "cannot decode image" in str(e.value) and "data.skip_bad_samples=true" in str(e.value)
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)
    assert train_main(overrides + ["train.resume=none"]) == 2
    assert the_error_line(capsys.readouterr().err).startswith(f"error: {paths['corrupt'][0]}")


def test_missing_image_mid_epoch_stops_naming_the_file(scenes_copy, tmp_path):
    victim = drawn_first(48, 2 * BATCH)[BATCH + 1]
    paths = break_images(scenes_copy, corrupt=[], missing=[victim])
    with pytest.raises(DataError, match=re.escape(f"{paths['missing'][0]}: image not found (listed at "
                                                  f"{scenes_copy / 'captions.jsonl'}:{victim + 1})")):
        train_in_process(tiny_overrides(scenes_copy, tmp_path / "run"))


@pytest.mark.parametrize("fault, message", [("truncated", "invalid JSON"), ("empty", "empty caption list")])
def test_bad_caption_line_stops_naming_file_and_line(scenes_copy, tmp_path, capsys, fault, message):
    break_lines(scenes_copy, **{fault: 5})
    overrides = tiny_overrides(scenes_copy, tmp_path / "run")
    where = f"{scenes_copy / 'captions.jsonl'}:6"
    with pytest.raises(DataError, match=re.escape(where) + ".*" + message):
        train_in_process(overrides)
    assert train_main(overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {where}: ") and "\n" not in err


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_bad_samples_counts_and_reports_them(scenes_copy, tmp_path, capsys, caplog, workers):
    """2 undecodable images + 1 missing, drawn in the first epoch, and 2 bad JSONL lines."""
    recs = records(scenes_copy)
    bad_lines = [10, 20]  # record indices whose lines get broken
    keep = [i for i in range(48) if i not in bad_lines]  # dataset order after the lines are dropped
    first_epoch = drawn_first(len(keep), 5 * BATCH)  # 46 records -> 5 full batches
    corrupt, missing = [keep[first_epoch[1]], keep[first_epoch[17]]], [keep[first_epoch[30]]]
    assert not set(corrupt + missing) & set(bad_lines)
    paths = break_images(scenes_copy, corrupt=corrupt, missing=missing)
    break_lines(scenes_copy, truncated=bad_lines[0], empty=bad_lines[1])
    out = tmp_path / "run"
    overrides = tiny_overrides(scenes_copy, out, data__skip_bad_samples="true", data__num_workers=workers,
                               optim__max_steps=5)
    with caplog.at_level(logging.WARNING):
        summary = train_in_process(overrides)
    assert summary.steps == 5
    # Each bad file drawn once, each bad line once; a random substitute may itself be bad.
    assert 5 <= summary.bad_samples <= 8
    printed = capsys.readouterr().out
    assert f"bad samples skipped {summary.bad_samples}," in printed and printed.startswith("done:")
    assert json.loads((out / "summary.json").read_text())["bad_samples"] == summary.bad_samples
    log = caplog.text
    for line in bad_lines:
        assert f"{scenes_copy / 'captions.jsonl'}:{line + 1}" in log
    if workers == 0:  # worker processes log to their own stderr, not to caplog
        for p in paths["corrupt"] + paths["missing"]:
            assert p in log
    assert recs  # the dataset really had 48 records before the damage

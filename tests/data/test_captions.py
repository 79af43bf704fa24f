from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tcjepa.data.captions import CaptionedImageFolder, choose_captions, read_captions_jsonl
from tcjepa.data.errors import DataError
from tcjepa.data.transforms import PretrainTransform


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"image": "a.jpg", "captions": ["a red circle."]})


@pytest.mark.parametrize("bad, message", [
    ('{"image": "b.jpg", "captions": ["x"', "invalid JSON"),
    ('{"captions": ["x"]}', 'missing or empty "image"'),
    ('{"image": "b.jpg"}', 'missing "captions"'),
    ('{"image": "b.jpg", "captions": []}', "empty caption list"),
    ('{"image": "b.jpg", "captions": ["ok", "  "]}', "caption 1 is an empty string"),
    ('{"image": "b.jpg", "captions": ["ok", 3]}', "caption 1 is int, not a string"),
    ('["b.jpg"]', "expected an object"),
])
def test_read_captions_errors_name_file_and_line(tmp_path, bad, message):
    path = _write_lines(tmp_path / "captions.jsonl", [GOOD, "", bad])
    with pytest.raises(DataError) as e:
        read_captions_jsonl(path)
    assert f"{path}:3:" in str(e.value) and message in str(e.value)


def test_caption_ids_and_texts(scenes_root):
    ds = CaptionedImageFolder(scenes_root, num_captions=3, seed=0)
    records = read_captions_jsonl(scenes_root / "captions.jsonl")
    texts = ds.caption_texts()
    assert texts == [c for r in records for c in r.captions] and ds.num_caption_ids == len(texts)
    for index in (0, 5, len(ds) - 1):
        s = ds[index]
        assert len(s["caption_ids"]) == 3 and len(set(s["caption_ids"])) == 3  # 4 available: no repeats
        assert [texts[i] for i in s["caption_ids"]] == s["captions"]
        assert all(texts[i] in records[index].captions for i in s["caption_ids"])


def test_caption_sampling_is_deterministic_and_covers_all_when_short():
    rng = lambda: np.random.default_rng([0, 1, 2])  # noqa: E731
    assert (choose_captions(3, 8, rng()) == choose_captions(3, 8, rng())).all()
    picks = choose_captions(3, 8, rng())
    assert len(picks) == 8 and set(picks[:3].tolist()) == {0, 1, 2}  # with replacement, every caption used
    assert len(set(choose_captions(10, 8, rng()).tolist())) == 8  # without replacement


def test_samples_depend_only_on_seed_epoch_index(scenes_root):
    tf = PretrainTransform(32, (0.3, 1.0))
    a = CaptionedImageFolder(scenes_root, transform=tf, num_captions=8, seed=0)
    b = CaptionedImageFolder(scenes_root, transform=tf, num_captions=8, seed=0)
    b[3], b[(7, 2)]  # other accesses first must not matter
    for key in (4, (4, 1), (9, 3)):
        sa, sb = a[key], b[key]
        assert sa["caption_ids"] == sb["caption_ids"] and torch.equal(sa["image"], sb["image"])
    assert a[(4, 0)]["caption_ids"] != a[(4, 1)]["caption_ids"] or not torch.equal(a[(4, 0)]["image"], a[(4, 1)]["image"])
    assert a[4]["image"].shape == (3, 32, 32)


@pytest.fixture
def scenes_copy(scenes_root, tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(scenes_root / "images", root / "images")
    shutil.copy(scenes_root / "captions.jsonl", root / "captions.jsonl")
    return root


def test_missing_and_undecodable_images(scenes_copy):
    (scenes_copy / "images/train/0000002.jpg").unlink()
    (scenes_copy / "images/train/0000005.jpg").write_bytes(b"not a jpeg at all")
    ds = CaptionedImageFolder(scenes_copy)
    with pytest.raises(DataError) as e:
        ds[2]
    msg = str(e.value)
    assert "0000002.jpg: image not found" in msg and "captions.jsonl:3" in msg and "skip_bad_samples" in msg
    with pytest.raises(DataError) as e:
        ds[5]
    assert "0000005.jpg" in str(e.value) and "cannot decode image" in str(e.value)


def test_skip_bad_samples_counts_and_substitutes_deterministically(scenes_copy):
    (scenes_copy / "images/train/0000002.jpg").unlink()
    (scenes_copy / "images/train/0000005.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = CaptionedImageFolder(scenes_copy, skip_bad_samples=True)
    s2, s5 = ds[(2, 0)], ds[(5, 0)]
    assert ds.bad_samples == 2
    assert s2["sample_idx"] not in (2, 5) and s5["sample_idx"] not in (2, 5)
    assert ds[(2, 0)]["sample_idx"] == s2["sample_idx"]  # same substitute again
    assert ds.bad_samples == 3  # counted each time it is drawn
    assert ds[0]["sample_idx"] == 0 and ds.bad_samples == 3


def test_wrong_layout_errors(scenes_root, tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        CaptionedImageFolder(tmp_path / "nope")
    with pytest.raises(DataError, match=r"captions file not found.*did you mean data.root="):
        CaptionedImageFolder(scenes_root / "images")
    (tmp_path / "in" / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match="ImageNet-style class tree"):
        CaptionedImageFolder(tmp_path / "in")
    # captions whose paths are relative to another folder
    (tmp_path / "c").mkdir()
    shutil.copy(scenes_root / "captions.jsonl", tmp_path / "c" / "captions.jsonl")
    with pytest.raises(DataError, match=r"captions.jsonl:1: image 'images/train/0000000.jpg' not found"):
        CaptionedImageFolder(tmp_path / "c")

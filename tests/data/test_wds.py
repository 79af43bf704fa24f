from __future__ import annotations

import tarfile

import pytest
import torch

from tcjepa.data.captions import CaptionedImageFolder
from tcjepa.data.errors import DataError
from tcjepa.data.transforms import PretrainTransform
from tcjepa.data.wds import CaptionedWebDataset, expand_shards, extract_wds, write_wds_shards


def test_folder_wds_folder_round_trip(scenes_root, tmp_path):
    shards = write_wds_shards(scenes_root, tmp_path / "shards", shard_size=10, progress=False)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    again = write_wds_shards(scenes_root, tmp_path / "shards2", shard_size=10, progress=False)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(shards, again))  # deterministic tars
    n = extract_wds(str(tmp_path / "shards/shard-{000000..000002}.tar"), tmp_path / "back", progress=False)
    assert n == 24
    assert (tmp_path / "back/captions.jsonl").read_bytes() == (scenes_root / "captions.jsonl").read_bytes()
    for p in (scenes_root / "images/train").iterdir():
        assert (tmp_path / "back/images/train" / p.name).read_bytes() == p.read_bytes()


def test_folder_and_wds_datasets_give_the_same_samples(scenes_root, tmp_path):
    write_wds_shards(scenes_root, tmp_path / "shards", shard_size=7, progress=False)
    tf = PretrainTransform(32, (0.3, 1.0))
    folder = CaptionedImageFolder(scenes_root, transform=tf, num_captions=6, seed=5)
    shards = CaptionedWebDataset(str(tmp_path / "shards"), transform=tf, num_captions=6, seed=5)
    assert len(folder) == len(shards) and folder.caption_texts() == shards.caption_texts()
    for key in [(i, e) for i in (0, 6, 7, 23) for e in (0, 1)]:
        a, b = folder[key], shards[key]
        assert a["caption_ids"] == b["caption_ids"] and a["captions"] == b["captions"]
        assert torch.equal(a["image"], b["image"])


def test_shard_errors(scenes_root, tmp_path):
    with pytest.raises(DataError, match="shard not found"):
        expand_shards(str(tmp_path / "x-{0..2}.tar"))
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("000.json")
        data = b'{"captions": []}'
        info.size = len(data)
        import io
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"bad.tar:000: empty caption list"):
        CaptionedWebDataset(str(bad))
    with pytest.raises(DataError, match="not a readable uncompressed tar"):
        (tmp_path / "junk.tar").write_bytes(b"junk" * 200)
        CaptionedWebDataset(str(tmp_path / "junk.tar"))


def test_brace_expansion(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i:03d}.tar").write_bytes(b"")
    assert [p.name for p in expand_shards(str(tmp_path / "s-{000..002}.tar"))] == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert len(expand_shards(str(tmp_path / "s-*.tar"))) == 3
    assert len(expand_shards(str(tmp_path))) == 3

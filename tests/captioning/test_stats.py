"""caption-stats on a caption set whose numbers are known."""
from __future__ import annotations

import json

from PIL import Image

from tcjepa.cli.data import main


def test_caption_stats_counts_words_vocabulary_and_duplicates(tmp_path, capsys):
    records = [{"image": "a.jpg", "captions": ["a red cube", "A red cube.", "two blue balls on a table"]},
               {"image": "b.jpg", "captions": ["a red cube"]}]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "captions_meta.json").write_text(json.dumps(
        {"counts": {"generated": 9, "duplicates": 3, "near_empty": 1, "truncated": 2}, "skipped_bad": 1,
         "without_captions": 0}))
    assert main(["caption-stats", "--data", str(tmp_path), "--top", "3"]) == 0
    md = (tmp_path / "caption_stats.md").read_text()
    assert md in capsys.readouterr().out
    assert "| images | 2 |" in md and "| captions | 4 |" in md
    assert "| captions per image (min / mean / max) | 1 / 2.00 / 3 |" in md
    assert "| words per caption (min / median / mean / p95 / max) | 3 / 3 / 3.8 / 6 / 6 |" in md
    assert "| vocabulary (distinct words) | 8 |" in md  # a red cube two blue balls on table
    assert "| duplicate rate within an image | 25.0 % |" in md  # "A red cube." repeats image a's first
    assert "| duplicate rate over all captions | 50.0 % |" in md  # 2 distinct of 4
    assert "Most frequent words: a (4), red (3), cube (3)" in md
    assert "| dropped when generated: duplicates / near-empty / truncated | 3 / 1 / 2 of 9 |" in md
    with Image.open(tmp_path / "caption_stats.png") as png:
        assert png.size[0] > 500


def test_caption_stats_on_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["caption-stats", "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("captions.jsonl: captions file not found")

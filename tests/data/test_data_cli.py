from __future__ import annotations

import json

from tcjepa.cli.data import main


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert main(["scenes", "--out", str(tmp_path / "busy"), "--train", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "Traceback" not in err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "captions.jsonl").write_text('{"image": "a.jpg", "captions": []}\n')
    assert main(["to-wds", "--root", str(tmp_path / "d"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "captions.jsonl:1: empty caption list" in err and err.count("\n") == 1


def test_scenes_and_wds_commands(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["scenes", "--out", str(out), "--train", "6", "--val", "2", "--captions-per-image", "3",
                 "--workers", "1", "--quiet"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert json.loads((out / "scenes.json").read_text())["train"] == 6
    assert main(["to-wds", "--root", str(out), "--out", str(tmp_path / "w"), "--quiet"]) == 0
    assert main(["from-wds", "--shards", str(tmp_path / "w"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert (tmp_path / "b/captions.jsonl").read_text() == (out / "captions.jsonl").read_text()


def test_masks_command(tmp_path, capsys):
    png = tmp_path / "m.png"
    assert main(["masks", "--out", str(png), "--batches", "5", "--batch-size", "8",
                 "data.image_size=64", "model.patch_size=8", "mask.context_truncation=pad"]) == 0
    text = capsys.readouterr().out
    assert "context coverage" in text and "target block size histogram" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

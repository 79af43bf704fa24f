"""`tcjepa-data captions` in process: the output the training reader takes, reruns, and one-line errors."""
from __future__ import annotations

import json
import shutil

import pytest

from tcjepa.cli.data import main
from tcjepa.data.captions import CaptionedImageFolder


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_folder_output_is_read_by_the_training_reader_and_rerun_is_a_no_op(scenes, models, tmp_path, capsys,
                                                                            captions_args):
    out = tmp_path / "captioned"
    args = captions_args(scenes / "images" / "train", models["blip"], out)
    assert main(args) == 0
    assert "24 captions for 8 of 8 images" in capsys.readouterr().out
    dataset = CaptionedImageFolder(out, num_captions=3)
    assert len(dataset) == 8 and (out / "images").is_symlink()
    assert [r.image for r in dataset.records] == [f"images/{i:07d}.jpg" for i in range(8)]
    assert all(len(r.captions) == 3 and all(len(c.split()) <= 8 for c in r.captions) for r in dataset.records)
    assert dataset[0]["image"].size == (32, 32)
    meta = json.loads((out / "captions_meta.json").read_text())
    assert meta["captions"] == 24 and meta["settings"]["family"] == "blip" and not (out / ".captions-work").exists()
    assert main(args) == 0 and "already complete" in capsys.readouterr().out
    assert main(args[:-1] + ["--per-image", "2", "--quiet"]) == 2
    assert error_line(capsys).endswith("holds captions made with other settings (per_image: 3 -> 2); rerun with the "
                                       "same options, choose another --out, or pass --overwrite to start over")


def test_bad_image_stops_the_run_by_name_or_is_skipped_and_counted(scenes, models, tmp_path, capsys, captions_args):
    images = tmp_path / "photos"
    shutil.copytree(scenes / "images" / "train", images)
    (images / "0000003.jpg").write_bytes(b"not a jpeg")
    assert main(captions_args(images, models["git"], tmp_path / "a")) == 2
    line = error_line(capsys)
    assert "0000003.jpg: cannot decode image" in line and "pass --skip-bad" in line
    (images / "0000009.jpg").symlink_to(tmp_path / "gone.jpg")  # listed, but missing when read
    assert main(captions_args(images, models["git"], tmp_path / "b")) == 2
    assert "0000003.jpg: cannot decode image" in error_line(capsys)  # the first bad one stops the run
    assert main(captions_args(images, models["git"], tmp_path / "a", "--skip-bad")) == 2  # other inputs now
    assert "(inputs: 8 -> 9)" in error_line(capsys)
    assert main(captions_args(images, models["git"], tmp_path / "c", "--skip-bad")) == 0
    records = [json.loads(ln) for ln in (tmp_path / "c" / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 7 and {"images/0000003.jpg", "images/0000009.jpg"}.isdisjoint(r["image"] for r in records)
    meta = json.loads((tmp_path / "c" / "captions_meta.json").read_text())
    assert meta["skipped_bad"] == 2 and meta["images"] == 9
    assert "0000003.jpg" in meta["skipped_examples"][0] and "0000009.jpg: image not found" in meta["skipped_examples"][1]


@pytest.mark.parametrize("change,message", [
    (["--per-image", "0"], "--per-image must be >= 1, got 0"),
    (["--model", "MODEL_BERT"], "'bert' model cannot caption images"),
    (["--out", "SCENES"], "captions.jsonl: exists and was not written by this captioning run"),
])
def test_user_errors_are_one_line_and_exit_2(scenes, models, tmp_path, capsys, captions_args, change, message):
    from transformers import BertConfig, BertModel

    if "MODEL_BERT" in change:
        BertModel(BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8)).save_pretrained(tmp_path / "bert")
    change = [{"MODEL_BERT": str(tmp_path / "bert"), "SCENES": str(scenes)}.get(c, c) for c in change]
    args = captions_args(scenes / "images" / "train", models["blip"], tmp_path / "out", *change)
    assert main(args) == 2
    assert message in error_line(capsys)


def test_imagenet_tree_captioned_in_place_keeps_paths_relative_to_the_root(scenes, models, tmp_path, captions_args):
    root = tmp_path / "imagenet"
    shutil.copytree(scenes / "imagenet", root)
    args = captions_args(root, models["blip-2"], root, "--split", "val")
    args[1] = "--imagenet"
    assert main(args) == 0
    dataset = CaptionedImageFolder(root, num_captions=3)
    expected = sorted(p.relative_to(root).as_posix() for p in (root / "val").glob("*/*.JPEG"))
    assert [r.image for r in dataset.records] == expected and not (root / "images").exists()


def test_output_inside_the_image_folder_is_not_taken_for_input_on_a_rerun(scenes, models, tmp_path, capsys,
                                                                          captions_args):
    images = tmp_path / "photos"
    shutil.copytree(scenes / "images" / "train", images)
    args = captions_args(images, models["git"], images / "captioned")
    assert main(args) == 0 and (images / "captioned" / "images").is_symlink()  # a link back to photos/
    assert main(["caption-stats", "--data", str(images / "captioned")]) == 0
    assert main(args) == 0 and "already complete" in capsys.readouterr().out  # same 8 inputs, no cycle

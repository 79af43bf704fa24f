"""From a folder of images to a trained encoder, and captioned WebDataset shards."""
from __future__ import annotations

import json
import math

import pytest

from tcjepa.cli.data import main
from tcjepa.cli.train import main as train_main
from tcjepa.data.wds import CaptionedWebDataset


@pytest.mark.slow
def test_captions_feed_the_text_cache_and_training(scenes, models, tmp_path, captions_args):
    data = tmp_path / "photos"
    assert main(captions_args(scenes / "images" / "train", models["git"], data)) == 0
    assert main(["text-cache", "--data", str(data), "--max-words", "16", "--batch-size", "64"]) == 0
    cache = json.loads((data / "text_cache" / "minilm" / "meta.json").read_text())
    assert cache["count"] == 24 and cache["completed"] == 24
    run = tmp_path / "run"
    overrides = {"data.root": data, "data.text_cache": data / "text_cache" / "minilm", "data.image_size": 32,
                 "data.num_captions": 3, "data.num_workers": 0, "text.max_words": 16, "model.encoder": "vit_pico",
                 "model.patch_size": 8, "model.predictor_depth": 1, "model.predictor_width": 32,
                 "model.predictor_heads": 2, "mask.min_keep": 2, "optim.batch_size": 4, "optim.max_steps": 2,
                 "optim.warmup_epochs": 0.5, "train.out_dir": run, "train.device": "cpu", "train.precision": "fp32",
                 "train.tensorboard": "false", "train.monitor_every": 1000, "train.ckpt_every": 2}
    assert train_main([f"{k}={v}" for k, v in overrides.items()]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])


def test_wds_shards_get_caption_fields_in_place_of_their_old_ones(scenes, models, tmp_path, capsys, captions_args):
    shards = tmp_path / "shards"
    assert main(["to-wds", "--root", str(scenes), "--out", str(shards), "--shard-size", "5", "--quiet"]) == 0
    out = tmp_path / "captioned"
    args = captions_args(scenes, models["llava"], out)
    args[1:3] = ["--wds", str(shards)]
    assert main(args) == 0
    original, captioned = CaptionedWebDataset(str(shards)), CaptionedWebDataset(str(out))
    assert [p.name for p in captioned.shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert [r.image for r in captioned.records] == [r.image for r in original.records]  # same keys, same order
    assert all(1 <= len(r.captions) <= 3 for r in captioned.records)
    assert {c for r in captioned.records for c in r.captions}.isdisjoint(c for r in original.records for c in r.captions)
    assert captioned.load_image(4).tobytes() == original.load_image(4).tobytes()
    assert main(args[:-1] + ["--out", str(shards), "--quiet"]) == 2
    assert "--out is the folder of the input shards" in capsys.readouterr().err

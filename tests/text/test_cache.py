import argparse
import json
import pickle

import numpy as np
import pytest
import torch

from tcjepa.text import cli
from tcjepa.text.cache import TextFeatureCache, caption_fingerprint
from tcjepa.text.cache_build import build_text_cache
from tcjepa.text.encoder import FrozenTextEncoder, sanitize_caption

COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["cube", "sphere", "cone", "cylinder", "ball"]
CAPTIONS = [
    f"a {COLORS[i % 4]} {SHAPES[i % 5]} " + "left of a large striped table " * (i % 4) for i in range(23)
]


def test_lookup_equals_direct_encoding(tiny_bert, tmp_path):
    build_text_cache(CAPTIONS, tmp_path, tiny_bert, batch_size=8, progress=False)
    cache = TextFeatureCache(tmp_path)
    assert len(cache) == 23 and cache.dim == 32 and cache.max_words == 16
    ids = torch.tensor([[3, 0, 22], [7, 7, 15]])
    feats, mask = cache.lookup(ids)
    assert feats.shape == (2, 3, 16, 32) and feats.dtype == torch.float16 and mask.shape == (2, 3, 16)
    direct, direct_mask = tiny_bert.encode([CAPTIONS[i] for i in ids.flatten().tolist()], pad_to_max=True)
    torch.testing.assert_close(feats.reshape(6, 16, 32).float(), direct, atol=2e-3, rtol=2e-3)
    assert torch.equal(mask.reshape(6, 16), direct_mask)
    trimmed, trimmed_mask = cache.lookup(torch.tensor([0, 4]), trim=True)  # the two shortest captions
    assert trimmed.shape[1] == int(trimmed_mask.sum(1).max()) < 16
    with pytest.raises(IndexError, match="caption id 23"):
        cache.lookup(torch.tensor([23]))
    with pytest.raises(IndexError, match="caption id -1"):
        cache.lookup([-1])


def test_resume_after_interruption_gives_the_identical_file(tiny_bert, tmp_path, monkeypatch):
    # CAPTIONS holds 20 distinct texts (ids 20-22 repeat ids 0-2); chunks are 8 distinct texts.
    # (Before captions were deduplicated, chunks were 8 ids: the kill left completed == 8 and
    # the resume encoded [8, 7] captions; now it encodes the 12 distinct texts not done yet.)
    whole = build_text_cache(CAPTIONS, tmp_path / "whole", tiny_bert, batch_size=8, progress=False)
    assert json.loads((whole / "meta.json").read_text())["unique_count"] == len(set(CAPTIONS)) == 20

    encoded = []
    real_encode = tiny_bert.encode

    def dies_after_first_chunk(captions, **kw):
        if len(set(encoded)) >= 8:  # the first call of the second chunk
            raise KeyboardInterrupt("simulated kill")
        encoded.extend(captions)
        return real_encode(captions, **kw)

    monkeypatch.setattr(tiny_bert, "encode", dies_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_text_cache(CAPTIONS, tmp_path / "part", tiny_bert, batch_size=8, progress=False)
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    first_chunk = set(encoded)
    assert meta["unique_completed"] == 8 == len(first_chunk)
    assert meta["completed"] == sum(sanitize_caption(c) in first_chunk for c in CAPTIONS) >= 8  # ids written
    with pytest.raises(RuntimeError, match=rf"incomplete \({meta['completed']} of 23.*rerunning"):
        TextFeatureCache(tmp_path / "part")

    encoded.clear()
    monkeypatch.setattr(tiny_bert, "encode", lambda c, **kw: (encoded.extend(c), real_encode(c, **kw))[1])
    build_text_cache(CAPTIONS, tmp_path / "part", tiny_bert, batch_size=8, progress=False)
    assert not first_chunk & set(encoded)  # the first chunk was not encoded again
    assert set(encoded) == {sanitize_caption(c) for c in CAPTIONS} - first_chunk
    for name in ("features.f16", "lengths.i16"):
        assert (tmp_path / "part" / name).read_bytes() == (whole / name).read_bytes()
    assert TextFeatureCache(tmp_path / "part").fingerprint == caption_fingerprint(CAPTIONS)


def test_each_distinct_caption_is_encoded_once_with_the_bytes_of_encoding_every_id(tiny_bert, tmp_path, monkeypatch):
    captions = CAPTIONS + CAPTIONS[::3] + [" " + CAPTIONS[4] + "\t"]  # duplicates, one only after sanitising
    encoded = []
    real_encode = tiny_bert.encode
    monkeypatch.setattr(tiny_bert, "encode", lambda c, **kw: (encoded.extend(c), real_encode(c, **kw))[1])
    deduped = build_text_cache(captions, tmp_path / "dedupe", tiny_bert, batch_size=8, progress=False)
    distinct = [sanitize_caption(c) for c in CAPTIONS]
    assert sorted(set(encoded)) == sorted(set(distinct))
    assert len(encoded) <= len(set(CAPTIONS)) + 2  # a lone caption of its length is sent twice
    encoded.clear()
    per_id = build_text_cache(captions, tmp_path / "per_id", tiny_bert, batch_size=5, progress=False, dedupe=False)
    assert len(encoded) >= len(captions)
    for name in ("features.f16", "lengths.i16"):
        assert (deduped / name).read_bytes() == (per_id / name).read_bytes()
    meta = json.loads((deduped / "meta.json").read_text())
    assert meta["completed"] == meta["count"] == len(captions) and meta["unique_count"] == 20
    cache = TextFeatureCache(deduped)
    feats, mask = cache.lookup(torch.arange(len(captions)))
    for i, text in enumerate(captions):  # every id holds its own caption's features
        j = distinct.index(sanitize_caption(text))
        assert torch.equal(feats[i], feats[j]) and torch.equal(mask[i], mask[j])
    direct, direct_mask = real_encode(captions, pad_to_max=True)
    torch.testing.assert_close(feats.float(), direct, atol=2e-3, rtol=2e-3)
    assert torch.equal(mask, direct_mask)


def test_encode_pad_to_max_zero_pads_the_longest_length_result(tiny_bert):
    captions = ["a red cube", "two small green cones on a table"]
    short, short_mask = tiny_bert.encode(captions)
    padded, padded_mask = tiny_bert.encode(captions, pad_to_max=True)
    assert padded.shape == (2, 16, 32) and short.shape[1] < 16
    assert torch.equal(padded[:, : short.shape[1]], short) and (padded[:, short.shape[1]:] == 0).all()
    assert torch.equal(padded_mask[:, : short.shape[1]], short_mask) and not padded_mask[:, short.shape[1]:].any()


def test_build_threads_policy():
    from tcjepa.device import idle_core_threads

    assert idle_core_threads(current=2, cpus=2, load=0.1) == 2  # idle: every core
    assert idle_core_threads(current=2, cpus=2, load=3.9) == 1  # busy: spinning threads only wait
    assert idle_core_threads(current=8, cpus=16, load=10.0) == 6
    assert idle_core_threads(current=1, cpus=16, load=0.0) == 1  # never more than torch was given


def test_resume_refuses_other_captions_or_encoder(tiny_bert, tiny_t5_dir, tmp_path):
    build_text_cache(CAPTIONS, tmp_path, tiny_bert, batch_size=8, progress=False)
    other = CAPTIONS[:-1] + ["a different last caption"]
    with pytest.raises(ValueError, match="different caption list.*--no-resume"):
        build_text_cache(other, tmp_path, tiny_bert, batch_size=8, progress=False)
    t5 = FrozenTextEncoder(str(tiny_t5_dir), max_words=16)
    with pytest.raises(ValueError, match="different text encoder"):
        build_text_cache(CAPTIONS, tmp_path, t5, batch_size=8, progress=False)
    cache = TextFeatureCache(tmp_path)
    cache.check_captions(CAPTIONS)
    with pytest.raises(ValueError, match="different caption list"):
        cache.check_captions(other)
    with pytest.raises(ValueError, match="max_words 16 != 64"):
        cache.check_encoder(str(tiny_t5_dir), max_words=64, dim=32)
    # --no-resume starts over with the new captions.
    build_text_cache(other, tmp_path, tiny_bert, batch_size=8, resume=False, progress=False)
    TextFeatureCache(tmp_path).check_captions(other)


def test_bad_captions_fail_before_the_build_with_their_id(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="caption 5 is empty"):
        build_text_cache(CAPTIONS[:5] + ["\x00 "], tmp_path, tiny_bert, progress=False)
    with pytest.raises(FileNotFoundError, match="not a text-feature cache"):
        TextFeatureCache(tmp_path)


def test_cache_is_picklable_and_works_in_dataloader_workers(tiny_bert, tmp_path):
    build_text_cache(CAPTIONS, tmp_path, tiny_bert, batch_size=8, progress=False)
    cache = TextFeatureCache(tmp_path)
    expected, _ = cache.lookup(torch.arange(23))  # maps the files in this process...
    clone = pickle.loads(pickle.dumps(cache))  # ...which must not travel in the pickle
    assert clone._features is None
    assert torch.equal(clone.lookup(torch.arange(23))[0], expected)
    loader = torch.utils.data.DataLoader(
        range(23), batch_size=5, num_workers=1, collate_fn=lambda ids: cache.lookup(torch.tensor(ids))
    )
    got = torch.cat([f for f, _ in loader])
    assert torch.equal(got, expected)


def test_cli_builds_the_default_cache_folder(tiny_bert_dir, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    with (tmp_path / "captions.jsonl").open("w") as f:
        for i in range(0, 20, 4):
            (tmp_path / f"images/{i}.png").touch()  # the caption reader checks that images exist
            f.write(json.dumps({"image": f"images/{i}.png", "captions": CAPTIONS[i : i + 4]}) + "\n")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["text-cache", "--data", str(tmp_path), "--encoder", str(tiny_bert_dir), "--max-words", "12", "--device", "cpu"]
    )
    assert args.func(args) == 0
    cache = TextFeatureCache(tmp_path / "text_cache" / tiny_bert_dir.name)
    assert len(cache) == 20 and cache.max_words == 12
    cache.check_captions(cli.load_caption_texts(tmp_path))

    (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "captions": ["ok"]}\n{"image": "b.png", "captions": [\n')
    args.no_resume = True
    assert args.func(args) == 2
    assert "captions.jsonl" in capsys.readouterr().err  # the reader names file and line

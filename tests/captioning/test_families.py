"""Each family is recognised from its config and returns the captions asked for."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image

from tcjepa.captioning.families import detect_family, load_captioner
from tcjepa.data.errors import DataError


@pytest.fixture(scope="module")
def images(scenes):
    return [Image.open(p).convert("RGB") for p in sorted((scenes / "images" / "train").glob("*.jpg"))[:2]]


@pytest.mark.parametrize("family,expected", [("blip", "blip"), ("blip-2", "blip-2"), ("git", "git"),
                                             ("llava", "chat")])
def test_family_from_config_and_captions_per_image(models, images, family, expected):
    captioner = load_captioner(models[family], device="cpu")
    assert captioner.family == expected
    prompt = "Describe this image in one sentence." if captioner.prompt_kind == "instruction" else "a picture of"
    greedy = captioner.generate(images, prompt, count=1, max_new_tokens=4)
    sampled = captioner.generate(images, prompt, count=3, sample=True, max_new_tokens=4)
    assert [len(c) for c in greedy] == [1, 1] and [len(c) for c in sampled] == [3, 3]
    for caption in [c for caps in greedy + sampled for c in caps]:
        if captioner.prompt_kind == "prefix":  # BLIP and GIT keep the prefix they continue
            assert caption.startswith("a picture of") and len(caption.split()) <= 3 + 4
        else:  # the prompt ("image in one" are words of the tiny vocabulary) is cut off
            assert len(caption.split()) <= 4, caption


def test_model_that_cannot_caption_is_refused_in_one_line(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(DataError, match=r"bert.*'bert' model cannot caption images; give a BLIP, BLIP-2, GIT"):
        detect_family(tmp_path / "bert")
    with pytest.raises(DataError, match=r"missing: not a model folder \(does not exist\)"):
        detect_family(tmp_path / "missing")


def test_chat_model_without_chat_template_is_refused(models, tmp_path):
    broken = tmp_path / "llava"
    shutil.copytree(models["llava"], broken)
    (broken / "chat_template.jinja").unlink()
    with pytest.raises(DataError, match=r"'llava' chat model has no chat template"):
        load_captioner(broken, device="cpu")


def test_large_jpegs_decode_at_a_reduced_scale_that_still_covers_the_model_input(models, tmp_path):
    import numpy as np

    from tcjepa.captioning.sources import DecodedImages, folder_source

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=90)
    side = load_captioner(models["blip"], device="cpu").decode_side()
    assert side == 64  # twice the tiny BLIP's 32 px input
    source = folder_source(tmp_path)
    assert DecodedImages(source, min_side=side)[0]["image"].size == (128, 96)  # 1/8 scale: both sides >= 64
    assert DecodedImages(source)[0]["image"].size == (1024, 768)

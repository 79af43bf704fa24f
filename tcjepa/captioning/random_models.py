"""Random-weight captioning models of every supported family, saved with ``save_pretrained``.

They load through exactly the path a published checkpoint takes (config -> family -> Auto
classes), so tests and benchmarks exercise the real code without a download. Captions from
random weights are word salad, but they are word salad of the right shape and length.

    python -m tcjepa.captioning.random_models blip models/random-blip

``tiny`` models are a few hundred KB and caption on a CPU in milliseconds; ``base`` models
have the layer sizes of the published base checkpoints, for throughput measurements.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FAMILIES = ("blip", "blip-2", "git", "llava")
SIZES = ("tiny", "base")
# Word-level vocabulary of the tokenizer made for BLIP-2 and LLaVA (their published ones are BPE
# files we do not ship); chosen so the random captions read like scene descriptions.
SCENE_WORDS = (
    "a an the of on in to and with is are two three one small large big red green blue yellow purple "
    "orange white black cube sphere ball cone cylinder ring star square circle triangle left right "
    "top bottom above below behind front next near scene picture image background shiny matte striped"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def _sizes(size: str) -> dict:
    if size == "tiny":
        return dict(hidden=32, layers=1, heads=2, ffn=64, image=32, patch=8, vision_hidden=32, vision_layers=1)
    return dict(hidden=768, layers=12, heads=12, ffn=3072, image=384, patch=16, vision_hidden=768, vision_layers=12)


def _vision(s: dict) -> dict:
    return dict(hidden_size=s["vision_hidden"], num_hidden_layers=s["vision_layers"], num_attention_heads=s["heads"],
                intermediate_size=s["vision_hidden"] * 2 if s["ffn"] < 128 else s["ffn"],
                image_size=s["image"], patch_size=s["patch"])


def bert_tokenizer():
    """The WordPiece tokenizer of the embedded MiniLM text encoder (BLIP and GIT use BERT's)."""
    from transformers import AutoTokenizer

    from tcjepa.text.encoder import resolve_text_encoder

    return AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"), local_files_only=True)


def word_tokenizer():
    """A whitespace word-level tokenizer over SCENE_WORDS with <s>, </s>, <pad>, <unk>, <image>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<image>", *SCENE_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", additional_special_tokens=["<image>"])


def _save_blip(out: Path, s: dict) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = bert_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                num_attention_heads=s["heads"], intermediate_size=s["ffn"], max_position_embeddings=512,
                encoder_hidden_size=s["vision_hidden"], bos_token_id=tok.cls_token_id,
                pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id)
    config = BlipConfig(text_config=text, vision_config=_vision(s), projection_dim=s["hidden"])
    BlipForConditionalGeneration(config).eval().save_pretrained(out)
    side = {"height": s["image"], "width": s["image"]}
    BlipProcessor(BlipImageProcessor(size=side), tok).save_pretrained(out)


def _save_git(out: Path, s: dict) -> None:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tok = bert_tokenizer()
    config = GitConfig(vision_config=_vision(s), vocab_size=len(tok), hidden_size=s["hidden"],
                       num_hidden_layers=s["layers"], num_attention_heads=s["heads"], intermediate_size=s["ffn"],
                       max_position_embeddings=1024, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                       pad_token_id=tok.pad_token_id)
    GitForCausalLM(config).eval().save_pretrained(out)
    images = CLIPImageProcessor(size={"shortest_edge": s["image"]}, crop_size={"height": s["image"], "width": s["image"]})
    GitProcessor(images, tok).save_pretrained(out)


def _save_blip2(out: Path, s: dict) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    tok = word_tokenizer()
    queries = 4 if s["hidden"] < 128 else 32
    processor = Blip2Processor(BlipImageProcessor(size={"height": s["image"], "width": s["image"]}), tok,
                               num_query_tokens=queries)
    text = OPTConfig(vocab_size=len(tok), hidden_size=s["hidden"], num_hidden_layers=s["layers"], ffn_dim=s["ffn"],
                     num_attention_heads=s["heads"], word_embed_proj_dim=s["hidden"], max_position_embeddings=512,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    qformer = dict(vocab_size=64, hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                   intermediate_size=s["ffn"], encoder_hidden_size=s["vision_hidden"])
    config = Blip2Config(vision_config=_vision(s), qformer_config=qformer, text_config=text.to_dict(),
                         num_query_tokens=queries, image_token_id=tok.convert_tokens_to_ids("<image>"))
    Blip2ForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)


def _save_llava(out: Path, s: dict) -> None:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = word_tokenizer()
    image = s["image"] if s["hidden"] < 128 else 336
    patch = s["patch"] if s["hidden"] < 128 else 14
    vision = CLIPVisionConfig(**{**_vision(s), "image_size": image, "patch_size": patch}, projection_dim=s["hidden"])
    text = LlamaConfig(vocab_size=len(tok), hidden_size=s["hidden"] * (1 if s["hidden"] < 128 else 2),
                       num_hidden_layers=s["layers"] * (1 if s["hidden"] < 128 else 2), num_attention_heads=s["heads"],
                       num_key_value_heads=s["heads"], intermediate_size=s["ffn"] * (1 if s["hidden"] < 128 else 2),
                       max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(config).eval().save_pretrained(out)
    images = CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    LlavaProcessor(images, tok, patch_size=patch, vision_feature_select_strategy="default",
                   chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1).save_pretrained(out)


_BUILDERS = {"blip": _save_blip, "blip-2": _save_blip2, "git": _save_git, "llava": _save_llava}


def save_random_captioner(family: str, out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight ``family`` model (config, weights, processor, tokenizer) to ``out``."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _BUILDERS[family](out, _sizes(size))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcjepa.captioning.random_models", description=__doc__.split("\n\n")[0])
    p.add_argument("family", choices=FAMILIES, help="model family")
    p.add_argument("out", help="folder to write (save_pretrained layout)")
    p.add_argument("--size", choices=SIZES, default="tiny", help="tiny (tests) or base (benchmarks); default: tiny")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = p.parse_args(argv)
    print(f"wrote a random-weight {args.size} {args.family} model to {save_random_captioner(args.family, args.out, args.size, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

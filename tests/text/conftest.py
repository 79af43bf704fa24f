"""Tiny random-weight text encoders saved in the official Hugging Face layout.

Both go through exactly the loading path real checkpoints take (FrozenTextEncoder on a
local folder), so the tests exercise config, tokenizer and weight loading for BERT-style
and T5 models without any download.
"""
from __future__ import annotations

import pytest
import torch

from tcjepa.text.encoder import FrozenTextEncoder, resolve_text_encoder

WORDS = (
    "a an the red green blue yellow small large big cube sphere ball cone cylinder left right "
    "of on in to and is are two three one next behind front above below wooden table striped "
    "dotted shiny matte scene with picture photo"
).split()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """BERT with 2 layers, 32-d, reusing the real MiniLM WordPiece vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """Full encoder-decoder T5 checkpoint (as published), with a small Unigram tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    out = tmp_path_factory.mktemp("tiny_t5")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -5.0) for w in WORDS]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(pieces), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1,
        num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def minilm():
    return FrozenTextEncoder("minilm", max_words=32)


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir):
    return FrozenTextEncoder(str(tiny_bert_dir), max_words=16)

"""Hostile caption text through the training path with online text encoding (tests/text covers
the encoder itself; this checks the same strings survive the loader, collator and loop)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from reliability_helpers import tiny_overrides, train_in_process

from tcjepa.text.encoder import resolve_text_encoder

FUZZ = [
    "🙂🚀 a red cube 🟥 " * 3,
    "\u202eright-to-left override\u202c then \u200bzero\u200bwidth",
    "control \x00\x07\x1b[31m chars \t\r and\nnewlines",
    "عربى 中文 日本語 한국어 ελληνικά кириллица",
    "word " * 2000,  # far beyond max_words: truncated
    "\ud800 lone surrogate",  # not encodable as UTF-8
    "̸̢̛͓̞̈́c̷o̴m̶b̵i̸n̷i̸n̷g̸ marks",
    "  .  ",
]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("rel_tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_fuzzed_captions_train_with_online_text_encoding(scenes_copy, tmp_path, tiny_bert_dir):
    path = scenes_copy / "captions.jsonl"
    records = [json.loads(ln) for ln in path.read_text().splitlines()]
    for i, r in enumerate(records):  # every image gets fuzz captions next to a real one
        r["captions"] = [r["captions"][0], FUZZ[i % len(FUZZ)], FUZZ[(i + 3) % len(FUZZ)]]
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    summary = train_in_process(tiny_overrides(
        scenes_copy, tmp_path / "run", **{"text.enabled": "true", "text.encoder": str(tiny_bert_dir),
                                          "text.dim": 32, "text.max_words": 16, "data.text_cache": "''",
                                          "data.num_captions": 3, "optim.max_steps": 6}))
    assert summary.steps == 6 and math.isfinite(summary.final_loss)

"""A text cache that does not fit the run (another max_words, another caption list) stops a
command with one line and exit 2, not a traceback."""
from __future__ import annotations

import pytest

from tcjepa.cli.errors import run_cli
from tcjepa.errors import UserError
from tcjepa.text.cache import TextCacheError, TextFeatureCache, build_text_cache

CAPTIONS = ["a red cube left of a ball", "two green cones", "a blue sphere on a striped table"]


@pytest.mark.parametrize("mismatch", ["max_words", "captions"])
def test_mismatched_cache_is_one_line(tiny_bert, tiny_bert_dir, tmp_path, capsys, mismatch):
    build_text_cache(CAPTIONS, tmp_path, tiny_bert, batch_size=2, progress=False)
    cache = TextFeatureCache(tmp_path)

    def run():
        if mismatch == "max_words":
            cache.check_encoder(str(tiny_bert_dir), max_words=32, dim=32)
        else:
            cache.check_captions(CAPTIONS[:2] + ["another caption"])
        return 0

    assert run_cli(run) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path) in err
    assert ("max_words 16 != 32" if mismatch == "max_words" else "different caption list") in err
    assert issubclass(TextCacheError, UserError) and issubclass(TextCacheError, ValueError)

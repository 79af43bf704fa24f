"""Duplicates, near-empty and over-long captions, N captions from prompts and refills, prompt files."""
from __future__ import annotations

import pytest

from tcjepa.captioning.cleaning import CaptionFilter
from tcjepa.captioning.generation import GenerationOptions, caption_batch
from tcjepa.captioning.prompts import load_prompts
from tcjepa.data.errors import DataError


def test_filter_drops_duplicates_near_empty_and_cuts_long_captions():
    f = CaptionFilter(per_image=3, max_words=4, min_words=2)
    kept: list[str] = []
    f.add(kept, ["A red cube.", "a  red cube", "cube", "  ", "one two three four five six", "\x00 blue\tball "])
    assert kept == ["A red cube.", "one two three four", "blue ball"]
    assert f.counts == {"generated": 6, "duplicates": 1, "near_empty": 2, "truncated": 1}
    f.add(kept, ["a green cone"])  # already N: surplus, not kept
    assert len(kept) == 3 and f.counts["surplus"] == 1


class ScriptedCaptioner:
    """Stands in for the model where the test needs to choose what it says."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def generate(self, images, prompt, count, sample, **_):
        self.calls.append((prompt, count, sample, len(images)))
        return [[self.answers(prompt, sample, len(self.calls), i, k) for k in range(count)] for i in range(len(images))]


def test_prompts_cycle_greedy_first_then_sampled_and_refills_replace_duplicates():
    # Greedy answers repeat across prompts, so image 0 needs a refill round.
    def answers(prompt, sample, call, image, k):
        return f"same words {image}" if not sample else f"{prompt} call {call} image {image} sample {k}"

    model = ScriptedCaptioner(answers)
    options = GenerationOptions(per_image=4, refill_rounds=2)
    f = CaptionFilter(per_image=4, max_words=20)
    out = caption_batch(model, ["img0", "img1"], ["p", "q"], options, f, first_index=0)
    assert [c[2] for c in model.calls[:4]] == [False, True, False, True]  # p greedy, p sampled, q greedy, q sampled
    assert [len(c) for c in out] == [4, 4] and all(len(set(c)) == 4 for c in out)
    assert f.counts["duplicates"] == 2 and f.counts["refill_calls"] == 1


def test_greedy_decoding_needs_as_many_prompts_and_n_at_least_one():
    with pytest.raises(DataError, match="--per-image 5 needs at least that many prompts, the prompt set has 4"):
        GenerationOptions(per_image=5, decoding="greedy").check(4)
    with pytest.raises(DataError, match="--per-image must be >= 1, got 0"):
        GenerationOptions(per_image=0).check(4)


def test_default_prompts_and_bad_prompt_files(tmp_path):
    prompts = load_prompts()
    assert len(prompts.instructions) == 4 and "" in prompts.prefixes
    assert prompts.for_family("blip-2")[0] == f"Question: {prompts.instructions[0]} Answer:"
    assert prompts.for_family("git") == prompts.prefixes and prompts.for_family("chat") == prompts.instructions
    custom = tmp_path / "p.yaml"
    custom.write_text("instructions: ['What is there?']\nprefixes: ['']\n")
    assert load_prompts(custom).instructions == ("What is there?",)
    custom.write_text("instructions: []\nprefixes: ['']\n")
    with pytest.raises(DataError, match=r"p.yaml: 'instructions' must be a non-empty list of strings"):
        load_prompts(custom)
    custom.write_text("instructions: [a]\nprefixes: ['']\nquestions: [b]\n")
    with pytest.raises(DataError, match=r"unknown key\(s\) questions"):
        load_prompts(custom)
    custom.write_text("instructions: [a]\nprefixes: ['']\nblip2_template: 'Q: {prompt} {answer}'\n")
    with pytest.raises(DataError, match=r"blip2_template must be a string with one \{prompt\} field"):
        load_prompts(custom)

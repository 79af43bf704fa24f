"""N distinct captions for a batch of images: which prompt, greedy or sampled, and refills.

Caption k of an image is asked with prompt k mod P. Under ``mixed`` decoding the first caption
of each prompt is greedy (the model's best guess) and the repeats are sampled; ``sample``
samples all of them, ``greedy`` none (so N <= P). Captions dropped as duplicates or near-empty
are asked for again, sampled, for at most ``refill_rounds`` rounds. Every sampled call seeds
torch from (seed, first image of the batch, prompt, round), so a batch captioned again after a
restart gets the same captions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from tcjepa.data.errors import DataError

from .cleaning import CaptionFilter
from .families import Captioner

DECODINGS = ("mixed", "sample", "greedy")


@dataclass(frozen=True)
class GenerationOptions:
    per_image: int
    decoding: str = "mixed"
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.9
    refill_rounds: int = 2
    seed: int = 0

    def check(self, num_prompts: int) -> None:
        if self.per_image < 1:
            raise DataError(f"--per-image must be >= 1, got {self.per_image}")
        if self.decoding not in DECODINGS:
            raise DataError(f"--decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.decoding == "greedy" and self.per_image > num_prompts:
            raise DataError(f"--decoding greedy gives one caption per prompt: --per-image {self.per_image} needs "
                            f"at least that many prompts, the prompt set has {num_prompts}")
        if self.max_new_tokens < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1 or self.refill_rounds < 0:
            raise DataError("--max-new-tokens >= 1, --temperature > 0, 0 < --top-p <= 1 and --refill-rounds >= 0, got "
                            f"{self.max_new_tokens}, {self.temperature}, {self.top_p}, {self.refill_rounds}")


def _seed(options: GenerationOptions, first_index: int, prompt: int, round_: int) -> int:
    return int(np.random.SeedSequence([options.seed, first_index, prompt, round_]).generate_state(1)[0])


def _ask(captioner: Captioner, images: Sequence, prompt: str, count: int, sample: bool,
         options: GenerationOptions, seed: int) -> list[list[str]]:
    if sample:
        torch.manual_seed(seed)
    return captioner.generate(images, prompt, count=count, sample=sample, max_new_tokens=options.max_new_tokens,
                              temperature=options.temperature, top_p=options.top_p)


def caption_batch(captioner: Captioner, images: Sequence, prompts: Sequence[str], options: GenerationOptions,
                  captions_filter: CaptionFilter, first_index: int) -> list[list[str]]:
    """Up to ``options.per_image`` distinct captions for each image (fewer only when the
    refill rounds could not find more); ``first_index`` is the batch's position in the input."""
    uses = [0] * len(prompts)
    for k in range(options.per_image):
        uses[k % len(prompts)] += 1
    kept: list[list[str]] = [[] for _ in images]
    for p, count in enumerate(uses):
        if count == 0:
            continue
        greedy = 0 if options.decoding == "sample" else 1
        if greedy:
            for mine, new in zip(kept, _ask(captioner, images, prompts[p], 1, False, options, 0)):
                captions_filter.add(mine, new)
        if count - greedy > 0:
            sampled = _ask(captioner, images, prompts[p], count - greedy, True, options, _seed(options, first_index, p, 0))
            for mine, new in zip(kept, sampled):
                captions_filter.add(mine, new)
    if options.decoding == "greedy":
        return kept
    for round_ in range(1, options.refill_rounds + 1):
        short = [i for i, mine in enumerate(kept) if len(mine) < options.per_image]
        if not short:
            break
        captions_filter.counts["refill_calls"] += 1
        p = (round_ - 1) % len(prompts)
        missing = max(options.per_image - len(kept[i]) for i in short)
        more = _ask(captioner, [images[i] for i in short], prompts[p], missing, True, options,
                    _seed(options, first_index, p, round_))
        for i, new in zip(short, more):
            captions_filter.add(kept[i], new)
    return kept

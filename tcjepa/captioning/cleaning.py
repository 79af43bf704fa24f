"""From raw generations to an image's caption list: sanitise, cap the length, drop
near-empty captions and duplicates, and count what was dropped."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from tcjepa.text.encoder import sanitize_caption

_NOT_WORD = re.compile(r"[^\w\s]")


def duplicate_key(caption: str) -> str:
    """Captions equal up to case, punctuation and spacing count as duplicates."""
    return " ".join(_NOT_WORD.sub(" ", caption.lower()).split())


@dataclass
class CaptionFilter:
    """Keeps at most ``per_image`` distinct captions of ``min_words``..``max_words`` words."""

    per_image: int
    max_words: int
    min_words: int = 2
    counts: Counter = field(default_factory=Counter)

    def clean(self, raw: str) -> str | None:
        """The caption as kept (sanitised, cut at ``max_words`` words), or None if near-empty."""
        self.counts["generated"] += 1
        words = sanitize_caption(raw).split()
        if len(words) < self.min_words or not duplicate_key(" ".join(words)):
            self.counts["near_empty"] += 1
            return None
        if len(words) > self.max_words:
            self.counts["truncated"] += 1
            words = words[: self.max_words]
        return " ".join(words)

    def add(self, kept: list[str], raw: list[str]) -> None:
        """Append the new distinct captions of ``raw`` to ``kept`` (in place) up to ``per_image``."""
        seen = {duplicate_key(c) for c in kept}
        for text in raw:
            caption = self.clean(text)
            if caption is None:
                continue
            key = duplicate_key(caption)
            if key in seen:
                self.counts["duplicates"] += 1
                continue
            if len(kept) >= self.per_image:
                self.counts["surplus"] += 1
                continue
            seen.add(key)
            kept.append(caption)

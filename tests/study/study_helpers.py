"""Shared by the study tests."""
from __future__ import annotations

import torch

from tcjepa.study.text_bank import TextBank


def random_text_bank() -> TextBank:
    """Random word features for the whole vocabulary: the runs only need their shapes."""
    from tcjepa.study.scene_family import VOCABULARY_SIZE

    g = torch.Generator().manual_seed(0)
    mask = torch.arange(8)[None] < torch.randint(3, 9, (VOCABULARY_SIZE, 1), generator=g)
    return TextBank(torch.randn(VOCABULARY_SIZE, 8, 384, generator=g).half(), mask)

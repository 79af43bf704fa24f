"""The study scenes' closed caption vocabulary: every caption a scene can get, by integer id.

The long-horizon study draws fresh scenes at every step, so captions cannot come from a
file: each caption is one of a fixed, finite list of texts whose word features are encoded
once (``text_bank.py``). A caption describes one object: its size, texture, colour, shape
and 3x3 position, in one of three templates that leave out nothing, the texture, or the
colour. The id packs (template, size, texture, colour, shape, position) in that order.

Shapes, colours, textures and the scene labels are the embedded scenes' own
(``tcjepa.data.scenes``); what differs from that family is written in the study protocol
(results/studies/long-horizon/PROTOCOL.md).
"""
from __future__ import annotations

import torch

from tcjepa.data.scenes import COLOURS, SCENE_CLASSES, SHAPES, TEXTURES

COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
POSITIONS = (("in the top left", "at the top", "in the top right"),
             ("on the left", "in the center", "on the right"),
             ("in the bottom left", "at the bottom", "in the bottom right"))
POSITION_NAMES = tuple(p for row in POSITIONS for p in row)
# Which of (size, texture, colour, shape, position) each template states.
TEMPLATES = ("full", "no_texture", "no_colour")
TEMPLATE_STATES = {
    "full": (True, True, True, True, True),
    "no_texture": (True, False, True, True, True),
    "no_colour": (True, True, False, True, True),
}
ATTRIBUTES = ("size", "texture", "colour", "shape", "position")
# Mixed-radix digits of a caption id, most significant first.
_RADIX = (len(TEMPLATES), len(SIZES), len(TEXTURES), len(COLOUR_NAMES), len(SHAPES), len(POSITION_NAMES))
VOCABULARY_SIZE = 1
for _r in _RADIX:
    VOCABULARY_SIZE *= _r
NUM_CLASSES = len(SCENE_CLASSES)


def caption_ids(template: torch.Tensor, size: torch.Tensor, texture: torch.Tensor, colour: torch.Tensor,
                shape: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Ids of captions (any matching shapes of integer tensors)."""
    out = torch.zeros_like(template)
    for digit, radix in zip((template, size, texture, colour, shape, position), _RADIX):
        out = out * radix + digit
    return out


def decode_caption_id(cid: int) -> dict[str, int]:
    """Inverse of ``caption_ids`` for one id: the index of every field."""
    if not 0 <= cid < VOCABULARY_SIZE:
        raise ValueError(f"caption id {cid} out of range [0, {VOCABULARY_SIZE})")
    fields = {}
    for name, radix in zip(reversed(("template", *ATTRIBUTES)), reversed(_RADIX)):
        cid, fields[name] = divmod(cid, radix)
    return fields


def caption_text(cid: int) -> str:
    f = decode_caption_id(cid)
    template = TEMPLATES[f["template"]]
    size, texture = SIZES[f["size"]], TEXTURES[f["texture"]]
    colour, shape, position = COLOUR_NAMES[f["colour"]], SHAPES[f["shape"]], POSITION_NAMES[f["position"]]
    if template == "full":
        text = f"a {size} {texture} {colour} {shape} {position}."
    elif template == "no_texture":
        text = f"{position}, there is a {size} {colour} {shape}."
    else:
        text = f"a {size} {texture} {shape} {position}."
    return text[0].upper() + text[1:]


def caption_vocabulary() -> list[str]:
    """Every caption text, position = caption id (texts repeat where a template drops a field)."""
    return [caption_text(i) for i in range(VOCABULARY_SIZE)]


def stated_attributes() -> torch.Tensor:
    """(templates, attributes) bool: which attributes each template's caption states."""
    return torch.tensor([TEMPLATE_STATES[t] for t in TEMPLATES], dtype=torch.bool)

"""The prompt set: which question (or text prefix) each of an image's N captions is asked with."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tcjepa.data.errors import DataError

DEFAULT_PROMPTS = Path(__file__).with_name("prompts.yaml")


@dataclass(frozen=True)
class PromptSet:
    instructions: tuple[str, ...]
    prefixes: tuple[str, ...]
    blip2_template: str

    def for_family(self, family: str) -> tuple[str, ...]:
        """The prompts as the model of ``family`` takes them (see ``families.PROMPT_KIND``)."""
        from .families import PROMPT_KIND

        kind = PROMPT_KIND[family]
        if kind == "prefix":
            return self.prefixes
        if family == "blip-2":
            return tuple(self.blip2_template.format(prompt=p) for p in self.instructions)
        return self.instructions


def _string_list(data: dict, key: str, path: Path, allow_empty_item: bool) -> tuple[str, ...]:
    items = data.get(key)
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: {key!r} must be a non-empty list of strings")
    for i, item in enumerate(items):
        if not isinstance(item, str) or (not allow_empty_item and not item.strip()):
            raise DataError(f"{path}: {key}[{i}] must be a {'' if allow_empty_item else 'non-empty '}string, got {item!r}")
    return tuple(s.strip() for s in items)


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read a prompts YAML (default: the one shipped next to this module); errors name the key."""
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found; copy {DEFAULT_PROMPTS.name} from tcjepa/captioning and edit it")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with 'instructions', 'prefixes' and 'blip2_template'")
    unknown = sorted(set(data) - {"instructions", "prefixes", "blip2_template"})
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(unknown)}; expected instructions, prefixes, blip2_template")
    template = data.get("blip2_template", "Question: {prompt} Answer:")
    try:
        if "{prompt}" not in template or "\0" not in template.format(prompt="\0"):
            raise ValueError
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        raise DataError(f"{path}: blip2_template must be a string with one {{prompt}} field and no other braces, "
                        f"got {template!r}") from None
    return PromptSet(_string_list(data, "instructions", path, allow_empty_item=False),
                     _string_list(data, "prefixes", path, allow_empty_item=True), template)

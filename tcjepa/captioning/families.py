"""Which captioning model a folder holds, and how each family is asked for captions.

The family comes from ``config.json``'s ``model_type``: BLIP and GIT continue a text prefix,
BLIP-2 answers a plain-text question, and every other image-text-to-text model transformers
knows (LLaVA, Qwen2-VL, SmolVLM, ...) is a chat model asked through its chat template.
Weights are read from the folder only; nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from tcjepa.data.errors import DataError
from tcjepa.device import fit_threads_to_idle_cores

PROMPT_KIND = {"blip": "prefix", "git": "prefix", "blip-2": "instruction", "chat": "instruction"}


def _image_text_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def detect_family(path: str | Path) -> tuple[str, Any]:
    """(family, config) of the model folder ``path``; a DataError if it cannot caption images."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise DataError(f"{path}: not a model folder ({what}); give a folder written by save_pretrained "
                        "(config, weights, processor); nothing is downloaded")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}/config.json: cannot read the model config ({' '.join(str(e).split())[:200]})") from None
    model_type = config.model_type
    if model_type in ("blip", "git", "blip-2"):
        return model_type, config
    if model_type in _image_text_model_types():
        return "chat", config
    raise DataError(f"{path}: a {model_type!r} model cannot caption images; give a BLIP, BLIP-2, GIT or "
                    "image-text-to-text (chat VLM, e.g. LLaVA) model folder")


def _field(size, key: str):
    """A key of an image processor's size: a dict in older transformers, a SizeDict in newer."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _decode(tokenizer, sequences: torch.Tensor) -> list[str]:
    return [" ".join(t.split()) for t in tokenizer.batch_decode(sequences, skip_special_tokens=True)]


@dataclass
class Captioner:
    """A loaded model and processor; ``generate`` returns ``count`` captions for each image."""

    family: str
    model_type: str
    path: Path
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def prompt_kind(self) -> str:
        return PROMPT_KIND[self.family]

    def decode_side(self) -> int | None:
        """Twice the model's fixed input side (so resizing still only shrinks), or None when the
        processor sizes images by content (pixel budgets, longest edge): then they decode in full."""
        ip = self.processor.image_processor
        sizes = [d for d in (getattr(ip, "size", None), getattr(ip, "crop_size", None)) if d is not None]
        if any(_field(d, k) for d in sizes for k in ("min_pixels", "max_pixels", "longest_edge", "max_height")):
            return None
        sides = [v for d in sizes for k in ("height", "width", "shortest_edge") if isinstance(v := _field(d, k), int)]
        return 2 * max(sides) if sides and max(sides) <= 1024 else None

    def _inputs(self, images: Sequence, prompt: str) -> dict:
        n = len(images)
        if self.family == "blip":
            batch = self.processor(images=list(images), text=[prompt] * n if prompt else None, return_tensors="pt")
        elif self.family == "git":
            batch = dict(self.processor(images=list(images), return_tensors="pt"))
            if prompt:  # GIT continues [CLS] + prefix; the processor would append [SEP]
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                batch["input_ids"] = torch.tensor([[self.tokenizer.cls_token_id, *ids]] * n)
        elif self.family == "blip-2":
            batch = self.processor(images=list(images), text=[prompt] * n, return_tensors="pt", padding=True)
        else:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            batch = self.processor(images=list(images), text=[text] * n, return_tensors="pt", padding=True)
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in dict(batch).items() if isinstance(v, torch.Tensor)}

    @torch.inference_mode()
    def generate(self, images: Sequence, prompt: str, count: int = 1, sample: bool = False,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 0.9) -> list[list[str]]:
        """``count`` captions per image, image after image. Greedy (``count`` must be 1) unless
        ``sample``; sampling draws from torch's global generator, which the caller seeds."""
        if not sample and count != 1:
            raise ValueError("greedy decoding gives one caption per image and prompt")
        inputs = self._inputs(images, prompt)
        options = dict(max_new_tokens=max_new_tokens, num_beams=1, do_sample=sample, num_return_sequences=count)
        if sample:
            options.update(temperature=temperature, top_p=top_p)
        if self.model.generation_config.pad_token_id is None:
            options["pad_token_id"] = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, **options)
        if self.prompt_kind == "instruction" and "input_ids" in inputs:
            # Decoder-only models return prompt + answer; keep the answer only.
            prompt_ids = inputs["input_ids"].repeat_interleave(count, dim=0)
            width = prompt_ids.shape[1]
            if out.shape[1] >= width and torch.equal(out[:, :width], prompt_ids):
                out = out[:, width:]
        texts = _decode(self.tokenizer, out)
        return [texts[i * count:(i + 1) * count] for i in range(len(images))]


def pick_device(device: str) -> tuple[torch.device, torch.dtype]:
    """'auto' -> the local GPU (LOCAL_RANK's under torchrun) in bf16, else the CPU in fp32."""
    import os

    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: no CUDA device is available; use --device cpu")
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def load_captioner(path: str | Path, device: str = "auto") -> Captioner:
    """Load the model of ``path`` (family from its config) for generation on ``device``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    family, config = detect_family(path)
    dev, dtype = pick_device(device)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path}: cannot load the model's processor ({' '.join(str(e).split())[:200]}); the folder "
                        "needs the processor and tokenizer files save_pretrained writes") from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise DataError(f"{path}: the processor ({type(processor).__name__}) does not take both images and text, "
                        f"so this {config.model_type!r} model cannot caption images")
    if family == "chat" and not getattr(processor, "chat_template", None):
        raise DataError(f"{path}: this {config.model_type!r} chat model has no chat template (chat_template.jinja); "
                        "captioning phrases its prompts through it")
    if PROMPT_KIND[family] == "instruction":
        processor.tokenizer.padding_side = "left"  # decoder-only generation continues the last token
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot load the model weights ({' '.join(str(e).split())[:200]})") from None
    if dev.type == "cpu":
        fit_threads_to_idle_cores()
    return Captioner(family, config.model_type, path, model.eval().to(dev), processor, dev, dtype)



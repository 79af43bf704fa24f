"""AdamW parameter groups and I-JEPA's lr / weight-decay / EMA-momentum schedules.

Schedules are pure functions of the optimizer step, so resuming at step ``s`` needs nothing
but ``s`` (no scheduler objects to checkpoint, no replaying of ``.step()`` calls).

I-JEPA stretches all three schedules by ``ipe_scale=1.25`` (training stops at 80% of the
schedule); ``Schedules(horizon_scale=...)`` reproduces that, the default 1.0 follows the paper's
text (warmup, then cosine to ``final_lr`` at the last step).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from tcjepa.config import OptimConfig

log = logging.getLogger(__name__)


def _no_decay_names(module: nn.Module) -> set[str]:
    """Full names listed by any submodule's timm-style ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        fn = getattr(sub, "no_weight_decay", None)
        if callable(fn):
            for n in fn():
                names.add(f"{prefix}.{n}" if prefix else n)
    return names


def wants_weight_decay(name: str, param: torch.Tensor, no_decay_names: set[str] = frozenset()) -> bool:
    """I-JEPA's rule (no decay on biases and 1-D tensors: norm weights/biases, scalars), plus
    opt-outs: timm's ``no_weight_decay()`` names and parameters tagged ``_no_weight_decay``."""
    if param.ndim <= 1 or name.endswith(".bias") or name == "bias":
        return False
    if name in no_decay_names or getattr(param, "_no_weight_decay", False):
        return False
    return True


def build_param_groups(*modules: nn.Module) -> list[dict[str, Any]]:
    """Two AdamW groups over the trainable parameters of ``modules``: ``decay`` and ``no_decay``.

    Frozen parameters (``requires_grad=False``, e.g. the sin-cos ``pos_embed``) are left out;
    parameters shared between modules appear once. Each group carries ``apply_wd`` so that
    ``Schedules.apply`` only touches the weight decay of the decaying group.
    """
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    no_decay_names: list[str] = []
    seen: set[int] = set()
    for i, module in enumerate(modules):
        skip = _no_decay_names(module)
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if wants_weight_decay(name, p, skip):
                decay.append(p)
            else:
                no_decay.append(p)
                no_decay_names.append(f"{i}:{name}")
    if not decay and not no_decay:
        raise ValueError("build_param_groups: the given modules have no trainable parameters")
    log.debug("weight decay on %d tensors, none on %s", len(decay), no_decay_names)
    groups = []
    if decay:
        groups.append({"params": decay, "name": "decay", "apply_wd": True})
    if no_decay:
        groups.append({"params": no_decay, "name": "no_decay", "apply_wd": False, "weight_decay": 0.0})
    return groups


def _params_of(groups: list[dict[str, Any]]) -> list[torch.Tensor]:
    return [p for g in groups for p in g["params"]]


def _fused_supported(params: list[torch.Tensor], device: torch.device) -> bool:
    # Fused AdamW has CPU and CUDA kernels for floating-point tensors (DTensors included) that
    # all live on the same device type.
    if device.type not in ("cpu", "cuda"):
        return False
    return all(p.is_floating_point() and p.device.type == device.type for p in params)


def build_optimizer(
    param_groups: list[dict[str, Any]], cfg: OptimConfig, device: torch.device | str
) -> torch.optim.AdamW:
    """AdamW at ``start_lr`` / ``weight_decay`` (the schedules take over from step 0), fused where
    the device has a fused kernel, else the multi-tensor (foreach) implementation."""
    device = torch.device(device)
    fused = _fused_supported(_params_of(param_groups), device)
    groups = []
    for g in param_groups:
        g = dict(g)
        g.setdefault("weight_decay", cfg.weight_decay if g.get("apply_wd", True) else 0.0)
        groups.append(g)
    return torch.optim.AdamW(
        groups,
        lr=cfg.start_lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        fused=fused or None,
        foreach=None if fused else True,
    )


class Schedules:
    """lr: linear warmup ``start_lr -> lr`` then cosine to ``final_lr``; wd: cosine
    ``weight_decay -> final_weight_decay``; EMA momentum: linear ``ema[0] -> ema[1]``.

    ``step`` is the 0-based index of the optimizer step about to be taken. ``horizon_scale``
    stretches the schedule horizon beyond ``total_steps`` (I-JEPA uses 1.25).
    """

    def __init__(
        self, cfg: OptimConfig, steps_per_epoch: int, total_steps: int, horizon_scale: float = 1.0
    ):
        if steps_per_epoch < 1 or total_steps < 1:
            raise ValueError(
                f"Schedules: steps_per_epoch={steps_per_epoch} and total_steps={total_steps} must be >= 1"
            )
        if horizon_scale < 1.0:
            raise ValueError(f"Schedules: horizon_scale={horizon_scale} must be >= 1")
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.horizon = max(1, round(total_steps * horizon_scale))
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        if self.warmup_steps >= self.horizon:
            log.warning(
                "optim.warmup_epochs=%s is %d steps, not shorter than the %d-step schedule: "
                "lr never leaves warmup",
                cfg.warmup_epochs, self.warmup_steps, self.horizon,
            )

    def lr(self, step: int) -> float:
        c = self.cfg
        if step < self.warmup_steps:
            return c.start_lr + (c.lr - c.start_lr) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.horizon - self.warmup_steps))
        return c.final_lr + (c.lr - c.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def wd(self, step: int) -> float:
        c = self.cfg
        progress = min(1.0, step / self.horizon)
        return c.final_weight_decay + (c.weight_decay - c.final_weight_decay) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def ema(self, step: int) -> float:
        start, end = self.cfg.ema
        return start + (end - start) * min(1.0, step / self.horizon)

    def target_init_share(self) -> float:
        """Weight the target encoder still gives its initial weights after ``total_steps``.

        Each EMA update keeps ``momentum`` of the target, so the initialization survives as the
        product of the momenta. I-JEPA's 0.996 -> 1.0 was set for ~10^5 steps, where this is 0;
        over a few hundred steps it leaves most of the target encoder, the one evaluated and
        exported, at its random initialization.
        """
        return math.prod(self.ema(step) for step in range(self.total_steps))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        """Set lr on every group and weight decay on the ``apply_wd`` groups; returns (lr, wd)."""
        lr, wd = self.lr(step), self.wd(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
            if g.get("apply_wd", True):
                g["weight_decay"] = wd
        return lr, wd

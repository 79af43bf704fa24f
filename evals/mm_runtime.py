"""What the MMSegmentation and MMDetection adapters share: the frozen-backbone module they
register, safe checkpoint loading, and Runner defaults.

Only imported by ``mmseg_adapter.py`` / ``mmdet_adapter.py``; importing it needs mmengine.
"""
from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from typing import Iterator, Optional

import numpy as np
import torch

try:
    from mmengine.model import BaseModule
except ImportError as e:  # give the fix, not just the missing module
    raise ImportError(
        f"{e}. The mm engines need the OpenMMLab stack: run `bash scripts/install_mm.sh .venv/bin/python` "
        "(or `make install-mm`), or use the pure-torch engine (--engine torch / torchvision)."
    ) from e

from evals.backbones.base import Backbone, BackboneSpec, build_backbone
from evals.distributed import current_world
from evals.segmentation.linear_head import backbone_feature_maps

INSTALL_HINT = "run `bash scripts/install_mm.sh .venv/bin/python` (or `make install-mm`)"


class FrozenBackbone(BaseModule):
    """A project :class:`Backbone` as an mm backbone: returns its last ``layers`` patch-token
    maps as a list of (B, C, h, w), oldest first.

    Frozen at build time (no gradients, eval mode forever), so optimizers and DDP in mm
    runners never see trainable backbone parameters. Config: ``spec=dict(name=..., weights=...,
    options=...)`` builds through the backbone registry; ``backbone=`` injects a built one.
    """

    def __init__(self, spec: Optional[dict] = None, backbone: Optional[Backbone] = None, layers: int = 1,
                 init_cfg=None):
        super().__init__(init_cfg)
        if (spec is None) == (backbone is None):
            raise ValueError("FrozenBackbone: give exactly one of spec=dict(name=..., weights=...) or backbone=")
        self.backbone = backbone if backbone is not None else build_backbone(BackboneSpec(**spec))
        self.backbone.freeze()
        self.layers = layers
        self.eval()

    def init_weights(self) -> None:
        # The weights are pretrained. mm's recursive init would otherwise call e.g. timm's own
        # VisionTransformer.init_weights and silently re-initialise the backbone.
        pass

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return backbone_feature_maps(self.backbone, x, self.layers)


def register_module_once(registry, module: type) -> None:
    if module.__name__ not in registry.module_dict:
        registry.register_module(module=module)


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """While an mm runner works, let ``torch.load(weights_only=True)`` (torch's default since
    2.6) read the checkpoints mmengine writes, by allow-listing the few plain classes they
    pickle. Scoped, not process-wide: once the runner is done, every other load in the process
    (training checkpoints, user weights) is back to the strict default."""
    from mmengine.logging.history_buffer import HistoryBuffer

    numpy_core = getattr(np, "_core", None) or np.core  # renamed in numpy 2
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "uint8", "bool")]
    # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, 'mean') etc. The
    # weights-only unpickler still only *calls* allow-listed callables, so getattr can only
    # fetch attributes of objects that are themselves allowed.
    with torch.serialization.safe_globals([
        HistoryBuffer, getattr, collections.OrderedDict, np.ndarray, np.dtype, *dtypes,
        numpy_core.multiarray._reconstruct, numpy_core.multiarray.scalar,
    ]):
        yield


@contextlib.contextmanager
def work_dir_or_temp(work_dir: Optional[str]) -> Iterator[str]:
    """The given work dir, or a temporary one removed afterwards."""
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
        yield work_dir
        return
    tmp = tempfile.mkdtemp(prefix="tcjepa-mm-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def runner_defaults(work_dir: str, iters: int, seed: int, log_interval: int, save_checkpoint: bool,
                    device: str = "cpu", checkpoint_every: Optional[int] = None, resume: bool = False,
                    find_unused: bool = False) -> dict:
    """Runner arguments every adapter uses: iteration-based logging, a checkpoint every
    ``checkpoint_every`` iterations (default: only the last) that ``resume`` continues from,
    and the launcher of the current torchrun world."""
    every = min(checkpoint_every or iters, iters)
    # mmengine's CheckpointHook deletes the oldest kept checkpoint before it writes the new one
    # and updates `last_checkpoint` only after: with one kept, a kill during a save leaves the
    # pointer naming a deleted file. Keeping two means the file the pointer names always exists.
    hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=max(log_interval, 1), log_metric_by_epoch=False),
        param_scheduler=dict(type="ParamSchedulerHook"),
        sampler_seed=dict(type="DistSamplerSeedHook"),
        checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=every, max_keep_ckpts=2,
                        save_last=True) if save_checkpoint else None,
    )
    return dict(
        work_dir=work_dir,
        default_hooks=hooks,
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=seed),
        resume=resume,
        **launcher_settings(device, find_unused),
    )


def launcher_settings(device: str, find_unused: bool = False) -> dict:
    """``launcher='pytorch'`` under torchrun, else 'none'.

    The process group is joined before the Runner exists (``evals.distributed.init_from_env``:
    gloo on CPU, NCCL on CUDA), and mmengine then uses it as it is. Its DDP wrapper gets
    ``device_ids`` only on CUDA (a CPU module takes none)."""
    cuda = torch.device(device).type == "cuda"
    env = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork"),
               dist_cfg=dict(backend="nccl" if cuda else "gloo"))
    if current_world().size == 1:
        return dict(env_cfg=env, launcher="none")
    wrapper = dict(type="MMDistributedDataParallel", broadcast_buffers=False, find_unused_parameters=find_unused)
    if not cuda:
        wrapper["device_ids"] = None
    # The Runner reads the wrapper from its cfg only (no keyword argument for it).
    return dict(env_cfg=env, launcher="pytorch", cfg=dict(model_wrapper_cfg=wrapper))


def optim_wrapper(optimizer: dict, device: str, **kwargs) -> dict:
    """mmengine's AMP optimizer wrapper in bf16 on CUDA (no loss scaling needed), the plain
    one on CPU (AMP there is CUDA-only)."""
    if torch.device(device).type == "cuda":
        return dict(type="AmpOptimWrapper", dtype="bfloat16", optimizer=optimizer, **kwargs)
    return dict(type="OptimWrapper", optimizer=optimizer, **kwargs)


def unique_experiment_name(task: str) -> str:
    # mmengine keys its logger and visualizer singletons by experiment name; the default
    # (a timestamp) collides when two runners start within a second in one process.
    return f"{task}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"

"""The supervised reference: the study's encoder trained on the evaluation's own labels.

A diagnostic outside the protocol's grid. It answers the protocol's "why is the regime not
reached?" for the data side: what the frozen-encoder evaluation can read out of this encoder
architecture, at this budget, when the encoder is trained for exactly what it is scored on.
The run is an I-JEPA run with the objective swapped: the same untrained encoder (step 0 of
every variant of the seed), the same scenes at every step (the training stream of the seed),
AdamW with the same schedules. The loss is the cross-entropy of a linear head on the
average-pooled last block (the 12 scene classes, what the probe reads) plus that of a linear
segmentation head on the last block's token grid (the 6 shapes, background ignored, what the
segmentation head reads). Evaluation is the grid's: the heads above are discarded and fresh
ones are fit on the frozen encoder.

If this encoder scores far above I-JEPA, the evaluation can read what the scenes ask and
the shortfall is the self-supervised features'. If it scores near I-JEPA, the scenes or the
architecture bound both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from evals.datasets.ade20k import IGNORE_INDEX
from evals.longhorizon.evaluate import seg_labels
from evals.segmentation.linear_head import LinearSegmentationHead, upsample_logits
from tcjepa.data.scenes import SCENE_CLASSES, SHAPES
from tcjepa.errors import TrainingError
from tcjepa.study.device_scenes import SceneBatch, training_batch
from tcjepa.study.trainer import check_resumable, train_prefetching
from tcjepa.study.variants import StudySettings, Variant, run_config, warmup_steps
from tcjepa.train import checkpoint as ckpt_io
from tcjepa.train.optim import Schedules, build_optimizer, build_param_groups
from tcjepa.train.trainer import build_model


class SupervisedHeads(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.label = nn.Linear(width, len(SCENE_CLASSES))
        self.segmentation = LinearSegmentationHead(width, len(SHAPES))

    def loss(self, tokens: torch.Tensor, scenes: SceneBatch, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
        """Scene-class plus shape-segmentation cross-entropy of last-block tokens (B, h*w, E)."""
        label_loss = F.cross_entropy(self.label(tokens.mean(1)), scenes.labels)
        maps = tokens.transpose(1, 2).reshape(len(tokens), -1, *grid)
        pixels = upsample_logits(self.segmentation([maps]), scenes.segmentation.shape[-2:], patch_size)
        seg_loss = F.cross_entropy(pixels, seg_labels(scenes.segmentation), ignore_index=IGNORE_INDEX)
        return label_loss + seg_loss


class SupervisedRun:
    """The grid's run interface (``step``, ``advance``, ``save``, ``resume``,
    ``evaluated_encoder``) for the supervised reference."""

    def __init__(self, variant: Variant, settings: StudySettings, seed: int, out_dir: str | Path,
                 text_bank=None, device: torch.device | str = "cpu", static_shapes: bool = False):
        del text_bank, static_shapes  # no captions, no masks
        self.variant, self.settings, self.seed = variant, settings, seed
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.cfg = run_config(variant, settings, seed, self.out_dir)
        # Built as the JEPA model of the seed is, so the encoder starts where every variant does.
        self.encoder = build_model(self.cfg, self.device).encoder
        self.heads = SupervisedHeads(self.encoder.embed_dim).to(self.device)
        self.optimizer = build_optimizer(build_param_groups(self.encoder, self.heads), self.cfg.optim, self.device)
        self.schedules = Schedules(self.cfg.optim, warmup_steps(settings), settings.budget)
        self.step = 0

    @property
    def evaluated_encoder(self) -> nn.Module:
        return self.encoder  # no EMA target: the trained encoder itself

    def training_batch(self, step: int) -> SceneBatch:
        s = self.settings
        return training_batch(s.data_seed, self.seed, step, s.batch_size, s.image_size, s.num_captions, self.device,
                              s.object_radii)

    def train_step(self, scenes: SceneBatch) -> dict[str, torch.Tensor]:
        self.schedules.apply(self.optimizer, self.step)
        tokens = self.encoder.forward_block_outputs(scenes.normalized_images(), 1)[-1]
        loss = self.heads.loss(tokens, scenes, self.encoder.patch_embed.grid_size, self.encoder.patch_size)
        if not torch.isfinite(loss):
            raise TrainingError(f"{self.out_dir}: non-finite loss at step {self.step}; last checkpoint "
                                f"{ckpt_io.find_resume_checkpoint(self.out_dir)}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return {"loss": loss.detach()}

    def advance(self, until: int) -> Optional[dict[str, torch.Tensor]]:
        self.encoder.train()
        self.heads.train()
        return train_prefetching(self, self.training_batch, until)

    def save(self) -> Path:
        state = {"encoder": self.encoder.state_dict(), "heads": self.heads.state_dict(),
                 "opt": self.optimizer.state_dict(), "step": self.step, "config": self.cfg.to_dict(),
                 "variant": self.variant.name, "seed": self.seed}
        return ckpt_io.save_run_checkpoint(self.out_dir, self.step, state, keep=1)

    def resume(self) -> int:
        path = ckpt_io.find_resume_checkpoint(self.out_dir)
        if path is None:
            return 0
        state = ckpt_io.load_checkpoint(path)
        check_resumable(state, path, self.variant.name, self.seed, self.settings.budget)
        self.encoder.load_state_dict(state["encoder"])
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["opt"])
        self.step = int(state["step"])
        return self.step

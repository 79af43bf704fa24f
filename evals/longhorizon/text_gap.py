"""What the captions give the predictor: the prediction-loss gap between shuffled and true captions.

The paper's premise is masked content that the visible context leaves ambiguous and the
captions resolve. Two measurements on fixed held-out scenes with fixed masks:
- per target block, the prediction loss (the run's own loss, smooth L1 against the
  layer-normed target features) with the scene's true captions and with the captions of
  another scene of the batch; the gap is shuffled minus true (> 0: the captions help);
- per target block, how much of its content the captions state: the share of its pixels
  that belong to an object, each weighted by the share of that object's five attributes
  (size, texture, colour, shape, position) that some caption of the scene states. Background
  pixels count 0: no caption describes the background.
The gap is reported overall and by bins of the stated share, so one sees whether it sits
where the captions speak.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tcjepa.study.device_scenes import MAX_OBJECTS, SceneBatch
from tcjepa.study.scene_family import ATTRIBUTES, stated_attributes

STATED_BINS = ((0.0, 0.05), (0.05, 0.5), (0.5, 1.01))


def object_statement_share(scenes: SceneBatch) -> torch.Tensor:
    """(B, MAX_OBJECTS) share of each object's attributes stated by some caption of its scene."""
    states = stated_attributes().to(scenes.caption_ids.device)  # (templates, attributes)
    B, N = scenes.caption_ids.shape
    per_caption = states[scenes.caption_templates]  # (B, N, A)
    stated = torch.zeros(B, MAX_OBJECTS, len(ATTRIBUTES), dtype=torch.bool, device=per_caption.device)
    for j in range(N):
        slot = scenes.caption_objects[:, j]
        stated[torch.arange(B), slot] |= per_caption[:, j]
    return stated.float().mean(-1)


def block_statement_share(scenes: SceneBatch, target_idx: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, M) mean stated share over the pixels of each target block."""
    share = object_statement_share(scenes)
    lut = torch.cat([torch.zeros(len(scenes), 1, device=share.device), share], 1)  # instance 0 = background
    B, S, _ = scenes.instances.shape
    pixels = torch.gather(lut, 1, scenes.instances.view(B, -1).long()).view(B, 1, S, S)
    per_patch = F.avg_pool2d(pixels, patch_size).view(B, -1)  # (B, h*w), row-major like the masks
    M, Kt = target_idx.shape[1:]
    return torch.gather(per_patch, 1, target_idx.view(B, -1)).view(B, M, Kt).mean(-1)


@torch.no_grad()
def block_losses(run, scenes: SceneBatch, mask_key: int, shuffled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block prediction loss (B, M) of a text run, and the batch's target_idx."""
    batch = run.batch(scenes, mask_key, shuffled=shuffled)
    model = run.model
    model.eval()
    target = model.targets(batch.images, batch.target_idx)
    out = model.predict(batch)
    model.train()
    loss = F.smooth_l1_loss(out.pred.float(), target.float(), reduction="none").mean((-1, -2))
    return loss, batch.target_idx


def text_gap(run, scenes: SceneBatch, mask_key: int = 10**9, batch_size: int = 64) -> dict[str, float]:
    """Loss with true and shuffled captions per target block, the gap, and the stated shares."""
    true_l, shuf_l, shares = [], [], []
    batch_size = min(batch_size, len(scenes))
    for s in range(0, len(scenes) - batch_size + 1, batch_size):
        part = scenes.select(slice(s, s + batch_size))
        lt, idx = block_losses(run, part, mask_key + s, shuffled=False)
        ls, idx_s = block_losses(run, part, mask_key + s, shuffled=True)
        assert torch.equal(idx, idx_s)  # same masks: the captions are the only difference
        true_l.append(lt.flatten())
        shuf_l.append(ls.flatten())
        shares.append(block_statement_share(part, idx, run.model.encoder.patch_size).flatten())
    lt, ls, share = torch.cat(true_l), torch.cat(shuf_l), torch.cat(shares)
    gap = ls - lt
    row = {"loss_true": lt.mean().item(), "loss_shuffled": ls.mean().item(), "text_gap": gap.mean().item(),
           "text_gap_relative": (gap.mean() / ls.mean()).item(), "stated_share": share.mean().item(),
           "blocks": int(len(gap))}
    for lo, hi in STATED_BINS:
        sel = (share >= lo) & (share < hi)
        key = f"stated_{lo:g}-{min(hi, 1):g}"
        row[f"{key}_blocks"] = int(sel.sum())
        row[f"{key}_gap"] = gap[sel].mean().item() if sel.any() else float("nan")
    return row



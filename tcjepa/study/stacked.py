"""Several study runs of one code path trained as one step: their weights stacked, the step vmapped.

A study step on a GPU is launch-bound: a vit_micro step is ~1000 small kernels and well
under a millisecond of arithmetic (results/studies/long-horizon/README.md, eighth section).
``StackedRuns`` trains G runs whose models have the same architecture and code path (variant
config equal but for the seed) with one launch per op for all of them: every parameter, buffer,
optimizer moment and batch tensor gets a leading run dimension, the loss and its gradients are
``torch.func.vmap(grad(...))`` over it, and AdamW, the EMA and the schedules, which are
elementwise or shared, run once on the stacked tensors.

Each run keeps its own seed, scenes, masks (``static_shapes``: padded to one shape, the same
masks), captions (true or shuffled) and Adam-state boost, so a stacked run is the run trained
alone, to float rounding (``tests/study/test_stacked_runs.py``). ``sync_runs`` writes the
stacked state back into the ``StudyRun`` objects, whose checkpoints, evaluation and resume are
then those of runs trained one by one.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import fields
from typing import Optional, Sequence

import torch
from timm.layers import Attention
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from tcjepa.data.batch import JEPABatch
from tcjepa.errors import TrainingError
from tcjepa.study.device_scenes import training_batches
from tcjepa.study.trainer import StudyRun, train_prefetching
from tcjepa.train import checkpoint as ckpt_io
from tcjepa.train.optim import build_optimizer

_PER_RUN_KEYS = ("train.seed", "train.out_dir")
_MODEL_FIELDS = ("images", "context_idx", "target_idx", "context_valid", "target_valid", "text", "word_mask")


@contextmanager
def _explicit_attention(model: nn.Module):
    """timm's attention as explicit matmuls while inside: vmap has no batching rule for SDPA's
    CPU and CUDA kernels and would loop over the runs (one launch per run) for each layer."""
    modules = [m for m in model.modules() if isinstance(m, Attention) and m.fused_attn]
    for m in modules:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in modules:
            m.fused_attn = True


def code_path(run: StudyRun) -> dict:
    """What must be equal for runs to share a step: the run's config but for its seed and folder."""
    cfg = run.cfg.to_dict()
    for key in _PER_RUN_KEYS:
        section, name = key.split(".")
        cfg[section] = {k: v for k, v in cfg[section].items() if k != name}
    return cfg


def _check_group(runs: Sequence[StudyRun]) -> None:
    if not runs:
        raise TrainingError("StackedRuns needs at least one run")
    first = runs[0]
    for run in runs:
        if not run.static_shapes:
            raise TrainingError(f"{run.out_dir}: stacked runs need static_shapes=True (one batch shape at every step)")
        if code_path(run) != code_path(first) or run.settings != first.settings:
            raise TrainingError(f"{run.out_dir} ({run.variant.name}) and {first.out_dir} ({first.variant.name}) "
                                "differ in more than seed and folder; only runs of one code path can be stacked")
        if run.step != first.step:
            raise TrainingError(f"{run.out_dir} is at step {run.step}, {first.out_dir} at {first.step}; "
                                "stack runs at the same step")
        if run.device != first.device:
            raise TrainingError(f"{run.out_dir} is on {run.device}, {first.out_dir} on {first.device}")
    impl = first.cfg.model.text_attention_impl
    if first.variant.text and impl != "eager":
        raise TrainingError(f"stacked runs use the eager text cross-attention (vmap cannot batch the fused "
                            f"kernel); model.text_attention_impl is {impl!r}")


class StackedRuns:
    """``advance(until)`` trains every run of the group to step ``until``; ``sync_runs()`` writes
    the weights, optimizer state and step back into the runs (before ``run.save()`` or an
    evaluation)."""

    def __init__(self, runs: Sequence[StudyRun]):
        _check_group(runs)
        self.runs = list(runs)
        lead = self.runs[0]
        self.template = lead.model  # functional_call swaps the stacked tensors into it
        self.schedules = lead.trainer.schedules
        self.clip_grad = lead.cfg.optim.clip_grad
        self.step = lead.step
        self.device = lead.device
        self.names = {id(p): n for n, p in lead.model.named_parameters()}

        # Trainable tensors, grouped exactly as every run's optimizer groups them.
        self.trainable: dict[str, torch.Tensor] = {}
        groups = []
        for j, group in enumerate(lead.optimizer.param_groups):
            members = []
            for i, p in enumerate(group["params"]):
                stacked = self._stack([r.optimizer.param_groups[j]["params"][i] for r in self.runs]).requires_grad_()
                self.trainable[self.names[id(p)]] = stacked
                members.append(stacked)
            groups.append({"params": members, "name": group.get("name"), "apply_wd": group.get("apply_wd", True),
                           "weight_decay": group["weight_decay"]})
        self.optimizer = build_optimizer(groups, lead.cfg.optim, self.device)
        self._load_optimizer_state()
        # Everything else the forward reads: frozen parameters (target encoder, sin-cos
        # positions) and buffers.
        self.frozen = {name: self._stack([r.model.get_parameter(name) for r in self.runs])
                       for name, _ in lead.model.named_parameters() if name not in self.trainable}
        self.frozen.update({name: self._stack([r.model.get_buffer(name) for r in self.runs])
                            for name, _ in lead.model.named_buffers()})
        self.online = [self.trainable[f"encoder.{n}"] for n, p in lead.model.encoder.named_parameters()
                       if p.requires_grad]
        self.target = [self.frozen[f"target_encoder.{n}"] for n, p in lead.model.encoder.named_parameters()
                       if p.requires_grad]
        self._step_fn = vmap(grad_and_value(self._loss, has_aux=True))

    @staticmethod
    def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.detach() for t in tensors])

    def _pairs(self):
        """(stacked tensor, [each run's tensor]) for every trainable parameter."""
        for name, stacked in self.trainable.items():
            yield stacked, [r.model.get_parameter(name) for r in self.runs]

    def _load_optimizer_state(self) -> None:
        for stacked, members in self._pairs():
            states = [r.optimizer.state.get(p) for r, p in zip(self.runs, members)]
            if not any(states):
                continue
            if not all(states):
                raise TrainingError("some runs of the group have optimizer state and some have none; "
                                    "stack runs at the same step")
            self.optimizer.state[stacked] = {
                "step": states[0]["step"].clone(),
                **{k: torch.stack([s[k] for s in states]) for k in states[0] if k != "step"},
            }

    # ------------------------------------------------------------------ the step

    def _loss(self, trainable: dict, frozen: dict, batch: dict):
        with _explicit_attention(self.template):
            out = functional_call(self.template, {**trainable, **frozen}, (JEPABatch(**batch),))
        return out["loss"], {k: v.detach() for k, v in out.items() if v.numel() == 1}

    def stacked_batch(self, step: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s batch of every run, stacked: (G, B, ...) per model input; the scenes
        of all runs painted in one call, their masks checked with one host sync per round."""
        s = self.runs[0].settings
        scenes = training_batches(s.data_seed, [r.seed for r in self.runs], step, s.batch_size, s.image_size,
                                  s.num_captions, self.device, s.object_radii)
        masks = self.runs[0].masks.sample_runs(s.batch_size, [r.mask_generator(step) for r in self.runs],
                                               static_shapes=True)
        batches = [run.batch(part, step, masks=m) for run, part, m in zip(self.runs, scenes, masks)]
        names = [f.name for f in fields(JEPABatch) if f.name in _MODEL_FIELDS
                 and getattr(batches[0], f.name) is not None]
        return {n: torch.stack([getattr(b, n) for b in batches]) for n in names}

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step of every run; returns the loss terms, each (G,)."""
        self.template.train()
        self.schedules.apply(self.optimizer, self.step)
        grads, (_, metrics) = self._step_fn(self.trainable, self.frozen, batch)
        bad = ~torch.isfinite(metrics["loss"])
        if bool(bad.any()):  # the step's one host sync, as the single run's finite check
            names = [str(self.runs[g].out_dir) for g in torch.nonzero(bad).flatten().tolist()]
            raise TrainingError(f"non-finite loss at step {self.step} in {names}; last checkpoints: "
                                f"{[str(ckpt_io.find_resume_checkpoint(r.out_dir)) for r in self.runs]}")
        if self.clip_grad > 0:
            self._clip_per_run(grads)
        for name, stacked in self.trainable.items():
            stacked.grad = grads[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = self.schedules.ema(self.step)
        with torch.no_grad():
            torch._foreach_mul_(self.target, momentum)
            torch._foreach_add_(self.target, [t.detach() for t in self.online], alpha=1.0 - momentum)
        self.step += 1
        self._boost_second_moments()
        return metrics

    def _clip_per_run(self, grads: dict[str, torch.Tensor]) -> None:
        """Each run's gradients clipped to its own total norm, as ``clip_grad_norm_`` per run."""
        norms = torch.stack([g.flatten(1).float().pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
        scale = (self.clip_grad / (norms + 1e-6)).clamp(max=1.0)
        for g in grads.values():
            g.mul_(scale.view(-1, *[1] * (g.ndim - 1)).to(g.dtype))

    @torch.no_grad()
    def _boost_second_moments(self) -> None:
        """The optimizer-state check (``Variant.boost_second_moment``), on its runs' slices only."""
        for g, run in enumerate(self.runs):
            boost = run.variant.boost_second_moment
            if boost is None or self.step != boost[0]:
                continue
            for name, stacked in self.trainable.items():
                state = self.optimizer.state.get(stacked)
                if name.startswith("encoder.") and state and "exp_avg_sq" in state:
                    state["exp_avg_sq"][g].mul_(boost[1])

    def advance(self, until: int) -> Optional[dict[str, torch.Tensor]]:
        """Train every run to step ``until``, each next step's batches made in a second thread."""
        return train_prefetching(self, self.stacked_batch, until)

    # ------------------------------------------------------------------ back to the runs

    @torch.no_grad()
    def sync_runs(self) -> None:
        """Each run's model, optimizer state and step become its slice of the stacked state."""
        params = set(self.names.values())
        for g, run in enumerate(self.runs):
            for name, stacked in {**self.trainable, **self.frozen}.items():
                owner = run.model.get_parameter(name) if name in params else run.model.get_buffer(name)
                owner.copy_(stacked[g])
            for stacked, members in self._pairs():
                state = self.optimizer.state.get(stacked)
                if state:
                    run.optimizer.state[members[g]] = {
                        k: (v.clone() if k == "step" else v[g].clone()) for k, v in state.items()}
            run.trainer.step = self.step

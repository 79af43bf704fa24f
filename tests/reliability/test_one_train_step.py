"""The training loop and the step benchmark take the same step: ``Trainer.train_step``.

The benchmark used to keep its own copy of the step, which drifted from the loop's (no
gradient clipping, no accumulation). These tests fail if either stops calling the one step,
or if the benchmark's harness gives other losses or weights than the loop on the same batches.
"""
from __future__ import annotations

import torch
from reliability_helpers import tiny_overrides, train_in_process

from benchmarks import train_step as bench
from tcjepa.config import load_config
from tcjepa.train.trainer import Trainer


def spy_on_train_step(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = Trainer.train_step

    def spy(self, batches, check_finite=True):
        result = real(self, batches, check_finite)
        calls.append({"trainer": self, "batches": list(batches), "loss": result.metrics["loss"].item(),
                      "weights": {k: v.clone() for k, v in self.model.state_dict().items()}})
        return result

    monkeypatch.setattr(Trainer, "train_step", spy)
    return calls


def test_benchmark_step_is_the_loop_step(scenes, tmp_path, monkeypatch):
    calls = spy_on_train_step(monkeypatch)
    # drop_path off: the loop draws from the torch RNG while it builds its loader, the harness not.
    overrides = tiny_overrides(scenes, tmp_path, optim__max_steps=3, model__drop_path=0.0, optim__clip_grad=1.0)
    train_in_process(overrides)
    loop_calls = list(calls)
    assert len(loop_calls) == 3 and all(len(c["batches"]) == 1 for c in loop_calls)

    cfg = load_config(None, overrides)
    harness = bench.build_harness(cfg, torch.device("cpu"), compile_model=False, seed=cfg.train.seed, loop_syncs=True)
    harness.trainer.schedules = loop_calls[0]["trainer"].schedules  # the run's schedule, not the benchmark's long one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as train_in_process runs the loop: the same reduction order
    try:
        replay(harness, loop_calls, calls)
    finally:
        torch.set_num_threads(threads)
    for k, v in loop_calls[-1]["weights"].items():
        assert torch.equal(harness.model.state_dict()[k], v), f"{k} differs between benchmark and loop"


def replay(harness, loop_calls: list[dict], calls: list[dict]) -> None:
    for i, call in enumerate(loop_calls):
        loss = harness.step(call["batches"][0])
        assert len(calls) == len(loop_calls) + i + 1  # the harness went through Trainer.train_step
        assert loss.item() == call["loss"], f"step {i + 1}: benchmark loss differs from the loop's"

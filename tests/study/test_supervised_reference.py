"""The supervised reference (evals/longhorizon/supervised.py): where it starts, that it learns
the evaluation's labels, that it resumes exactly, and that a grid runs it beside the JEPA runs."""
from __future__ import annotations

import math

import pytest
import torch

from evals.longhorizon.evaluate import SegmentationSettings
from evals.longhorizon.grid import Grid, read_rows, run_dir
from evals.longhorizon.report import write_report
from evals.longhorizon.supervised import SupervisedRun
from tcjepa.errors import TrainingError
from tcjepa.study.trainer import StudyRun
from tcjepa.study.variants import VARIANTS, StudySettings
from tcjepa.train.checkpoint import CheckpointError

SUPERVISED = VARIANTS["supervised"]
SETTINGS = StudySettings(budget=4, eval_steps=(0, 2, 4), batch_size=8)


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_it_starts_from_the_untrained_encoder_of_its_seed(tmp_path):
    ijepa = StudyRun(VARIANTS["ijepa"], SETTINGS, 1, tmp_path / "i", None)
    assert _equal_states(SupervisedRun(SUPERVISED, SETTINGS, 1, tmp_path / "s").encoder, ijepa.model.encoder)
    assert not _equal_states(SupervisedRun(SUPERVISED, SETTINGS, 0, tmp_path / "s0").encoder, ijepa.model.encoder)
    with pytest.raises(TrainingError, match="not a JEPA run"):
        StudyRun(SUPERVISED, SETTINGS, 0, tmp_path / "x", None)


def test_its_loss_is_the_evaluations_labels(tmp_path):
    """Trained on one batch over and over, the reference fits its labels; shuffled labels would
    give another loss, so the heads read the scenes' own classes and shapes."""
    settings = StudySettings(budget=30, eval_steps=(0, 30), batch_size=16, lr=(1e-3, 1e-3))
    run = SupervisedRun(SUPERVISED, settings, 0, tmp_path / "s")
    scenes = run.training_batch(0)
    first = run.train_step(scenes)["loss"].item()
    assert first == pytest.approx(math.log(12) + math.log(6), rel=0.1)  # untrained heads: chance on both
    for _ in range(29):
        last = run.train_step(scenes)["loss"].item()
    assert last < 0.5 * first
    with torch.no_grad():
        tokens = run.encoder.forward_block_outputs(scenes.normalized_images(), 1)[-1]
        wrong = scenes.select(torch.arange(len(scenes)).roll(1))
        own = run.heads.loss(tokens, scenes, run.encoder.patch_embed.grid_size, run.encoder.patch_size).item()
        others = run.heads.loss(tokens, wrong, run.encoder.patch_embed.grid_size, run.encoder.patch_size).item()
    assert others > 2 * own


def test_it_resumes_exactly(tmp_path):
    whole = SupervisedRun(SUPERVISED, SETTINGS, 0, tmp_path / "whole")
    whole.advance(3)
    first = SupervisedRun(SUPERVISED, SETTINGS, 0, tmp_path / "split")
    first.advance(1)
    first.save()
    second = SupervisedRun(SUPERVISED, SETTINGS, 0, tmp_path / "split")
    assert second.resume() == 1
    second.advance(3)
    assert _equal_states(whole.encoder, second.encoder) and _equal_states(whole.heads, second.heads)
    with pytest.raises(CheckpointError, match="supervised seed 0"):
        StudyRun(VARIANTS["ijepa"], SETTINGS, 0, tmp_path / "split", None).resume()


def test_a_stacked_grid_runs_it_alone_beside_the_jepa_runs(tmp_path):
    options = {"probe_epochs": 2, "seg_settings": SegmentationSettings(iters=5, batch_size=8, lr=1e-2, warmup_iters=1)}
    grid = Grid(tmp_path, SETTINGS, [0, 1], ["ijepa", "supervised"], heldout=32, ckpt_every=1, eval_options=options,
                log=lambda m: None, stack=True)
    assert grid.units == [[("ijepa", 0), ("ijepa", 1)], [("supervised", 0)], [("supervised", 1)]]
    assert grid.run_all(until=2) == 8
    rows = read_rows(run_dir(tmp_path, "supervised", 1) / "eval.csv")
    assert [int(r["step"]) for r in rows] == [0, 2]
    assert rows[0]["probe_top1"] == ""  # the untrained encoder is the I-JEPA run's row
    assert rows[1]["probe_top1"] != "" and rows[1]["seg_miou"] != "" and float(rows[1]["train_loss"]) > 0
    assert {r["variant"] for r in write_report(tmp_path, tmp_path / "report")} == {"untrained", "ijepa", "supervised"}
    # A diagnostic reported beside another grid's runs: rows of both folders, of the variants asked for.
    other = Grid(tmp_path / "other", SETTINGS, [2], ["supervised"], heldout=32, ckpt_every=1, eval_options=options,
                 log=lambda m: None)
    assert other.run_all(until=2) == 2
    rows = write_report([tmp_path, tmp_path / "other"], tmp_path / "both", variants=["ijepa", "supervised"])
    assert {(r["variant"], r["seed"]) for r in rows if r["step"] == "2"} == {
        ("ijepa", "0"), ("ijepa", "1"), ("supervised", "0"), ("supervised", "1"), ("supervised", "2")}
    only = write_report(tmp_path, tmp_path / "report-ijepa", variants=["ijepa"])
    assert {r["variant"] for r in only} == {"untrained", "ijepa"}

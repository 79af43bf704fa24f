"""Static-shape batches and stacked runs train each run as it trains alone (to float rounding).

The measure: for every tensor of a run's state, the distance between the two ways of training
it, relative to how far training moved that tensor from its initial value. A run trained on
other captions or without its Adam-state boost is far off by this measure (the controls).
"""
from __future__ import annotations

import copy

import pytest
import torch

from tcjepa.errors import TrainingError
from tcjepa.study.device_masks import DeviceMaskSampler
from tcjepa.study.device_scenes import training_batch, training_batches
from tcjepa.study.stacked import StackedRuns
from tcjepa.study.trainer import StudyRun
from tcjepa.study.variants import VARIANTS, StudySettings, Variant, run_config

from study_helpers import random_text_bank

# lr 1e-3 from the first step: every step moves the weights enough for a wrong one to show.
SETTINGS = StudySettings(budget=4, eval_steps=(0, 2, 4), batch_size=8, lr=(1e-3, 1e-3))
BOOST_AT_1 = Variant("boost_at_1", text=False, boost_second_moment=(1, 2500.0))
# With centred keys the word-key bias cancels in the attention's softmax and in the centring, so
# its gradient is rounding noise, which Adam turns into lr-sized steps: two exact ways of training
# move it apart by as much as they move it. It changes no output (checked below).
NO_EFFECT = ("xattn.k.bias",)
RUN_AGREES = 1e-3  # of the distance travelled


def _variant(name: str) -> Variant:
    return BOOST_AT_1 if name == BOOST_AT_1.name else VARIANTS[name]


def _runs(specs, folder, bank, static_shapes=True) -> list[StudyRun]:
    return [StudyRun(_variant(v), SETTINGS, s, folder / f"{v}-s{s}", bank if _variant(v).text else None,
                     static_shapes=static_shapes) for v, s in specs]


def _disagreement(a: StudyRun, b: StudyRun, initial: dict, skip=()) -> float:
    """Largest per-tensor |a - b| / |a - initial| over the runs' weights."""
    worst = 0.0
    for name, x in a.model.state_dict().items():
        y = b.model.state_dict()[name]
        moved = (x.float() - initial[name].float()).norm()
        if any(name.endswith(s) for s in skip):
            continue
        if moved == 0:
            assert torch.equal(x, y), name
            continue
        worst = max(worst, ((x.float() - y.float()).norm() / moved).item())
    return worst


def test_static_shapes_pad_the_masks_of_the_unpadded_batch():
    cfg = run_config(VARIANTS["ijepa"], SETTINGS, 0, "unused").mask
    sampler = DeviceMaskSampler(cfg, (8, 8))
    rows, cols = sampler.largest_block(cfg.target_scale, cfg.target_aspect)
    shapes = set()
    for seed in range(40):
        plain = sampler.sample(8, sampler.generator(seed))
        static = sampler.sample(8, sampler.generator(seed), static_shapes=True)
        shapes.add((static["context_idx"].shape, static["target_idx"].shape))
        kt, kc = plain["target_idx"].shape[2], plain["context_idx"].shape[1]
        assert torch.equal(static["target_idx"][..., :kt], plain["target_idx"])
        assert static["target_valid"][..., :kt].all() and not static["target_valid"][..., kt:].any()
        assert torch.equal(static["context_valid"][:, :kc], plain["context_valid"])
        assert not static["context_valid"][:, kc:].any()
        valid = plain["context_valid"]
        assert torch.equal(static["context_idx"][:, :kc][valid], plain["context_idx"][valid])
    assert shapes == {(torch.Size([8, 64]), torch.Size([8, 4, rows * cols]))}


def test_static_shapes_need_padded_contexts():
    cfg = run_config(VARIANTS["ijepa"], SETTINGS, 0, "unused", ).mask
    cfg.context_truncation = "random"
    sampler = DeviceMaskSampler(cfg, (8, 8))
    with pytest.raises(ValueError, match="context_truncation must be 'pad'"):
        sampler.sample(4, sampler.generator(0), static_shapes=True)


@pytest.mark.parametrize("variant", ["ijepa", "tc_paper"])
def test_a_run_on_static_shape_batches_trains_as_on_unpadded_ones(tmp_path, variant):
    bank = random_text_bank()
    padded, plain = _runs([(variant, 0)], tmp_path / "a", bank) + _runs([(variant, 0)], tmp_path / "b", bank, False)
    initial = copy.deepcopy(plain.model.state_dict())
    for step in range(3):
        a, b = padded.train_step(padded.training_batch(step)), plain.train_step(plain.training_batch(step))
        assert torch.allclose(a["loss"], b["loss"], rtol=1e-5)
    assert _disagreement(padded, plain, initial) < RUN_AGREES


def test_training_batches_paint_each_runs_own_scenes():
    together = training_batches(0, [3, 5], 7, 6)
    for seed, scenes in zip([3, 5], together):
        alone = training_batch(0, seed, 7, 6)
        for field in alone.__dataclass_fields__:
            assert torch.equal(getattr(scenes, field), getattr(alone, field)), field


GROUPS = {
    "ijepa": [("ijepa", 0), ("ijepa", 1), ("boost_at_1", 2)],
    "raw keys": [("tc_paper", 0), ("tc_shuffled", 1)],
    "centred keys": [("tc_centered", 0), ("tc_centered_shuffled", 1)],
}


@pytest.mark.parametrize("group", GROUPS)
def test_a_stacked_group_trains_each_run_as_alone(tmp_path, group):
    bank = random_text_bank()
    specs = GROUPS[group]
    alone = _runs(specs, tmp_path / "alone", bank)
    initial = [copy.deepcopy(r.model.state_dict()) for r in alone]
    losses = [[r.train_step(r.training_batch(step))["loss"] for step in range(3)] for r in alone]
    stacked = StackedRuns(_runs(specs, tmp_path / "stacked", bank))
    stacked_losses = [stacked.train_step(stacked.stacked_batch(step))["loss"] for step in range(3)]
    stacked.sync_runs()
    skip = NO_EFFECT if group == "centred keys" else ()
    for g, (run, ref, init) in enumerate(zip(stacked.runs, alone, initial)):
        assert run.step == ref.step == 3
        assert torch.allclose(torch.stack([s[g] for s in stacked_losses]), torch.stack(losses[g]), rtol=1e-5)
        assert _disagreement(ref, run, init, skip) < RUN_AGREES, (run.variant.name, run.seed)
        for p, q in zip(ref.model.parameters(), run.model.parameters()):
            if p in ref.optimizer.state:
                a, b = ref.optimizer.state[p], run.optimizer.state[q]
                assert float(a["step"]) == float(b["step"]) == 3
                assert torch.allclose(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-3, atol=1e-12)


def test_the_controls_are_far_off_by_the_same_measure(tmp_path):
    """The measure catches a run trained on the wrong captions or without its boost."""
    bank = random_text_bank()
    true_captions, boosted = _runs([("tc_paper", 0), ("boost_at_1", 0)], tmp_path / "ref", bank)
    initial = [copy.deepcopy(r.model.state_dict()) for r in (true_captions, boosted)]
    for r in (true_captions, boosted):
        r.advance(3)
    stacked = StackedRuns(_runs([("tc_shuffled", 0)], tmp_path / "text", bank))
    stacked.advance(3)
    stacked.sync_runs()
    assert _disagreement(true_captions, stacked.runs[0], initial[0]) > 100 * RUN_AGREES
    plain = StackedRuns(_runs([("ijepa", 0)], tmp_path / "plain", bank))
    plain.advance(3)
    plain.sync_runs()
    assert _disagreement(boosted, plain.runs[0], initial[1]) > 100 * RUN_AGREES


def test_the_centred_keys_bias_changes_no_output(tmp_path):
    bank = random_text_bank()
    run = _runs([("tc_centered", 0)], tmp_path / "r", bank)[0]
    batch = run.training_batch(0)
    run.model.eval()
    with torch.no_grad():
        before = run.model(batch)
        for name, p in run.model.named_parameters():
            if name.endswith(NO_EFFECT):
                p.add_(torch.randn_like(p))
        after = run.model(batch)
    assert torch.allclose(before["loss"], after["loss"], rtol=1e-5)


def test_a_stacked_groups_checkpoints_resume_alone(tmp_path):
    bank = random_text_bank()
    specs = GROUPS["raw keys"]
    reference = _runs(specs, tmp_path / "ref", bank)
    initial = [copy.deepcopy(r.model.state_dict()) for r in reference]
    for r in reference:
        r.advance(3)
    stacked = StackedRuns(_runs(specs, tmp_path / "split", bank))
    stacked.advance(2)
    stacked.sync_runs()
    for run in stacked.runs:
        run.save()
    resumed = _runs(specs, tmp_path / "split", bank)
    for run, ref, init in zip(resumed, reference, initial):
        assert run.resume() == 2
        run.advance(3)
        assert _disagreement(ref, run, init) < RUN_AGREES
    # ... and so does a group stacked again from those checkpoints.
    again = _runs(specs, tmp_path / "split", bank)
    for run in again:
        run.resume()
    restacked = StackedRuns(again)
    restacked.advance(3)
    restacked.sync_runs()
    for run, ref, init in zip(again, reference, initial):
        assert _disagreement(ref, run, init) < RUN_AGREES


def test_only_runs_of_one_code_path_at_one_step_stack(tmp_path):
    bank = random_text_bank()
    with pytest.raises(TrainingError, match="one code path"):
        StackedRuns(_runs([("ijepa", 0), ("tc_paper", 0)], tmp_path / "a", bank))
    with pytest.raises(TrainingError, match="one code path"):
        StackedRuns(_runs([("tc_paper", 0), ("tc_centered", 0)], tmp_path / "b", bank))
    with pytest.raises(TrainingError, match="static_shapes"):
        StackedRuns(_runs([("ijepa", 0)], tmp_path / "c", bank, static_shapes=False))
    ahead, behind = _runs([("ijepa", 0), ("ijepa", 1)], tmp_path / "d", bank)
    ahead.advance(1)
    with pytest.raises(TrainingError, match="same step"):
        StackedRuns([ahead, behind])


def test_a_stacked_grid_writes_the_rows_of_runs_trained_alone(tmp_path, monkeypatch):
    import evals.longhorizon.grid as grid_module
    from evals.longhorizon.evaluate import SegmentationSettings
    from evals.longhorizon.grid import Grid, read_rows, run_dir

    monkeypatch.setattr(grid_module.Grid, "bank", lambda self: random_text_bank())
    options = {"probe_epochs": 2, "seg_settings": SegmentationSettings(iters=5, batch_size=8, lr=1e-2, warmup_iters=1)}
    variants, seeds = ["ijepa", "tc_paper", "tc_shuffled"], [0, 1]

    def grid(work, stack, shard=(0, 1)):
        return Grid(work, SETTINGS, seeds, variants, heldout=32, gap_scenes=16, ckpt_every=1, eval_options=options,
                    log=lambda m: None, stack=stack, shard=shard)

    assert [u for u in grid(tmp_path / "s", True).units] == [[("ijepa", 0), ("ijepa", 1)],
                                                             [("tc_paper", 0), ("tc_paper", 1),
                                                              ("tc_shuffled", 0), ("tc_shuffled", 1)]]
    assert grid(tmp_path / "s", True, shard=(1, 2)).mine == [("tc_paper", 0), ("tc_paper", 1),
                                                             ("tc_shuffled", 0), ("tc_shuffled", 1)]
    assert grid(tmp_path / "s", True).run_all(until=2) == 12
    assert grid(tmp_path / "a", False).run_all(until=2) == 12
    # A run whose last checkpoint is lost restarts from step 0 and catches up alone before the
    # group trains on together.
    lost = run_dir(tmp_path / "s", "tc_shuffled", 1)
    assert list(lost.glob("checkpoint-*.pt"))
    for path in [*lost.glob("checkpoint-*.pt"), lost / "latest"]:
        path.unlink()
    assert grid(tmp_path / "s", True).run_all() == 6
    assert grid(tmp_path / "a", False).run_all() == 6
    for v in variants:
        for s in seeds:
            stacked = read_rows(run_dir(tmp_path / "s", v, s) / "eval.csv")
            alone = read_rows(run_dir(tmp_path / "a", v, s) / "eval.csv")
            assert [int(r["step"]) for r in stacked] == [int(r["step"]) for r in alone] == [0, 2, 4]
            for a, b in zip(stacked[1:], alone[1:]):
                assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4), (v, s, a["step"])
                assert a["seg_miou"] != "" and a["probe_top1"] != ""
            if v == "ijepa":  # the untrained encoders, evaluated as a group and one by one
                assert float(stacked[0]["seg_miou"]) == pytest.approx(float(alone[0]["seg_miou"]), abs=1e-6)
                assert stacked[0]["probe_top1"] == alone[0]["probe_top1"]


def test_gradient_clipping_is_per_run(tmp_path):
    """With optim.clip_grad on (the study runs without it), each run is clipped to its own norm."""
    settings = StudySettings(budget=4, eval_steps=(0, 4), batch_size=8, lr=(1e-3, 1e-3),
                             extra_overrides=("optim.clip_grad=0.05",))

    def runs(folder):
        return [StudyRun(VARIANTS["ijepa"], settings, s, folder / f"s{s}", None, static_shapes=True) for s in (0, 1)]

    alone = runs(tmp_path / "alone")
    assert alone[0].cfg.optim.clip_grad == 0.05
    initial = [copy.deepcopy(r.model.state_dict()) for r in alone]
    for r in alone:
        r.advance(3)
    stacked = StackedRuns(runs(tmp_path / "stacked"))
    stacked.advance(3)
    stacked.sync_runs()
    for ref, run, init in zip(alone, stacked.runs, initial):
        assert _disagreement(ref, run, init) < RUN_AGREES
    unclipped = StackedRuns([StudyRun(VARIANTS["ijepa"], SETTINGS, 0, tmp_path / "u", None, static_shapes=True)])
    unclipped.advance(3)
    unclipped.sync_runs()
    assert _disagreement(alone[0], unclipped.runs[0], initial[0]) > 100 * RUN_AGREES

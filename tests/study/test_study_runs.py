"""Study runs resume exactly, the grid skips finished rows, the caption-gap measure is sound."""
from __future__ import annotations


import pytest
import torch

from evals.longhorizon.evaluate import SegmentationSettings
from evals.longhorizon.grid import Grid, read_rows
from evals.longhorizon.grid import append_row
from evals.longhorizon.report import compare, gap_check, write_report
from evals.longhorizon.text_gap import block_statement_share, object_statement_share
from tcjepa.study.device_scenes import MAX_OBJECTS, render_block
from tcjepa.study.trainer import StudyRun, shuffle_captions
from tcjepa.study.variants import VARIANTS, StudySettings, run_config
from tcjepa.train.checkpoint import CheckpointError

from study_helpers import random_text_bank

SETTINGS = StudySettings(budget=4, eval_steps=(0, 2, 4), batch_size=8)


def test_a_resumed_run_continues_exactly(tmp_path):
    bank = random_text_bank()
    whole = StudyRun(VARIANTS["tc_paper"], SETTINGS, 0, tmp_path / "whole", bank)
    whole.advance(3)
    first = StudyRun(VARIANTS["tc_paper"], SETTINGS, 0, tmp_path / "split", bank)
    first.advance(1)
    first.save()
    second = StudyRun(VARIANTS["tc_paper"], SETTINGS, 0, tmp_path / "split", bank)
    assert second.resume() == 1
    second.advance(3)
    for a, b in zip(whole.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="tc_paper seed 0"):
        StudyRun(VARIANTS["ijepa"], SETTINGS, 0, tmp_path / "split", None).resume()


def test_advance_trains_on_each_steps_own_batch(tmp_path):
    """The batch made ahead in advance()'s second thread is the one of the step it trains."""
    bank = random_text_bank()
    threaded = StudyRun(VARIANTS["tc_shuffled"], SETTINGS, 0, tmp_path / "threaded", bank)
    threaded.advance(2)
    plain = StudyRun(VARIANTS["tc_shuffled"], SETTINGS, 0, tmp_path / "plain", bank)
    plain.model.train()
    for step in range(2):
        plain.train_step(plain.training_batch(step))
    for a, b in zip(threaded.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_second_moment_boost_multiplies_the_encoder_state(tmp_path):
    run = StudyRun(VARIANTS["ijepa"], SETTINGS, 0, tmp_path / "r", None)
    run.advance(1)
    p = next(q for q in run.model.encoder.parameters() if q in run.optimizer.state)
    before = run.optimizer.state[p]["exp_avg_sq"].clone()
    run.boost_encoder_second_moment(2500.0)
    assert torch.allclose(run.optimizer.state[p]["exp_avg_sq"], before * 2500)


def test_shuffled_captions_never_keep_their_own():
    ids = torch.arange(12).view(6, 2)
    assert not (shuffle_captions(ids) == ids).all(1).any()


def test_statement_share_counts_stated_attributes_of_object_pixels():
    scenes = render_block(0, "train", 9, 16)
    share = object_statement_share(scenes)
    present = scenes.object_present
    # Shape, size and position are always stated, so every captioned object has >= 3/5.
    assert torch.all(share[present] >= 0.6 - 1e-6) and torch.all(share[~present] == 0)
    target_idx = torch.arange(64).view(1, 1, 64).expand(16, 1, 64)  # one block: the whole image
    whole = block_statement_share(scenes, target_idx, 8)[:, 0]
    lut = torch.cat([torch.zeros(16, 1), share], 1)
    expected = torch.gather(lut, 1, scenes.instances.view(16, -1).long()).mean(1)
    assert torch.allclose(whole, expected, atol=1e-6)
    assert MAX_OBJECTS == share.shape[1]


def test_verdict_rule():
    assert compare({0: 30.0, 1: 31.0, 2: 32.0}, {0: 20.0, 1: 21.0, 2: 22.0})["verdict"] == "ahead"
    assert compare({0: 30.0, 1: 31.0, 2: 32.0}, {0: 30.5, 1: 30.0, 2: 31.0})["verdict"] == "level"
    assert compare({0: 1.0}, {0: 2.0}) is None  # one seed is no spread


@pytest.mark.slow
def test_the_grid_writes_rows_and_resumes(tmp_path, monkeypatch):
    import evals.longhorizon.grid as grid_module

    monkeypatch.setattr(grid_module.Grid, "bank", lambda self: random_text_bank())
    options = {"probe_epochs": 2, "seg_settings": SegmentationSettings(iters=5, batch_size=8, lr=1e-2, warmup_iters=1)}
    make = lambda steps: Grid(tmp_path, StudySettings(budget=4, eval_steps=steps, batch_size=8), [0, 1],  # noqa: E731
                              ["ijepa", "tc_shuffled"], heldout=32, gap_scenes=16, ckpt_every=1,
                              eval_options=options, log=lambda m: None)
    assert make((0, 2)).run_all() == 8
    assert make((0, 2)).run_all() == 0  # nothing left
    rows = read_rows(tmp_path / "tc_shuffled-s1" / "eval.csv")
    assert [int(r["step"]) for r in rows] == [0, 2]
    assert rows[0]["probe_top1"] == "" and rows[1]["probe_top1"] != "" and rows[1]["text_gap"] != ""
    report = write_report(tmp_path, tmp_path / "report")
    assert {r["variant"] for r in report} == {"untrained", "ijepa", "tc_shuffled"}
    assert (tmp_path / "report" / "curves.png").is_file()
    from evals.longhorizon.study import main

    assert main(["report", "--work", str(tmp_path), "--out", str(tmp_path / "cli")]) == 0
    assert "tc_shuffled" in (tmp_path / "cli" / "summary.csv").read_text()


def test_gap_check_passes_fails_and_waits(tmp_path):
    assert gap_check(tmp_path, 250)[0] == 4
    for seed, relative in ((0, 0.001), (1, 0.002)):
        append_row(tmp_path / f"tc_paper-s{seed}" / "eval.csv",
                   {"variant": "tc_paper", "seed": seed, "step": 250, "text_gap": 0.0001, "text_gap_relative": relative})
    code, message = gap_check(tmp_path, 250)
    assert code == 3 and "0.15%" in message
    assert gap_check(tmp_path, 250, threshold=0.001)[0] == 0


def test_text_line_reads_the_caption_gap_per_step():
    from evals.longhorizon.report import text_line

    rows = [{"variant": "tc_paper", "seed": s, "step": step, "text_gap_relative": rel}
            for s, (step, rel) in enumerate(((250, 0.001), (250, 0.003), (1000, 0.05), (1000, "")))]
    assert "text not yet read" in text_line(rows, 250) and "0.20%" in text_line(rows, 250)
    assert "are read" in text_line(rows, 1000) and "(1 seeds)" in text_line(rows, 1000)
    assert "no caption-gap row" in text_line(rows, 500)


def test_the_overview_has_a_line_per_step_and_only_comparisons_with_rows():
    from evals.longhorizon.report import overview_markdown

    def v(step, a, b, task, d, word):
        return {"step": step, "a": a, "b": b, "task": task, "difference": d, "verdict": word, "seeds": 3}

    verdicts = [v(500, "ijepa", "untrained", "probe_top1", 4.67, "ahead"), v(500, "ijepa", "untrained", "seg_miou", 1.36, "ahead"),
                v(1000, "ijepa", "untrained", "probe_top1", 5.05, "ahead"),
                v(1000, "tc_paper", "ijepa", "probe_top1", -0.85, "level")]
    rows = [{"variant": "tc_paper", "seed": s, "step": 1000, "text_gap_relative": g} for s, g in ((0, 0.02), (1, 0.04))]
    lines = overview_markdown(verdicts, rows).splitlines()
    assert lines[-4:] == ["| step | ijepa - untrained | tc_paper - ijepa | caption gap tc_paper |",
                          "|---|---|---|---|",
                          "| 500 | +4.67 ahead / +1.36 ahead (3) |  |  |",
                          "| 1000 | +5.05 ahead / - (3) | -0.85 level / - (3) | 3.00% (2) |"]


def test_set_threads_every_branch():
    # The CLI sets threads before any run; an import error here stopped `run` and `speed`.
    import torch

    from evals.longhorizon.study import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(1, "cpu")
        assert torch.get_num_threads() == 1
        set_threads(0, "cpu")
        assert 1 <= torch.get_num_threads() <= max(1, before)
        set_threads(0, "cuda", processes=64)
        assert torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(before)


def test_the_verdict_says_whether_pretraining_pays():
    from evals.longhorizon.report import regime_line

    def lead(probe, miou, step=1000):
        return [{"step": step, "a": "ijepa", "b": "untrained", "task": t, "difference": d, "seeds": 3}
                for t, d in (("probe_top1", probe), ("seg_miou", miou))]

    assert "does not yet pay" in regime_line(lead(9.9, 5.0), 1000)
    assert "does not yet pay" in regime_line(lead(12.0, 1.9), 1000)
    assert "pays here" in regime_line(lead(10.0, 2.0), 1000) and "not" not in regime_line(lead(10.0, 2.0), 1000)
    assert "no I-JEPA" in regime_line(lead(12.0, 3.0, step=500), 1000)


def test_a_diagnostic_grid_reaches_the_run_config(tmp_path):
    # --ema and --set change every run of a diagnostic grid; the protocol grid's defaults stay.
    from evals.longhorizon.study import _settings, build_parser
    from tcjepa.config import ConfigError

    parse = lambda *extra: _settings(build_parser().parse_args(["run", "--work", str(tmp_path), *extra]))  # noqa: E731
    assert parse() == StudySettings(budget=1000, eval_steps=parse().eval_steps)
    settings = parse("--ema", "0.996", "0.996", "--set", "optim.lr=0.002")
    cfg = run_config(VARIANTS["ijepa"], settings, 0, tmp_path)
    assert tuple(cfg.optim.ema) == (0.996, 0.996) and cfg.optim.lr == 0.002
    with pytest.raises(ConfigError, match="no_such_key"):
        run_config(VARIANTS["ijepa"], parse("--set", "optim.no_such_key=1"), 0, tmp_path)


def test_radii_reach_the_settings_and_older_plans_still_match(tmp_path):
    import json

    from evals.longhorizon.grid import write_plan
    from evals.longhorizon.study import _settings, build_parser
    from tcjepa.config import ConfigError

    parse = lambda *extra: _settings(build_parser().parse_args(["run", "--work", str(tmp_path), *extra]))  # noqa: E731
    assert parse("--radii", "0.16", "0.2", "0.25", "0.3").object_radii == ((0.16, 0.2), (0.25, 0.3))
    with pytest.raises(ConfigError, match="large object radii"):
        parse("--radii", "0.1", "0.2", "0.3", "0.2")
    # A plan written before the setting existed was run at its default.
    write_plan(tmp_path, parse(), [0], ["ijepa"])
    plan = json.loads((tmp_path / "plan.json").read_text())
    del plan["settings"]["object_radii"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    write_plan(tmp_path, parse(), [1], ["ijepa"])
    assert json.loads((tmp_path / "plan.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="other settings"):
        write_plan(tmp_path, parse("--radii", "0.16", "0.2", "0.25", "0.3"), [0], ["ijepa"])
    # A bad override is refused before it is fixed in a new plan.
    with pytest.raises(ConfigError, match="no_such_key"):
        write_plan(tmp_path / "other", parse("--set", "optim.no_such_key=1"), [0], ["ijepa"])
    assert not (tmp_path / "other").exists()


def test_lr_reaches_the_configs_and_older_plans_ran_at_the_demo_lr(tmp_path):
    import json

    from evals.longhorizon.grid import write_plan
    from evals.longhorizon.study import _settings, build_parser
    from tcjepa.config import ConfigError

    parse = lambda *extra: _settings(build_parser().parse_args(["run", "--work", str(tmp_path), *extra]))  # noqa: E731
    cfg = run_config(VARIANTS["tc_paper"], parse(), 0, tmp_path)
    assert (cfg.optim.start_lr, cfg.optim.lr) == StudySettings.lr == (2e-5, 1e-4)
    cfg = run_config(VARIANTS["ijepa"], parse("--lr", "0.0002", "0.001"), 0, tmp_path)
    assert (cfg.optim.start_lr, cfg.optim.lr) == (2e-4, 1e-3)
    with pytest.raises(ConfigError, match="start <= peak"):
        parse("--lr", "0.01", "0.001")
    # A plan from before the setting existed ran at the demo config's lr, not at today's default.
    write_plan(tmp_path, parse(), [0], ["ijepa"])
    plan = json.loads((tmp_path / "plan.json").read_text())
    del plan["settings"]["lr"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(SystemExit, match="other settings"):
        write_plan(tmp_path, parse(), [0], ["ijepa"])
    write_plan(tmp_path, parse("--lr", "0.0002", "0.001"), [1], ["ijepa"])
